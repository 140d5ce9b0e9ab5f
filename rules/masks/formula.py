"""The mask reader's algebra: what it knows of a tensor's values, with no graph and no counting.

``Lin``: an integer-valued index expression of the query / key (and other) indices, with floor division and
``abs``; boolean formulas in negation normal form over atoms ``Lin op 0`` (``atom``, ``and_``, ``or_``,
``not_``, ``leaf`` for a value this pass cannot know, ``leaves``); ``V``: one tensor's value (an index
expression, a formula, piecewise constants ``_pieces`` or opaque); ``BIAS``: an unknown finite float (a
learned bias, the scores); ``kept``: the formula for the pairs a mask value keeps.  ``Unknown`` is raised
wherever a value cannot be read."""
from __future__ import annotations

import dataclasses
import math
from fractions import Fraction

import torch


class Unknown(Exception):
    """A part of the mask graph this pass cannot read (the message says which)."""


MASKED_AT = -1e4  # an additive mask value at or below this (or -inf) masks the pair out


class _Bias:
    """A finite float whose value this pass does not know: a learned additive bias (T5's relative
    position buckets read from a table by ``embedding``) or the attention scores themselves (the
    decomposed form: ``scores + mask``).  It keeps its pair; comparing or branching on it is unknown."""

    def __repr__(self):
        return "BIAS"

    def _unknown(self, *a):
        raise Unknown("a comparison or cast of unknown finite values (a bias or the scores)")

    __bool__ = __lt__ = __le__ = __gt__ = __ge__ = __int__ = __float__ = __abs__ = __index__ = _unknown

    def __eq__(self, o):
        return o is self

    def __hash__(self):
        return 0x5b1a5


BIAS = _Bias()


def _masked_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and (math.isnan(x) or x <= MASKED_AT)


def _bias_arith(name, x, y):
    """``x <name> y`` where one side is BIAS: BIAS where the result is some finite unknown value, a
    masked value stays masked (finfo.min or -inf plus a finite bias is still masked)."""
    other = y if x is BIAS else x
    if name == "add":
        if other is BIAS or (isinstance(other, (int, float)) and not isinstance(other, bool)
                             and math.isfinite(other) and other > MASKED_AT):
            return BIAS
        if _masked_number(other):
            return other
    elif name == "sub" and x is not BIAS:  # masked - finite stays masked; finite - BIAS is BIAS
        if _masked_number(x):
            return x
        if isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x):
            return BIAS
    elif name == "sub":
        if y is BIAS or (isinstance(y, (int, float)) and not isinstance(y, bool) and math.isfinite(y)):
            return BIAS
    elif name in ("mul", "div"):
        if isinstance(other, (int, float)) and not isinstance(other, bool) and math.isfinite(other) and other != 0 \
                and (name == "mul" or x is BIAS):
            return BIAS
        if name == "mul" and other == 0 and not isinstance(other, bool):
            return 0.0
    raise Unknown(f"{name} of unknown finite values (a bias or the scores) with {other!r}")


_MAX_PIECES = 64


# =========================================================================== integer expressions
#
# Lin: sum of coef * term + const, terms: ("v", p) the index along the dim p places from the right
# (p = 0: key index j, p = 1: query index i), ("fd", Lin, C) floor(Lin / C), ("abs", Lin).  Every term
# is integer-valued (the inner Lin of fd/abs has integer coefficients); coefficients and the constant
# may be fractions (true division by a constant).

@dataclasses.dataclass(frozen=True)
class Lin:
    terms: tuple = ()  # ((key, coef), ...) sorted by repr(key), coef != 0
    const: Fraction = Fraction(0)

    @staticmethod
    def make(items, const) -> "Lin":
        d: dict = {}
        for k, c in items:
            d[k] = d.get(k, 0) + c
        return Lin(tuple(sorted(((k, Fraction(c)) for k, c in d.items() if c != 0), key=lambda kc: repr(kc[0]))),
                   Fraction(const))

    @property
    def is_const(self) -> bool:
        return not self.terms

    @property
    def integral(self) -> bool:
        return self.const.denominator == 1 and all(c.denominator == 1 for _, c in self.terms)

    def __add__(self, o: "Lin") -> "Lin":
        return Lin.make(self.terms + o.terms, self.const + o.const)

    def scale(self, c) -> "Lin":
        c = Fraction(c)
        return Lin.make(tuple((k, v * c) for k, v in self.terms), self.const * c)

    def __neg__(self) -> "Lin":
        return self.scale(-1)

    def __sub__(self, o: "Lin") -> "Lin":
        return self + (-o)

    def vars(self) -> set:
        out = set()
        for k, _ in self.terms:
            out |= {k[1]} if k[0] == "v" else k[1].vars()
        return out

    def subst(self, fn) -> "Lin":
        """Replace ("v", p) by fn(p) (a Lin, or None to keep it)."""
        out = Lin((), self.const)
        for k, c in self.terms:
            if k[0] == "v":
                r = fn(k[1])
                out = out + (Lin.make(((k, c),), 0) if r is None else r.scale(c))
            elif k[0] == "fd":
                out = out + floordiv(k[1].subst(fn), k[2]).scale(c)
            else:
                out = out + absolute(k[1].subst(fn)).scale(c)
        return out


def const(v) -> Lin:
    return Lin((), Fraction(v))


def var(p: int) -> Lin:
    return Lin(((("v", p), Fraction(1)),), Fraction(0))


def floordiv(e: Lin, c) -> Lin:
    c = Fraction(c)
    if c <= 0 or c.denominator != 1 or not e.integral:
        raise Unknown("floor division other than an integer by a positive integer constant")
    c = int(c)
    if e.is_const:
        return const(math.floor(e.const / c))
    if c == 1:
        return e
    return Lin(((("fd", e, c), Fraction(1)),), Fraction(0))


def remainder(e: Lin, c) -> Lin:
    return e - floordiv(e, c).scale(c)


def absolute(e: Lin) -> Lin:
    if not e.integral:
        raise Unknown("abs of a non-integer index expression")
    if e.is_const:
        return const(abs(e.const))
    return Lin(((("abs", e), Fraction(1)),), Fraction(0))


# =========================================================================== boolean formulas (NNF)
#
# ("const", bool) | ("atom", Lin, op) with op in le ge eq ne, meaning Lin op 0 (Lin integral) |
# ("and", (...)) | ("or", (...)) | ("leaf", kind, detail, negated): a value this pass cannot know,
# kind "inputs" or "unrecognised".

TRUE, FALSE = ("const", True), ("const", False)
_NEG = {"le": "gt", "lt": "ge", "ge": "lt", "gt": "le", "eq": "ne", "ne": "eq"}
_SWAP = {"le": "ge", "lt": "gt", "ge": "le", "gt": "lt", "eq": "eq", "ne": "ne"}


def atom(lin: Lin, op: str):
    """The formula ``lin op 0`` (op: lt le gt ge eq ne)."""
    den = 1
    for c in [lin.const] + [c for _, c in lin.terms]:
        den = den * c.denominator // math.gcd(den, c.denominator)
    lin = lin.scale(den)  # integer coefficients; every term is integer-valued, so lin is an integer
    if op == "lt":
        lin, op = lin + const(1), "le"
    elif op == "gt":
        lin, op = lin - const(1), "ge"
    if lin.is_const:
        v = lin.const
        return TRUE if {"le": v <= 0, "ge": v >= 0, "eq": v == 0, "ne": v != 0}[op] else FALSE
    return ("atom", lin, op)


def leaf(kind: str, detail: str):
    return ("leaf", kind, detail, False)


def _junction(kind: str, absorbing, identity, xs):
    """``and`` (absorbing FALSE, identity TRUE) or ``or`` (the dual), flattened and deduplicated."""
    out = []
    for x in xs:
        if x == absorbing:
            return absorbing
        if x == identity:
            continue
        out.extend(x[1] if x[0] == kind else (x,))
    out = list(dict.fromkeys(out))
    return identity if not out else out[0] if len(out) == 1 else (kind, tuple(out))


def and_(*xs):
    return _junction("and", FALSE, TRUE, xs)


def or_(*xs):
    return _junction("or", TRUE, FALSE, xs)


def not_(x):
    kind = x[0]
    if kind == "const":
        return FALSE if x[1] else TRUE
    if kind == "atom":
        return atom(x[1], _NEG[x[2]])
    if kind == "and":
        return or_(*(not_(y) for y in x[1]))
    if kind == "or":
        return and_(*(not_(y) for y in x[1]))
    return ("leaf", x[1], x[2], not x[3])


def subst_bool(x, fn):
    kind = x[0]
    if kind == "atom":
        return atom(x[1].subst(fn), x[2])
    if kind == "and":
        return and_(*(subst_bool(y, fn) for y in x[1]))
    if kind == "or":
        return or_(*(subst_bool(y, fn) for y in x[1]))
    return x


def bool_vars(x) -> set:
    if x[0] == "atom":
        return x[1].vars()
    if x[0] in ("and", "or"):
        return set().union(*(bool_vars(y) for y in x[1]))
    return set()


def leaves(x) -> list:
    if x[0] == "leaf":
        return [x]
    if x[0] in ("and", "or"):
        return [lf for y in x[1] for lf in leaves(y)]
    return []


# =========================================================================== tensor values

@dataclasses.dataclass(frozen=True)
class V:
    """What the pass knows of one tensor: ``kind`` lin (an index expression), bool (a formula),
    piece (piecewise constant: ((formula, value), ...), formulas disjoint and covering), opaque
    (unknown values: ``data`` is the leaf standing for it); ``shape`` (ints); ``dtype``."""
    kind: str
    data: object
    shape: tuple
    dtype: torch.dtype | None = None

    def subst(self, fn) -> "V":
        if self.kind == "lin":
            return dataclasses.replace(self, data=self.data.subst(fn))
        if self.kind == "bool":
            return dataclasses.replace(self, data=subst_bool(self.data, fn))
        if self.kind == "piece":
            return dataclasses.replace(self, data=_pieces((subst_bool(c, fn), v) for c, v in self.data))
        return self

    def vars(self) -> set:
        if self.kind == "lin":
            return self.data.vars()
        if self.kind == "bool":
            return bool_vars(self.data)
        if self.kind == "piece":
            return set().union(*(bool_vars(c) for c, _ in self.data)) if self.data else set()
        return set()


def _pieces(items) -> tuple:
    merged: dict = {}
    for c, v in items:
        if c == FALSE:
            continue
        key = ("nan",) if isinstance(v, float) and math.isnan(v) else (type(v) is bool, v)
        merged[key] = (or_(merged[key][0], c), v) if key in merged else (c, v)
    out = tuple(merged.values())
    if len(out) > _MAX_PIECES:
        raise Unknown("too many distinct mask values")
    return out


def _normalise(v: V) -> V:
    """Dims of size 1 carry index 0: substitute it, so broadcasting lines up by position."""
    ones = {p for p in range(len(v.shape)) if v.shape[len(v.shape) - 1 - p] == 1}
    if ones and v.kind in ("lin", "bool", "piece") and v.vars() & ones:
        v = v.subst(lambda p: const(0) if p in ones else None)
    if not v.vars() <= set(range(len(v.shape))):
        raise Unknown("index expression on a dimension the tensor does not have")
    return v


def _cast_number(x, dtype):
    if dtype is None:
        return x
    if x is BIAS:
        if dtype.is_floating_point:
            return BIAS
        raise Unknown("unknown finite values (a bias or the scores) cast to an integer or bool")
    if dtype == torch.bool:
        return bool(x)
    if not dtype.is_floating_point and not dtype.is_complex:
        if isinstance(x, float) and not math.isfinite(x):
            raise Unknown("a non-finite value cast to an integer")
        return int(x)
    return float(torch.tensor(float(x), dtype=dtype).item())


def _scalar_value(x) -> V:
    return V("piece", ((TRUE, x),), ())


def _as_lin(v: V):
    if v.kind == "lin":
        return v.data
    if v.kind == "piece" and len(v.data) == 1 and v.data[0][0] == TRUE:
        x = v.data[0][1]
        if isinstance(x, bool):
            return const(int(x))
        if isinstance(x, (int, float)) and math.isfinite(x):
            return const(Fraction(x))
    return None


def _as_pieces(v: V) -> tuple:
    if v.kind == "piece":
        return v.data
    if v.kind == "bool":
        return _pieces(((v.data, True), (not_(v.data), False)))
    lin = _as_lin(v)
    if lin is not None and lin.is_const:
        c = lin.const
        return ((TRUE, int(c) if c.denominator == 1 else float(c)),)
    raise Unknown("an index expression mixed with mask values")


def as_bool(v: V):
    """The formula ``v != 0`` (a bool tensor's own values)."""
    if v.kind == "bool":
        return v.data
    if v.kind == "opaque":
        return v.data
    if v.kind == "lin":
        return atom(v.data, "ne")
    return or_(*(c for c, x in v.data if bool(x)))


def kept(v: V):
    """The formula for the pairs a mask value keeps: a bool mask its True, a float mask (additive)
    every value above MASKED_AT."""
    if v.kind == "opaque":
        return v.data
    if v.dtype is not None and v.dtype.is_floating_point:
        if v.kind == "lin":
            raise Unknown("a float bias that varies with the indices (not a mask)")
        pieces = _as_pieces(v)
        return or_(*(c for c, x in pieces if x is BIAS or not (math.isnan(x) or x <= MASKED_AT)))
    return as_bool(v)
