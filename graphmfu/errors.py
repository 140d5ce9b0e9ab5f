"""The one exception graphmfu raises at its users: a single line saying how to fix it."""


class GraphMFUError(Exception):
    """Bad input to graphmfu. The message is one line and names the fix."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))

    def __str__(self) -> str:
        msg = super().__str__()
        return msg if msg.startswith("graphmfu") else f"graphmfu: {msg}"
