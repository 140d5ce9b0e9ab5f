"""Padded steps: the matrix work a step spent on rows that carry no token.

A serving engine pads each step's packed batch so that one compiled graph (or CUDA graph) serves many
steps: transformers' continuous batching under torch.compile pads the query tokens to a multiple of
``q_padding_interval_size`` (64 by default) and the logits rows to the padded number of sequences.  The
graph's count is what ran (executed work); the model's work is that of the real rows.  :class:`Padding`
says, for one step, how many token rows and logits rows the graphs ran and how many were real;
:func:`padded_cost` is the matrix work of one graph call spent on the padded rows:

* a matrix product (``mm``/``addmm``/``bmm``/...) whose output rows (every dimension but the last) number the
  step's padded logits rows and whose output is as wide as the vocabulary is the LM head: its work counts
  ``real/padded`` of its FLOPs as the model's;
* one whose output rows number the step's padded query tokens is a per-token product (projections, MLP):
  likewise with the tokens;
* attention ops are not scaled: their count is already the mask's kept (query, key) pairs, and padded
  rows keep none; any other op is counted as it ran (a rotary table's outer product over the padded
  positions is a few thousand FLOPs).

Vector work and bytes are left as executed (the padded rows did move those bytes).
"""
from __future__ import annotations

import dataclasses

from graphmfu.cost import Cost


@dataclasses.dataclass(frozen=True)
class Padding:
    """One step's padded and real row counts (from the engine's own bookkeeping)."""
    tokens: tuple  # (query token rows the graphs ran, real query tokens)
    logits: tuple  # (logits rows the graphs ran, real logits rows: the requests that get a token)
    vocab: int | None = None  # the LM head's output width

    @property
    def padded_tokens(self) -> int:
        return self.tokens[0] - self.tokens[1]


def _dim(d, subs: dict) -> int | None:
    from graphmfu.cost import dim_at
    from graphmfu.errors import GraphMFUError

    try:
        return int(dim_at(d, subs))
    except (TypeError, GraphMFUError):  # a symbol without a value
        return None


def _rows(shape, subs: dict) -> int | None:
    n = 1
    for d in shape[:-1]:
        v = _dim(d, subs)
        if v is None:
            return None
        n *= v
    return n


def live_fraction(n, sizes: dict, p: Padding, attention: bool) -> tuple | None:
    """``(real, padded)`` rows of node ``n`` at a call with ``sizes``, or None when it is not a padded
    product (counted as it ran)."""
    from graphmfu.rules.matmul import MATRIX_PRODUCTS

    if attention or not n.outputs or not n.op.startswith(MATRIX_PRODUCTS):
        return None
    import sympy

    shape = n.outputs[0][0]
    subs = {sympy.Symbol(k): v for k, v in sizes.items()}
    rows = _rows(shape, subs)
    if rows is None:
        return None
    (tp, tr), (lp, lr) = p.tokens, p.logits
    if rows == lp and p.vocab is not None and shape and _dim(shape[-1], subs) == p.vocab and lp != lr:
        return lr, lp
    if rows == tp and tp != tr:
        return tr, tp
    return None


def padded_cost(g, sizes: dict, p: Padding, attention) -> Cost:
    """The matrix work of one call of graph ``g`` (at ``sizes``, hints filling the rest) spent on padded
    rows: each padded product's FLOPs times ``(padded - real) / padded`` (exact integers: a product's FLOPs
    are a multiple of its rows).  ``attention(n)``: is node ``n`` an attention op."""
    at = {**g.hints, **sizes} if (g.hints or sizes) else {}
    out = Cost()
    for n in g.nodes:
        if n.cost is None or n.recompute:
            continue
        f = live_fraction(n, at, p, attention(n))
        if f is None:
            continue
        real, rows = f
        c = n.cost_at(at)

        def part(pairs, real=real, rows=rows):
            return tuple((dt, int(v) * (rows - real) // rows) for dt, v in pairs)

        out = out + Cost(part(c.matrix), part(c.matrix_dense))
    return out


def minus(a: Cost, b: Cost) -> Cost:
    """``a`` less ``b``'s matrix work (bytes and vector work of ``a`` kept)."""
    neg = Cost(tuple((dt, -v) for dt, v in b.matrix), tuple((dt, -v) for dt, v in b.matrix_dense))
    s = a + neg
    return Cost(tuple((dt, v) for dt, v in s.matrix if v), tuple((dt, v) for dt, v in s.matrix_dense if v),
                a.vector, a.bytes_read, a.bytes_written)


__all__ = ["Padding", "padded_cost", "live_fraction", "minus"]
