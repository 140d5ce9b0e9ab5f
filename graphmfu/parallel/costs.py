"""Per-layer costs from ``analyze(fast=True)``'s per-op record of the probe model (graphmfu/plan.py, meta tensors).

The probe (``model.py``: one layer per kind, plus embedding, head and loss) runs one training microbatch
(``microbatch_size`` x ``seq`` tokens, forward and the backward of its loss) under the eager recorder; every op
keeps its rule's cost.  Here each op is sorted into

* a layer kind (``model.layers.<i>`` of the probe) or the first / last pipeline stage (ops before the first
  layer in the forward, after it in the backward: embedding, rotary tables; and the final norm, head and loss);
* a class: ``attention`` (SDPA's fused ops, products flagged ``attention_matmul``, or batched products of an
  attention module itself), ``gemm`` (every other op with matrix FLOPs) or ``vector``;
* sharded or not: ops inside attention / MLP / expert modules are split over tensor-parallel ranks always;
  norms and residual adds between them only with sequence parallelism.

A second forward of the probe on meta, under ``saved_tensors_hooks``, sums the bytes of the tensors autograd
keeps for the backward (each storage once, parameters excluded) per layer kind: the activation memory of one
layer and one microbatch.  Attention runs as the fused op the fast analysis counts, so no score matrix is saved.
"""
from __future__ import annotations

import dataclasses
import time

import torch

from graphmfu import _inductor
from graphmfu.errors import GraphMFUError
from graphmfu.parallel.model import ModelShape, layer_index
from graphmfu.plan import plan

_SHARDED = ("attn", "attention", "mlp", "experts", "moe", "feed_forward", "ffn")
_ATTN_MODULES = ("self_attn", "attn", "attention", "self_attention")


@dataclasses.dataclass(frozen=True)
class OpCost:
    """One op of the record, as the plan divides it over ranks."""
    phase: str  # forward | backward
    cls: str  # gemm | attention | vector
    flops: int  # matrix FLOPs counted (attention: the pairs the causal mask keeps)
    flops_dense: int  # every score counted (PaLM's 6N + 12LHQT convention, the Llama 3 paper's)
    vector_flops: int
    bytes: int  # read + written
    expert_bytes: int  # of which routed-expert-shaped tensors (split over ep, not over tp*cp)
    sharded: bool  # inside attention/MLP/experts: split over tp (else only with sequence parallelism)
    dtype: str  # the matrix operands' dtype (the peak it runs at)


@dataclasses.dataclass
class Costs:
    shape: ModelShape
    seq: int
    microbatch_size: int
    layer: dict  # kind -> [OpCost] of one layer, one microbatch (whole: before any division)
    first: list  # ops of the first pipeline stage outside the layers (embedding, rotary tables)
    last: list  # ops of the last stage outside the layers (final norm, head, loss)
    saved: dict  # kind -> activation bytes autograd keeps for one layer and one microbatch
    saved_sharded: dict  # kind -> of which in tensor-parallel modules (the rest: norms/residuals)
    saved_last: int  # the head's and loss's saved activations (last stage)
    seconds: float  # time of the analysis

    def total(self, what: str, kind: str | None = None, phase: str | None = None) -> int:
        """Sum of ``what`` (flops, flops_dense, vector_flops, bytes) over one layer of ``kind`` (None: the whole
        model, layers times their counts plus the outside ops), one microbatch."""
        def s(ops):
            return sum(getattr(o, what) for o in ops if phase is None or o.phase == phase)
        if kind is not None:
            return s(self.layer[kind])
        return sum(s(self.layer[k]) for k in self.shape.kinds) + s(self.first) + s(self.last)


def _nbytes(spec) -> int:
    shape, dtype = spec
    n = 1
    for d in shape:
        n *= int(d)
    return n * torch.empty((), dtype=getattr(torch, str(dtype).replace("torch.", ""))).element_size()


def _classify(op, shape: ModelShape) -> OpCost:
    c = op.cost
    flops, dense = int(c.flops), int(c.flops_dense)
    last = (op.module or "").rsplit(".", 1)[-1]
    attention = flops > 0 and ("scaled_dot_product" in op.op or "flash_attention" in op.op
                               or "efficient_attention" in op.op or "attention_matmul" in op.flags
                               or (flops != dense) or ("bmm" in op.op and last in _ATTN_MODULES))
    cls = "attention" if attention else ("gemm" if flops else "vector")
    if cls == "attention" and "scaled_dot_product" in op.op and shape.v_head_dim < shape.qk_head_dim:
        # values zero-padded to the key width (model.PadValues): the products with V counted d_k wide, not d_v
        fix = (shape.qk_head_dim + shape.v_head_dim) / (2 * shape.qk_head_dim)
        flops, dense = round(flops * fix), round(dense * fix)
    tail = (op.module or "").split(".")
    idx = layer_index(op.module)
    inner = tail[tail.index(str(idx)) + 1:] if idx is not None and str(idx) in tail else []
    sharded = any(any(s in part for s in _SHARDED) for part in inner)
    expert = 0
    moved = int(c.bytes_read + c.bytes_written)
    if shape.experts and moved:
        for spec in list(op.inputs) + list(op.outputs):
            if len(spec[0]) == 3 and int(spec[0][0]) == shape.experts:
                expert += _nbytes(spec)
        expert = min(expert, moved)
    dtype = c.matrix[0][0] if c.matrix else "fp32"
    return OpCost("backward" if op.phase == "backward" else "forward", cls, flops, dense, int(c.vector_flops),
                  moved, expert, sharded, dtype)


def _inputs(shape: ModelShape, seq: int, mbs: int, inputs):
    if inputs is not None:
        return inputs if isinstance(inputs, tuple) else (inputs,)
    ids = torch.zeros(mbs, seq, dtype=torch.long, device="meta")
    return (ids, ids)


def measure(shape: ModelShape, seq: int, microbatch_size: int = 1, device=None, inputs=None) -> Costs:
    """The per-op record of one training microbatch of ``shape``'s probe, sorted per layer kind and stage."""
    t0 = time.perf_counter()
    args = _inputs(shape, seq, microbatch_size, inputs)
    reg = plan(shape.module, args, {}, training=True, device=device)
    if reg.failures:
        raise GraphMFUError(f"plan_parallel: the analysis of {shape.name} failed: {reg.failures[0]}")
    rec = reg.record()
    kind_of = {i: k for k, i in shape.probe.items()}
    layer: dict = {k: [] for k in shape.probe}
    first, last = [], []
    for g in rec.graphs:
        ops = [op for op in g.nodes if op.cost is not None]
        where = [layer_index(op.module) for op in ops]
        seen = [i for i, w in enumerate(where) if w is not None]
        lo, hi = (seen[0], seen[-1]) if seen else (len(ops), -1)
        backward = g.phase == "backward"
        for i, (op, w) in enumerate(zip(ops, where)):
            oc = _classify(op, shape)
            if w is not None and w in kind_of:
                layer[kind_of[w]].append(oc)
            elif i < lo:
                (last if backward else first).append(oc)
            elif i > hi:
                (first if backward else last).append(oc)
            else:  # between layers, outside any: the first stage's (e.g. a shared rotary table)
                first.append(oc)
    saved, sharded, saved_last = saved_activations(shape, args)
    return Costs(shape, seq, microbatch_size, layer, first, last, saved, sharded, saved_last,
                 time.perf_counter() - t0)


def saved_activations(shape: ModelShape, args) -> tuple[dict, dict, int]:
    """Bytes autograd saves for the backward, per layer kind (and of which in TP-sharded modules), and after
    the last layer (head, loss): one forward of the probe on meta under ``saved_tensors_hooks``."""
    from torch.utils.module_tracker import ModuleTracker

    module = shape.module
    owned = {id(t.untyped_storage()) for t in list(module.parameters()) + list(module.buffers())}
    keep, seen = [], set()
    kind_of = {i: k for k, i in shape.probe.items()}
    out = {k: 0 for k in shape.probe}
    sharded = {k: 0 for k in shape.probe}
    after = [0]
    done = [False]  # the last layer's forward has returned: what is saved now is the head's and the loss's
    tracker = ModuleTracker()

    def pack(t):
        if isinstance(t, torch.Tensor):
            st = t.untyped_storage()
            if id(st) not in owned and id(st) not in seen:
                seen.add(id(st))
                keep.append(st)
                path = max(tracker.parents, key=len, default="")
                w = layer_index(path)
                if w in kind_of:
                    out[kind_of[w]] += st.nbytes()
                    tail = path.split(f".{w}.", 1)[-1] if f".{w}." in path else ""
                    if any(s in tail for s in _SHARDED):
                        sharded[kind_of[w]] += st.nbytes()
                elif done[0]:
                    after[0] += st.nbytes()
        return t

    def mark(*_):
        done[0] = True

    stack = _stack(module)
    hooks = [stack[-1].register_forward_hook(mark)] if stack is not None and len(stack) else []
    margs = tuple(_inductor.to_meta(a) if isinstance(a, torch.Tensor) else a for a in args)
    try:
        with _inductor.swapped_tensors([module], _inductor.to_meta), torch.device("meta"), _inductor.CpuAttention(), \
                tracker, torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            owned |= {id(t.untyped_storage()) for t in list(module.parameters()) + list(module.buffers())}
            module(*margs)
    except Exception as e:  # noqa: BLE001 - one clear line
        raise GraphMFUError(f"plan_parallel: the activation pass of {shape.name} on meta failed: "
                            f"{type(e).__name__}: {e}") from None
    finally:
        for h in hooks:
            h.remove()
    return out, sharded, after[0]


def _stack(module):
    """The ModuleList of layers (the longest one named layers/h/blocks)."""
    stacks = [m for n, m in module.named_modules() if isinstance(m, torch.nn.ModuleList) and layer_index(f"{n}.0.")
              is not None]
    return max(stacks, key=len, default=None)


__all__ = ["OpCost", "Costs", "measure", "saved_activations"]
