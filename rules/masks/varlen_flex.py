"""Varlen attention (``cu_seqlens``) and flex_attention BlockMasks: their kept pairs are data, so each
node's pairs become a symbol counted per call by a probe (probes.py) from the real offsets
(``attention.varlen_pairs``) or the BlockMask's block counts; without values the rule's count stays,
flagged (``VARLEN``, rules/attention.py's ``flex_attention``)."""
from __future__ import annotations

import math

import torch

from graphmfu.cost import REGISTRY, Cost, op_name
from graphmfu.rules.masks.formula import Unknown
from graphmfu.rules.masks.probes import Probes, _guarded, _probe_range
from graphmfu.rules.masks.reader import _int_of
from graphmfu.rules.masks.sdpa import _attention_module


VARLEN = REGISTRY.flag(
    "varlen_lengths", "varlen attention: sequence lengths (cu_seqlens) are data; counted as one packed sequence, "
                      "an upper bound",
    "{n} varlen attention(s) (cu_seqlens) counted as one packed sequence without a profile (an upper bound); "
    "under profile() each call is counted from its real sequence lengths")

# op -> (q position, cu_q, cu_k, is_causal / custom_mask_type position, flash conventions)
_VARLEN = {
    "aten._flash_attention_forward.default": (0, 3, 4, 8, True),
    "aten._flash_attention_backward.default": (1, 6, 7, 11, True),
    "aten._efficient_attention_forward.default": (0, 4, 5, 9, False),
    "aten._efficient_attention_backward.default": (1, 6, 7, 14, False),
}


def _varlen(gm, records, probes: Probes) -> None:
    """Varlen attention (``cu_seqlens`` given): its pairs are a symbol counted per call from the real
    offsets (``attention.varlen_pairs``); without values the rule's count (one packed sequence) stays,
    flagged.  A node whose offsets cannot be probed keeps that count and the flag (never silent)."""
    import sympy

    att = _attention_module()
    by_name = {r.name: r for r in records}
    for node in gm.graph.nodes:
        spec = _VARLEN.get(op_name(node.target)) if node.op == "call_function" else None
        rec = by_name.get(node.name)
        if spec is None or rec is None or rec.cost is None:
            continue
        qi, cqi, cki, ci, flash = spec
        args = node.args
        cu_q, cu_k = (args[cqi] if len(args) > cqi else None), (args[cki] if len(args) > cki else None)
        if not (isinstance(cu_q, torch.fx.Node) and isinstance(cu_k, torch.fx.Node)):
            continue
        rec.flag(VARLEN)
        try:
            q = args[qi].meta["val"]
            heads = _int_of(q.shape[-2])
            flag_v = args[ci] if len(args) > ci else False
            if flash:
                causal, wl, wr = bool(flag_v), node.kwargs.get("window_size_left"), \
                    node.kwargs.get("window_size_right")
            else:
                causal, ws = {0: None, 1: "top_left", 2: "bottom_right"}.get(int(flag_v)), node.kwargs.get("window_size")
                wl, wr = (ws - 1 if ws is not None and ws > 0 else None), None
            wl = None if wl is None else _int_of(wl)
            wr = None if wr is None else _int_of(wr)
            subs = [probes._subgraph(cu_q), probes._subgraph(cu_k)]
            if None in subs:
                continue
            (mq, uq), (mk, uk) = subs
            name = f"pairs_{node.name}"

            def probe(inputs, mq=mq, uq=uq, mk=mk, uk=uk, heads=heads, c=causal, wl=wl, wr=wr, fl=flash):
                with torch.no_grad(), _probe_range():
                    a = mq(*[inputs[i] for i in uq])
                    b = mk(*[inputs[i] for i in uk])
                    return heads * att.varlen_pairs(a, b, c, wl, wr, flash=fl)

            c = rec.cost
            packed_q, packed_k = _int_of(q.shape[-3]), _int_of(args[qi + 1].meta["val"].shape[-3])  # [(1,) total, H, D]
            dense = heads * packed_q * packed_k
            unit = c.flops_dense // dense
            hint = c.flops // unit if unit else dense
            if unit * dense != c.flops_dense or len(c.vector) != 1:
                continue
            pairs = sympy.Symbol(name)
            (vk, vv), = c.vector
            vector = {vk: vv - att.VECTOR_PER_SCORE * hint + att.VECTOR_PER_SCORE * pairs}
            sym = Cost.of({k: v // dense * pairs for k, v in c.matrix_dense}, dense=dict(c.matrix_dense),
                          vector=vector, read=c.bytes_read, written=c.bytes_written)
            if rec.sym:  # symbolic sizes besides the lengths: not combined here
                continue
            rec.sym, rec.cost_expr = sym.formulas(), sym.as_strings()
            probes.items.append((name, hint, _guarded(probe, hint)))
            rec.note += f"; counted per call from the real {cu_q.name} / {cu_k.name} under profile() (symbol {name})"
        except (Unknown, KeyError, AttributeError, IndexError, TypeError):
            continue


def _flex_block_mask(node):
    """(kv_num_blocks, full_kv_num_blocks, Q_BLOCK, KV_BLOCK) nodes/ints of a flex_attention node's
    block-mask tuple (newer torch prefixes it with Q_LEN, KV_LEN), or None."""
    for a in node.args:
        if isinstance(a, tuple) and len(a) >= 11:
            off = 0 if isinstance(a[0], torch.fx.Node) else 2
            tail = [x for x in a[off:] if not isinstance(x, torch.fx.Node) and x is not None]
            sizes = [x for x in tail if isinstance(x, (int, torch.SymInt))]
            if len(sizes) >= 2 and isinstance(a[off], torch.fx.Node):
                return a[off], a[off + 2], _int_of(sizes[-2]), _int_of(sizes[-1])
    return None


def _flex(gm, records, probes: Probes) -> None:
    """flex_attention: the kernel runs the partial (``kv_num_blocks``) and full (``full_kv_num_blocks``)
    blocks of its BlockMask, each ``Q_BLOCK x KV_BLOCK`` pairs whatever the mask_mod keeps inside it.  The
    block counts are data (inputs of the graph): the pairs are a symbol counted per call from them;
    without values the count is dense (the flag ``flex_attention`` says so)."""
    import sympy

    att = _attention_module()
    by_name = {r.name: r for r in records}
    for node in gm.graph.nodes:
        if node.op != "call_function" or "flex_attention" not in op_name(node.target):
            continue
        rec = by_name.get(node.name)
        if rec is None or rec.cost is None or rec.sym:
            continue
        try:
            got = _flex_block_mask(node)
            if got is None:
                continue
            kv_num, full_num, qb, kb = got
            q, k = node.args[0].meta["val"], node.args[1].meta["val"]
            lead = math.prod(_int_of(x) for x in q.shape[:-2])
            tq, tk = _int_of(q.shape[-2]), _int_of(k.shape[-2])
            subs = [probes._subgraph(kv_num)] + ([probes._subgraph(full_num)] if isinstance(full_num, torch.fx.Node)
                                                 else [])
            if None in subs:
                continue
            dense = lead * tq * tk
            c = rec.cost
            unit = c.flops_dense // dense
            if unit * dense != c.flops_dense or len(c.vector) != 1:
                continue
            name = f"pairs_{node.name}"

            def probe(inputs, subs=subs, lead=lead, block=qb * kb):
                total = 0
                with torch.no_grad(), _probe_range():
                    for mod, used in subs:
                        n = mod(*[inputs[i] for i in used])
                        own = n.numel() // n.shape[-1] if n.dim() else 1
                        if lead % own:
                            raise ValueError("block mask does not broadcast to the attention's batch and heads")
                        total = total + n.sum(dtype=torch.int64) * (lead // own)
                return total * block  # a count left on the device (read after the step by a meter)

            pairs = sympy.Symbol(name)
            (vk, vv), = c.vector
            vector = {vk: vv - att.VECTOR_PER_SCORE * (dense - pairs)}
            sym = Cost.of({kk: v // dense * pairs for kk, v in c.matrix_dense}, dense=dict(c.matrix_dense),
                          vector=vector, read=c.bytes_read, written=c.bytes_written)
            rec.sym, rec.cost_expr = sym.formulas(), sym.as_strings()
            probes.items.append((name, dense, _guarded(probe, dense)))
            rec.note += (f"; counted per call under profile() at block granularity ({qb}x{kb} blocks: partial and "
                         f"full blocks as the kernel runs them, from {kv_num.name}"
                         f"{', ' + full_num.name if isinstance(full_num, torch.fx.Node) else ''}; symbol {name})")
        except (Unknown, KeyError, AttributeError, IndexError, TypeError, ValueError):
            continue
