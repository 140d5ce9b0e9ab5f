"""Attention in decomposed form (eager attention, SDPA's math path): the mask read through the softmax's
input, the two matmuls scaled to the kept pairs, and the backward of the same compile scaled from the
forward's count (``_DECOMP``, under Dynamo's compile id)."""
from __future__ import annotations

import collections
import math

import torch

from graphmfu.cost import REGISTRY, Cost, symbolic_cost
from graphmfu.rules.masks.count import MaskCount, count_kept
from graphmfu.rules.masks.formula import BIAS, MASKED_AT, TRUE, Unknown, V, kept
from graphmfu.rules.masks.probes import dims_of
from graphmfu.rules.masks.reader import _constant, _int_of, _short
from graphmfu.rules.masks.saved import _SAVED_LOCK
from graphmfu.rules.masks.sdpa import INPUTS, UNRECOGNISED, UPPER_BOUND, _attention_module

aten = torch.ops.aten

ATTENTION_MATMUL = REGISTRY.flag(
    "attention_matmul", "attention's Q@K^T or P@V written as a matmul: counted as attention",
    "{n} matmul(s) are attention's products written out (Q@K^T, P@V): counted as attention (the meter's "
    "attention FLOPs and KV bytes), at the pairs its mask keeps")


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


def _decomposed(gm, records, walker, cid, probes=None) -> None:
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
        for r in (by_name.get(score.name), by_name.get(pv.name)):
            if r is not None:
                r.flag(ATTENTION_MATMUL)
        if mc.exact:
            _drop_flag(rec, flag, f"decomposed attention: mask read, {mc.pairs} of {mc.dense} pairs kept "
                                  f"(matmuls {score.name}, {pv.name})")
        else:
            rec.flag(UPPER_BOUND if mc.pairs < mc.dense else
                     INPUTS if {k for k, _ in mc.unknown} == {"inputs"} else UNRECOGNISED)
            if mc.pairs < mc.dense:  # not dense: counted at the part of the mask that follows from sizes
                dense_note = REGISTRY.flags[flag].note
                rec.note = rec.note.replace(dense_note, "decomposed attention: softmax between matmuls; its mask "
                                                        "read where it follows from sizes")
            details = sorted({f"{k}: {d}" for k, d in mc.unknown})
            rec.note = f"{rec.note} ({'; '.join(details[:3])})"
            if probes is not None and {k for k, _ in mc.unknown} <= {"inputs"}:
                name = _per_call(probes, node, score, [by_name.get(score.name), by_name.get(pv.name)], mc)
                if name is not None:
                    rec.note += (f"; counted per call from the real mask under profile() and the meter (symbol "
                                 f"{name}; without values: the size-only part)")
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


# ----------------------------------------------------------------- per call: the real mask of written-out attention
#
# An input-dependent mask (a padding attention_mask) combined with the scores before the softmax: the
# ops from the score matmul to the softmax's input are read as what each does to "is this pair kept"
# (``_keep_chain``), and a probe computes that over the mask operands alone (never the Tq x Tk scores):
# ``scores + m`` keeps where ``m > MASKED_AT``; ``where(c, scores, -inf)`` where ``c``;
# ``masked_fill(scores, m, -inf)`` where ``~m``; scaling, casts and views before any mask change nothing.

_VIEWS = {"view", "reshape", "_unsafe_view", "expand", "clone", "permute", "transpose", "unsqueeze", "squeeze",
          "convert_element_type", "_to_copy", "alias", "contiguous"}


def _softmax_input(node):
    """What the softmax normalises: the ``x`` of ``exp(x - max(x))`` (or of a softmax node)."""
    x = node.args[0]
    if isinstance(x, torch.fx.Node) and _short(x.target) == "sub" and len(x.args) > 1 \
            and isinstance(x.args[1], torch.fx.Node) and _short(x.args[1].target) in ("amax", "getitem"):
        return x.args[0]
    return x


def _scalar(x):
    """The value of a constant operand (a number, a 0-dim ``full`` / ``scalar_tensor``, a lifted constant)."""
    if isinstance(x, (bool, int, float)):
        return x
    if not isinstance(x, torch.fx.Node) or x.op not in ("call_function", "get_attr"):
        return None
    if x.op == "get_attr":
        return _constant(x)
    name = _short(x.target)
    if name == "full" and list(x.args[0]) == [] and isinstance(x.args[1], (int, float)):
        return x.args[1]
    if name == "scalar_tensor" and isinstance(x.args[0], (int, float)):
        return x.args[0]
    return None


def _masked(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and (v != v or v <= MASKED_AT)


def _keep_chain(score, x, depth: int = 16):
    """``[(kind, operand)]`` from the score matmul to the softmax input ``x``: what each op on the way does to
    the kept pairs (``gt``: kept where operand > MASKED_AT; ``lt``: where operand < -MASKED_AT; ``if``: where
    operand; ``unless``: where not operand; ``or_not``: where not operand or as before; ``or_if``: where operand or
    as before; ``reset``: every pair finite again).  None when an op is not one of these."""
    path, node = [], x
    for _ in range(depth):
        if node is score:
            break
        if not isinstance(node, torch.fx.Node) or node.op != "call_function":
            return None
        on = [i for i, a in enumerate(node.args) if isinstance(a, torch.fx.Node) and _reaches(a, score, depth)]
        if len(on) != 1:
            return None
        path.append((node, on[0]))
        node = node.args[on[0]]
    else:
        return None
    chain = []
    for node, pos in reversed(path):  # from the scores to the softmax input
        name, args = _short(node.target), node.args
        others = [a for i, a in enumerate(args) if i != pos and isinstance(a, torch.fx.Node)]
        if name in _VIEWS:
            if chain and name not in ("convert_element_type", "_to_copy", "clone", "alias", "contiguous"):
                return None  # a view of masked scores: the mask's shape would have to follow it
            continue
        if name in ("mul", "div"):
            if any(_scalar(a) is None and _numel(a) != 1 for a in others):
                return None
            continue
        if name == "tanh":  # a soft cap: every value finite again
            chain.append(("reset", None))
            continue
        if name in ("add", "sub") and len(args) >= 2:
            side = args[1 - pos]
            if _scalar(side) is not None:
                continue
            if not isinstance(side, torch.fx.Node):
                return None
            chain.append(("gt" if name == "add" or pos == 1 else "lt", side))
            continue
        if name == "where" and len(args) == 3 and pos in (1, 2):
            cond, other = args[0], args[3 - pos]
            if not isinstance(cond, torch.fx.Node):
                return None
            v = _scalar(other)
            if v is None:
                return None
            if _masked(v):
                chain.append(("if" if pos == 1 else "unless", cond))
            else:
                chain.append(("or_not" if pos == 1 else "or_if", cond))
            continue
        if name == "masked_fill" and pos == 0 and len(args) >= 3:
            v = _scalar(args[2])
            if v is None or not isinstance(args[1], torch.fx.Node):
                return None
            chain.append(("unless" if _masked(v) else "or_if", args[1]))
            continue
        return None
    return chain


def _numel(node) -> int | None:
    v = node.meta.get("val") if isinstance(node, torch.fx.Node) else None
    return v.numel() if isinstance(v, torch.Tensor) else None


def _reaches(node, target, depth: int) -> bool:
    """Does ``target`` feed ``node`` within ``depth`` steps?"""
    frontier, seen = [node], set()
    for _ in range(depth + 1):
        nxt = []
        for n in frontier:
            if n is target:
                return True
            if n in seen or not isinstance(n, torch.fx.Node):
                continue
            seen.add(n)
            nxt.extend(n.all_input_nodes)
        frontier = nxt
    return False


def _keep_graph(chain):
    """``finish(g, env)`` for ``Probes._subgraph``: the kept pairs as one bool tensor from the chain's operands."""
    def finish(g, env):
        keep = None
        for kind, operand in chain:
            if kind == "reset":
                keep = None
                continue
            x = env[operand]
            if kind == "gt":
                c = g.call_function(aten.gt.Scalar, (x, MASKED_AT))
            elif kind == "lt":
                c = g.call_function(aten.lt.Scalar, (x, -MASKED_AT))
            elif kind in ("if", "or_if"):
                c = x
            else:
                c = g.call_function(aten.logical_not.default, (x,))
            if kind in ("or_not", "or_if"):
                keep = None if keep is None else g.call_function(aten.logical_or.default, (c, keep))
            else:
                keep = c if keep is None else g.call_function(aten.logical_and.default, (keep, c))
        return keep
    return finish


def _per_call(probes, node, score, recs, mc: MaskCount) -> str | None:
    """Count the kept pairs of a written-out attention per call (the symbol, or None when it cannot)."""
    import sympy

    x = _softmax_input(node)
    chain = _keep_chain(score, x)
    operands = [o for kind, o in (chain or ()) if o is not None]
    last_reset = max((i for i, (k, _) in enumerate(chain or ()) if k == "reset"), default=-1)
    chain = (chain or [])[last_reset + 1:]
    if not chain or not operands or not all(r is not None for r in recs):
        return None
    xv = x.meta.get("val")
    if not isinstance(xv, torch.Tensor) or xv.dim() < 2:
        return None
    lead_e, tq_e, tk_e = dims_of(xv.shape)
    lead = math.prod(_int_of(d) for d in xv.shape[:-2])
    name = probes.probe(x.name, lambda: probes._subgraph([o for _, o in chain], _keep_graph(chain)),
                        (lead_e, tq_e, tk_e), mc.pairs * lead, node.name)
    if name is None:
        return None
    pairs, dense = sympy.Symbol(name), lead_e * tq_e * tk_e
    for rec in recs:
        base = symbolic_cost(rec.sym) if rec.sym else rec.cost
        sym = Cost.of({k: sympy.simplify(sympy.sympify(v) / dense) * pairs for k, v in base.matrix_dense},
                      dense=dict(base.matrix_dense), vector=dict(base.vector), read=base.bytes_read,
                      written=base.bytes_written)
        rec.sym, rec.cost_expr = sym.formulas(), sym.as_strings()
        rec.note = "; ".join(filter(None, (rec.note, f"counted per call at the pairs the real mask keeps ({name})")))
    return name
