"""Attention in decomposed form (eager attention, SDPA's math path): the mask read through the softmax's
input, the two matmuls scaled to the kept pairs, and the backward of the same compile scaled from the
forward's count (``_DECOMP``, under Dynamo's compile id)."""
from __future__ import annotations

import collections

import torch

from graphmfu.cost import REGISTRY, Cost
from graphmfu.rules.masks.count import MaskCount, count_kept
from graphmfu.rules.masks.formula import BIAS, TRUE, Unknown, V, kept
from graphmfu.rules.masks.reader import _int_of
from graphmfu.rules.masks.saved import _SAVED_LOCK
from graphmfu.rules.masks.sdpa import INPUTS, UNRECOGNISED, UPPER_BOUND, _attention_module


# ----------------------------------------------------------------- attention in decomposed form
#
# rules/attention.py's pass (it runs first: rule files load in name order) flags a softmax (or its
# exp) between two matmuls ``decomposed_attention``: eager attention, SDPA's math path.  Here the
# softmax's input is read with the score matmul's output standing for unknown finite values (BIAS):
# ``scores * scale (+ tanh softcap) + mask`` keeps the pairs the mask keeps.  When that count is
# exact the two matmuls' ``flops`` count the kept pairs (``flops_dense`` unchanged) and the flag is
# replaced by a note; otherwise the flag stays (plus the mask's own flag).  The backward of the same
# compile scales its matmuls of that module whose operands are score-shaped (the forward remembers
# the module's count under Dynamo's compile id, as for saved masks).

_DECOMP: "collections.OrderedDict[str, dict]" = collections.OrderedDict()


def _scale_matrix(rec, pairs: int, dense: int) -> bool:
    """``rec``'s matrix ``flops`` at ``pairs`` of ``dense`` score pairs (flops_dense unchanged)."""
    if rec is None or rec.cost is None or dense <= 0:
        return False
    c = rec.cost
    if any(v % dense for _, v in c.matrix_dense):
        return False
    rec.cost = Cost.of({k: v // dense * pairs for k, v in c.matrix_dense}, dense=dict(c.matrix_dense),
                       vector=dict(c.vector), read=c.bytes_read, written=c.bytes_written)
    return True


def _drop_flag(rec, name: str, note: str) -> None:
    if name in rec.flags:
        rec.flags.remove(name)
        flag = REGISTRY.flags.get(name)
        if flag is not None:
            rec.note = "; ".join(p for p in rec.note.split("; ") if p != flag.note)
    rec.note = "; ".join(filter(None, (rec.note, note)))


def _decomposed(gm, records, walker, cid) -> None:
    flag = "decomposed_attention"
    by_name = {r.name: r for r in records}
    backward = any(n.op == "placeholder" and n.name.startswith("tangents") for n in gm.graph.nodes)
    if backward:
        _decomposed_backward(gm, records, cid)
        return
    found = {}
    nodes = {n.name: n for n in gm.graph.nodes}
    for rec in records:
        if flag not in rec.flags or rec.name not in nodes:
            continue
        node = nodes[rec.name]
        near = _attention_module().matmul_near
        score, pv = near(node, up=True, depth=10), near(node, up=False, depth=10)
        sv = score.meta.get("val") if score is not None else None
        if pv is None or not isinstance(sv, torch.Tensor) or sv.dim() < 2:
            continue
        try:
            tq, tk = _int_of(sv.shape[-2]), _int_of(sv.shape[-1])
            walker.memo[score] = V("piece", ((TRUE, BIAS),), walker._shape(score), sv.dtype)
            mc = count_kept(kept(walker.value(node.args[0])), tq, tk)
        except Exception as e:  # noqa: BLE001 - this attention stays flagged, the analysis goes on
            mc = MaskCount(0, 0, [("unrecognised", f"{type(e).__name__}: {e}")])
        if not mc.dense:
            continue
        if mc.pairs != mc.dense or mc.exact:
            ok = _scale_matrix(by_name.get(score.name), mc.pairs, mc.dense)
            ok = _scale_matrix(by_name.get(pv.name), mc.pairs, mc.dense) and ok
            if not ok:
                continue
        if mc.exact:
            _drop_flag(rec, flag, f"decomposed attention: mask read, {mc.pairs} of {mc.dense} pairs kept "
                                  f"(matmuls {score.name}, {pv.name})")
        else:
            rec.flag(UPPER_BOUND if mc.pairs < mc.dense else
                     INPUTS if {k for k, _ in mc.unknown} == {"inputs"} else UNRECOGNISED)
            details = sorted({f"{k}: {d}" for k, d in mc.unknown})
            rec.note = f"{rec.note} ({'; '.join(details[:3])})"
        found[rec.module] = (tq, tk, mc.pairs, mc.dense, mc.exact)
    if cid is not None:
        with _SAVED_LOCK:
            _DECOMP[cid] = found
            _DECOMP.move_to_end(cid)
            while len(_DECOMP) > 256:
                _DECOMP.popitem(last=False)


def _decomposed_backward(gm, records, cid) -> None:
    with _SAVED_LOCK:
        found = _DECOMP.get(cid) if cid is not None else None
    if not found:
        return
    nodes = {n.name: n for n in gm.graph.nodes}
    for rec in records:
        got = found.get(rec.module)
        if got is None or rec.op not in _attention_module()._MATMUL or rec.name not in nodes:
            continue
        tq, tk, pairs, dense, exact = got
        node = nodes[rec.name]
        shapes = [getattr(a.meta.get("val"), "shape", None) for a in (*node.all_input_nodes, node)]
        try:
            score_shaped = any(sh is not None and len(sh) >= 2 and
                               sorted((_int_of(sh[-2]), _int_of(sh[-1]))) == sorted((tq, tk)) for sh in shapes)
        except Unknown:
            continue
        if score_shaped and pairs != dense:
            _scale_matrix(rec, pairs, dense)
    for rec in records:
        got = found.get(rec.module)
        if got is not None and got[4] and "decomposed_attention" in rec.flags:
            _drop_flag(rec, "decomposed_attention", "decomposed attention: the forward's mask read")
