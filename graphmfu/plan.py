"""Planning at scale: ``analyze(..., fast=True)``.

The model runs once, op by op, on meta tensors (nothing allocated, nothing computed) under the
eager recorder (``eager.Recorder``): the ATen ops below autograd (``aten.mm``, not the post-grad
nodes of a compiled graph), costed by the same rules, attributed to modules by the same module
tracker and autograd-node tagger.  No Dynamo and no AOTAutograd, so the time is about
FlopCounterMode's; costs and shape strings are memoized per (op, input and output specs), so
repeated layers cost only their per-op bookkeeping.

What differs from the compiled analysis: ops are eager ATen ops (no Inductor decompositions, so
more, smaller nodes: views, ``t``, ``detach``), vector FLOPs and bytes are those of these ops.
Matrix FLOPs are the same (the same GEMM, SDPA and conv rules on the same shapes):
``F.scaled_dot_product_attention`` runs the fused CPU op the compiled analysis sees
(``_inductor.CpuAttention``), not meta's math decomposition.
"""
from __future__ import annotations

import torch

from graphmfu import _inductor
from graphmfu.capture import Reach, _check_callable, _failure, grad_outputs, _optimizer_error, _trace_device
from graphmfu.cost import ensure_builtin_rules
from graphmfu.eager import Recorder
from graphmfu.errors import GraphMFUError
from graphmfu.record import GraphRecord
from graphmfu.registry import Registry


def _meta_tree(obj):
    if isinstance(obj, torch.Tensor):
        return _inductor.to_meta(obj)
    if isinstance(obj, (list, tuple)):
        return type(obj)(_meta_tree(o) for o in obj)
    if isinstance(obj, dict):
        return {k: _meta_tree(v) for k, v in obj.items()}
    return obj


def plan(model_or_fn, args: tuple, kwargs: dict, *, training: bool, device=None) -> Registry:
    """Record ``model_or_fn(*args, **kwargs)`` (and with ``training`` the backward of ones through
    its outputs that require grad) on meta tensors into a fresh Registry: one graph per phase
    (inference, or forward and backward), source ``analyze``.  The model's (or the function's
    closure's, globals', ``self``'s) parameters and buffers are meta for the run and restored after."""
    ensure_builtin_rules()
    name = _check_callable(model_or_fn, args, kwargs)
    if isinstance(model_or_fn, torch.nn.Module):
        roots, slots = [("", model_or_fn)], []
    else:
        reach = Reach(model_or_fn)
        if reach.optimizers:
            raise _optimizer_error(name, reach.optimizers)
        roots, slots = reach.modules, reach.slots
    registry = Registry()
    margs, mkwargs = _meta_tree(args), _meta_tree(kwargs)
    tf32 = _inductor.matmul_allows_tf32()
    with _inductor.swapped_tensors([m for _, m in roots], _inductor.to_meta, slots), torch.device("meta"), \
            _inductor.CpuAttention(), _inductor.named_module_tracker(roots) as tracker:
        tagger = _inductor.ModuleTagger(tracker)
        rec = Recorder(tracker, tagger, 0, tf32)
        try:
            with torch.set_grad_enabled(training):
                with tagger, rec:
                    out = model_or_fn(*margs, **mkwargs)
                if training:
                    outs = grad_outputs(out, name)
                    grads = [torch.ones_like(o) for o in outs]  # the seed is not the model's work
                    with tagger, rec:
                        torch.autograd.backward(outs, grads)
        except GraphMFUError:
            raise
        except Exception as e:  # noqa: BLE001 - one clear line
            raise _failure(name, e, "meta") from None
    if rec.failure is not None:
        msg = f"graphmfu: analysis (fast) of {name} failed at {rec.failure}; it is missing from the report."
        registry.fail(msg)
        registry.warn_once("analysis", msg)
        return registry
    dev = _trace_device(device).type
    phases = ("forward", "backward") if training else ("inference",)
    for phase in phases:
        ops = [op for op in rec.ops if (op.phase == "backward") == (phase == "backward")]
        if not ops and phase != "inference":
            continue
        gid = registry.next_id()
        for i, op in enumerate(ops):
            op.graph, op.index, op.name, op.phase = gid, i, f"e{i}", phase
        registry.add(GraphRecord(gid, registry.key(gid), phase, None, dev, ops, {}, "analyze", [], tf32))
    return registry


__all__ = ["plan"]
