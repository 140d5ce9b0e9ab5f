"""A stage occurrence's launch timeline: what the profile measured (collected once, by the join), and its
replay with other kernel times (derived at view time, by ``predict``).

Stored per occurrence (``Timing.timelines[stage]``; microseconds from the occurrence's first kernel start):

    {"lead_us":  the span's part before that start,       "span_us", "busy_us": as measured,
     "stages":   the innermost stage names its launches ran in,
     "launches": [[launch, start, end, graph, kernel, stage index], ...] in device order,
     "syncs":    host calls inside it that wait for the device (cudaStreamSynchronize, ...: a tensor's .item()),
     "overlapped": true when kernels overlap by more than OVERLAP_US (several streams),
     "compiling": true when a compile ran inside its span}

``launch`` is the CPU time of the op that launched the kernel (profiler clock); ``graph``/``kernel`` None for a
kernel outside graphmfu's graphs.

Replay: a kernel cannot start before the host launched it, nor before the previous kernel ended:

    ready_i  = launch_i + delta      delta = min_i (start_i - launch_i): launch latency and clock offset
    wait_i   = start_i - max(ready_i, end_{<i})   the device's own gap the model does not explain (below 0 where
                                                  a kernel started a little before the previous one ended)
    start'_i = max(ready_i, max(ready_i, end'_{<i}) + wait_i)       end'_i = start'_i + (end_i - start_i) x ratio_i
    (end_{<i}: the latest end before kernel i)

A launch made while ``QUEUED`` or more earlier kernels had not finished has no ready time: the host was far
ahead, and its launch time may be the device's (a full launch queue blocks the host until a kernel ends).  With
every ratio 1 the replay is the measured timeline.  Shorter kernels on a host-paced stage leave it as long as
the host's launches (the idle grows); longer ones fill the gaps before they lengthen it.

An occurrence the replay does not describe — kernels on several streams, a compile inside, a host that waited
for the device (its later launches would move with the device) — is carried as before: its idle time kept, its
busy time scaled by its kernels' predicted / measured time (``additive``).
"""
from __future__ import annotations

import bisect
from typing import Callable

OVERLAP_US = 2.0  # kernels overlapping by more than this: concurrent streams, no serial replay
QUEUED = 64  # earlier kernels still unfinished at a launch from which the host counts as running ahead
MAX_LAUNCHES = 200_000  # per profile: beyond this no timelines are kept (predict says so)
SYNCS = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize", "cudaMemcpy", "cudaMemcpy2D")

Ratio = Callable[[int | None, int | None, str | None], float]  # (graph, kernel, stage) -> predicted / measured


def occurrence(kernels: list, lead_us: float, span_us: float, busy_us: float, syncs: int = 0,
               compiling: bool = False) -> dict:
    """The stored timeline of one stage occurrence from its measured kernels (``join.Measured``)."""
    ks = sorted(kernels, key=lambda m: m.start_us)
    occ: dict = {"lead_us": round(lead_us, 3), "span_us": round(span_us, 3), "busy_us": round(busy_us, 3)}
    if not ks:
        return {**occ, "stages": [], "launches": []}
    t0 = ks[0].start_us
    names = sorted({m.stage for m in ks if m.stage})
    index = {n: i for i, n in enumerate(names)}
    occ["stages"] = names
    occ["launches"] = [[round(m.launch_start_us - t0, 3), round(m.start_us - t0, 3), round(m.end_us - t0, 3),
                        m.graph, m.kernel, index.get(m.stage)] for m in ks]
    hi = ks[0].end_us
    for m in ks[1:]:
        if m.start_us < hi - OVERLAP_US:
            occ["overlapped"] = True
            break
        hi = max(hi, m.end_us)
    if syncs:
        occ["syncs"] = syncs
    if compiling:
        occ["compiling"] = True
    return occ


def why_not(occ: dict) -> str | None:
    """Why ``occ`` is carried additively rather than replayed (None: it is replayed)."""
    if occ.get("overlapped"):
        return "kernels on several streams"
    if occ.get("compiling"):
        return "a compile inside"
    if occ.get("syncs"):
        return "the host waited for the device"
    return None


def _scaled(occ: dict, ratio: Ratio) -> list:
    names = occ.get("stages", [])
    return [(e - s) * ratio(g, k, names[i] if i is not None else None) for _l, s, e, g, k, i in occ["launches"]]


def additive(occ: dict, ratio: Ratio) -> tuple[float, float]:
    """(span, busy) in microseconds: the occurrence's idle time kept, its busy time scaled by its kernels'
    predicted / measured time."""
    measured = sum(e - s for _l, s, e, *_ in occ["launches"])
    new = sum(_scaled(occ, ratio))
    busy = occ["busy_us"] * (new / measured) if measured else occ["busy_us"]
    return occ["span_us"] - occ["busy_us"] + busy, busy


def replay(occ: dict, ratio: Ratio) -> tuple[float, float]:
    """(span, busy) in microseconds of the occurrence with each kernel's time times ``ratio(graph, kernel,
    stage)``: the replay above, or ``additive`` where ``why_not`` says so."""
    launches = occ["launches"]
    if not launches:
        return 0.0, 0.0
    if why_not(occ):
        return additive(occ, ratio)
    durations = _scaled(occ, ratio)
    delta = min(s - launch for launch, s, *_ in launches)
    ends: list = []  # the latest measured end so far, per kernel (non-decreasing)
    end = end2 = launches[0][1]  # the first kernel starts where it did: nothing before it to wait for
    busy = 0.0
    for (launch, s, e, *_), d in zip(launches, durations):
        ahead = len(ends) - bisect.bisect_right(ends, launch + delta)  # earlier kernels unfinished at the launch
        ready = launch + delta if ahead < QUEUED else float("-inf")
        wait = s - max(ready, end)
        start2 = max(ready, max(ready, end2) + wait)
        end = max(end, e)
        ends.append(end)
        busy += max(0.0, start2 + d - max(start2, end2))  # the union, as measured busy
        end2 = max(end2, start2 + d)
    return occ["lead_us"] + end2, busy


__all__ = ["occurrence", "replay", "additive", "why_not", "MAX_LAUNCHES", "SYNCS", "QUEUED", "OVERLAP_US"]
