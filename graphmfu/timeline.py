"""A stage occurrence's launch timeline: what the profile measured (collected once, by the join), and its
replay with other kernel times (derived at view time, by ``predict``).

Stored per occurrence (``Timing.timelines[stage]``, microseconds from the occurrence's first kernel start):
``{"lead_us": the span's part before that start, "launches": [[launch, start, end, graph, kernel], ...]}`` in
device order; ``graph``/``kernel`` None for a kernel outside graphmfu's graphs.  ``launch`` is the CPU time of
the op that launched the kernel, on the profiler's clock.  An occurrence whose kernels overlap by more than
``OVERLAP_US`` (several streams) keeps ``"overlapped": True`` and no launches: a serial replay would not describe
it (a kernel that starts a little before the previous one ends, as Hopper's programmatic dependent launch lets
it, is replayed with that overlap kept).

Replay: a kernel cannot start before the host launched it, nor before the previous kernel ended:

    ready_i  = launch_i + delta      delta = min_i (start_i - launch_i): launch latency and clock offset
    wait_i   = start_i - max(ready_i, end_{<i})      (the device's own gap the model does not explain; below 0
                                                       where a kernel started before the previous one ended)
    start'_i = max(ready_i, end'_{<i}) + wait_i       end'_i = start'_i + (end_i - start_i) x ratio_i
    (end_{<i}: the latest end before kernel i)

With every ratio 1 the replay is the measured timeline.  Shorter kernels on a host-paced stage leave it as
long as the host's launches (the idle grows); longer ones fill the gaps before they lengthen it.  The host's
own times are kept: a host that waits for the device (a sync) would move with it, which is not modelled.
"""
from __future__ import annotations

from typing import Callable

OVERLAP_US = 2.0  # kernels overlapping by more than this: concurrent streams, no serial replay
MAX_LAUNCHES = 200_000  # per profile: beyond this the timelines are not kept (predict falls back, and says so)


def occurrence(kernels: list, lead_us: float) -> dict:
    """The stored timeline of one stage occurrence from its measured kernels (``join.Measured``)."""
    ks = sorted(kernels, key=lambda m: m.start_us)
    t0 = ks[0].start_us
    hi = ks[0].end_us
    for m in ks[1:]:
        if m.start_us < hi - OVERLAP_US:
            break
        hi = max(hi, m.end_us)
    else:
        hi = None
    if hi is not None:
        return {"lead_us": round(lead_us, 3), "overlapped": True}
    return {"lead_us": round(lead_us, 3),
            "launches": [[round(m.launch_start_us - t0, 3), round(m.start_us - t0, 3), round(m.end_us - t0, 3),
                          m.graph, m.kernel] for m in ks]}


def replay(occ: dict, ratio: Callable[[int | None, int | None], float]) -> tuple[float, float] | None:
    """(span, busy) in microseconds of the occurrence with each kernel's time times ``ratio(graph, kernel)``;
    None when it cannot be replayed (overlapping kernels, none kept)."""
    launches = occ.get("launches")
    if not launches:
        return None
    delta = min(s - launch for launch, s, _e, _g, _k in launches)
    end = end2 = None
    busy = 0.0
    for launch, s, e, g, k in launches:
        ready = launch + delta
        wait = s - (ready if end is None else max(ready, end))
        start2 = (ready if end2 is None else max(ready, end2)) + wait
        d = (e - s) * ratio(g, k)
        end = e if end is None else max(end, e)
        end2 = start2 + d if end2 is None else max(end2, start2 + d)
        busy += d
    return occ["lead_us"] + end2, busy


__all__ = ["occurrence", "replay", "MAX_LAUNCHES"]
