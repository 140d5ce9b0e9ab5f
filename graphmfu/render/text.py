"""Plain-text tables (what ``print(report.table())`` shows)."""
from graphmfu.render import tabulate

SUFFIXES = (".txt",)


def render(doc, path=None, **options) -> str:
    parts = []
    for s in [*doc.sections(**options), *headroom_sections(doc)]:
        if s.title:
            parts.append(f"{s.title}:" if s.rows or s.headers else s.title)
        if s.headers:
            parts.append(tabulate(s, "simple"))
        parts += s.lines
        parts.append("")
    return "\n".join(parts).rstrip("\n") + "\n"


def headroom_sections(doc, top: int = 10) -> list:
    """A timed report's headroom tables and ranked causes (``Report.headroom_sections``); none for a static
    report or a comparison.  A failure here is one line, never a lost report."""
    from graphmfu.render import Section

    if not hasattr(doc, "headroom_sections") or not getattr(doc, "kernels", None) or doc.record.timing is None:
        return []
    try:
        return doc.headroom_sections(top)
    except Exception as e:  # noqa: BLE001 - the rest of the report stands without this section
        return [Section(lines=[f"headroom: not derived ({type(e).__name__}: {e})"])]
