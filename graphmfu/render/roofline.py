"""Roofline plots of a document: ``.png`` / ``.svg`` (matplotlib), an interactive ``.html`` page (plotly,
self-contained: plotly.js inline, nothing from a CDN), and a terminal plot (plotext).

What is drawn comes from ``derive.roofline_view`` (a report) or ``Comparison.roofline_view`` (eager →
compiled per module): x = arithmetic intensity (all FLOPs / bytes), y = achieved FLOP/s (all FLOPs /
measured time; a static row at its roofline ``t_min``), one roof per compute unit present and the DRAM
roof; point area ∝ time; the top offenders (most time lost to the roofline) labelled.  The plot
libraries are optional (``pip install 'graphmfu[plot]'``); without one, one line says what to install.

``Report.save("r.png")`` / ``.svg`` come here too (options ``by=``, ``stage=``, ``color=``, ``depth=``).
"""
from __future__ import annotations

import importlib
import io
import math
from pathlib import Path

from graphmfu.errors import GraphMFUError
from graphmfu.render import ms, num

SUFFIXES = (".png", ".svg")
BINARY = True
_INSTALL = "pip install 'graphmfu[plot]'"
_PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
            "#17becf")


def need(module: str, what: str, package: str | None = None):
    """Import an optional plotting library, or one clear error saying what to install."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise GraphMFUError(f"{what} needs {package or module.split('.')[0]}: {_INSTALL} "
                            f"(or pip install {package or module.split('.')[0]})") from None


# --------------------------------------------------------------------------- what to draw


def _title(view: dict, title: str | None) -> str:
    if title:
        return title
    what = {"kernel": "measured kernels", "module": "modules", "node": "graph nodes"}[view["by"]]
    if view.get("arrows") is not None:
        what = "modules, eager → compiled"
    place = "" if view["measured"] or view.get("arrows") is not None else " (static: placed at roofline t_min)"
    stage = f", stage {view['stage']}" if view.get("stage") else ""
    return f"Roofline — {what}{stage}{place} — {view['device']}"


def notes(view: dict) -> list[str]:
    """What the plot leaves out, said under it (rows a FLOP/byte plot cannot place)."""
    out = []
    what = {"kernel": "kernel rows", "module": "modules", "node": "nodes"}[view["by"]]
    lo = view["left_out"]
    if lo["no_flops"]["count"]:
        out.append(f"{lo['no_flops']['count']} {what} move bytes without FLOPs "
                   f"({ms(lo['no_flops']['time_s'])} ms{'' if view['measured'] else ' t_min'}): not on a FLOP "
                   f"roofline, see their MBU in the tables")
    if lo["no_bytes"]["count"]:
        out.append(f"{lo['no_bytes']['count']} {what} compute without moving bytes (infinite intensity): not drawn")
    return out


def _groups(view: dict) -> list[str]:
    """Groups in order of total time (the first gets the first colour)."""
    t: dict = {}
    for p in view["points"]:
        t[p["group"]] = t.get(p["group"], 0.0) + p["time_s"]
    return sorted(t, key=lambda g: -t[g])


def _bounds(view: dict) -> tuple[float, float, float, float]:
    pts = view["points"]
    bw = view["dram_gbps"] * 1e9
    xs = [p["intensity"] for p in pts] + [r["ridge"] for r in view["roofs"]]
    ys = [p["tflops"] * 1e12 for p in pts] + [r["tflops"] * 1e12 for r in view["roofs"]]
    x0, x1 = min(xs) / 4, max(xs) * 4
    y0 = min(min(ys), x0 * bw) / 4
    y1 = max(ys) * 3
    return x0, x1, y0, y1


def _short(label: str, n: int = 42) -> str:
    return label if len(label) <= n else label[: n - 1] + "…"


def _hover(p: dict) -> str:
    pct = lambda x: "-" if x is None else f"{x * 100:.1f}%"  # noqa: E731
    time = f"time {ms(p['time_s'])} ms" if p["measured"] else f"t_min {ms(p['time_s'])} ms (not measured)"
    return (f"{p['label']}<br>{time}; roofline t_min {ms(p['t_min_s'])} ms<br>"
            f"matrix FLOPs {num(p['flops'])}, vector {num(p['vector_flops'])}, bytes {num(p['bytes'], 'B')}<br>"
            f"intensity {p['intensity']:.3g} FLOP/B, achieved {num(p['tflops'] * 1e12)}FLOP/s<br>"
            f"MFU {pct(p['mfu'])}, MBU {pct(p['mbu'])}, SOL {pct(p['sol'])}"
            + (f", {p['bound']}-bound" if p.get("bound") else "") + (f"<br>stage {p['stage']}" if p.get("stage") else ""))


def _offender(p: dict) -> str:
    sol = f", SOL {p['sol'] * 100:.1f}%" if p["measured"] and p["sol"] is not None else ""
    return f"{_short(p['label'], 56)}: {ms(p['time_s'])} ms{sol}"


def _sizes(view: dict, lo: float, hi: float) -> list[float]:
    tmax = max((p["time_s"] for p in view["points"]), default=1.0) or 1.0
    return [lo + (hi - lo) * p["time_s"] / tmax for p in view["points"]]


# --------------------------------------------------------------------------- matplotlib


def figure(view: dict, title: str | None = None):
    """A matplotlib Figure of the view (no pyplot: no global state, no display needed)."""
    need("matplotlib", "a roofline PNG/SVG")
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 6.5), dpi=110)
    ax = fig.add_subplot(1, 1, 1)
    ax.set_xscale("log")
    ax.set_yscale("log")
    x0, x1, y0, y1 = _bounds(view) if view["points"] else (0.01, 1000, 1e6, 1e16)
    bw = view["dram_gbps"] * 1e9
    for r in view["roofs"]:
        peak = r["tflops"] * 1e12
        ax.plot([x0, r["ridge"], x1], [x0 * bw, peak, peak], color="0.25", lw=1.4)
        ax.text(x1, peak * 1.08, f"{r['name']}  {r['tflops']:.4g} TFLOP/s", ha="right", va="bottom", fontsize=8,
                color="0.2")
    ax.text(x0 * 1.3, x0 * bw * 1.5, f"DRAM {view['dram_gbps']:.4g} GB/s", rotation=0, fontsize=8, color="0.2",
            va="bottom")
    groups = _groups(view)
    colour = {g: _PALETTE[i % len(_PALETTE)] for i, g in enumerate(groups)}
    sizes = _sizes(view, 12, 600)
    pts = view["points"]
    hollow = {i for a, _ in view.get("arrows") or () for i in (a,)}
    for g in groups:
        idx = [i for i, p in enumerate(pts) if p["group"] == g]
        for fill in (True, False):
            sel = [i for i in idx if (i not in hollow) == fill]
            if not sel:
                continue
            ax.scatter([pts[i]["intensity"] for i in sel], [pts[i]["tflops"] * 1e12 for i in sel],
                       s=[sizes[i] for i in sel], alpha=0.7, edgecolors=colour[g],
                       facecolors=colour[g] if fill else "none", linewidths=1.2,
                       label=g if fill or not any(i not in hollow for i in idx) else None)
    for a, b in view.get("arrows") or ():
        ax.annotate("", xy=(pts[b]["intensity"], pts[b]["tflops"] * 1e12),
                    xytext=(pts[a]["intensity"], pts[a]["tflops"] * 1e12),
                    arrowprops={"arrowstyle": "->", "color": colour[pts[b]["group"]], "lw": 1.0, "alpha": 0.8})
    offenders = []
    for n, i in enumerate(view["labelled"], 1):  # numbered at the point, listed in the empty upper left
        p = pts[i]
        ax.annotate(str(n), (p["intensity"], p["tflops"] * 1e12), xytext=(4, 4), textcoords="offset points",
                    fontsize=8, fontweight="bold")
        offenders.append(f"{n}. {_offender(p)}")
    if offenders:
        head = view.get("label_by") or ("top offenders (time lost to the roofline)" if view["measured"]
                                        else "largest t_min")
        ax.text(0.01, 0.99, "\n".join([head, *offenders]), transform=ax.transAxes, fontsize=7, va="top",
                ha="left", family="monospace", bbox={"facecolor": "white", "alpha": 0.85, "edgecolor": "0.8"})
    ax.set_xlim(x0, x1)
    ax.set_ylim(y0, y1)
    ax.set_xlabel("arithmetic intensity (FLOP / byte, unique bytes)")
    ax.set_ylabel("achieved FLOP/s" if view["measured"] else "FLOP/s at roofline t_min")
    ax.set_title(_title(view, title), fontsize=10)
    ax.grid(True, which="major", alpha=0.3)
    if groups:
        leg = ax.legend(fontsize=7, loc="lower right", title=view["color"], title_fontsize=7)
        for h in getattr(leg, "legend_handles", None) or getattr(leg, "legendHandles", []):
            if hasattr(h, "set_sizes"):
                h.set_sizes([30])
    foot = notes(view) + ["point area ∝ " + ("measured time" if view["measured"] else "t_min")
                          + ("; hollow: eager, filled: compiled" if view.get("arrows") is not None else "")]
    fig.text(0.01, 0.01, "\n".join(foot), fontsize=7, color="0.3", va="bottom")
    fig.subplots_adjust(bottom=0.1 + 0.025 * len(foot))
    return fig


def image(view: dict, fmt: str, title: str | None = None) -> bytes:
    buf = io.BytesIO()
    figure(view, title).savefig(buf, format=fmt)
    return buf.getvalue()


# --------------------------------------------------------------------------- plotly


def plotly_figure(view: dict, title: str | None = None):
    """An interactive plotly Figure of the view (hover: every number of the point)."""
    go = need("plotly.graph_objects", "an interactive roofline (HTML)", "plotly")
    fig = go.Figure()
    x0, x1, y0, y1 = _bounds(view) if view["points"] else (0.01, 1000, 1e6, 1e16)
    bw = view["dram_gbps"] * 1e9
    for r in view["roofs"]:
        peak = r["tflops"] * 1e12
        fig.add_trace(go.Scatter(x=[x0, r["ridge"], x1], y=[x0 * bw, peak, peak], mode="lines",
                                 line={"color": "#444", "width": 1.5}, name=f"{r['name']} {r['tflops']:.4g} TFLOP/s",
                                 hoverinfo="name", showlegend=False))
        fig.add_annotation(x=math.log10(x1), y=math.log10(peak), text=f"{r['name']} {r['tflops']:.4g} TFLOP/s",
                           showarrow=False, xanchor="right", yanchor="bottom", font={"size": 10})
    fig.add_annotation(x=math.log10(x0 * 1.3), y=math.log10(x0 * bw * 1.5), text=f"DRAM {view['dram_gbps']:.4g} GB/s",
                       showarrow=False, xanchor="left", yanchor="bottom", font={"size": 10})
    pts = view["points"]
    groups = _groups(view)
    colour = {g: _PALETTE[i % len(_PALETTE)] for i, g in enumerate(groups)}
    sizes = _sizes(view, 5, 40)
    hollow = {a for a, _ in view.get("arrows") or ()}
    for g in groups:
        idx = [i for i, p in enumerate(pts) if p["group"] == g]
        fig.add_trace(go.Scatter(
            x=[pts[i]["intensity"] for i in idx], y=[pts[i]["tflops"] * 1e12 for i in idx], mode="markers", name=g,
            marker={"size": [sizes[i] for i in idx], "color": colour[g], "opacity": 0.75,
                    "symbol": ["circle-open" if i in hollow else "circle" for i in idx], "line": {"width": 1.5}},
            hovertext=[_hover(pts[i]) for i in idx], hoverinfo="text"))
    for a, b in view.get("arrows") or ():
        fig.add_annotation(x=math.log10(pts[b]["intensity"]), y=math.log10(pts[b]["tflops"] * 1e12),
                           ax=math.log10(pts[a]["intensity"]), ay=math.log10(pts[a]["tflops"] * 1e12),
                           xref="x", yref="y", axref="x", ayref="y", showarrow=True, arrowhead=2, arrowsize=1,
                           arrowwidth=1, arrowcolor=colour[pts[b]["group"]], text="")
    for n, i in enumerate(view["labelled"], 1):
        p = pts[i]
        fig.add_annotation(x=math.log10(p["intensity"]), y=math.log10(p["tflops"] * 1e12), text=f"<b>{n}</b>",
                           showarrow=True, arrowhead=0, ax=12, ay=-14, font={"size": 10})
    if view["labelled"]:
        head = view.get("label_by") or ("top offenders (time lost to the roofline)" if view["measured"]
                                        else "largest t_min")
        fig.add_annotation(text="<br>".join([head, *(f"{n}. {_offender(pts[i])}" for n, i in
                                                     enumerate(view["labelled"], 1))]),
                           xref="paper", yref="paper", x=0.01, y=0.99, showarrow=False, xanchor="left",
                           yanchor="top", align="left", font={"size": 10, "family": "monospace"},
                           bgcolor="rgba(255,255,255,0.85)", bordercolor="#ccc")
    foot = "<br>".join(notes(view))
    fig.update_layout(
        title={"text": _title(view, title), "font": {"size": 14}},
        xaxis={"type": "log", "title": "arithmetic intensity (FLOP / byte)", "range": [math.log10(x0), math.log10(x1)]},
        yaxis={"type": "log", "title": "achieved FLOP/s" if view["measured"] else "FLOP/s at roofline t_min",
               "range": [math.log10(y0), math.log10(y1)], "exponentformat": "SI"},
        legend={"title": {"text": view["color"]}}, template="plotly_white", height=600,
        margin={"b": 80 + 15 * len(notes(view))})
    if foot:
        fig.add_annotation(text=foot, xref="paper", yref="paper", x=0, y=-0.18, showarrow=False, xanchor="left",
                           align="left", font={"size": 10, "color": "#555"})
    return fig


def plotly_div(view: dict, title: str | None = None, include_js: bool = True) -> str:
    """The figure as an HTML fragment with plotly.js inline (offline: no CDN)."""
    return plotly_figure(view, title).to_html(full_html=False, include_plotlyjs=include_js,
                                              config={"displaylogo": False})


def write_html(view: dict, path, title: str | None = None) -> Path:
    """A self-contained interactive page (plotly.js inline)."""
    p = Path(path)
    plotly_figure(view, title).write_html(str(p), include_plotlyjs=True, full_html=True,
                                          config={"displaylogo": False})
    return p


# --------------------------------------------------------------------------- terminal


def terminal(view: dict, title: str | None = None, width: int = 100, height: int = 30, colour: bool | None = None) -> str:
    """The roofline as text for a terminal (plotext); ``colour`` (default: stdout is a terminal) keeps the
    ANSI colours."""
    import sys

    plt = need("plotext", "a terminal roofline")
    if colour is None:
        colour = sys.stdout.isatty()
    plt.clear_figure()
    plt.plotsize(width, height)
    plt.xscale("log")
    plt.yscale("log")
    x0, x1, _, _ = _bounds(view) if view["points"] else (0.01, 1000, 1e6, 1e16)
    bw = view["dram_gbps"] * 1e9
    for r in view["roofs"]:
        peak = r["tflops"] * 1e12
        plt.plot([x0, r["ridge"], x1], [x0 * bw, peak, peak], label=f"{r['name']} {r['tflops']:.4g} TF/s",
                 marker="braille")
    for g in _groups(view):
        sel = [p for p in view["points"] if p["group"] == g]
        plt.scatter([p["intensity"] for p in sel], [p["tflops"] * 1e12 for p in sel], label=g[:20])
    plt.title(_title(view, title))
    plt.xlabel("FLOP/byte")
    plt.ylabel("FLOP/s")
    text = plt.build()
    plt.clear_figure()
    if not colour:
        text = plt.uncolorize(text)
    top = [f"  {n}. {_offender(view['points'][i])}" for n, i in enumerate(view["labelled"], 1)]
    return text + "\n" + "\n".join(["top offenders:", *top, *notes(view)]) + "\n"


# --------------------------------------------------------------------------- save


def plot(view: dict, path=None, title: str | None = None):
    """Draw ``view`` into ``path`` by its ending: .png/.svg/.pdf (matplotlib), .html (plotly), .txt (plotext
    text); ``None`` returns the terminal text."""
    if path is None:
        return terminal(view, title)
    p = Path(path)
    ext = p.suffix.lower()
    if ext in (".png", ".svg", ".pdf"):
        p.write_bytes(image(view, ext[1:], title))
    elif ext in (".html", ".htm"):
        write_html(view, p, title)
    elif ext == ".txt":
        p.write_text(terminal(view, title, colour=False))
    else:
        raise GraphMFUError(f"plot_roofline: cannot draw {path}: use a .png, .svg, .pdf, .html or .txt path "
                            f"(or no path for the terminal)")
    return p


def render(doc, path=None, by: str = "kernel", stage: str | None = None, color: str | None = None,
           depth: int | None = 2, top: int = 5, title: str | None = None, **_) -> bytes:
    view = doc.roofline_view(by=by, stage=stage, color=color, depth=depth, top=top)
    fmt = Path(path).suffix.lower()[1:] if path is not None else "png"
    return image(view, fmt, title)
