"""Causes Dynamo leaves in the record: graph breaks (with Dynamo's reason and where) and recompilations.

* The reason is Dynamo's own, as the registry noted it (``Registry.fallbacks()`` -> the record's note
  ``Dynamo could not compile everything ... — graph break x1: <reason>; ...``).
* Where: after a break Dynamo compiles the rest of the function as ``torch_dynamo_resume_in_<fn>_at_<line>``;
  the graph compiled from it records that frame (``GraphRecord.frame``), so the break is at ``file:line``.
* Time: where the profile measured the host's time in the stage (``host_s``) and inside graphmfu's graph
  calls (``host_in_graphs_s``), the rest is Python between the graphs and eager ops — what compiling the
  region as one graph takes away — and it costs the step only where the device waited: lost_s = min(the
  stage's device idle time, the host's time outside graph calls), shared between the break sites of the stage.
  Otherwise (a record from before) each call of a resumed graph is taken to add one launch gap: its calls x
  the stage's mean gap per kernel.  A frame Dynamo gave up on entirely runs eagerly: its ops are in
  ``eager_work`` too (causes overlap).
* Recompilations (one code compiled for several guards, ``derive.alternatives``) cost compile time, which
  the profile leaves out of the step: lost_s 0, listed so it is seen.
"""
from __future__ import annotations

from graphmfu.derive import alternatives, in_stage
from graphmfu.headroom.evidence import Cause, Context, frame_site, us
from graphmfu.registry import fallbacks_noted

def _host_outside(ctx: Context, stage: str | None) -> tuple | None:
    """(device idle, host time outside graph calls) of ``stage``, when the profile measured the host's."""
    s = ctx.stage(stage)
    if not s or s.get("host_s") is None or s.get("host_in_graphs_s") is None:
        return None
    return ctx.idle(s), max(s["host_s"] - s["host_in_graphs_s"], 0.0)


def graph_breaks(ctx: Context) -> list[Cause]:
    reasons = fallbacks_noted(ctx.record.notes)
    breaks = [r for r in reasons if r[0] == "graph break"]
    sites: dict = {}
    for g in ctx.record.graphs:
        site = frame_site(g.frame)
        if site is not None:
            sites.setdefault(site, []).append(g.id)
    out = []
    staged = {site: sorted({k["stage"] for k in ctx.kernels if k["graph"] in gids and k["stage"]})
              for site, gids in sites.items()}
    per_stage: dict = {}
    for st in {x for v in staged.values() for x in v}:
        per_stage[st] = sum(st in v for v in staged.values())
    for (where, fn), gids in sites.items():
        rows = [k for k in ctx.kernels if k["graph"] in gids]
        stages, host, part = staged[(where, fn)], [], {}
        for st in stages or [None]:
            outside = _host_outside(ctx, st)
            if outside is not None:
                idle, out_s = outside
                part[st] = min(idle, out_s) / per_stage.get(st, 1)
                host.append(f"stage {st}: the host spent {out_s * 1e3:.4g} ms outside graphmfu's graph calls, the "
                            f"device idled {idle * 1e3:.4g} ms")
                continue
            calls = max((k["calls"] for k in rows if k["stage"] == st or (st and in_stage(k["stage"], st))),
                        default=0)
            part[st] = calls * ctx.mean_gap(st)
        calls = max((k["calls"] for k in rows), default=0)
        if len(breaks) == 1:
            reason = breaks[0][1]
        elif breaks:
            reason = f"one of {len(breaks)} breaks Dynamo reported; most frequent: {breaks[0][1]}"
        else:
            reason = "Dynamo's reason was not recorded (registry started after the compile)"
        evidence = (f"Dynamo split {fn}() at {where}: the code after it is graph(s) {gids}, called {calls} time(s) "
                    f"in the profile, each call one more return to Python"
                    + (f"; {'; '.join(host)} (the time outside the calls, where the device waited, is what one "
                       f"graph would save)" if host else
                       f" and launch gap (mean gap per kernel in stage {stages[0]}: {us(ctx.mean_gap(stages[0]))})"
                       if stages else ""))
        out.append(Cause("graph_break", where, sum(part.values()), evidence,
                         f"the graph break at {where}: {reason} — remove it from the compiled region or make it "
                         f"traceable (fullgraph=True reports every break)", stages={k: v for k, v in part.items() if k}))
    if not sites:
        for kind, reason, n in breaks:
            out.append(Cause("graph_break", "Dynamo", 0.0, f"{kind} x{n} (no resumed graph in this record, so the "
                             f"line is unknown)", f"the graph break: {reason}"))
    for kind, reason, n in reasons:
        if kind == "fell back to eager":
            out.append(Cause("graph_break", "Dynamo", 0.0, f"a frame fell back to eager x{n}: its ops ran outside "
                             f"every graph (their time is under eager_work)", f"Dynamo gave up: {reason}"))
    return out


def recompilations(ctx: Context) -> list[Cause]:
    out = []
    for frame, ids in alternatives(ctx.record.graphs).items():
        where = frame.rsplit("@", 1)[0]
        out.append(Cause("recompile", where, 0.0,
                         f"{len(ids)} compilations of one code (compile ids {', '.join(ids)}): recompiled for other "
                         f"guards (grad mode, shapes, dtypes); compile time is outside the measured step",
                         "run with TORCH_LOGS=recompiles to see the failing guard; mark a varying dimension dynamic "
                         "(torch.compile(dynamic=True) or Dynamo's mark_dynamic) or keep grad mode fixed"))
    return out


__all__ = ["graph_breaks", "recompilations", "fallbacks"]
