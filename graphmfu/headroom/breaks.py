"""Causes Dynamo leaves in the record: graph breaks (with Dynamo's reason and where) and recompilations.

* The reason is Dynamo's own, as the registry noted it (``Registry.fallbacks()`` -> the record's note
  ``Dynamo could not compile everything ... — graph break x1: <reason>; ...``).
* Where: after a break Dynamo compiles the rest of the function as ``torch_dynamo_resume_in_<fn>_at_<line>``;
  the graph compiled from it records that frame (``GraphRecord.frame``), so the break is at ``file:line``.
* Time: each call of a resumed graph adds at least one launch gap (the graph before the break returns to
  Python, the resumed one is launched after it): lost_s = the resumed graph's calls x the mean gap per kernel
  of the stage it ran in.  A frame Dynamo gave up on entirely runs eagerly: its time is in ``eager_work``.
* Recompilations (one code compiled for several guards, ``derive.alternatives``) cost compile time, which
  the profile leaves out of the step: lost_s 0, listed so it is seen.
"""
from __future__ import annotations

from graphmfu.derive import alternatives, in_stage
from graphmfu.headroom.evidence import Cause, Context, frame_site, us
from graphmfu.registry import fallbacks_noted

def _gap_per_kernel(ctx: Context, stage: str | None) -> float:
    s = next((x for x in ctx.stages if x["name"] == stage), None)
    if not s or not s["kernel_launches"]:
        return 0.0
    return max(s["span_s"] - s["busy_s"], 0.0) / s["kernel_launches"]


def graph_breaks(ctx: Context) -> list[Cause]:
    reasons = fallbacks_noted(ctx.record.notes)
    breaks = [r for r in reasons if r[0] == "graph break"]
    sites: dict = {}
    for g in ctx.record.graphs:
        site = frame_site(g.frame)
        if site is not None:
            sites.setdefault(site, []).append(g.id)
    out = []
    for (where, fn), gids in sites.items():
        rows = [k for k in ctx.kernels if k["graph"] in gids]
        lost, stages = 0.0, sorted({k["stage"] for k in rows if k["stage"]})
        for st in stages or [None]:
            calls = max((k["calls"] for k in rows if k["stage"] == st or (st and in_stage(k["stage"], st))),
                        default=0)
            lost += calls * _gap_per_kernel(ctx, st)
        calls = max((k["calls"] for k in rows), default=0)
        if len(breaks) == 1:
            reason = breaks[0][1]
        elif breaks:
            reason = f"one of {len(breaks)} breaks Dynamo reported; most frequent: {breaks[0][1]}"
        else:
            reason = "Dynamo's reason was not recorded (registry started after the compile)"
        evidence = (f"Dynamo split {fn}() at {where}: the code after it is graph(s) {gids}, called {calls} time(s) "
                    f"in the profile, each call one more return to Python and launch gap"
                    + (f" (mean gap per kernel in stage {stages[0]}: {us(_gap_per_kernel(ctx, stages[0]))})"
                       if stages else ""))
        out.append(Cause("graph_break", where, lost, evidence,
                         f"the graph break at {where}: {reason} — remove it from the compiled region or make it "
                         f"traceable (fullgraph=True reports every break)"))
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
