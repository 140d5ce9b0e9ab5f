"""Where the time above the roofline comes from: every cause detector over one timed report, ranked.

``causes(data, record, device)`` gathers the views once (``evidence.Context``) and runs each detector; a
detector returns ``Cause``\\ s (kind, where, lost_s, evidence with numbers, one action) or nothing.  The
list is ranked by ``lost_s``; causes may overlap, so their lost times do not add up to the headroom.
"""
from __future__ import annotations

from graphmfu.headroom.attention import dense_attention
from graphmfu.headroom.breaks import graph_breaks, recompilations
from graphmfu.headroom.chains import unfused_chains
from graphmfu.headroom.comm import exposed_collectives
from graphmfu.headroom.evidence import Cause, Context
from graphmfu.headroom.gemm import small_gemms, tf32_off, tile_padding
from graphmfu.headroom.launch import eager_work, launch_gaps
from graphmfu.headroom.ranking import step_s
from graphmfu.render import Section

DETECTORS = (launch_gaps, eager_work, graph_breaks, recompilations, tile_padding, unfused_chains, tf32_off,
             small_gemms, dense_attention, exposed_collectives)


def _ncu_rows(ncu) -> dict:
    """An NcuTable (``graphmfu.ncu.join``) or its rows, by (graph, kernel index)."""
    rows = getattr(ncu, "rows", ncu) or []
    return {(r["graph"], r["index"]): r for r in rows}


def causes(data: dict, record, device, ncu=None, detectors=DETECTORS) -> list[Cause]:
    ctx = Context(data, record, device, step_s(data, record.timing.unattributed), _ncu_rows(ncu))
    out = [c for d in detectors for c in d(ctx)]
    host_share(ctx, out)
    for c in out:
        c.share_of_step = c.lost_s / ctx.step_s if ctx.step_s else None
    return sorted(out, key=lambda c: -c.lost_s)


def host_share(ctx: Context, found: list[Cause]) -> None:
    """A stage's launch gaps are the host's time; part of it is the host running eager ops and returning to
    Python at graph breaks, causes listed on their own.  Each eager kernel launch is given the stage's mean
    gap per kernel (added to its ``eager_work``), and a break's estimate (already gaps) is taken out of the
    stage's ``launch_bound`` too: ``launch_bound`` keeps the gaps no other listed cause explains."""
    from graphmfu.headroom.launch import eager_launches

    bound = {c.where[len("stage "):]: c for c in found if c.kind == "launch_bound"}
    for name, lb in bound.items():
        s = ctx.stage(name)
        if not s or not s["kernel_launches"]:
            continue
        gap = ctx.mean_gap(name)
        moved = []
        n = eager_launches(ctx, name)
        eager = next((c for c in found if c.kind == "eager_work" and c.where == f"stage {name.split('/', 1)[0]}"),
                     None)
        if n and eager is not None:
            eager.lost_s += n * gap
            eager.evidence += f"; and the host's gaps around their {n} launches, {n * gap * 1e3:.4g} ms at the stage's mean gap"
            moved.append(f"{n * gap * 1e3:.4g} ms around eager launches (eager_work)")
            lb.lost_s -= n * gap
        for c in found:
            part = c.stages.get(name, 0.0) if c.kind == "graph_break" else 0.0
            if part:  # the break's gaps in this stage (a break in another stage takes none of these)
                moved.append(f"{part * 1e3:.4g} ms at the graph break {c.where} (graph_break)")
                lb.lost_s -= part
        if moved:
            lb.lost_s = max(lb.lost_s, 0.0)
            lb.evidence += "; of the gaps, " + " and ".join(moved) + " are listed under those causes"


def section(found: list[Cause], top: int | None = 10) -> Section:
    shown = found[:top] if top else found
    more = [f"... and {len(found) - len(shown)} more (Report.causes())"] if len(found) > len(shown) else []
    return Section("causes (ranked by estimated lost time; they can overlap)",
                   lines=[c.line() for c in shown] + more if found else ["no cause found"])


__all__ = ["causes", "section", "host_share", "DETECTORS", "Cause"]
