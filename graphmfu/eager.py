"""The eager producer: a model run op by op, recorded into the same record as compiled graphs.

``record(model, fn, stage, registry)`` runs ``fn()`` once under a ``TorchDispatchMode`` that sees
every ATen op below autograd (``aten.mm``, not ``aten.linear``), applies the same rules as the
compiled capture (``nodes.apply_rule``) to its real shapes and dtypes, and takes the module from a
module tracker (forward) or the autograd node that runs the op (backward).  The recording is one
``GraphRecord`` (source ``eager``, ``stage`` = the stage it is a call of) whose kernels are its ops,
one each: an eager op is its own launch site.  The profiler join (``join.py``) then matches each
occurrence of the stage to it like any graph call.  As for compiled graphs, a rule that fails drops
the recording (listed in coverage.graphs_failed); the model's run is never affected.
"""
from __future__ import annotations

from graphmfu import _inductor
from graphmfu.cost import ZERO, ensure_builtin_rules, event_name, op_name, tensors
from graphmfu.nodes import shapes, spec_of
from graphmfu.record import GraphRecord, KernelRecord, OpRecord
from graphmfu.registry import Registry


def _spec(x):
    if isinstance(x, dict):
        return {k: _spec(v) for k, v in x.items()}
    return spec_of(x)


class Recorder(_inductor.dispatch_mode_base()):
    """Records every ATen op (with its cost and module) that runs while it is active."""

    def __init__(self, tracker, tagger, gid: int, tf32: bool):
        super().__init__()
        self.tracker, self.tagger, self.gid, self.tf32 = tracker, tagger, gid, tf32
        self.ops: list[OpRecord] = []
        self.failure: str | None = None
        self.last_bw_module = ""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        self.ops.append(self._record(func, args, kwargs, out))
        return out

    def _record(self, func, args, kwargs, out) -> OpRecord:
        from graphmfu.nodes import apply_rule, op_flags

        name = op_name(func)
        sargs, skw, sout = _spec(tuple(args)), _spec(kwargs), _spec(out)
        cost, note = None, ""
        if not tensors(sout):
            cost, note = ZERO, "no tensor output: no work counted"
        else:
            try:
                cost = apply_rule(func, sargs, skw, sout, self.tf32)
            except Exception as e:  # noqa: BLE001 - recorded as the recording's failure, the run goes on
                if self.failure is None:
                    self.failure = f"op e{len(self.ops)} ({name}): {type(e).__name__}: {e}"
        in_bw, module = self.tagger.backward_module()
        if module is None:
            module = self.last_bw_module if in_bw else _inductor.tracked_module(self.tracker)
        if in_bw:
            self.last_bw_module = module
        rec = OpRecord(graph=self.gid, phase="backward" if in_bw else "forward", index=len(self.ops),
                       name=f"e{len(self.ops)}", op=name, module=module, inputs=shapes((sargs, skw)),
                       outputs=shapes(sout), cost=cost, note=note)
        for flag in op_flags(func):
            rec.flag(flag)
        return rec


def record(model, fn, stage: str, registry: Registry, device: str) -> GraphRecord | None:
    """Run ``fn()`` once with the recorder and a module tracker over ``model``; its ops become one
    graph of ``registry`` (None, with the failure listed, when a rule failed)."""
    ensure_builtin_rules()
    gid = registry.next_id()
    with _inductor.module_tracker(model) as tracker:
        tagger = _inductor.ModuleTagger(tracker)
        rec = Recorder(tracker, tagger, gid, _inductor.matmul_allows_tf32())
        with tagger, rec:
            fn()
    if rec.failure is not None:
        msg = (f"graphmfu: analysis of the eager recording of stage {stage!r} failed at {rec.failure}. The model "
               f"ran unchanged; the recording is missing from the report.")
        registry.fail(msg)
        registry.warn_once("analysis", msg)
        return None
    kernels = [KernelRecord(graph=gid, index=op.index, name=op.op, site=event_name(op.op), extern=True, nodes=[op.name],
                            module=op.module, phase=op.phase, cost=op.cost if op.cost is not None else ZERO,
                            bytes_nodes=op.cost.bytes if op.cost is not None else 0) for op in rec.ops]
    g = GraphRecord(gid, registry.key(gid), "eager", None, device, rec.ops, {}, "eager", kernels, rec.tf32, stage)
    registry.add(g)
    return g


__all__ = ["Recorder", "record"]
