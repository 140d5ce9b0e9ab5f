"""Progress on long work (compiles, compare iterations, joins, calibration), on stderr when it is a
terminal and quiet otherwise: tqdm when installed, else one line rewritten in place.

``GRAPHMFU_PROGRESS=1`` shows it even without a terminal (written as plain lines), ``=0`` never.

    with progress(total=8, desc="compare: eager") as bar:
        for ...:
            bar.update(1, "prefill")
"""
from __future__ import annotations

import os
import sys
import time


def enabled(stream=None) -> bool:
    """Whether progress is shown on ``stream`` (default stderr)."""
    flag = os.environ.get("GRAPHMFU_PROGRESS", "").strip()
    if flag in ("0", "false", "no"):
        return False
    if flag in ("1", "true", "yes"):
        return True
    s = stream or sys.stderr
    try:
        return bool(s.isatty())
    except (AttributeError, ValueError):
        return False


class Progress:
    """A count towards ``total`` (None: unknown) with a short note; a no-op when not ``enabled``."""

    def __init__(self, total: int | None = None, desc: str = "", stream=None, enable: bool | None = None):
        self.stream = stream or sys.stderr
        self.on = enabled(self.stream) if enable is None else enable
        self.total, self.desc, self.n, self.note = total, desc, 0, ""
        self._bar = None
        self._tty = self._isatty()
        self._t0 = time.perf_counter()
        if self.on and self._tty:
            try:
                from tqdm import tqdm

                self._bar = tqdm(total=total, desc=desc, file=self.stream, leave=False, dynamic_ncols=True)
            except ImportError:
                self._bar = None

    def _isatty(self) -> bool:
        try:
            return bool(self.stream.isatty())
        except (AttributeError, ValueError):
            return False

    def update(self, n: int = 1, note: str = "") -> None:
        self.n += n
        self.note = note
        if not self.on:
            return
        if self._bar is not None:
            self._bar.update(n)
            if note:
                self._bar.set_postfix_str(note, refresh=True)
            return
        of = f"/{self.total}" if self.total else ""
        line = f"{self.desc} {self.n}{of}{' ' + note if note else ''} ({time.perf_counter() - self._t0:.1f} s)"
        if self._tty:
            self.stream.write("\r\033[K" + line)
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def close(self) -> None:
        if not self.on:
            return
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        elif self._tty and self.n:
            self.stream.write("\r\033[K")
            self.stream.flush()

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> bool:
        self.close()
        return False


def progress(total: int | None = None, desc: str = "", stream=None, enable: bool | None = None) -> Progress:
    return Progress(total, desc, stream, enable)


__all__ = ["Progress", "progress", "enabled"]
