"""Capture: the ``torch.compile`` backend and ``analyze()``.  Graphs in, node records out.

The backend hands every graph to Inductor through its ``inner_compile`` hook and, after the
post-grad passes, applies the rules to the graph Inductor actually compiles.  ``analyze`` runs
the same rules on graphs traced from fake tensors (nothing allocated, no GPU needed).
If the analysis of a graph fails, graphmfu warns once and the graph still runs, compiled by
plain Inductor: graphmfu never breaks the user's model.
"""
from __future__ import annotations

import copy
import inspect
from typing import Any, Callable

import torch

from graphmfu import _inductor
from graphmfu.errors import GraphMFUError
from graphmfu.kernels import kernel_map
from graphmfu.nodes import AnalysisError, records_from_graph
from graphmfu.record import GraphRecord
from graphmfu.registry import DEFAULT, Registry


def _graph_device(example_inputs) -> str:
    for x in example_inputs:
        if isinstance(x, torch.Tensor):
            return x.device.type
    return "cpu"


def record_graph(registry: Registry, gm, example_inputs, phase: str, aot_id, source: str,
                 kernel_entries: list | None = None) -> GraphRecord | None:
    """Analyse one graph into ``registry``; on failure warn once, record the failure, return None."""
    gid = registry.next_id()
    tf32 = _inductor.matmul_allows_tf32()  # as it is while this graph compiles, not at report time
    compile_id = _inductor.compile_id()
    try:
        hints = _inductor.shape_hints(example_inputs)
        nodes = records_from_graph(gm, gid, phase, hints, tf32)
        kernels = kernel_map(gm, gid, nodes, kernel_entries or [], hints, phase)
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
    g = GraphRecord(gid, registry.key(gid), phase, aot_id, _graph_device(example_inputs), nodes,
                    {str(k): int(v) for k, v in hints.items()}, source, kernels, tf32, compile_id=compile_id)
    registry.add(g)
    return g


# --------------------------------------------------------------------------- backend


class Backend:
    """``torch.compile(model, backend=graphmfu.backend)`` or ``backend=graphmfu.backend(mode=...)``.

    Options: ``mode`` (as torch.compile's: default, reduce-overhead, max-autotune...),
    ``options`` (Inductor config patches, as torch.compile's ``options``)."""

    def __init__(self, mode: str | None = None, options: dict | None = None, registry: Registry | None = None):
        if options is not None and not isinstance(options, dict):
            raise GraphMFUError(f"graphmfu.backend(options=...) takes a dict of Inductor config, got {options!r}")
        self.config = {**_inductor.mode_config(mode), **(options or {})}
        self.registry = registry or DEFAULT

    def __call__(self, gm: torch.fx.GraphModule, example_inputs, **options):
        config = {**self.config, **_inductor.mode_config(options.pop("mode", None)), **options.pop("options", {}),
                  **options}
        if _graph_device(example_inputs) == "cpu":  # C++ kernels become visible to the profiler
            config = {**_inductor.kernel_profile_config(), **config}

        def on_graph(post_gm, ex, kw, kernels, compiled):
            phase = "backward" if kw.get("is_backward") else ("inference" if kw.get("is_inference") else "forward")
            g = record_graph(self.registry, post_gm, ex, phase, kw.get("graph_id"), "backend", kernels)
            if g is not None:
                self.registry.tagger.add(compiled, g.key)

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


def trace(model_or_fn: Callable, args: tuple, kwargs: dict, *, training: bool, device=None) -> Registry:
    """Trace ``model_or_fn(*args, **kwargs)`` on fake tensors into a fresh Registry."""
    name = _check_callable(model_or_fn, args, kwargs)
    mode = _inductor.fake_mode()
    tdev = _trace_device(device)
    target = _fake_module(model_or_fn, mode, tdev) if isinstance(model_or_fn, torch.nn.Module) else model_or_fn
    fargs, fkwargs = _fake_tree(args, mode, tdev), _fake_tree(kwargs, mode, tdev)
    registry = Registry()

    def on_graph(gm, example_inputs, phase):
        record_graph(registry, gm, example_inputs, phase, None, "analyze")

    be = _inductor.analysis_backend(on_graph)
    with _inductor.fresh_dynamo():
        # static shapes: the cost of exactly these shapes, even after the same code compiled with others
        compiled = torch.compile(target, backend=be, dynamic=False)
        try:
            # inside the fake mode: tensors the model creates (arange, ones, masks) are fake too
            with torch.set_grad_enabled(training), mode:
                out = compiled(*fargs, **fkwargs)
            if training:
                outs = _float_outputs(out)
                if not outs:
                    raise GraphMFUError(f"analyze(training=True): no output of {name} requires grad; give the "
                                        f"model trainable parameters or float inputs with requires_grad=True")
                with mode:
                    torch.autograd.backward(outs, [torch.ones_like(o) for o in outs])
        except GraphMFUError:
            raise
        except Exception as e:  # noqa: BLE001 - one clear line instead of a Dynamo traceback
            while e.__cause__ is not None:  # Dynamo wraps the real error (BackendCompilerFailed ...)
                e = e.__cause__
            first = str(e).strip().splitlines()[0] if str(e).strip() else ""
            raise GraphMFUError(f"analyze(): tracing {name} on fake tensors failed: {type(e).__name__}: "
                                f"{first[:300]}. Check that {name}(*args) runs eagerly with these arguments and "
                                f"does not read tensor values (.item(), nonzero, data-dependent control flow)"
                                ) from None
    return registry
