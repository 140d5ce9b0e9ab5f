"""Eager capture: the same model run op by op, every eager kernel attributed to its ATen op,
module and stage, with the same cost rules as the compiled graphs.

Two steps, so the recorder's Python overhead never lands in the timed iterations:

1. **record** (one call per stage, outside the profiler): a ``TorchDispatchMode`` sees every ATen op
   below autograd (``aten.mm``, not ``aten.linear``), applies the rule of that op to its real
   shapes and dtypes, and takes the module from a module tracker (forward and backward);
2. **join** (the timed iterations, under a plain ``torch.profiler``): inside each occurrence of a
   stage the profiler's ``aten::`` events are matched, in order, to that stage's recorded ops by op
   name, skipping events nested in the previous match (the recorded op's own internals) and
   composite ops the recorder never sees (``aten::linear`` around ``aten::mm``).  A GPU kernel
   belongs to the recorded op that encloses its launch (CUPTI correlation); on CPU the matched op
   events are the kernels.  Whatever cannot be matched is listed, never dropped.
"""
from __future__ import annotations

import dataclasses
import re

from torch.utils._python_dispatch import TorchDispatchMode

from graphmfu import _inductor
from graphmfu.cost import REGISTRY, Cost, tensors
from graphmfu.nodes import spec_of
from graphmfu.timing import Measured, _ancestors, cpu_events, gpu_kernels, stage_ranges

EAGER = -1  # Measured.graph of a kernel joined to a recorded eager op
# ops that launch nothing on their own (metadata, views, allocation, composite wrappers that return
# their input unchanged or do their work in a child op): not kernels on CPU
_NO_KERNEL = re.compile(r"^aten::(to|type_as|contiguous|flatten|view_as|expand_as|reshape_as|empty|empty_strided|empty_like|as_strided|view|_unsafe_view|reshape|resize_|"
                        r"set_|detach|alias|_reshape_alias|lift_fresh|unsqueeze|squeeze|t|permute|transpose|expand|"
                        r"slice|select|split|split_with_sizes|unbind|chunk|narrow|unfold|diagonal|_fused_sdp_choice|"
                        r"is_same_size|sym_size|sym_numel|sym_stride|_has_compatible_shallow_copy_type)$")
_SCAN = 256  # how far past the last match an op may be looked for in one stage occurrence


@dataclasses.dataclass
class EagerOp:
    index: int  # position in the whole recording (all stages)
    stage: str  # the compare stage it was recorded in
    position: int  # position within its stage's call
    op: str  # aten.mm.default
    event: str  # aten::mm (the profiler's name)
    module: str
    phase: str  # forward | backward
    cost: Cost | None  # None: no rule
    inputs: list
    outputs: list
    note: str = ""

    @property
    def known(self) -> bool:
        return self.cost is not None


def _spec(x):
    if isinstance(x, dict):
        return {k: _spec(v) for k, v in x.items()}
    return spec_of(x)


class Recorder(TorchDispatchMode):
    """Records every ATen op (with its cost and module) that runs while it is active."""

    def __init__(self, tracker, stage: str, start: int):
        super().__init__()
        self.tracker, self.stage, self.start = tracker, stage, start
        self.ops: list[EagerOp] = []
        self.last_bw_module = ""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        self.ops.append(self._record(func, args, kwargs, out))
        return out

    def _record(self, func, args, kwargs, out) -> EagerOp:
        from graphmfu.cost import op_name
        from graphmfu.nodes import _shapes

        name = op_name(func)
        sargs, skw, sout = _spec(tuple(args)), _spec(kwargs), _spec(out)
        cost, note = None, ""
        if not tensors(sout):
            cost, note = Cost(), "no tensor output: no work counted"
        else:
            r = REGISTRY.lookup(func)
            if r is not None:
                try:
                    cost = r(*sargs, out=sout, **skw)
                except Exception as e:  # noqa: BLE001 - one op uncounted, listed in coverage
                    note = f"rule failed: {type(e).__name__}: {e}"
        in_bw, module = _inductor.backward_module(self.tracker)
        if module is None:
            module = self.last_bw_module if in_bw else _inductor.tracked_module(self.tracker)
        if in_bw:
            self.last_bw_module = module
        phase = "backward" if in_bw else "forward"
        return EagerOp(index=self.start + len(self.ops), stage=self.stage, position=len(self.ops), op=name,
                       event=func._schema.name, module=module, phase=phase, cost=cost,
                       inputs=_shapes((sargs, skw)), outputs=_shapes(sout), note=note)


def record(model, fn, stage: str, start: int = 0) -> list[EagerOp]:
    """Run ``fn()`` once with the recorder and a module tracker over ``model``; its ops, in order."""
    from graphmfu.cost import ensure_builtin_rules

    ensure_builtin_rules()
    with _inductor.module_tracker(model) as tracker:
        rec = Recorder(tracker, stage, start)
        with _inductor.ModuleTagger(tracker), rec:
            fn()
    return rec.ops


# --------------------------------------------------------------------------- join


def _match(events, ops, occurrence: int) -> dict:
    """Ordered match of profiler ``aten::`` events (sorted by start) to recorded ops: id(event) -> op."""
    out = {}
    pos, busy_until = 0, float("-inf")
    for op in ops:
        j = pos
        while j < len(events) and j < pos + _SCAN:
            e = events[j]
            if e.time_range.start >= busy_until and e.name == op.event:
                out[id(e)] = (e, op, occurrence)
                busy_until, pos = e.time_range.end, j + 1
                break
            j += 1
    return out


def join(prof, ops: list[EagerOp], cuda: bool) -> tuple[list[Measured], list[dict], list[str]]:
    """Join the measured kernels of an eager profile to the recorded ``ops``.
    Returns (measured, stage ranges, notes) like ``timing.join``."""
    events = cpu_events(prof)
    by_stage: dict[str, list[EagerOp]] = {}
    for op in ops:
        by_stage.setdefault(op.stage, []).append(op)
    stages = stage_ranges(events)
    aten = sorted((e for e in events if e.name.startswith("aten::")), key=lambda e: e.time_range.start)
    matched: dict[int, tuple] = {}
    notes: list[str] = []
    for k, occ in enumerate(sorted((s for s in stages if s["name"] in by_stage), key=lambda s: s["start_us"])):
        inside = [e for e in aten if occ["start_us"] <= e.time_range.start <= occ["end_us"]]
        m = _match(inside, by_stage[occ["name"]], k)
        missed = len(by_stage[occ["name"]]) - len(m)
        if missed:
            note = (f"eager stage {occ['name']!r}: {missed} recorded op(s) not found in the profile "
                    f"(the op sequence changed between the recorded and the timed call)")
            if note not in notes:
                notes.append(note)
        matched.update(m)
    measured: list[Measured] = gpu_kernels(prof, events) if cuda else []
    for mm in measured:  # a GPU kernel belongs to the recorded op enclosing its launch
        mm.where = "eager"
        for a in ([mm.op, *_ancestors(mm.op)] if mm.op is not None else []):
            hit = matched.get(id(a))
            if hit is not None:
                mm.graph, mm.kernel, mm.call, mm.how = EAGER, hit[1].index, hit[2], "op"
                break
        if not measured:
            notes.append("no GPU kernels were measured in the eager profile")
    if not cuda or not measured:  # CPU: the matched op events are the kernels, timed on the CPU
        has_match_below, emitted = set(), set()
        for e, *_ in matched.values():
            has_match_below.update(id(a) for a in _ancestors(e))
        for e in aten:
            hit = matched.get(id(e))
            if hit is not None:
                if not _NO_KERNEL.match(e.name):
                    measured.append(Measured(e.name, e.time_range.start, e.time_range.end, e.name,
                                             e.time_range.start, graph=EAGER, kernel=hit[1].index, call=hit[2], how="op",
                                             where="eager", op=e))
            elif _NO_KERNEL.match(e.name) or id(e) in has_match_below or \
                    any(id(a) in matched or id(a) in emitted for a in _ancestors(e)):
                continue
            else:  # an op the recording did not see (or could not match): timed, listed, unattributed
                emitted.add(id(e))
                measured.append(Measured(e.name, e.time_range.start, e.time_range.end, e.name, e.time_range.start,
                                         where="eager", op=e))
    return measured, stages, notes


# --------------------------------------------------------------------------- report sections


def sections(ops: list[EagerOp], measured: list[Measured], stages: list[dict], dev) -> dict:
    """Kernel rows (one per recorded op and stage, the eager analogue of a compiled kernel), module
    times, stage rows and time coverage of an eager profile; fields as in the compiled report."""
    from graphmfu.report import _kernel_sum, _module_tree, _rate, stage_sections
    from graphmfu.roofline import matrix_time_s, place
    from graphmfu.timing import stage_of

    rows: dict = {}
    other: dict = {}
    total = attributed = 0.0
    for m in measured:
        m.stage = stage_of(m, stages)
        total += m.time_s
        if m.graph is None:
            o = other.setdefault((m.name, m.launch_op), {"name": m.name, "where": "eager", "launch_op": m.launch_op,
                                                         "count": 0, "time_s": 0.0})
            o["count"] += 1
            o["time_s"] += m.time_s
            continue
        attributed += m.time_s
        r = rows.setdefault((m.kernel, m.stage), {"time_s": 0.0, "calls": set(), "gpu": [], "launches": 0})
        r["time_s"] += m.time_s
        r["launches"] += 1
        r["calls"].add(m.call)
        if m.name not in r["gpu"]:
            r["gpu"].append(m.name)
    kernels = []
    for (idx, st), r in rows.items():
        op = ops[idx]
        c = op.cost or Cost()
        p = place(c, dev)
        n, t = len(r["calls"]), r["time_s"]
        t_matrix = matrix_time_s(c, dev) * n
        kernels.append({"name": op.op, "op": op.op, "index": idx, "position": op.position, "module": op.module,
                        "phase": op.phase, "stage": st, "calls": n, "launches": r["launches"], "gpu_kernels": r["gpu"], "known": op.known,
                        "flops": c.flops * n, "flops_dense": c.flops_dense * n, "vector_flops": c.vector_flops * n,
                        "bytes": c.bytes * n, "time_s": t, "t_min_s": p.t_min_s * n, "t_matrix_s": t_matrix,
                        "bound": p.bound if op.known else "unknown",
                        "achieved_tflops": _rate(c.flops * n, t * 1e12), "achieved_gbps": _rate(c.bytes * n, t * 1e9),
                        "mfu": _rate(t_matrix, t), "mbu": _rate(c.bytes * n / (dev.dram_gbps * 1e9), t),
                        "sol": _rate(p.t_min_s * n, t)})
    kernels.sort(key=lambda r: -r["time_s"])
    return {"kernels": kernels, "module_times": _module_tree(kernels, lambda rs: _kernel_sum(rs, dev.dram_gbps)),
            "stages": stage_sections(kernels, measured, stages, dev),
            "time_attributed": attributed / total if total else 0.0, "device_kernel_time_s": total,
            "unattributed_kernels": sorted(other.values(), key=lambda o: -o["time_s"])}


__all__ = ["EAGER", "EagerOp", "Recorder", "record", "join", "sections"]
