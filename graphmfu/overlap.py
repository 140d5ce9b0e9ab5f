"""Exposed communication: collective kernel time that no compute kernel of the same rank overlaps.

Pure functions over measured intervals (no profiler, no device).  A kernel is communication when
its name says so (``is_comm``: NCCL's ``ncclDevKernel_*``/``ncclKernel_*`` on GPUs; on a CPU run, the
c10d / functional-collective op events and gloo's ``gloo:*`` events); every other kernel is compute.
Per stage (a kernel belongs to the innermost stage whose CPU range holds its launch, and rolls up into
the enclosing stages, as in join.py):

    comm_s    = |union of the stage's comm kernel intervals|
    compute_s = |union of its compute kernel intervals|
    exposed_s = |comm union minus compute union|   (communication the rank waited for)

``exposed_s <= comm_s`` always; a fully overlapped all-gather (FSDP2 prefetch) has exposed 0.
Row ``stage`` None is the whole trace.  ``exposed(traces)`` sums rows over traces (each trace in its
own time base) and is what ``Timing.exposed_comm`` stores.
"""
from __future__ import annotations

import re

COMM_NAME = re.compile(r"^(nccl|gloo:|c10d::|_c10d_functional::|_c10d_functional_autograd::|"
                       r"record_param_comms)", re.IGNORECASE)


def is_comm(name: str) -> bool:
    """Whether a kernel (or CPU kernel event) is a collective's."""
    return bool(COMM_NAME.match(name or ""))


def union(intervals) -> list[tuple[float, float]]:
    """The union of [start, end] intervals as sorted disjoint intervals."""
    out: list[list[float]] = []
    for s, e in sorted((float(s), float(e)) for s, e in intervals if e > s):
        if out and s <= out[-1][1]:
            out[-1][1] = max(out[-1][1], e)
        else:
            out.append([s, e])
    return [(s, e) for s, e in out]


def length(intervals) -> float:
    return sum(e - s for s, e in union(intervals))


def minus(a, b) -> float:
    """Length of union(a) not covered by union(b)."""
    ua, ub = union(a), union(b)
    total, j = 0.0, 0
    for s, e in ua:
        cur = s
        while j < len(ub) and ub[j][1] <= cur:
            j += 1
        k = j
        while k < len(ub) and ub[k][0] < e:
            if ub[k][0] > cur:
                total += ub[k][0] - cur
            cur = max(cur, ub[k][1])
            k += 1
        if cur < e:
            total += e - cur
    return total


def _in_stage(stage: str | None, name: str | None) -> bool:
    return name is None or (bool(stage) and (stage == name or stage.startswith(name + "/")))


def stage_exposure(kernels, stage_names) -> list[dict]:
    """``kernels``: (name, start_us, end_us, stage) of one trace; one row per stage (None: all)."""
    rows = []
    for name in [None, *sorted(set(stage_names))]:
        mine = [k for k in kernels if _in_stage(k[3], name)]
        comm = [(k[1], k[2]) for k in mine if is_comm(k[0])]
        compute = [(k[1], k[2]) for k in mine if not is_comm(k[0])]
        rows.append({"stage": name, "comm_s": length(comm) * 1e-6, "compute_s": length(compute) * 1e-6,
                     "exposed_s": minus(comm, compute) * 1e-6, "comm_kernels": len(comm)})
    return rows


def _stage_of(t_us: float, stages) -> str | None:
    """The innermost stage whose CPU range holds ``t_us`` (join.stage_of's rule)."""
    best = None
    for s in stages:
        if s["start_us"] <= t_us <= s["end_us"] and (best is None or s["end_us"] - s["start_us"]
                                                      < best["end_us"] - best["start_us"]):
            best = s
    return best["name"] if best else None


def exposed(traces) -> list[dict]:
    """Per-stage exposed communication summed over ``traces``: each ``(measured, stage ranges)`` as
    ``ProfileSession`` keeps them (``join.Measured`` with ``.stage`` set, ``{"name", ...}`` ranges)."""
    total: dict = {}
    for measured, stages in traces:
        ks = [(m.name, m.start_us, m.end_us, m.stage if m.stage is not None else _stage_of(m.launch_start_us, stages))
              for m in measured]
        for r in stage_exposure(ks, [s["name"] for s in stages]):
            t = total.setdefault(r["stage"], {"stage": r["stage"], "comm_s": 0.0, "compute_s": 0.0, "exposed_s": 0.0,
                                              "comm_kernels": 0})
            for k in ("comm_s", "compute_s", "exposed_s", "comm_kernels"):
                t[k] += r[k]
    return list(total.values())


FSDP_EAGER_NOTE = ("FSDP2 ran (its FSDP:: profiler ranges are in the trace) but no compiled graph was called: torch "
                   "ran the model eagerly. Compile each block before fully_shard (torchtitan: "
                   "torch.compile(block, backend=graphmfu.backend, fullgraph=True)), or record it eagerly "
                   "(graphmfu.compare); see docs/distributed.md")


def fsdp_eager_note(event_names, graph_calls: int) -> str | None:
    """The note a profile needs when FSDP2 ran but no compiled graph did (torch ran eagerly)."""
    if graph_calls:
        return None
    return FSDP_EAGER_NOTE if any(n.startswith("FSDP::") for n in event_names) else None


def _op_names(m) -> set:
    """The profiler names of a measured kernel, the op that launched it and that op's enclosing ops."""
    names, e = {m.name, m.launch_op}, m.op
    while e is not None:
        names.add(e.name)
        e = getattr(e, "cpu_parent", None)
    return names


def outside_comm_note(measured, recorded=()) -> str | None:
    """The note a profile needs when collectives ran outside every recorded graph (DDP's bucketed gradient
    all-reduce, FSDP2's eager all-gathers, a user's ``dist.all_reduce``): their time is measured here (the
    exposed-communication rows) but no record holds their size, so their bus bytes are not counted.
    ``measured``: ``join.Measured`` kernels with ``where`` set; ``recorded``: the profiler names of the
    collective ops the record holds (``OpRecord.event``; an eager recording that did not join is not noted)."""
    counts: dict = {}
    recorded = set(recorded)
    for m in measured:
        if m.where == "outside graphs" and is_comm(m.name) and not (_op_names(m) & recorded):
            counts[m.name] = counts.get(m.name, 0) + 1
    if not counts:
        return None
    top = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    listed = ", ".join(f"{name} x{n}" for name, n in top[:4]) + (", ..." if len(top) > 4 else "")
    return (f"{sum(counts.values())} collective call(s) ran outside graphmfu's graphs ({listed}): their time is "
            f"measured (exposed communication) but their bus bytes are not in this record; DDP's gradient all-reduce: "
            f"graphmfu.ddp.watch(ddp_model); FSDP2's collectives: an eager recording (docs/distributed.md)")


__all__ = ["fsdp_eager_note", "outside_comm_note", "FSDP_EAGER_NOTE", "is_comm", "union", "length", "minus",
           "stage_exposure", "exposed"]
