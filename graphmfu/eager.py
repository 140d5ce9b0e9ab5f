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

import contextlib
import dataclasses

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
    g = _graph(rec, registry, device, stage)
    registry.add(g)
    return g


def _graph(rec: Recorder, registry: Registry, device: str, stage: str | None) -> GraphRecord:
    """A recorder's ops as one eager graph: one kernel per op (an eager op is its own launch site)."""
    gid = rec.gid
    kernels = [KernelRecord(graph=gid, index=op.index, name=op.op, site=event_name(op.op), extern=True, nodes=[op.name],
                            module=op.module, phase=op.phase, cost=op.cost if op.cost is not None else ZERO,
                            bytes_nodes=op.cost.bytes if op.cost is not None else 0) for op in rec.ops]
    return GraphRecord(gid, registry.key(gid), "eager", None, device, rec.ops, {}, "eager", kernels, rec.tf32, stage)


# --------------------------------------------------------------------------- ops an analysis ran outside its graphs


class _StackModules:
    """A module tracker for code Dynamo runs: no hooks (Dynamo would trace them), the modules whose
    ``forward`` frames are on the Python stack now (``self`` of a frame, named from the analysed model)."""

    _graphmfu_seeded = True

    def __init__(self, names: dict):
        self.names = names  # id(module) -> path

    @property
    def parents(self) -> set:
        import sys

        out, f = set(), sys._getframe(1)
        while f is not None:
            me = f.f_locals.get("self") if "self" in f.f_code.co_varnames[:1] else None
            if isinstance(me, torch.nn.Module) and id(me) in self.names:
                out.add(self.names[id(me)])
            f = f.f_back
        return out


class _AutogradPhase:
    """The phase of an op from the autograd node running it; no module for backward ops (an analysis cannot
    tag eager autograd nodes without a function mode, which Dynamo would trace)."""

    @staticmethod
    def backward_module():
        return _inductor.current_autograd_node() is not None, None


_DEVICE = getattr(getattr(torch.ops.prim, "device", None), "default", None)


class OutsideGraphs(Recorder):
    """During ``analyze()``: records the ops that run under the analysis's fake mode while none of its
    compiled graphs runs and nothing is being compiled.  Those are the frames Dynamo did not compile
    (marked "skip" by an earlier failed compile of the same code, or falling back after one) and the glue
    between graphs (AOTAutograd's output views).  Not recorded: the autograd engine summing the gradients of
    a tensor two graphs used (it runs under a compiled backward's node, the compiled model does it too).

    ``ignore_compile_internals``: off while Dynamo and AOTAutograd trace (their fake ops are not the
    model's), and it does not make Dynamo skip frames as a plain dispatch mode would.  The analysis's
    compiled graphs run inside ``graph()``; graphmfu's own ops inside ``paused()``."""

    def __init__(self, gid: int, tf32: bool, names: dict):
        super().__init__(_StackModules(names), _AutogradPhase(), gid, tf32)
        self.inside = 0
        self.graph_nodes: set = set()  # the autograd nodes that ran a compiled backward graph
        self.calls: dict = {}  # id(graph) -> [graph, [module path of each call]]: graphs Dynamo reuses run
        # more than once (the innermost analysed module running the call: each layer its own)

    @classmethod
    def ignore_compile_internals(cls) -> bool:
        return True

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        # fake tensors answer ``.device`` through dispatch: not work.  Under the autograd node of a compiled
        # backward but outside its graph: the engine summing that graph's gradients with another's (a tensor
        # or parameter used by two graphs), glue the compiled model runs too, not a skipped frame
        if self.inside or func is _DEVICE or (self.graph_nodes and _inductor.current_autograd_node() in self.graph_nodes):
            return func(*args, **(kwargs or {}))
        return super().__torch_dispatch__(func, types, args, kwargs)

    @contextlib.contextmanager
    def graph(self, graph=None):
        """An analysis graph (``graph``: its record, None when its analysis failed) runs: its ops are
        counted from the graph."""
        node = _inductor.current_autograd_node()
        if node is not None:
            with contextlib.suppress(TypeError):
                self.graph_nodes.add(node)
        if graph is not None:
            here = max(self.tracker.parents, key=lambda p: (p.count(".") + 1 if p else 0, len(p)), default="")
            self.calls.setdefault(id(graph), [graph, []])[1].append(here)
        with self.paused():
            yield

    @contextlib.contextmanager
    def paused(self):
        """graphmfu's own ops (or a graph's): not recorded."""
        self.inside += 1
        try:
            yield
        finally:
            self.inside -= 1

    def reused(self) -> list[tuple]:
        """[(graph record, [module path of each call])] of the graphs that ran more than once in the analysed
        call: Dynamo compiled a frame once and ran it again (each layer calling a frame that a graph break
        split out)."""
        return [(g, paths) for g, paths in self.calls.values() if len(paths) > 1]

    def significant(self) -> list[OpRecord]:
        """The ops with work the graphs miss: FLOPs (matmuls, convolutions, attention) or vector FLOPs
        (elementwise math), or no rule (a custom op's cost is unknown); views, copies and factories of
        glue are not."""
        return [op for op in self.ops if op.cost is None or op.cost.flops or op.cost.vector_flops]

    def to_graph(self, registry: Registry, device: str) -> GraphRecord:
        """The ops as one eager graph of ``registry``, numbered after its compiled graphs."""
        self.gid = registry.next_id()
        self.ops = [dataclasses.replace(op, graph=self.gid) for op in self.ops]
        return _graph(self, registry, device, None)

    def summary(self) -> str:
        """``4 aten.mm.default, 2 aten.add.Tensor; 1,536 FLOPs in modules b, c`` over the significant ops."""
        from collections import Counter

        ops = self.significant()
        counts = Counter(op.op for op in ops)
        flops = sum(int(op.cost.flops) for op in ops if op.cost is not None)
        vector = sum(int(op.cost.vector_flops) for op in ops if op.cost is not None)
        unknown = sum(1 for op in ops if op.cost is None)
        mods = sorted({op.module for op in ops if op.module})
        parts = [", ".join(f"{n} {op}" for op, n in counts.most_common(8)) + (", ..." if len(counts) > 8 else ""),
                 f"{flops:,} FLOPs" + (f", {vector:,} vector FLOPs" if vector else "")
                 + (f" plus {unknown} op(s) with no rule" if unknown else "")]
        where = f" in module(s) {', '.join(mods[:6])}{', ...' if len(mods) > 6 else ''}" if mods else ""
        return f"{parts[0]}; {parts[1]}{where}"


__all__ = ["Recorder", "record", "OutsideGraphs"]
