"""Plain-text tables (what ``print(report.table())`` shows)."""
from graphmfu.render import tabulate

SUFFIXES = (".txt",)


def render(doc, path=None, **options) -> str:
    parts = []
    for s in doc.sections(**options):
        if s.title:
            parts.append(f"{s.title}:" if s.rows or s.headers else s.title)
        if s.headers:
            parts.append(tabulate(s, "simple"))
        parts += s.lines
        parts.append("")
    return "\n".join(parts).rstrip("\n") + "\n"
