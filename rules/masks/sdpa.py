"""The SDPA node's side of a mask count: the SDPA ops and where their mask, ``is_causal`` and q / k
are (``_SDPA``, ``_mask_arg``, ``_causal``, ``_q_k``), an SDPA's cost at the pairs it keeps (``with_pairs``),
and the flags a mask that cannot be counted exactly raises (``INPUTS``, ``UNRECOGNISED``, ``UPPER_BOUND``)."""
from __future__ import annotations

import sys

from graphmfu.cost import REGISTRY, Cost


INPUTS = REGISTRY.flag(
    "mask_inputs", "attn_mask depends on inputs: counted dense",
    "{n} attention(s) with an attn_mask that depends on inputs (padding, document ids): counted dense")
UNRECOGNISED = REGISTRY.flag(
    "mask_unrecognised", "attn_mask not recognised: counted dense",
    "{n} attention(s) with an attn_mask graphmfu cannot read: counted dense")
UPPER_BOUND = REGISTRY.flag(
    "mask_upper_bound", "attn_mask partly depends on inputs or unread ops: counted as its size-only part "
                        "(causal/window), an upper bound",
    "{n} attention(s) with an attn_mask that partly depends on inputs (e.g. causal & padding): counted as the "
    "part known from sizes, an upper bound (exact when the inputs mask nothing)")


# op -> (position of the mask argument, its keyword name, position of is_causal, position of q)
_SDPA = {
    "aten.scaled_dot_product_attention.default": (3, "attn_mask", 5, 0),
    "aten._scaled_dot_product_attention_math.default": (3, "attn_mask", 5, 0),
    "aten._scaled_dot_product_flash_attention_for_cpu.default": (None, "attn_mask", 4, 0),
    "aten._scaled_dot_product_flash_attention_for_cpu_backward.default": (None, "attn_mask", 7, 1),
    "aten._scaled_dot_product_efficient_attention.default": (3, "attn_bias", 6, 0),
    "aten._scaled_dot_product_efficient_attention_backward.default": (4, "attn_bias", 11, 1),
    "aten._scaled_dot_product_cudnn_attention.default": (3, "attn_bias", 6, 0),
    "aten._scaled_dot_product_cudnn_attention_backward.default": (8, "attn_bias", 14, 1),
    "aten._scaled_dot_product_fused_attention_overrideable.default": (3, "attn_bias", 5, 0),
    "aten._scaled_dot_product_fused_attention_overrideable_backward.default": (4, "attn_bias", 13, 1),
}
_CAUSAL_NAME = "is_causal"


def _mask_arg(node, spec):
    pos, name, _, _ = spec
    if pos is not None and len(node.args) > pos:
        return node.args[pos]
    return node.kwargs.get(name)


def _causal(node, spec) -> bool:
    pos = spec[2]
    v = node.args[pos] if len(node.args) > pos else node.kwargs.get(_CAUSAL_NAME, False)
    return bool(v) if isinstance(v, (bool, int)) else False


def _q_k(node, spec):
    qi = spec[3]
    q, k = node.args[qi], node.args[qi + 1]
    qv, kv = q.meta.get("val"), k.meta.get("val")
    return qv, kv


def _attention_module():
    return sys.modules.get("graphmfu.rules.attention")


def with_pairs(cost: Cost, bh: int, tq: int, tk: int, pairs: int) -> Cost:
    """``cost`` of an SDPA node (rules/attention.py) with ``flops`` counting ``pairs`` kept (query, key)
    pairs per (batch, head), ``flops_dense`` unchanged; vector FLOPs 5 per kept score."""
    att = _attention_module()
    per_score = getattr(att, "VECTOR_PER_SCORE", 5)
    dense = tq * tk
    if dense <= 0:
        return cost
    unit = cost.flops_dense // dense  # matrix FLOPs of one pair, all batches and heads
    old_pairs = cost.flops // unit if unit else dense
    matrix = {k: v // dense * pairs for k, v in cost.matrix_dense}
    vector = dict(cost.vector)
    if len(vector) == 1:
        (k, v), = vector.items()
        vector[k] = v - per_score * bh * (old_pairs - pairs)
    return Cost.of(matrix, dense=dict(cost.matrix_dense), vector=vector, read=cost.bytes_read,
                   written=cost.bytes_written)
