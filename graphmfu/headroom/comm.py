"""Exposed collectives: communication time no compute kernel of the rank overlapped (``Timing.exposed_comm``,
``overlap.exposed``: per stage ``comm_s``, ``exposed_s``, ``compute_s``)."""
from __future__ import annotations

from graphmfu.headroom.evidence import Cause, Context
from graphmfu.render import ms


def exposed_collectives(ctx: Context) -> list[Cause]:
    rows = ctx.record.timing.exposed_comm if ctx.record.timing is not None else []
    top = {s["name"] for s in ctx.stages if s["parent"] is None}
    whole = [r for r in rows if r.get("stage") is None]
    use = whole if whole else [r for r in rows if r.get("stage") in top]
    out = []
    for r in use:
        if r.get("exposed_s", 0) <= 0:
            continue
        where = f"stage {r['stage']}" if r.get("stage") else "whole profile"
        evidence = (f"collectives ran {ms(r['comm_s'])} ms, {ms(r['exposed_s'])} ms of it "
                    f"({r['exposed_s'] / r['comm_s']:.0%}) with no compute kernel running beside it "
                    f"(compute {ms(r.get('compute_s', 0.0))} ms)")
        out.append(Cause("exposed_comm", where, r["exposed_s"], evidence,
                         "overlap communication with compute: FSDP2 prefetching (set_modules_to_forward_prefetch / "
                         "backward prefetch), DDP bucketing (bucket_cap_mb), async tensor parallel, or more compute "
                         "per collective (larger micro-batch)"))
    return out


__all__ = ["exposed_collectives"]
