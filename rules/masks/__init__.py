"""Explicit attention masks: the (query, key) pairs an ``attn_mask`` keeps, counted from the graph.

Hugging Face models (``transformers.masking_utils.sdpa_mask``) and most hand-written models build the
mask in the graph from sizes and pass it to SDPA: ``iota`` -> broadcasting views -> comparisons of
``q_idx`` and ``kv_idx`` -> ``&`` / ``|`` -> ``where(mask, 0, -inf)``.  The SDPA rules
(``rules/attention.py``) see only the mask's shape and count every pair; this graph pass walks the
FX subgraph that computes each SDPA's mask and, when the mask follows from sizes alone, sets the
node's ``flops`` (and the 5 vector FLOPs per score) from the exact number of unmasked pairs, keeping
``flops_dense``.

What it reads.  Index tensors (``iota``, ``arange``) and affine functions of them (add, sub, neg,
multiplication by constants, floor-division / remainder by positive integer constants, ``abs``),
broadcasting views (unsqueeze, squeeze, expand, permute, transpose, size-1 reshapes, slice, select,
constant_pad_nd), comparisons (lt le gt ge eq ne), logical/bitwise and, or, xor, not, ``where``,
``masked_fill``, constants (``full``, ``scalar_tensor``, finfo.min), dtype casts, and arithmetic
on piecewise-constant values (``(1 - m) * finfo.min``, ``mask_a + mask_b``).  A float mask is
additive: a pair is masked where its value is ``-inf`` or ``<= -1e4`` (``finfo.min``, the legacy
``-10000.0``); a bool mask keeps ``True``.

How it counts (no ``Tq x Tk`` tensor is ever made).  The mask becomes a boolean formula whose atoms
compare an integer-valued function of the query index ``i`` and key index ``j`` with 0.  For every
query row at once (length-``Tq`` int64 tensors) an atom is solved for ``j`` into an interval (``eq``:
one interval; ``ne`` / ``|x| >= w``: two), ``&`` intersects and ``|`` unites interval lists, and the
union is counted exactly per row (sorted sweep).  Causal, sliding windows (either side), chunked /
local attention (``j // C == i // C``), prefix-LM (a union of two intervals) are exact.

What it cannot know.  A mask that reads inputs (a padding ``attention_mask``, document ids) or
constants, or uses an op it does not read, has leaves with unknown values.  Replacing every such
leaf by ``True`` (the formula is in negation normal form, so monotone in its leaves) gives an upper
bound: the count of the part known from sizes.  The node is then flagged: ``mask_inputs`` (depends
on inputs; the bound is dense), ``mask_unrecognised`` (an op it cannot read; dense) or
``mask_upper_bound`` (inputs or unread ops, counted as the size-only part, e.g. the causal part of a
causal & padding mask).  An SDPA with an ``attn_mask`` is never counted without either an exact count
or a flag.

Backward graphs receive the mask as a saved forward output (a placeholder of the same name); the
forward graph's pass remembers what it read of its outputs under Dynamo's compile id, and the
backward of the same compile reads it back (only when the backward's saved inputs are all among that
forward's outputs).  This small cache (``_SAVED``, last 256 compiles) is the one piece of state here.

Biases and scores.  A float read from a table by ``embedding`` (T5's relative position bias) and, in
decomposed attention, the scores themselves are unknown *finite* values (``BIAS``): they keep their pair,
so ``where(causal, bias, finfo.min)`` and ``scores * scale + mask`` count what the mask keeps.

Per call (``Probes``).  An input-dependent mask, and any mask of a dynamic graph (its size-only count holds
at the compile-time sizes only), keeps its kept pairs as a symbol ``pairs_<mask node>`` in the node's cost
(hint: the count without values); the graph's mask subgraph is re-run on each call's real inputs (through
capture's CallTagger probes) and counted.  Varlen attention (``cu_seqlens``) and flex_attention BlockMasks
get probes the same way (``_varlen``, ``_flex``).

Dynamic shapes: a mask counted without values takes sizes at their compile-time hints; the note says so.

The package's rooms: ``formula`` (index expressions, formulas, values, ``kept``), ``reader`` (``Walker``
and the FX handlers), ``count`` (interval counting, counts of real mask tensors), ``sdpa`` (the SDPA ops'
arguments, ``with_pairs``, the mask flags), ``saved`` (the forward -> backward memory), ``probes`` (per-call
counts), ``varlen_flex`` (varlen and flex_attention probes), ``decomposed`` (decomposed attention), and this
``__init__``: the graph pass, the eager refiners and the names other code reads from the package.
"""
from __future__ import annotations

import math

import torch

from graphmfu import _inductor
from graphmfu.cost import REGISTRY, op_name
# the rooms; besides what the pass uses, the names other code reads from the package (re-exported)
from graphmfu.rules.masks.count import (Counter, MaskCount, _repeats, count_kept, kept_total,  # noqa: F401
                                        pairs_from_tensor)
from graphmfu.rules.masks.decomposed import (_DECOMP, _decomposed, _decomposed_backward, _drop_flag,  # noqa: F401
                                             _scale_matrix)
from graphmfu.rules.masks.formula import (BIAS, MASKED_AT, Lin, Unknown, V, and_, as_bool, atom, kept,  # noqa: F401
                                          leaf, leaves, not_, or_, var)
from graphmfu.rules.masks.probes import (PROBE_RANGE, Probes, _guarded, _host_count, _on_host,  # noqa: F401
                                         _probe_range, _signature)
from graphmfu.rules.masks.reader import Walker, _int_of, handles  # noqa: F401
from graphmfu.rules.masks.saved import _SAVED, _SAVED_LOCK, _linked, _remember  # noqa: F401
from graphmfu.rules.masks.sdpa import (_SDPA, INPUTS, UNRECOGNISED, UPPER_BOUND, _causal, _mask_arg, _q_k,  # noqa: F401
                                       with_pairs)
from graphmfu.rules.masks.varlen_flex import VARLEN, _flex, _flex_block_mask, _varlen  # noqa: F401


def mask_count(walker: Walker, node, spec) -> MaskCount | None:
    """What the mask of SDPA ``node`` keeps, or None when it has no mask."""
    mask = _mask_arg(node, spec)
    if not isinstance(mask, torch.fx.Node):
        return None
    qv, kv = _q_k(node, spec)
    tq, tk = _int_of(qv.shape[-2]), _int_of(kv.shape[-2])
    v = walker.value(mask)
    try:
        f = kept(v)
    except Unknown as e:
        f = leaf("unrecognised", str(e))
    if _causal(node, spec):
        f = and_(f, atom(var(0) - var(1), "le"))  # PyTorch's is_causal: top-left, j <= i
    return count_kept(f, tq, tk)


@REGISTRY.graph_pass
def masked_attention(gm, records) -> None:
    """Count the pairs every SDPA's ``attn_mask`` keeps (module docstring); flag what it cannot know."""
    with _inductor.real_tensors():  # analyze() runs graph passes inside its fake mode
        _masked_attention(gm, records)


def _masked_attention(gm, records) -> None:
    cid = _inductor.compile_id()
    walker = Walker(_linked(gm, cid))
    probes = Probes(gm)
    by_name = {r.name: r for r in records}
    for node in gm.graph.nodes:
        if node.op != "call_function":
            continue
        spec = _SDPA.get(op_name(node.target))
        if spec is None:
            continue
        rec = by_name.get(node.name)
        if rec is None or rec.cost is None:
            continue
        try:
            mc = mask_count(walker, node, spec)
        except Exception as e:  # noqa: BLE001 - this node is flagged, the graph's analysis goes on
            mc = MaskCount(0, 0, [("unrecognised", f"{type(e).__name__}: {e}")])
        if mc is None:
            continue
        _apply(rec, node, spec, mc, probes)
    _decomposed(gm, records, walker, cid, probes)
    _varlen(gm, records, probes)
    _flex(gm, records, probes)
    probes.attach()
    _remember(gm, cid, walker)


def _apply(rec, node, spec, mc: MaskCount, probes: "Probes | None" = None) -> None:
    kinds = {k for k, _ in mc.unknown}
    if (mc.unknown or rec.sym) and probes is not None and not _causal(node, spec):
        # an input-dependent mask, or any mask of a dynamic graph (its size-only count holds at the
        # compile-time sizes only): counted per call from the real mask
        try:
            if probes.per_call(rec, node, spec, mc):
                return
        except Exception:  # noqa: BLE001 - no probe: the node is counted (and flagged) as below
            pass
    if mc.dense:
        qv, _ = _q_k(node, spec)
        bh = math.prod(_int_of(s) for s in qv.shape[:-2])
        tq, tk = _int_of(qv.shape[-2]), _int_of(_q_k(node, spec)[1].shape[-2])
        if mc.pairs != mc.dense or rec.cost.flops != rec.cost.flops_dense:
            rec.cost = with_pairs(rec.cost, bh, tq, tk, mc.pairs)
            if rec.cost_expr:
                rec.cost_expr = {**rec.cost_expr, "flops": str(rec.cost.flops),
                                 "vector_flops": str(rec.cost.vector_flops)}
                rec.note = "; ".join(filter(None, (rec.note, "attn_mask pairs counted at the compile-time sizes")))
    if not mc.unknown:
        return
    if mc.dense and mc.pairs < mc.dense:
        flag = UPPER_BOUND
    else:
        flag = INPUTS if kinds == {"inputs"} else UNRECOGNISED
    rec.flag(flag)
    details = sorted({f"{k}: {d}" for k, d in mc.unknown})
    rec.note = f"{rec.note} ({'; '.join(details[:3])})"


# ----------------------------------------------------------------- recorders that see real values (eager)

def _values_refiner(name: str, spec):
    mask_pos, mask_kw, _, q_pos = spec

    def refine(args, kwargs, cost):
        """An eager SDPA with a real mask: count the pairs it keeps.  A mask without values (meta or fake
        tensors: the fast planning path) is counted dense and flagged."""
        mask = kwargs.get(mask_kw)
        if mask is None and mask_pos is not None and len(args) > mask_pos:
            mask = args[mask_pos]
        if not isinstance(mask, torch.Tensor):
            return cost, []
        q, k = args[q_pos], args[q_pos + 1]
        if mask.device.type == "meta" or _inductor.is_fake(mask):
            return cost, [INPUTS]
        tq, tk = int(q.shape[-2]), int(k.shape[-2])
        bh = math.prod(int(s) for s in q.shape[:-2])
        pairs = pairs_from_tensor(mask, tq, tk)
        return with_pairs(cost, bh, tq, tk, pairs), []

    return refine


for _name, _spec in _SDPA.items():
    _ns, _op, _overload = _name.split(".")
    _target = getattr(getattr(getattr(torch.ops, _ns), _op, None), _overload, None)
    if _target is not None:
        REGISTRY.declare(_target, values=_values_refiner(_name, _spec))
