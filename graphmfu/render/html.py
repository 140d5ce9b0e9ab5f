"""HTML: one self-contained page (no network: styles inline, plotly.js inline) — summary, stage table,
interactive roofline, module tree, top kernels, static costs, coverage.  ``Report.save("r.html")``,
``Comparison.save("c.html")``, ``graphmfu show r.json --html r.html``.

Every number cell carries its exact value (``data-v``, Python's repr of the float) beside the text it
shows, so a test (or a script) reads back the report's own numbers from the page.  The roofline is
plotly when installed, else a matplotlib SVG, else a line saying what to install.
"""
from __future__ import annotations

import html
import time

from graphmfu.errors import GraphMFUError
from graphmfu.render import Section, ms, num, pct

SUFFIXES = (".html", ".htm")

CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:0;color:#1d2330;background:#f6f7f9}
header{background:#1d2330;color:#fff;padding:14px 28px}
header h1{margin:0;font-size:20px}header p{margin:4px 0 0;color:#c9cfdb;font-size:13px}
main{padding:8px 28px 40px;max-width:1400px}
section{background:#fff;border:1px solid #e1e4ea;border-radius:6px;margin:16px 0;padding:12px 18px;overflow-x:auto}
h2{font-size:16px;margin:4px 0 10px}
.cards{display:flex;flex-wrap:wrap;gap:10px;margin:6px 0 10px}
.card{border:1px solid #e1e4ea;border-radius:6px;padding:8px 14px;min-width:130px;background:#fafbfc}
.card b{display:block;font-size:18px}.card span{font-size:12px;color:#5b6475}
ul.lines{margin:4px 0;padding-left:18px;font-size:13px}ul.lines li{margin:2px 0}
table{border-collapse:collapse;font-size:12.5px;width:100%}
th,td{padding:4px 8px;border-bottom:1px solid #eceef2;text-align:left;white-space:pre}
th{background:#f0f2f5;position:sticky;top:0}
td.n{text-align:right;font-variant-numeric:tabular-nums}
tr:hover td{background:#f5f8ff}
.scroll{max-height:520px;overflow:auto}
.tree details,.tree details>div{margin-left:16px}.tree>details{margin-left:0}
.tree summary{cursor:pointer;list-style:none;padding:2px 0}
.tree summary::-webkit-details-marker{display:none}
.row{display:grid;grid-template-columns:minmax(220px,2.2fr) 90px 160px 80px 80px 70px 70px 70px;gap:8px;
 align-items:center;font-size:12.5px}
.row .n{text-align:right;font-variant-numeric:tabular-nums}
.tree .row{padding:2px 0}
.row.head{font-weight:600;color:#5b6475;border-bottom:1px solid #e1e4ea;margin-bottom:4px}
.bar{height:8px;background:#dfe6f3;border-radius:4px;overflow:hidden}
.bar i{display:block;height:100%;background:#4b7bd9}
.leaf::before{content:"· ";color:#99a}.branch::before{content:"▸ ";color:#4b7bd9}
details[open]>summary .branch::before{content:"▾ "}
.note{color:#5b6475;font-size:12.5px}
.flag{color:#b3261e}
"""


def _e(x) -> str:
    return html.escape(str(x), quote=True)


def _cell(text, value=None, key: str | None = None) -> str:
    """A table cell; numbers carry their exact value and field name."""
    if value is None and key is None:
        return f"<td>{_e(text)}</td>"
    attrs = f' data-k="{_e(key)}"' if key else ""
    if value is not None:
        attrs += f' data-v="{_e(repr(value))}"'
    return f'<td class="n"{attrs}>{_e(text)}</td>'


def _table(headers: list[str], rows: list[str], tid: str, scroll: bool = False) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = "\n".join(rows)
    t = f'<table id="{tid}"><thead><tr>{head}</tr></thead><tbody>\n{body}\n</tbody></table>'
    return f'<div class="scroll">{t}</div>' if scroll else t


def _section(sid: str, title: str, body: str) -> str:
    return f'<section id="{sid}"><h2>{_e(title)}</h2>\n{body}\n</section>'


def _lines(lines) -> str:
    return '<ul class="lines">' + "".join(f"<li>{_e(x)}</li>" for x in lines) + "</ul>"


def _generic(s: Section, sid: str) -> str:
    """A Section (strings, as the text renderer shows them) as HTML."""
    parts = []
    if s.headers:
        rows = ["<tr>" + "".join(_cell(c) for c in r) + "</tr>" for r in s.rows]
        parts.append(_table(s.headers, rows, sid + "-table", scroll=len(rows) > 25))
    if s.lines:
        parts.append(_lines(s.lines))
    return _section(sid, s.title or "", "\n".join(parts)) if s.title else "\n".join(parts)


# --------------------------------------------------------------------------- roofline


def roofline_html(doc, views: list[tuple[str, dict]]) -> str:
    """The roofline(s): plotly (inline js once), else matplotlib SVG, else one line saying what to install."""
    from graphmfu.render import roofline as rl

    out = []
    try:
        rl.need("plotly.graph_objects", "the interactive roofline", "plotly")
        for i, (caption, v) in enumerate(views):
            out.append(f'<div class="plot" data-roofline="{_e(caption)}">{rl.plotly_div(v, include_js=i == 0)}</div>')
        return "\n".join(out)
    except GraphMFUError:
        pass
    try:
        for caption, v in views:
            svg = rl.image(v, "svg").decode()
            svg = svg[svg.find("<svg"):]
            out.append(f'<div class="plot" data-roofline="{_e(caption)}">{svg}</div>')
        return "\n".join(out) + '<p class="note">static image: pip install plotly for the interactive roofline</p>'
    except GraphMFUError:
        return ('<p class="note">no roofline: the plot libraries are not installed; '
                "pip install 'graphmfu[plot]' (plotly, matplotlib)</p>")


# --------------------------------------------------------------------------- a report


def _cards(rep) -> str:
    t = rep.totals
    cards = [("matrix FLOPs", num(t["flops"])), ("vector FLOPs", num(t["vector_flops"])),
             ("bytes (unique)", num(t["bytes_read"] + t["bytes_written"], "B")), ("roofline t_min", ms(t["t_min_s"]) + " ms")]
    if rep.stages:
        top = [s for s in rep.stages if s["parent"] is None]
        span = sum(s["span_s"] for s in top)
        cards.append(("measured span (top stages)", ms(span) + " ms"))
        for s in top[:3]:
            cards.append((f"{s['name']}: MFU / MBU", f"{pct(s['mfu'])} / {pct(s['mbu'])} %"))
    cov = rep.coverage()
    cards.append(("nodes with a rule", f"{cov['nodes_total'] - cov['nodes_unknown']}/{cov['nodes_total']}"))
    if "time_attributed" in cov:
        cards.append(("kernel time attributed", f"{cov['time_attributed'] * 100:.2f} %"))
    return '<div class="cards">' + "".join(f"<div class=\"card\"><b>{_e(v)}</b><span>{_e(k)}</span></div>"
                                           for k, v in cards) + "</div>"


def _stage_table(rep) -> str:
    rows = []
    for s in rep.stages:
        rows.append(f'<tr data-row="{_e(s["name"])}">' + "".join([
            _cell(s["name"]), _cell(s["calls"], s["calls"], "calls"), _cell(ms(s["span_s"]), s["span_s"], "span_s"),
            _cell(ms(s["busy_s"]), s["busy_s"], "busy_s"),
            _cell(f"{s['idle_share'] * 100:.1f}", s["idle_share"], "idle_share"),
            _cell(num(s["flops"]), s["flops"], "flops"), _cell(num(s["vector_flops"]), s["vector_flops"], "vector_flops"),
            _cell(num(s["bytes"], "B"), s["bytes"], "bytes"), _cell(pct(s["mfu"]), s["mfu"], "mfu"),
            _cell(pct(s["mfu_busy"]), s["mfu_busy"], "mfu_busy"), _cell(pct(s["mbu"]), s["mbu"], "mbu"),
            _cell(f"{s['memory_bound_share'] * 100:.0f}", s["memory_bound_share"], "memory_bound_share")]) + "</tr>")
    return _table(["stage", "calls", "span ms", "busy ms", "idle %", "matrix FLOPs", "vector FLOPs", "bytes", "MFU %",
                   "MFU busy %", "MBU %", "mem-bound %"], rows, "stages-table")


def _kernel_table(rep, top: int) -> str:
    rows = []
    for i, k in enumerate(rep.kernels[:top]):
        flags = ",".join(k.get("flags", ()))
        rows.append(f'<tr data-row="{i}">' + "".join([
            _cell(k["name"]), _cell(k["stage"] or "-"), _cell(k["module"] or "(root)"),
            _cell(k["calls"], k["calls"], "calls"), _cell(f"{k['time_s'] * 1e3:.4g}", k["time_s"], "time_s"),
            _cell(num(k["flops"]), k["flops"], "flops"), _cell(num(k["bytes"], "B"), k["bytes"], "bytes"),
            _cell("-" if k["intensity"] is None else f"{k['intensity']:.3g}", k["intensity"], "intensity"),
            _cell(pct(k["mfu"]), k["mfu"], "mfu"), _cell(pct(k["mbu"]), k["mbu"], "mbu"),
            _cell(pct(k["sol"]), k["sol"], "sol"), _cell(k["bound"]),
            f'<td class="flag">{_e(flags)}</td>']) + "</tr>")
    return _table(["kernel", "stage", "module", "calls", "time ms", "matrix FLOPs", "bytes", "FLOP/B", "MFU %",
                   "MBU %", "SOL %", "bound", "flags"], rows, "kernels-table", scroll=True)


def _static_table(rep, depth, top: int) -> str:
    rows = []
    total = rep.totals["t_min_s"] or 1.0
    for r in rep.by_module(depth)[:top]:
        nb = r["bytes_read"] + r["bytes_written"]
        rows.append(f'<tr data-row="{_e(r["module"])}">' + "".join([
            _cell(r["module"] or "(root)"), _cell(num(r["flops"]), r["flops"], "flops"),
            _cell(num(r["flops_dense"]), r["flops_dense"], "flops_dense"),
            _cell(num(r["vector_flops"]), r["vector_flops"], "vector_flops"), _cell(num(nb, "B"), nb, "bytes"),
            _cell("-" if r["intensity"] is None else f"{r['intensity']:.3g}", r["intensity"], "intensity"),
            _cell(f"{r['memory_bound_share'] * 100:.0f}", r["memory_bound_share"], "memory_bound_share"),
            _cell(ms(r["t_min_s"]), r["t_min_s"], "t_min_s"),
            _cell(f"{r['t_min_s'] / total * 100:.1f}", r["t_min_s"] / total, "t_min_share")]) + "</tr>")
    return _table(["module", "matrix FLOPs", "dense", "vector FLOPs", "bytes", "FLOP/B", "mem-bound % of t_min",
                   "t_min ms", "% t_min"], rows, "static-table", scroll=True)


def _module_tree(rep) -> str:
    """The module tree (inclusive rows): measured time per module when timed, else roofline t_min."""
    timed = bool(rep.kernels)
    rows = rep.data["module_times"] if timed else rep.data["modules"]
    tkey = "time_s" if timed else "t_min_s"
    total = next((r[tkey] for r in rows if r["module"] == ""), 0.0) or 1.0
    children: dict = {}
    for r in rows:
        if r["module"]:
            children.setdefault(".".join(r["module"].split(".")[:-1]), []).append(r)

    def nbytes(r):
        return r["bytes"] if "bytes" in r else r["bytes_read"] + r["bytes_written"]

    def line(r) -> str:
        kids = children.get(r["module"], [])
        name = r["module"].split(".")[-1] if r["module"] else "(model)"
        mfu = pct(r.get("mfu")) if timed else "-"
        mbu = pct(r.get("mbu")) if timed else "-"
        share = r[tkey] / total
        return (f'<div class="row" data-module="{_e(r["module"])}" data-v="{_e(repr(r[tkey]))}">'
                f'<span class="{"branch" if kids else "leaf"}" title="{_e(r["module"] or "(model)")}">{_e(name)}</span>'
                f'<span class="n">{_e(ms(r[tkey]))}</span><span class="bar"><i style="width:{min(share, 1) * 100:.1f}%">'
                f'</i></span><span class="n">{_e(f"{share * 100:.1f}%")}</span><span class="n">{_e(num(r["flops"]))}</span>'
                f'<span class="n">{_e(num(nbytes(r), "B"))}</span><span class="n">{_e(mfu)}</span>'
                f'<span class="n">{_e(mbu)}</span></div>')

    def own(r, kids) -> str:
        """A branch's own share: its work in no child (ops of the module itself, fused kernels spanning
        children, which sit at their common ancestor)."""
        t = r[tkey] - sum(c[tkey] for c in kids)
        if t <= 1e-12 * max(total, 1e-30):
            return ""
        share = t / total
        name = f"(in {r['module'] or 'the model'} itself)"
        return (f'<div><div class="row own" data-module="{_e(r["module"])}#own" data-v="{_e(repr(t))}">'
                f'<span class="leaf" title="work of this module in none of its children">{_e(name)}</span>'
                f'<span class="n">{_e(ms(t))}</span><span class="bar"><i style="width:{min(share, 1) * 100:.1f}%"></i>'
                f'</span><span class="n">{_e(f"{share * 100:.1f}%")}</span><span></span><span></span><span></span>'
                f'<span></span></div></div>')

    def node(r) -> str:
        kids = sorted(children.get(r["module"], []), key=lambda c: -c[tkey])
        if not kids:
            return f"<div>{line(r)}</div>"
        inner = "".join(node(c) for c in kids) + own(r, kids)
        return f"<details{' open' if r['depth'] <= 1 else ''}><summary>{line(r)}</summary>{inner}</details>"

    head = (f'<div class="row head"><span>module</span><span class="n">{"time" if timed else "t_min"} ms</span>'
            f'<span></span><span class="n">share</span><span class="n">FLOPs</span><span class="n">bytes</span>'
            f'<span class="n">MFU %</span><span class="n">MBU %</span></div>')
    root = next((r for r in rows if r["module"] == ""), None)
    what = ("measured kernel time per module (inclusive; a fused kernel spanning modules sits at their common "
            "ancestor)" if timed else "roofline t_min per module (static: no measured time)")
    return f'<p class="note">{_e(what)}</p><div class="tree">{head}{node(root) if root else ""}</div>'


def _coverage(rep) -> str:
    c = rep.coverage()
    parts = [_lines([rep.coverage_line()])]
    if c["unknown_ops"]:
        parts.append(_table(["op without a rule", "count", "output bytes"],
                            [f"<tr>{_cell(u['op'])}{_cell(u['count'], u['count'], 'count')}"
                             f"{_cell(num(u['output_bytes'], 'B'), u['output_bytes'], 'output_bytes')}</tr>"
                             for u in c["unknown_ops"]], "unknown-table"))
    if c.get("unattributed_kernels"):
        parts.append(_table(["unattributed kernel", "where", "launched by", "count", "time ms"],
                            [f"<tr>{_cell(u['name'])}{_cell(u['where'])}{_cell(u['launch_op'] or '-')}"
                             f"{_cell(u['count'], u['count'], 'count')}{_cell(ms(u['time_s']), u['time_s'], 'time_s')}</tr>"
                             for u in c["unattributed_kernels"][:30]], "unattributed-table"))
    notes = [*rep.data.get("flagged", []), *rep.data["notes"]]
    if notes:
        parts.append("<h3>notes</h3>" + _lines(notes))
    return "\n".join(parts)


def _headroom(rep, top: int) -> str:
    """Ranked headroom per stage, module and kernel (exact values in data-v) and the ranked causes."""
    try:
        h, found = rep.headroom(), rep.causes()
    except Exception as e:  # noqa: BLE001 - the rest of the page stands without this section
        return _lines([f"headroom: not derived ({type(e).__name__}: {e})"])
    parts = [f'<p class="note">step {_e(ms(h.step_s))} ms; headroom = measured - roofline t_min; share = '
             f'headroom / step (docs/headroom.md)</p>']
    for by in ("stage", "module", "kernel"):
        rows = [("<tr>" + _cell(r["name"] or "(root)") + _cell(r.get("stage") or "-")
                 + _cell(ms(r["measured_s"]), r["measured_s"], "measured_s") + _cell(ms(r["t_min_s"]), r["t_min_s"], "t_min_s")
                 + _cell(ms(r["headroom_s"]), r["headroom_s"], "headroom_s")
                 + _cell(pct(r["share_of_step"]), r["share_of_step"], "share_of_step")
                 + _cell(pct(r["sol"]), r["sol"], "sol") + _cell(r["bound"]) + "</tr>") for r in h.rows(by)[:top]]
        if rows:
            parts.append(f"<h3>by {by}</h3>" + _table([by, "stage", "measured ms", "t_min ms", "headroom ms",
                                                        "% of step", "SOL %", "bound"], rows, f"headroom-{by}-table"))
    parts.append("<h3>causes (ranked by estimated lost time; they can overlap)</h3>"
                 + (_lines([c.line() for c in found[:top]]) if found else _lines(["no cause found"])))
    return "\n".join(parts)


def report_page(rep, depth=2, top: int = 25) -> str:
    d = rep.data["device"]
    body = [_section("summary", "Summary", _cards(rep) + _lines(rep._summary_lines()))]
    if rep.stages:
        body.append(_section("stages", "Stages (inclusive of nested stages)", _stage_table(rep)))
    views = []
    if rep.kernels:
        views.append(("kernels", rep.roofline_view(by="kernel")))
    views.append(("modules", rep.roofline_view(by="module", depth=depth)))
    if not rep.kernels:
        views.append(("nodes", rep.roofline_view(by="node")))
    body.append(_section("roofline", "Roofline", roofline_html(rep, views)))
    body.append(_section("modules", "Module tree", _module_tree(rep)))
    if rep.kernels:
        body.append(_section("kernels", f"Top {min(top, len(rep.kernels))} kernels by measured time",
                             _kernel_table(rep, top)))
    if rep.kernels and rep.record.timing is not None:
        body.append(_section("headroom", "Headroom: time above the roofline, and its causes", _headroom(rep, top)))
    if len(rep.by_graph()) > 1:
        body.append(_generic(rep._graph_section(), "graphs"))
    body.append(_section("static", f"Static cost by module (depth {depth})", _static_table(rep, depth, top)))
    body.append(_section("coverage", "Coverage", _coverage(rep)))
    sub = (f"{d['name']} · torch {rep.data['torch']} · recorded {rep.data['created']} · written "
           f"{time.strftime('%Y-%m-%d %H:%M:%S')}")
    return _page(rep.title, sub, body)


def comparison_page(cmp, depth=2, top: int = 10) -> str:
    secs = cmp.sections(depth=depth, top=top)
    body = [_section("summary", "Eager against compiled", _lines(secs[0].lines)), _generic(secs[1], "stages")]
    body.append(_section("roofline", "Roofline: eager → compiled per module",
                         roofline_html(cmp, [("modules", cmp.roofline_view(depth=depth))])))
    for i, s in enumerate(secs[2:], 2):
        body.append(_generic(s, f"s{i}") if s.title else _section(f"s{i}", "Coverage and notes", _generic(s, f"s{i}")))
    return _page(cmp.title, f"{cmp.data['device']['name']} · torch {cmp.data['torch']}", body)


def _page(title: str, sub: str, body: list[str]) -> str:
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><title>{_e(title)}</title>"
            f"<style>{CSS}</style></head><body><header><h1>{_e(title)}</h1><p>{_e(sub)}</p></header><main>\n"
            + "\n".join(body) + "\n</main></body></html>\n")


def render(doc, path=None, depth=2, top=None, **_) -> str:
    if hasattr(doc, "reports"):  # a Comparison
        return comparison_page(doc, depth=depth, top=top or 10)
    return report_page(doc, depth=depth, top=top or 25)
