"""Capture: the ``torch.compile`` backend and ``analyze()``.  Graphs in, node records out.

The backend hands every graph to Inductor through its ``inner_compile`` hook and, after the
post-grad passes, applies the rules to the graph Inductor actually compiles.  ``analyze`` runs
the same rules on graphs traced from fake tensors (nothing allocated, no GPU needed).
If the analysis of a graph fails, graphmfu warns once and the graph still runs, compiled by
plain Inductor: graphmfu never breaks the user's model.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import inspect
import types
from typing import Any, Callable

import torch

from graphmfu import _inductor
from graphmfu.errors import GraphMFUError
from graphmfu.kernels import kernel_map
from graphmfu.nodes import AnalysisError, records_from_graph
from graphmfu.record import GraphRecord
from graphmfu.registry import DEFAULT, Registry


def _size_args(gm) -> list:
    """Where a call's inputs carry each size symbol of a dynamic graph: ``[input index, dim, symbol]``
    (dim None: the input is the size itself), first occurrence of each symbol."""
    return [[i, d, str(expr)] for i, d, expr in _inductor.size_symbols(gm)]


def probes_of(gm) -> list:
    """``[(symbol, hint, fn)]`` a graph pass left on ``gm`` (``_graphmfu_probes``): values evaluated per
    call from the call's real inputs (``fn(inputs) -> int``), e.g. an input-dependent mask's kept pairs."""
    got = getattr(gm, "_graphmfu_probes", None)
    return list(got) if isinstance(got, (list, tuple)) else []


def _graph_device(example_inputs) -> str:
    for x in example_inputs:
        if isinstance(x, torch.Tensor):
            return x.device.type
    return "cpu"


def record_graph(registry: Registry, gm, example_inputs, phase: str, aot_id, source: str,
                 kernel_entries: list | None = None, prefix: str = "", frame: str | None = None,
                 ahead: bool = False) -> GraphRecord | None:
    """Analyse one graph into ``registry``; on failure warn once, record the failure, return None.
    ``prefix``: the module path of the graph's frame in the model (a frame Dynamo started inside a
    submodule after a graph break names modules from there), put before every node's module."""
    gid = registry.next_id()
    tf32 = _inductor.matmul_allows_tf32()  # as it is while this graph compiles, not at report time
    compile_id = _inductor.compile_id()
    try:
        hints = _inductor.shape_hints(example_inputs)
        nodes = records_from_graph(gm, gid, phase, hints, tf32)
        if prefix:
            for r in nodes:
                r.module = f"{prefix}.{r.module}" if r.module else prefix
        kernels = kernel_map(gm, gid, nodes, kernel_entries or [], hints, phase)
        # values read per call besides the sizes (rules/masks.py: the pairs an input-dependent mask
        # keeps), with the value used without a call (dense, or the size-only bound) as their hint
        probe_hints = {name: int(hint) for name, hint, _ in probes_of(gm)}
        g = GraphRecord(gid, registry.key(gid), phase, aot_id, _graph_device(example_inputs), nodes,
                        {**{str(k): int(v) for k, v in hints.items()}, **probe_hints}, source, kernels, tf32,
                        size_args=_size_args(gm) if hints else [], compile_id=compile_id, frame=frame,
                        ahead=ahead)
    except Exception as e:  # noqa: BLE001 - graphmfu never breaks the model
        where = f"{e.node_name} ({e.op})" if isinstance(e, AnalysisError) else "?"
        cause = e.cause if isinstance(e, AnalysisError) else e
        msg = (f"graphmfu: analysis of graph {gid} ({phase}) failed at node {where}: "
               f"{type(cause).__name__}: {cause}. The graph runs as compiled by plain Inductor; it is "
               f"missing from the report.")
        registry.fail(msg)
        op = e.op if isinstance(e, AnalysisError) else "?"
        registry.warn_once(f"analysis:{op}:{type(cause).__name__}", msg)  # each distinct failure once
        return None
    registry.add(g)
    return g


# --------------------------------------------------------------------------- backend


def _mode_config(mode: str | None) -> dict:
    try:
        return _inductor.mode_config(mode)
    except _inductor.UnknownMode as e:
        raise GraphMFUError(str(e)) from None


class Backend:
    """``torch.compile(model, backend=graphmfu.backend)`` or ``backend=graphmfu.backend(mode=...)``.

    Options: ``mode`` (as torch.compile's: default, reduce-overhead, max-autotune...),
    ``options`` (Inductor config patches, as torch.compile's ``options``)."""

    _graphmfu_backend = True  # how a torch.compile wrapper tells graphmfu's backend from another

    def __init__(self, mode: str | None = None, options: dict | None = None, registry: Registry | None = None):
        if options is not None and not isinstance(options, dict):
            raise GraphMFUError(f"graphmfu.backend(options=...) takes a dict of Inductor config, got {options!r}")
        self.config = {**_mode_config(mode), **(options or {})}
        self.registry = registry or DEFAULT

    def __deepcopy__(self, memo):
        """A backend is a handle on its registry: copies (Lightning deep-copies torch.compile's arguments)
        are the same backend, filling the same registry."""
        return self

    def __copy__(self):
        return self

    def __call__(self, gm: torch.fx.GraphModule, example_inputs, **options):
        config = {**self.config, **_mode_config(options.pop("mode", None)), **options.pop("options", {}),
                  **options}
        if _graph_device(example_inputs) == "cpu":  # C++ kernels become visible to the profiler
            config = {**_inductor.kernel_profile_config(), **config}

        def on_graph(post_gm, ex, kw, kernels, compiled):
            phase = "backward" if kw.get("is_backward") else ("inference" if kw.get("is_inference") else "forward")
            here = _inductor.compiling_frame()  # None: a backward compiled lazily, at its first call
            if here is not None:
                code, me, callers = here
                prefix = self.registry.places.prefix(me, callers)
                frame = f"{code}@{id(me):x}" if me is not None else code
                self.registry.frames[kw.get("graph_id")] = (frame, prefix)
            else:
                frame, prefix = self.registry.frames.get(kw.get("graph_id"), (None, ""))
            g = record_graph(self.registry, post_gm, ex, phase, kw.get("graph_id"), "backend", kernels,
                             prefix=prefix, frame=frame, ahead=phase == "backward" and here is not None)
            if g is not None:
                probes = [(name, fn) for name, _, fn in probes_of(post_gm)]
                self.registry.tagger.add(compiled, g.key, g.size_args, probes)

        try:
            return _inductor.compile_with_inner_hook(gm, example_inputs, on_graph, config)
        except _inductor.HookUnavailable as e:
            self.registry.warn_once("hook", f"graphmfu: this torch has no Inductor inner_compile hook ({e}); "
                                            f"compiling with plain Inductor, no report")
            return _inductor.compile_plain(gm, example_inputs, config)


def backend(gm=None, example_inputs=None, **options):
    """The graphmfu torch.compile backend, usable directly or as a factory."""
    if isinstance(gm, torch.fx.GraphModule):
        return Backend()(gm, example_inputs, **options)
    if gm is not None or example_inputs is not None:
        raise GraphMFUError("graphmfu.backend takes the GraphModule torch.compile passes, or keyword options only: "
                            "torch.compile(model, backend=graphmfu.backend) or backend=graphmfu.backend(mode=...)")
    return Backend(**options)


backend._graphmfu_backend = True


# --------------------------------------------------------------------------- analyze


def _check_callable(model_or_fn, args, kwargs) -> str:
    if isinstance(model_or_fn, torch.nn.Module):
        fn, name = model_or_fn.forward, type(model_or_fn).__name__
    elif callable(model_or_fn):
        fn, name = model_or_fn, getattr(model_or_fn, "__name__", type(model_or_fn).__name__)
    else:
        raise GraphMFUError(f"analyze() takes an nn.Module or a function, got {type(model_or_fn).__name__}; "
                            f"pass the model (or a function of tensors) first, then its arguments")
    try:
        inspect.signature(fn).bind(*args, **kwargs)
    except TypeError as e:
        raise GraphMFUError(f"analyze(): {name} rejects these arguments ({e}); pass what {name}(...) accepts "
                            f"after the model: analyze(model, *args, **kwargs)") from None
    except ValueError:
        pass  # no signature (builtins): let the call decide
    return name


class Reach:
    """What a function reaches without its arguments: the modules and tensors in its closure, in
    the globals its code names (and those of the functions it reaches), a bound method's
    ``__self__``, a callable object's attributes.  ``modules``: (path prefix, module) as the compiled
    graph names them (a global keeps its name, a closure's or ``self``'s module is the root);
    ``slots``: the (holder, key) places of bare tensors (a closure cell: key None; a dict: globals
    or an object's ``__dict__``)."""

    def __init__(self, fn, depth: int = 4):
        self.modules: list[tuple[str, torch.nn.Module]] = []
        self.slots: list[tuple] = []
        self.optimizers: list[tuple[str, Any]] = []
        self._seen: set = set()
        self._visit(fn, depth, "")

    def _value(self, value, holder, key, prefix: str, name: str, depth: int) -> None:
        if isinstance(value, torch.nn.Module):
            if id(value) not in self._seen:
                self._seen.add(id(value))
                self.modules.append((prefix, value))
        elif isinstance(value, torch.Tensor):
            if holder is not None:
                self.slots.append((holder, key))
        elif isinstance(value, torch.optim.Optimizer):
            self.optimizers.append((name, value))
        elif depth > 0 and (isinstance(value, (types.FunctionType, types.MethodType, functools.partial))
                            or _plain_object(value)) and not _library(value):
            self._visit(value, depth - 1, prefix)

    def _visit(self, obj, depth: int, prefix: str) -> None:
        if id(obj) in self._seen:
            return
        self._seen.add(id(obj))
        if isinstance(obj, torch.nn.Module):
            self.modules.append((prefix, obj))
        elif isinstance(obj, types.MethodType):
            self._value(obj.__self__, None, None, "", "self", depth)
            self._visit(obj.__func__, depth, "")
        elif isinstance(obj, functools.partial):
            self._visit(obj.func, depth, "")
            for a in (*obj.args, *obj.keywords.values()):
                self._value(a, None, None, "", "argument", depth)
        elif isinstance(obj, types.FunctionType):
            code = obj.__code__
            for var, cell in zip(code.co_freevars, obj.__closure__ or ()):
                try:
                    value = cell.cell_contents
                except ValueError:  # an empty cell
                    continue
                self._value(value, cell, None, "", var, depth)
            g = obj.__globals__
            for var in sorted(_global_names(code)):
                if var in g:
                    self._value(g[var], g, var, var, var, depth)
        elif _plain_object(obj):
            d = vars(obj)
            for var, value in list(d.items()):
                self._value(value, d, var, ".".join(filter(None, (prefix, var))), var, depth)
            call = getattr(type(obj), "__call__", None)
            if isinstance(call, types.FunctionType):
                self._visit(call, depth, "")


def _plain_object(obj) -> bool:
    """A user object whose attributes may hold the model (not a class, module or builtin)."""
    return (hasattr(obj, "__dict__") and not isinstance(obj, (type, types.ModuleType, types.FunctionType,
                                                               types.MethodType, types.BuiltinFunctionType))
            and not type(obj).__module__.startswith(("torch", "builtins", "numpy")))


def _library(obj) -> bool:
    """Code of torch, graphmfu or the standard library: not searched for the user's model."""
    if isinstance(obj, functools.partial):
        obj = obj.func
    mod = getattr(obj, "__module__", None) or type(obj).__module__ or ""
    return mod.split(".")[0] in ("torch", "graphmfu", "builtins", "numpy", "functools")


def _global_names(code) -> set:
    names = set(code.co_names)
    for c in code.co_consts:
        if isinstance(c, types.CodeType):  # nested functions, lambdas, comprehensions
            names |= _global_names(c)
    return names


def _fake_module(model: torch.nn.Module, mode, device) -> torch.nn.Module:
    """A structural copy of ``model`` whose parameters and buffers are fake: nothing copied."""
    memo: dict[int, Any] = {}
    for mod in model.modules():
        params, buffers = _inductor.own_tensors(mod)
        for p in params:
            if p is not None and id(p) not in memo:
                memo[id(p)] = torch.nn.Parameter(_inductor.to_fake(mode, p, device), requires_grad=p.requires_grad)
        for b in buffers:
            if b is not None and id(b) not in memo:
                memo[id(b)] = _inductor.to_fake(mode, b, device)
    return copy.deepcopy(model, memo)


def _fake_tree(obj, mode, device):
    if isinstance(obj, torch.Tensor):
        f = _inductor.to_fake(mode, obj, device)
        return f.requires_grad_(obj.requires_grad) if obj.is_floating_point() else f
    if isinstance(obj, (list, tuple)):
        return type(obj)(_fake_tree(o, mode, device) for o in obj)
    if isinstance(obj, dict):
        return {k: _fake_tree(v, mode, device) for k, v in obj.items()}
    return obj


def _trace_device(device) -> torch.device:
    """Trace on CUDA fakes only when CUDA exists and the target is a CUDA device; else CPU fakes
    (which keep SDPA as one fused node, unlike meta)."""
    if torch.cuda.is_available() and (device is None or (isinstance(device, (str, torch.device))
                                                         and str(device).startswith("cuda"))):
        return torch.device("cuda")
    return torch.device("cpu")


def grad_outputs(out, name: str) -> list[torch.Tensor]:
    """The outputs a training analysis runs backward from (those requiring grad); one clear error if none."""
    outs = _float_outputs(out)
    if not outs:
        raise GraphMFUError(f"analyze(training=True): no output of {name} requires grad; give the "
                            f"model trainable parameters or float inputs with requires_grad=True")
    return outs


def _float_outputs(out) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out] if out.requires_grad else []
    if isinstance(out, (list, tuple)):
        return [t for o in out for t in _float_outputs(o)]
    if isinstance(out, dict):
        return [t for o in out.values() for t in _float_outputs(o)]
    if hasattr(out, "__dataclass_fields__") or hasattr(out, "to_tuple"):
        items = out.to_tuple() if hasattr(out, "to_tuple") else [getattr(out, f) for f in out.__dataclass_fields__]
        return _float_outputs(list(items))
    return []


def _cause(e: BaseException) -> BaseException:
    """The error behind Dynamo's wrappers (TorchRuntimeError -> Unsupported -> the RuntimeError)."""
    seen = set()
    while id(e) not in seen:
        seen.add(id(e))
        wrapper = _inductor.is_dynamo_error(e)  # Dynamo raises its wrappers "from None"
        nxt = e.__cause__ or (e.__context__ if wrapper or not e.__suppress_context__ else None)
        if nxt is None:
            break
        e = nxt
    return e


def _failure(name: str, e: BaseException, kind: str = "fake") -> GraphMFUError:
    """One line naming the real cause and what to check."""
    cause = _cause(e)
    lines = [ln.strip() for ln in str(cause).strip().splitlines() if ln.strip()]
    first = lines[0] if lines else ""
    text = f"{type(cause).__name__} {first}"
    if "FakeTensors first" in text or "allow_non_fake_inputs" in text:
        hint = (f"a real tensor reached the trace that graphmfu did not find in {name}'s closure, globals or "
                f"self: pass it to analyze() as an argument")
    elif any(w in text for w in ("DataDependent", "data-dependent", "item()", "nonzero", "Could not guard",
                                 "Could not extract", "unbacked")):
        hint = (f"{name} reads tensor values (.item(), nonzero, data-dependent control flow), which {kind} "
                f"tensors do not have")
    else:
        hint = f"check that {name}(*args) runs eagerly with these arguments"
    return GraphMFUError(f"analyze(): tracing {name} on {kind} tensors failed: {type(cause).__name__}: "
                         f"{first[:300].rstrip('.')}; {hint}")


def _optimizer_error(name: str, optimizers) -> GraphMFUError:
    var, opt = optimizers[0]
    return GraphMFUError(
        f"analyze(): {name} uses an optimizer ({type(opt).__name__} {var!r}) and analyze() does not trace optimizer "
        f"steps; pass a function that returns the loss instead: analyze(lambda x: model(x).sum(), x, training=True) "
        f"counts the forward and the backward")


def trace(model_or_fn: Callable, args: tuple, kwargs: dict, *, training: bool, device=None) -> Registry:
    """Trace ``model_or_fn(*args, **kwargs)`` on fake tensors into a fresh Registry.

    A module is traced as a fake copy; a function (or bound method) with the modules and tensors it
    reaches (closure, globals, ``self``) made fake for the trace and restored afterwards."""
    name = _check_callable(model_or_fn, args, kwargs)
    mode = _inductor.fake_mode()
    tdev = _trace_device(device)
    if isinstance(model_or_fn, torch.nn.Module):
        target, reach = _fake_module(model_or_fn, mode, tdev), None
    else:
        target, reach = model_or_fn, Reach(model_or_fn)
        if reach.optimizers:
            raise _optimizer_error(name, reach.optimizers)
    fargs, fkwargs = _fake_tree(args, mode, tdev), _fake_tree(kwargs, mode, tdev)
    registry = Registry()

    def on_graph(gm, example_inputs, phase, prefix=""):
        return record_graph(registry, gm, example_inputs, phase, None, "analyze", prefix=prefix)

    swapped = (_inductor.swapped_tensors([m for _, m in reach.modules], lambda t: _fake_tree(t, mode, tdev),
                                         reach.slots)
               if reach is not None else contextlib.nullcontext())
    memo: list = []

    def names() -> dict:  # id(parameter or buffer, as the trace sees it) -> its names in the model (tied: several)
        if memo:
            return memo[0]
        roots = [("", target)] if reach is None else reach.modules
        out: dict = {}
        memo.append(out)
        for root, mod in roots:
            for table in (mod.named_parameters(remove_duplicate=False), mod.named_buffers(remove_duplicate=False)):
                for n, t in table:
                    out.setdefault(id(t), []).append(f"{root}.{n}" if root else n)
        return out

    roots = [("", target)] if reach is None else reach.modules
    outside = _outside_recorder(registry, roots)
    watch = outside if outside is not None else contextlib.nullcontext()
    be = _inductor.analysis_backend(on_graph, names, running=outside.graph if outside is not None else None)
    # no_dynamo_marks: a frame whose compile fails here must not stay marked "skip" for later analyses of
    # the same classes (they would run it eagerly) nor for the user's own torch.compile
    with _inductor.fresh_dynamo(), _inductor.no_dynamo_marks(), swapped:
        # static shapes: the cost of exactly these shapes, even after the same code compiled with others
        compiled = torch.compile(target, backend=be, dynamic=False)
        try:
            # inside the fake mode: tensors the model creates (arange, ones, masks) are fake too
            with torch.set_grad_enabled(training), mode, watch:
                out = compiled(*fargs, **fkwargs)
            if training:
                outs = grad_outputs(out, name)
                with mode, watch:
                    with outside.paused() if outside is not None else contextlib.nullcontext():
                        grads = [torch.ones_like(o) for o in outs]
                    torch.autograd.backward(outs, grads)
        except GraphMFUError:
            raise
        except Exception as e:  # noqa: BLE001 - one clear line instead of a Dynamo traceback
            raise _failure(name, e) from None
    if outside is not None:
        _report_outside(registry, outside, tdev.type)
    return registry


def _outside_recorder(registry: Registry, roots):
    """The recorder of ops an analysis runs outside its compiled graphs (eager.OutsideGraphs), with the
    analysed modules' paths; None where this torch cannot keep a dispatch mode out of Dynamo's way."""
    if not _inductor.ignores_compile_internals():
        return None
    from graphmfu.cost import ensure_builtin_rules
    from graphmfu.eager import OutsideGraphs

    ensure_builtin_rules()
    paths: dict = {}
    for root, mod in roots:
        for n, m in mod.named_modules(remove_duplicate=False):
            paths.setdefault(id(m), ".".join(p for p in (root, n) if p))
    return OutsideGraphs(-1, _inductor.matmul_allows_tf32(), paths)  # numbered if it is kept


def _call_copy(registry: Registry, g: GraphRecord, first: str, here: str) -> GraphRecord:
    """Another call of graph ``g`` in module ``here`` (its first call ran in ``first``): a copy under a new id
    and key whose module paths under ``first`` move under ``here`` (layer 0's graph run by layer 1)."""
    def moved(path: str) -> str:
        if first and (path == first or path.startswith(first + ".")):
            return here + path[len(first):]
        return path
    gid = registry.next_id()
    return dataclasses.replace(
        g.renumbered(gid), key=registry.key(gid),
        nodes=[dataclasses.replace(n, graph=gid, module=moved(n.module)) for n in g.nodes],
        kernels=[dataclasses.replace(k, graph=gid, module=moved(k.module)) for k in g.kernels])


def _report_outside(registry: Registry, outside, device: str) -> None:
    """Ops with work that ran outside the compiled graphs: recorded as one eager graph (op by op, so the
    totals hold them) and named in the failures, never dropped silently.  Glue alone (views and detaches
    of AOTAutograd's wrappers, no FLOPs) is not worth a line and is dropped."""
    for g, paths in outside.reused():
        copies = [_call_copy(registry, g, paths[0], here) for here in paths[1:]]
        for c in copies:
            registry.add(c)
        flops = sum(int(n.cost.flops) for n in g.nodes if n.cost is not None)
        msg = (f"graphmfu: graph {g.id} ({g.phase}) ran {len(paths)} times in the analysed call (Dynamo compiled its "
               f"frame once and ran it again, e.g. each layer calling a frame a graph break split out): each call is "
               f"counted, the others as graph(s) {[c.id for c in copies]} ({(len(paths) - 1) * flops:,} FLOPs) with "
               f"their own module paths ({', '.join(sorted(set(paths))[:4])}{', ...' if len(set(paths)) > 4 else ''})")
        registry.note(msg)
    if outside.failure is not None:
        msg = (f"graphmfu: ops ran outside the compiled graphs and one could not be costed ({outside.failure}); "
               f"they are missing from the report")
        registry.fail(msg)
        registry.warn_once("outside:failure", msg)
        return
    if not outside.significant():
        return
    g = outside.to_graph(registry, device)
    registry.add(g)
    msg = (f"graphmfu: ran outside the compiled graphs, eagerly (frames Dynamo skipped or fell back on, e.g. "
           f"after an earlier failed compile of the same code): {outside.summary()}. Counted op by op (no fusion) "
           f"as eager graph {g.id}; {_inductor.RESET_DYNAMO} clears the marks of earlier failures.")
    registry.fail(msg)
    registry.warn_once("outside", msg)
