"""The eager producer: a model run op by op, recorded into the same record as compiled graphs.

``record(model, fn, stage, registry)`` runs ``fn()`` once under a ``TorchDispatchMode`` that sees
every ATen op below autograd (``aten.mm``, not ``aten.linear``), applies the same rules as the
compiled capture (``nodes.apply_rule``) to its real shapes and dtypes, and takes the module from a
module tracker (forward) or the autograd node that runs the op (backward).  The recording is one
``GraphRecord`` (source ``eager``, ``stage`` = the stage it is a call of) whose kernels are its ops,
one each: an eager op is its own launch site.  A collective (``c10d.allreduce_``...) also gets its
``comm`` (bus bytes, group) from rules/collectives.py.  The profiler join (``join.py``) then matches each
occurrence of the stage to it like any graph call.  As for compiled graphs, a rule that fails drops
the recording (listed in coverage.graphs_failed); the model's run is never affected.
"""
from __future__ import annotations

import torch

from graphmfu import _inductor
from graphmfu.cost import REGISTRY, ZERO, ensure_builtin_rules, event_name, nbytes, op_name, tensors
from graphmfu.nodes import shapes, spec_of
from graphmfu.record import GraphRecord, KernelRecord, OpRecord
from graphmfu.registry import Registry


def _spec(x):
    if isinstance(x, dict):
        return {k: _spec(v) for k, v in x.items()}
    return spec_of(x)


class Recorder(_inductor.dispatch_mode_base()):
    """Records every ATen op (with its cost and module) that runs while it is active.

    What an op costs and its shape strings depend only on the op and the shapes and dtypes of its
    inputs and outputs: they are computed once per such signature (repeated layers cost nothing
    extra); only the module and the phase are looked up per op."""

    def __init__(self, tracker, tagger, gid: int, tf32: bool):
        super().__init__()
        self.tracker, self.tagger, self.gid, self.tf32 = tracker, tagger, gid, tf32
        self.ops: list[OpRecord] = []
        self.failure: str | None = None
        self.last_bw_module = ""
        self._memo: dict = {}
        self._collectives = _collectives()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        self.ops.append(self._record(func, args, kwargs, out))
        return out

    def _describe(self, func, args, kwargs, out) -> tuple:
        """(name, cost, note, inputs, outputs, output bytes, flags) of one op, memoized."""
        try:
            key = (func, _key(args), _key(kwargs), _key(out))
            hit = self._memo.get(key)
        except TypeError:  # something unhashable among the arguments: no memo for this op
            key, hit = None, None
        if hit is not None:
            return hit
        from graphmfu.nodes import apply_rule, op_flags

        name = op_name(func)
        sargs, skw, sout = _spec(tuple(args)), _spec(kwargs), _spec(out)
        cost, note, ok = None, "", True
        if not tensors(sout) and isinstance(skw, dict) and tensors(skw.get("out")):  # results written into out=
            sout, skw = skw["out"], {k: v for k, v in skw.items() if k != "out"}
        if not tensors(sout) and not (self._collectives is not None and self._collectives.is_collective(func)):
            cost, note = ZERO, "no tensor output: no work counted"
        else:
            try:
                cost = apply_rule(func, sargs, skw, sout, self.tf32)
            except Exception as e:  # noqa: BLE001 - recorded as the recording's failure, the run goes on
                ok = False
                if self.failure is None:
                    self.failure = f"op e{len(self.ops)} ({name}): {type(e).__name__}: {e}"
        out_bytes = nbytes(sout)
        hit = (name, cost, note, shapes((sargs, skw)), shapes(sout), out_bytes if isinstance(out_bytes, int) else 0,
               op_flags(func))
        if key is not None and ok:
            self._memo[key] = hit
        return hit

    def _record(self, func, args, kwargs, out) -> OpRecord:
        name, cost, note, inputs, outputs, out_bytes, flags = self._describe(func, args, kwargs, out)
        refine = REGISTRY.info(func).values
        if refine is not None and cost is not None:  # from real values, not memoized: a mask's kept pairs
            try:
                cost, more = refine(args, kwargs, cost)
                flags = [*flags, *more]
            except Exception as e:  # noqa: BLE001 - as a failing rule: the recording's failure
                if self.failure is None:
                    self.failure = f"op e{len(self.ops)} ({name}): {type(e).__name__}: {e}"
        in_bw, module = self.tagger.backward_module()
        if module is None:
            module = self.last_bw_module if in_bw else _inductor.tracked_module(self.tracker)
        if in_bw:
            self.last_bw_module = module
        n = len(self.ops)
        rec = OpRecord(graph=self.gid, phase="backward" if in_bw else "forward", index=n, name=f"e{n}", op=name,
                       module=module, inputs=inputs, outputs=outputs, cost=cost, output_bytes=out_bytes, note=note)
        for flag in flags:
            rec.flag(flag)
        coll = self._collectives
        if coll is not None and coll.is_collective(func):  # what it sends: rules/collectives.py
            try:
                coll.attach(rec, coll.comm_of(func, [_spec(a) for a in args]))
            except Exception as e:  # noqa: BLE001 - as a failing rule: the recording's failure
                if self.failure is None:
                    self.failure = f"op e{n} ({name}): {type(e).__name__}: {e}"
        return rec


def _collectives():
    """The collectives rule file (rules/collectives.py, loaded with the rules), or None without it."""
    import sys

    ensure_builtin_rules()
    mod = sys.modules.get("graphmfu.rules.collectives")
    if mod is not None:
        mod.register_library_ops()  # FSDP2's ops, once torch.distributed.fsdp is imported
    return mod


_PLAIN = (int, float, bool, str, type(None), torch.dtype, torch.device, torch.layout, torch.memory_format)


def _key(x):
    """A hashable summary of an op's argument: what the rules see (shapes, dtypes, plain values)."""
    if isinstance(x, torch.Tensor):
        return (tuple(x.shape), x.dtype)
    if isinstance(x, _PLAIN):
        return (type(x), x)  # 1 and True and 1.0 are different arguments
    if isinstance(x, (list, tuple)):
        return (type(x), tuple(_key(v) for v in x))
    if isinstance(x, dict):
        return tuple((k, _key(v)) for k, v in x.items())
    raise TypeError(type(x).__name__)  # SymInts, opaque objects: not memoized


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
        registry.warn_once(f"analysis:eager:{rec.failure.split(':')[0]}", msg)
        return None
    kernels = [KernelRecord(graph=gid, index=op.index, name=op.op, site=event_name(op.op), extern=True, nodes=[op.name],
                            module=op.module, phase=op.phase, cost=op.cost if op.cost is not None else ZERO,
                            bytes_nodes=op.cost.bytes if op.cost is not None else 0) for op in rec.ops]
    g = GraphRecord(gid, registry.key(gid), "eager", None, device, rec.ops, {}, "eager", kernels, rec.tf32, stage)
    registry.add(g)
    return g


__all__ = ["Recorder", "record"]
