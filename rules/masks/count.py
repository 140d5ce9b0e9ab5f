"""Interval counting: the (query, key) pairs a formula keeps, every query row at once (``Counter``,
``count_kept``: no ``Tq x Tk`` tensor), and the pairs a real mask tensor keeps (``pairs_from_tensor`` per
(batch, head), ``kept_total`` summed over the attention it broadcasts to, torch or NumPy)."""
from __future__ import annotations

import dataclasses
import math

import torch

from graphmfu.rules.masks.formula import MASKED_AT, Lin, Unknown, bool_vars, leaves


_MAX_INTERVALS = 64  # per row, before giving up (a formula this wide is not a mask pattern)
_BIG = 1 << 60


# =========================================================================== counting

def _floor_div(r, c: int):
    return torch.div(r, c, rounding_mode="floor") if isinstance(r, torch.Tensor) else r // c


def _ceil_div(r, c: int):
    return -_floor_div(-r, c)


class Counter:
    """Counts the pairs a formula over (i = var 1, j = var 0) keeps, all rows at once."""

    def __init__(self, tq: int, tk: int):
        self.tq, self.tk = tq, tk
        self.i = torch.arange(tq, dtype=torch.int64)
        self.unknown: list = []  # atoms it could not solve, counted as True (an upper bound)

    def eval(self, lin: Lin):
        """An index expression without j, for every row (int or length-Tq tensor)."""
        out = int(lin.const)
        for k, c in lin.terms:
            c = int(c)
            if k[0] == "v":
                if k[1] != 1:
                    raise Unknown("mask depends on the key index inside an expression")
                t = self.i
            elif k[0] == "fd":
                t = _floor_div(self.eval(k[1]), k[2])
            else:
                t = self.eval(k[1])
                t = t.abs() if isinstance(t, torch.Tensor) else abs(t)
            out = out + c * t
        return out

    def solve(self, lin: Lin, op: str, rhs) -> list:
        """The j with ``lin(i, j) op rhs`` (op le or ge), as a list of intervals (lo, hi)."""
        jt = [(k, c) for k, c in lin.terms if 0 in (Lin(((k, c),)).vars())]
        rest = Lin(tuple(kc for kc in lin.terms if kc not in jt), lin.const)
        r = rhs - self.eval(rest)
        if not jt:
            ok = (r >= 0) if op == "le" else (r <= 0)
            return [self._rows(ok)]
        if len(jt) > 1:
            raise Unknown("mask compares a sum of several functions of the key index")
        key, c = jt[0]
        c = int(c)
        if (c > 0) == (op == "le"):
            return self._term(key, "le", _floor_div(r, c) if c > 0 else _floor_div(-r, -c))
        return self._term(key, "ge", _ceil_div(r, c) if c > 0 else _ceil_div(-r, -c))

    def _term(self, key, op, v) -> list:
        if key == ("v", 0):
            return [(-_BIG, v)] if op == "le" else [(v, _BIG)]
        if key[0] == "fd":
            e, c = key[1], key[2]
            return self.solve(e, "le", c * v + c - 1) if op == "le" else self.solve(e, "ge", c * v)
        e = key[1]
        if op == "le":
            return self.intersect(self.solve(e, "le", v), self.solve(-e, "le", v))
        return self.solve(e, "ge", v) + self.solve(-e, "ge", v)

    def _rows(self, ok):
        if isinstance(ok, torch.Tensor):
            return (torch.where(ok, -_BIG, _BIG), torch.where(ok, _BIG, -_BIG))
        return (-_BIG, _BIG) if ok else (_BIG, -_BIG)

    def intersect(self, a: list, b: list) -> list:
        out = [(_max(x[0], y[0]), _min(x[1], y[1])) for x in a for y in b]
        out = [iv for iv in out if not _surely_empty(iv)]
        if len(out) > _MAX_INTERVALS:
            raise Unknown("mask formula too wide")
        return out

    def intervals(self, f) -> list:
        kind = f[0]
        if kind == "const":
            return [(-_BIG, _BIG)] if f[1] else []
        if kind == "leaf":
            return [(-_BIG, _BIG)]  # an upper bound: the formula is monotone in its leaves
        if kind == "atom":
            try:
                return self._atom(f[1], f[2])
            except Unknown as e:  # this comparison only: True, an upper bound (the formula is in NNF)
                self.unknown.append(("unrecognised", str(e)))
                return [(-_BIG, _BIG)]
        if kind == "and":
            out = [(-_BIG, _BIG)]
            for g in f[1]:
                out = self.intersect(out, self.intervals(g))
                if not out:
                    break
            return out
        out = []
        for g in f[1]:
            out += self.intervals(g)
            if len(out) > _MAX_INTERVALS:
                raise Unknown("mask formula too wide")
        return out

    def _atom(self, lin, op) -> list:
        if op in ("le", "ge"):
            return self.solve(lin, op, 0)
        if op == "eq":
            return self.intersect(self.solve(lin, "le", 0), self.solve(lin, "ge", 0))
        return self.solve(lin, "le", -1) + self.solve(lin, "ge", 1)

    def count(self, f) -> int:
        ivs = self.intervals(f)
        if not ivs:
            return 0
        tq, tk = self.tq, self.tk
        lo = torch.stack([torch.as_tensor(a, dtype=torch.int64).expand(tq) for a, _ in ivs], 1).clamp(0, tk)
        hi = torch.stack([torch.as_tensor(b, dtype=torch.int64).expand(tq) for _, b in ivs], 1).clamp(-1, tk - 1)
        if len(ivs) == 1:
            return int((hi - lo + 1).clamp_min(0).sum())
        empty = lo > hi
        lo, hi = lo.masked_fill(empty, tk), hi.masked_fill(empty, -1)
        lo, order = lo.sort(dim=1)
        hi = hi.gather(1, order)
        prev = torch.full((tq,), -1, dtype=torch.int64)
        total = 0
        for k in range(lo.shape[1]):
            start = torch.maximum(lo[:, k], prev + 1)
            total += int((hi[:, k] - start + 1).clamp_min(0).sum())
            prev = torch.maximum(prev, hi[:, k])
        return total


def _max(a, b):
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return torch.maximum(torch.as_tensor(a), torch.as_tensor(b))
    return max(a, b)


def _min(a, b):
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return torch.minimum(torch.as_tensor(a), torch.as_tensor(b))
    return min(a, b)


def _surely_empty(iv) -> bool:
    lo, hi = iv
    return not isinstance(lo, torch.Tensor) and not isinstance(hi, torch.Tensor) and lo > hi


@dataclasses.dataclass
class MaskCount:
    """The pairs a mask keeps: ``pairs`` (exact when ``exact``, else an upper bound), ``dense``
    (Tq*Tk), and the leaves it could not know (``(kind, detail)``: inputs / unrecognised)."""
    pairs: int
    dense: int
    unknown: list

    @property
    def exact(self) -> bool:
        return not self.unknown


def count_kept(formula, tq: int, tk: int) -> MaskCount:
    """Count the (query, key) pairs ``formula`` keeps (vars: 1 = query index, 0 = key index)."""
    unknown = [(lf[1], lf[2]) for lf in leaves(formula)]
    if not bool_vars(formula) <= {0, 1}:
        return MaskCount(tq * tk, tq * tk, unknown + [("unrecognised", "mask varies over batch or heads")])
    counter = Counter(tq, tk)
    try:
        pairs = counter.count(formula)
    except Unknown as e:
        return MaskCount(tq * tk, tq * tk, unknown + counter.unknown + [("unrecognised", str(e))])
    return MaskCount(pairs, tq * tk, unknown + counter.unknown)


def pairs_from_tensor(mask: torch.Tensor, tq: int, tk: int, rows: int = 4096):
    """The (query, key) pairs a real mask tensor keeps (bool: True; float, additive: above MASKED_AT),
    per (batch, head) entry of its leading dims (their mean: an int when they agree).  Rows are read
    ``rows`` at a time, so a long mask costs at most ``rows x Tk`` booleans more.  For recorders that
    see mask values (eager), and to check the graph pass."""
    m = mask.detach()
    if m.dim() < 2:
        m = m.reshape(1, -1)
    lead = math.prod(m.shape[:-2])
    total = 0
    for start in range(0, tq, rows):
        stop = min(tq, start + rows)
        block = m[..., start:stop, :] if m.shape[-2] != 1 else m
        keep = block if block.dtype == torch.bool else (block > MASKED_AT)  # nan and -inf: masked
        total += int(keep.expand(*keep.shape[:-2], stop - start, tk).sum())
    return total // lead if total % lead == 0 else total / lead


def kept_total(mask: torch.Tensor, lead: int, tq: int, tk: int, rows: int = 4096) -> int:
    """The (query, key) pairs a real mask keeps, summed over the ``lead`` (batch x heads) entries of the
    attention it broadcasts to: the mask's own leading entries counted once each, times how often
    broadcasting repeats them.  Rows are read ``rows`` at a time (at most ``rows x Tk`` more booleans).
    A 0-dim int64 tensor on the mask's device (no synchronisation: ``int()`` reads it); for a NumPy
    array (a mask evaluated on the host, rules/host_eval.py) an int."""
    if not isinstance(mask, torch.Tensor):
        import numpy as np

        m = np.asarray(mask)
        m = m.reshape(1, -1) if m.ndim < 2 else m
        keep = m if m.dtype == np.bool_ else (m > MASKED_AT)  # nan and -inf: masked
        return int(np.count_nonzero(keep)) * _repeats(m.shape, lead, tq, tk)
    m = mask.detach()
    if m.dim() < 2:
        m = m.reshape(1, -1)
    repeats = _repeats(m.shape, lead, tq, tk)
    # no slice, no add, no multiply that is not needed: a mask of one block is two small kernels (a serving
    # engine probes every step)
    blocks = [m] if m.shape[-2] <= rows else [m[..., s:s + rows, :] for s in range(0, m.shape[-2], rows)]
    total = None
    for block in blocks:
        keep = block if block.dtype == torch.bool else (block > MASKED_AT)  # nan and -inf: masked
        part = keep.sum(dtype=torch.int64)  # left on the device: read when the caller needs it
        total = part if total is None else total + part
    return total if repeats == 1 else total * repeats


def _repeats(shape, lead: int, tq: int, tk: int) -> int:
    """How often broadcasting a mask of ``shape`` (at least 2-D) to ``lead`` x (tq, tk) repeats each entry."""
    own = math.prod(shape[:-2])
    mq, mk = shape[-2], shape[-1]
    if lead % own or (mq not in (1, tq)) or (mk not in (1, tk)):
        raise ValueError(f"mask of shape {tuple(shape)} does not broadcast to ({lead} entries, {tq}, {tk})")
    return (lead // own) * (tq // mq) * (tk // mk)
