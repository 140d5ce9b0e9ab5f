"""Attention computed dense where its mask keeps far fewer (query, key) pairs.

graphmfu counts an attention's FLOPs at the pairs its mask keeps (``flops``) beside the dense count
(``flops_dense``).  A kernel that cannot skip masked pairs — an SDPA given an explicit ``attn_mask`` (the
fused kernels compute every pair, then mask), or attention written out as matmuls (``bmm``: every score is
computed) — spends ``1 - kept/dense`` of its time on pairs the mask throws away (its time taken as
proportional to the pairs it computes).  Flash attention with ``is_causal`` skips masked blocks: no mask input,
not listed.
"""
from __future__ import annotations

from graphmfu.headroom.evidence import Cause, Context
from graphmfu.render import ms

MAX_KEPT = 0.75  # listed when the mask keeps less than this share of the dense pairs


def _computes_dense(ops) -> bool:
    for op in ops:
        if op.op.startswith(("aten.bmm.", "aten.baddbmm.", "aten.mm.", "aten.matmul.")):
            return True
        if "attention" in op.op and "backward" not in op.op:
            mats = [i for i in op.inputs if isinstance(i, (list, tuple)) and len(i) == 2 and len(i[0]) >= 2]
            if len(mats) >= 4:  # query, key, value and a mask (or bias) tensor
                return True
    return False


def dense_attention(ctx: Context) -> list[Cause]:
    out = []
    for k in ctx.kernels:
        if not k["flops_dense"] or k["flops"] >= MAX_KEPT * k["flops_dense"]:
            continue
        if not _computes_dense(ctx.ops(k)):
            continue
        kept = k["flops"] / k["flops_dense"]
        lost = k["time_s"] * (1 - kept)
        causal = abs(kept - 0.5) < 0.05
        evidence = (f"{k['name']} keeps {kept:.1%} of the dense pairs ({k['flops']:.3g} of {k['flops_dense']:.3g} "
                    f"matrix FLOPs) but computes all of them: {ms(k['time_s'])} ms measured, about "
                    f"{ms(lost)} ms on masked pairs")
        action = ("pass is_causal=True instead of a causal attn_mask (flash attention skips the masked blocks)"
                  if causal else "use flex_attention with a BlockMask (computes kept blocks only), or packed "
                  "sequences with varlen attention (cu_seqlens) for padding masks")
        out.append(Cause("dense_attention", f"{k['module'] or '(root)'} ({k['stage'] or 'no stage'})", lost,
                         evidence, action))
    return out


__all__ = ["dense_attention"]
