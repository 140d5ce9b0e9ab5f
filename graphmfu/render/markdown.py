"""Markdown: a heading per section, GitHub tables."""
from graphmfu.render import tabulate

SUFFIXES = (".md",)


def render(doc, path=None, **options) -> str:
    parts = [f"# {doc.title}", ""]
    for s in doc.sections(**options):
        if s.title:
            parts += [f"## {s.title}", ""]
        if s.headers:
            parts += [tabulate(s, "github"), ""]
        if s.lines:
            parts += [f"- {x}" for x in s.lines] + [""]
    return "\n".join(parts)
