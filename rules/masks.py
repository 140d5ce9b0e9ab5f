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
"""
from __future__ import annotations

import collections
import dataclasses
import math
import sys
import threading
from fractions import Fraction

import torch

from graphmfu import _inductor
from graphmfu.cost import REGISTRY, Cost, op_name
from graphmfu.hostcopy import HostCopies

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


_MAX_INTERVALS = 64  # per row, before giving up (a formula this wide is not a mask pattern)
_MAX_PIECES = 64
_MAX_NODES = 4000  # nodes walked per graph
_BIG = 1 << 60

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


class Unknown(Exception):
    """A part of the mask graph this pass cannot read (the message says which)."""


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


# =========================================================================== the walk over FX nodes

def _short(target) -> str:
    name = op_name(target)
    parts = name.split(".")
    return parts[1] if len(parts) >= 2 and parts[0] in ("aten", "prims") else name


def _int_of(x):
    """An int from an int, a SymInt (its compile-time hint) or an FX node of a scalar size."""
    if isinstance(x, torch.fx.Node):
        x = x.meta.get("val")
    if isinstance(x, bool):
        return int(x)
    if isinstance(x, int):
        return x
    if isinstance(x, torch.SymInt):
        h = _inductor.size_hint(x)
        if h is None:
            raise Unknown("a data-dependent size")
        return h
    raise Unknown(f"a size that is not an integer ({type(x).__name__})")


def _number_of(x):
    if isinstance(x, torch.fx.Node):
        x = x.meta.get("val")
    if isinstance(x, (bool, int, float)):
        return x
    if isinstance(x, torch.SymInt):
        return _int_of(x)
    if isinstance(x, torch.SymFloat):
        raise Unknown("a symbolic float")
    raise Unknown(f"a scalar of type {type(x).__name__}")


def _constant(node):
    """The one value of a small graph constant (``get_attr``: a lifted ``torch.tensor(-inf)``,
    ``finfo.min``...) whose elements are all equal, else None."""
    obj = node.graph.owning_module
    for part in str(node.target).split("."):
        obj = getattr(obj, part, None)
    if not isinstance(obj, torch.Tensor) or obj.numel() == 0 or obj.numel() > 4096 or obj.device.type == "meta" \
            or _inductor.is_fake(obj) or obj.is_complex():
        return None
    try:
        flat = obj.detach().reshape(-1)
        first = flat[0]
        same = bool((flat == first).all()) or (flat.is_floating_point() and bool(flat.isnan().all()))
        return first.item() if same else None
    except Exception:  # noqa: BLE001 - an unreadable constant stays unknown
        return None


class Walker:
    """Reads the mask subgraph of one graph (memoised per node)."""

    def __init__(self, saved: dict | None = None):
        self.memo: dict = {}
        self.saved = saved or {}
        self.walked = 0
        self.symbolic = False  # a size was taken at its compile-time hint

    # ------------------------------------------------------------------ entry
    def value(self, node) -> V:
        if not isinstance(node, torch.fx.Node):
            return _scalar_value(_number_of(node))
        got = self.memo.get(node)
        if got is None:
            self.walked += 1
            try:
                if self.walked > _MAX_NODES:
                    raise Unknown("mask graph too large")
                got = self._node(node)
            except Unknown as e:
                got = V("opaque", leaf("unrecognised", str(e)), self._shape(node, strict=False), self._dtype(node))
            except RecursionError:
                got = V("opaque", leaf("unrecognised", "mask graph too deep"), (), self._dtype(node))
            self.memo[node] = got
        return got

    def _shape(self, node, strict=True) -> tuple:
        val = node.meta.get("val")
        if not isinstance(val, torch.Tensor):
            if strict:
                raise Unknown("no tensor metadata")
            return ()
        try:
            return tuple(_int_of(s) for s in val.shape)
        except Unknown:
            if strict:
                raise
            return ()

    @staticmethod
    def _dtype(node):
        val = node.meta.get("val")
        return val.dtype if isinstance(val, torch.Tensor) else None

    def _node(self, node) -> V:
        val = node.meta.get("val")
        if not isinstance(val, torch.Tensor):
            if isinstance(val, (int, float, bool, torch.SymInt)):
                return _scalar_value(_number_of(val))
            raise Unknown(f"{node.name} is not a tensor")
        if node.op == "placeholder":
            got = self.saved.get(node.name)
            if got is not None and got.shape == self._shape(node):
                return got
            return V("opaque", leaf("inputs", node.name), self._shape(node), val.dtype)
        if node.op == "get_attr":
            got = _constant(node)
            if got is not None:
                return _scalar_value(_cast_number(got, val.dtype))
            return V("opaque", leaf("inputs", f"constant {node.target}"), self._shape(node), val.dtype)
        if node.op != "call_function":
            raise Unknown(f"{node.op} {node.name}")
        short = _short(node.target)
        handler = _HANDLERS.get(short)
        if handler is None:
            raise Unknown(op_name(node.target))
        out = handler(self, node, self._shape(node), val.dtype)
        if out.kind == "opaque":
            return dataclasses.replace(out, shape=self._shape(node), dtype=val.dtype)
        return _normalise(dataclasses.replace(out, shape=self._shape(node), dtype=val.dtype))

    def arg(self, node, i, name=None, default=None):
        if i is not None and len(node.args) > i:
            return node.args[i]
        return node.kwargs.get(name, default) if name else default


_HANDLERS: dict = {}


def handles(*names):
    def deco(fn):
        for n in names:
            _HANDLERS[n] = fn
        return fn
    return deco


def _opaque_of(*vs):
    for v in vs:
        if v.kind == "opaque":
            return v
    return None


# ------------------------------------------------------------------ sources

@handles("iota")
def _iota(w, node, shape, dtype):
    start = _number_of(w.arg(node, None, "start", 0))
    step = _number_of(w.arg(node, None, "step", 1))
    return V("lin", var(0).scale(step) + const(start), shape)


@handles("arange")
def _arange(w, node, shape, dtype):
    a = [_number_of(x) for x in node.args]
    start = a[0] if len(a) >= 2 else node.kwargs.get("start", 0)
    step = a[2] if len(a) >= 3 else node.kwargs.get("step", 1)
    if not all(isinstance(x, int) for x in (start, step)):
        raise Unknown("arange with float bounds")
    return V("lin", var(0).scale(step) + const(start), shape)


@handles("full", "full_like", "new_full")
def _full(w, node, shape, dtype):
    fill = _number_of(w.arg(node, 2 if _short(node.target) == "new_full" else 1, "fill_value"))
    return _scalar_value(_cast_number(fill, dtype))


@handles("scalar_tensor")
def _scalar_tensor(w, node, shape, dtype):
    return _scalar_value(_cast_number(_number_of(node.args[0]), dtype))


@handles("zeros", "zeros_like", "new_zeros")
def _zeros(w, node, shape, dtype):
    return _scalar_value(_cast_number(0, dtype))


@handles("ones", "ones_like", "new_ones")
def _ones(w, node, shape, dtype):
    return _scalar_value(_cast_number(1, dtype))


# ------------------------------------------------------------------ same values, other dtype or storage

def _convert(v: V, dtype) -> V:
    if v.kind == "opaque" or dtype is None:
        return v
    if dtype == torch.bool:
        return V("bool", as_bool(v), v.shape)
    if v.kind == "lin":
        if dtype.is_floating_point and dtype.itemsize < 4:
            raise Unknown(f"an index expression cast to {dtype} (inexact)")
        if not dtype.is_floating_point and not v.data.integral:
            raise Unknown("a fractional index expression cast to an integer")
        return v
    return V("piece", _pieces((c, _cast_number(x, dtype)) for c, x in _as_pieces(v)), v.shape)


@handles("clone", "alias", "contiguous", "lift_fresh_copy", "detach", "_to_copy", "convert_element_type", "to",
         "device_put", "alias_copy", "detach_copy", "type_as")
def _same(w, node, shape, dtype):
    return _convert(w.value(node.args[0]), dtype)


# ------------------------------------------------------------------ views

def _shift(v: V, fn) -> V:
    return v.subst(lambda p: var(fn(p)))


@handles("unsqueeze", "unsqueeze_copy")
def _unsqueeze(w, node, shape, dtype):
    v = w.value(node.args[0])
    n = len(shape)
    d = node.args[1] % n
    p_new = n - 1 - d  # positions >= p_new move one to the left
    return _shift(v, lambda p: p + 1 if p >= p_new else p)


@handles("squeeze", "squeeze_copy")
def _squeeze(w, node, shape, dtype):
    v = w.value(node.args[0])
    n_in = len(v.shape)
    dims = node.args[1] if len(node.args) > 1 else [d for d in range(n_in) if v.shape[d] == 1]
    dims = [dims] if isinstance(dims, int) else list(dims)
    gone = sorted({n_in - 1 - (d % n_in) for d in dims if v.shape[d % n_in] == 1})
    return _shift(v, lambda p: p - sum(1 for g in gone if g < p))


@handles("expand", "expand_copy", "broadcast_to")
def _expand(w, node, shape, dtype):
    return w.value(node.args[0])  # size-1 dims carry no index, new leading dims none either


@handles("permute", "permute_copy")
def _permute(w, node, shape, dtype):
    v = w.value(node.args[0])
    n = len(shape)
    perm = [d % n for d in node.args[1]]
    # out dim d is in dim perm[d]: in position n-1-perm[d] -> out position n-1-d
    where_to = {n - 1 - perm[d]: n - 1 - d for d in range(n)}
    return _shift(v, lambda p: where_to[p])


@handles("transpose", "transpose_copy")
def _transpose(w, node, shape, dtype):
    v = w.value(node.args[0])
    n = len(shape)
    a, b = n - 1 - node.args[1] % n, n - 1 - node.args[2] % n
    return _shift(v, lambda p: b if p == a else a if p == b else p)


@handles("t", "t_copy")
def _t(w, node, shape, dtype):
    v = w.value(node.args[0])
    return _shift(v, lambda p: 1 - p) if len(shape) == 2 else v


@handles("view", "reshape", "_unsafe_view", "view_copy")
def _view(w, node, shape, dtype):
    v = w.value(node.args[0])
    if len(node.args) > 1 and isinstance(node.args[1], torch.dtype):
        if v.kind == "opaque" or node.args[1] == v.dtype:
            return v
        raise Unknown("a bit-cast view")
    if v.kind == "piece" and not v.vars():
        return v  # the same values everywhere a condition does not vary: any reshape keeps them
    src = [(len(v.shape) - 1 - d, s) for d, s in enumerate(v.shape) if s != 1]
    dst = [(len(shape) - 1 - d, s) for d, s in enumerate(shape) if s != 1]
    if [s for _, s in src] != [s for _, s in dst]:
        if v.kind == "opaque":
            return v
        raise Unknown("a reshape that merges or splits dimensions")
    to = {p: q for (p, _), (q, _) in zip(src, dst)}
    return _shift(v, lambda p: to[p])


@handles("slice", "slice_copy")
def _slice(w, node, shape, dtype):
    v = w.value(node.args[0])
    n = len(v.shape)
    dim = w.arg(node, 1, "dim", 0) % n
    size = v.shape[dim]
    start = w.arg(node, 2, "start", None)
    step = _int_of(w.arg(node, 4, "step", 1))
    start = 0 if start is None else _int_of(start)
    if start < 0:
        start += size
    start = min(max(start, 0), size)
    p = n - 1 - dim
    return v.subst(lambda q: var(p).scale(step) + const(start) if q == p else None)


@handles("select", "select_copy")
def _select(w, node, shape, dtype):
    v = w.value(node.args[0])
    n = len(v.shape)
    dim = node.args[1] % n
    index = _int_of(node.args[2])
    if index < 0:
        index += v.shape[dim]
    p = n - 1 - dim
    v = v.subst(lambda q: const(index) if q == p else None)
    return _shift(v, lambda q: q - 1 if q > p else q)


@handles("constant_pad_nd")
def _pad(w, node, shape, dtype):
    v = w.value(node.args[0])
    pad = [_int_of(x) for x in node.args[1]]
    value = _number_of(w.arg(node, 2, "value", 0))
    if v.kind == "opaque":
        return v
    if v.kind == "lin":
        raise Unknown("a padded index expression")
    pieces = _as_pieces(v) if v.kind != "bool" else None
    inside = TRUE
    shifts = {}
    for k in range(len(pad) // 2):
        p = k  # pad pairs start at the last dim
        left = pad[2 * k]
        size_in = v.shape[len(v.shape) - 1 - p]
        shifts[p] = left
        x = var(p) - const(left)  # index into the unpadded tensor
        inside = and_(inside, atom(x, "ge"), atom(x - const(size_in - 1), "le"))
    moved = v.subst(lambda q: var(q) - const(shifts[q]) if q in shifts else None)
    if v.kind == "bool":
        return V("bool", or_(and_(inside, moved.data), and_(not_(inside), TRUE if bool(value) else FALSE)), shape)
    del pieces
    return V("piece", _pieces([(and_(inside, c), x) for c, x in moved.data] +
                              [(not_(inside), _cast_number(value, dtype))]), shape)


@handles("embedding")
def _embedding(w, node, shape, dtype):
    if dtype is None or not dtype.is_floating_point:
        raise Unknown("an embedding of non-float values")
    return _scalar_value(BIAS)  # rows of a table: a learned bias (T5's relative positions), finite


@handles("tanh")
def _tanh(w, node, shape, dtype):
    v = w.value(node.args[0])
    if v.kind == "opaque":
        return v
    if v.kind == "lin":
        raise Unknown("tanh of an index expression")
    return V("piece", _pieces((c, BIAS if x is BIAS else math.tanh(x)) for c, x in _as_pieces(v)), ())


@handles("amax")
def _amax(w, node, shape, dtype):
    # softmax's row maximum (decomposed form): finite where its row keeps a pair, and only subtracted
    v = w.value(node.args[0])
    if v.kind == "opaque":
        return v
    if v.kind == "lin" or not any(x is BIAS for _, x in _as_pieces(v)):
        raise Unknown("a maximum of known values")
    return _scalar_value(BIAS)


@handles("getitem")
def _getitem(w, node, shape, dtype):
    # Inductor's online softmax on CUDA/XPU (post_grad's prepare_softmax_pattern): amax and the exp-sum
    # become one prims.prepare_softmax_online(x, dim) -> (max, sum); exp's input is x - getitem(., 0),
    # the row maximum as amax gives it (CPU graphs keep amax)
    src, i = node.args[0], node.args[1]
    if isinstance(src, torch.fx.Node) and src.op == "call_function" and i == 0 \
            and _short(src.target) == "prepare_softmax_online":
        return _amax(w, src, shape, dtype)
    raise Unknown(f"an item of {op_name(src.target) if isinstance(src, torch.fx.Node) else src!r}")


@handles("index")
def _index(w, node, shape, dtype):
    src = w.value(node.args[0])
    if src.kind == "opaque":
        return src
    raise Unknown("indexing a tensor by index tensors")


# ------------------------------------------------------------------ arithmetic

def _binary(w, node, fn_lin, fn_num, name):
    a, b = w.value(node.args[0]), w.value(node.args[1])
    alpha = node.kwargs.get("alpha")
    if alpha is not None and name in ("add", "sub"):
        b = _scale_value(b, _number_of(alpha))
    o = _opaque_of(a, b)
    if o is not None:
        return o
    la, lb = _as_lin(a), _as_lin(b)
    if (a.kind == "lin" or b.kind == "lin") and la is not None and lb is not None:
        return V("lin", fn_lin(la, lb), ())
    pa, pb = _as_pieces(a), _as_pieces(b)
    out = []
    for ca, xa in pa:
        for cb, xb in pb:
            c = and_(ca, cb)
            if c != FALSE:
                if xa is BIAS or xb is BIAS:
                    out.append((c, _bias_arith("sub", xb, xa) if name == "rsub" else _bias_arith(name, xa, xb)))
                else:
                    out.append((c, fn_num(xa, xb)))
    return V("piece", _pieces(out), ())


def _scale_value(v: V, s):
    if v.kind == "lin":
        return V("lin", v.data.scale(s), v.shape, v.dtype)
    if v.kind == "opaque":
        return v
    return V("piece", _pieces((c, _bias_arith("mul", x, s) if x is BIAS else x * s) for c, x in _as_pieces(v)),
             v.shape, v.dtype)


def _lin_mul(a: Lin, b: Lin) -> Lin:
    if a.is_const:
        return b.scale(a.const)
    if b.is_const:
        return a.scale(b.const)
    raise Unknown("a product of two index expressions")


def _lin_div(a: Lin, b: Lin) -> Lin:
    if not b.is_const or b.const == 0:
        raise Unknown("division by an index expression")
    return a.scale(1 / b.const)


def _lin_floordiv(a: Lin, b: Lin) -> Lin:
    if not b.is_const:
        raise Unknown("floor division by an index expression")
    return floordiv(a, b.const)


def _lin_rem(a: Lin, b: Lin) -> Lin:
    if not b.is_const:
        raise Unknown("remainder by an index expression")
    return remainder(a, b.const)


def _safe(f):
    def g(x, y):
        try:
            return f(x, y)
        except (ZeroDivisionError, OverflowError, ValueError):
            return float("nan")
    return g


def _cast_out(v: V, dtype) -> V:
    if v.kind == "piece":
        return V("piece", _pieces((c, _cast_number(x, dtype)) for c, x in v.data), v.shape)
    return v


@handles("add")
def _add(w, node, shape, dtype):
    return _cast_out(_binary(w, node, lambda a, b: a + b, _safe(lambda x, y: x + y), "add"), dtype)


@handles("sub")
def _sub(w, node, shape, dtype):
    return _cast_out(_binary(w, node, lambda a, b: a - b, _safe(lambda x, y: x - y), "sub"), dtype)


@handles("rsub")
def _rsub(w, node, shape, dtype):
    return _cast_out(_binary(w, node, lambda a, b: b - a, _safe(lambda x, y: y - x), "rsub"), dtype)


@handles("mul")
def _mul(w, node, shape, dtype):
    return _cast_out(_binary(w, node, _lin_mul, _safe(lambda x, y: x * y), "mul"), dtype)


@handles("div")
def _div(w, node, shape, dtype):
    mode = node.kwargs.get("rounding_mode")
    if mode == "floor":
        return _cast_out(_binary(w, node, _lin_floordiv, _safe(lambda x, y: math.floor(x / y)), "div"), dtype)
    if mode is not None:
        a = w.value(node.args[0])
        if a.kind == "opaque":
            return a
        raise Unknown(f"division with rounding_mode={mode!r}")
    return _cast_out(_binary(w, node, _lin_div, _safe(lambda x, y: x / y), "div"), dtype)


@handles("floor_divide")
def _floor_divide(w, node, shape, dtype):
    return _cast_out(_binary(w, node, _lin_floordiv, _safe(lambda x, y: x // y), "floor_divide"), dtype)


@handles("remainder")
def _remainder(w, node, shape, dtype):
    return _cast_out(_binary(w, node, _lin_rem, _safe(lambda x, y: x % y), "remainder"), dtype)


@handles("neg")
def _neg(w, node, shape, dtype):
    return _scale_value(w.value(node.args[0]), -1)


@handles("abs")
def _abs(w, node, shape, dtype):
    v = w.value(node.args[0])
    if v.kind == "opaque":
        return v
    if v.kind == "lin":
        return V("lin", absolute(v.data), ())
    return V("piece", _pieces((c, abs(x)) for c, x in _as_pieces(v)), ())


# ------------------------------------------------------------------ comparisons and logic

_CMP = {"lt": lambda x, y: x < y, "le": lambda x, y: x <= y, "gt": lambda x, y: x > y,
        "ge": lambda x, y: x >= y, "eq": lambda x, y: x == y, "ne": lambda x, y: x != y}


def _compare(op):
    def handler(w, node, shape, dtype):
        a, b = w.value(node.args[0]), w.value(node.args[1])
        o = _opaque_of(a, b)
        if o is not None:
            return V("bool", o.data, ())
        la, lb = _as_lin(a), _as_lin(b)
        if la is not None and lb is not None:
            return V("bool", atom(la - lb, op), ())
        if a.kind == "lin" or b.kind == "lin":
            raise Unknown("an index expression compared with mask values")
        out = []
        for ca, xa in _as_pieces(a):
            for cb, xb in _as_pieces(b):
                if xa is BIAS or xb is BIAS:
                    raise Unknown("a comparison of unknown finite values (a bias or the scores)")
                if _CMP[op](xa, xb):
                    out.append(and_(ca, cb))
        return V("bool", or_(*out), ())
    return handler


for _op in _CMP:
    _HANDLERS[_op] = _compare(_op)


def _bools(w, node):
    return [as_bool(w.value(a)) for a in node.args[:2]]


@handles("logical_and", "bitwise_and")
def _and(w, node, shape, dtype):
    if dtype != torch.bool:
        raise Unknown("bitwise and of integers")
    return V("bool", and_(*_bools(w, node)), ())


@handles("logical_or", "bitwise_or")
def _or(w, node, shape, dtype):
    if dtype != torch.bool:
        raise Unknown("bitwise or of integers")
    return V("bool", or_(*_bools(w, node)), ())


@handles("logical_xor", "bitwise_xor")
def _xor(w, node, shape, dtype):
    if dtype != torch.bool:
        raise Unknown("bitwise xor of integers")
    a, b = _bools(w, node)
    return V("bool", or_(and_(a, not_(b)), and_(not_(a), b)), ())


@handles("logical_not", "bitwise_not")
def _not(w, node, shape, dtype):
    v = w.value(node.args[0])
    if dtype != torch.bool:
        raise Unknown("bitwise not of integers")
    return V("bool", not_(as_bool(v)), ())


def _select_values(cond, a: V, b: V, dtype) -> V:
    if dtype == torch.bool:
        return V("bool", or_(and_(cond, as_bool(a)), and_(not_(cond), as_bool(b))), ())
    o = _opaque_of(a, b)
    if o is not None:
        return o
    pa, pb = _as_pieces(a), _as_pieces(b)
    return V("piece", _pieces([(and_(cond, c), _cast_number(x, dtype)) for c, x in pa] +
                              [(and_(not_(cond), c), _cast_number(x, dtype)) for c, x in pb]), ())


@handles("where")
def _where(w, node, shape, dtype):
    cond = as_bool(w.value(node.args[0]))
    return _select_values(cond, w.value(node.args[1]), w.value(node.args[2]), dtype)


@handles("masked_fill")
def _masked_fill(w, node, shape, dtype):
    cond = as_bool(w.value(node.args[1]))
    return _select_values(cond, w.value(node.args[2]), w.value(node.args[0]), dtype)


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


# =========================================================================== the graph pass

_SAVED: "collections.OrderedDict[str, tuple]" = collections.OrderedDict()
_SAVED_LOCK = threading.Lock()


def _mask_arg(node, spec):
    pos, name, _, _ = spec
    if pos is not None and len(node.args) > pos:
        return node.args[pos]
    return node.kwargs.get(name)


def _causal(node, spec) -> bool:
    pos = spec[2]
    v = node.args[pos] if len(node.args) > pos else node.kwargs.get(_CAUSAL_NAME, False)
    return bool(v) if isinstance(v, (bool, int)) else False


def _linked(gm, cid) -> dict:
    """What the forward graph of the same compile read of its outputs, when ``gm`` is its backward."""
    if cid is None:
        return {}
    with _SAVED_LOCK:
        entry = _SAVED.get(cid)
    if entry is None:
        return {}
    outputs, values = entry
    saved = [n.name for n in gm.graph.nodes if n.op == "placeholder" and not n.name.startswith("tangents")]
    if not saved or not set(saved) <= outputs:
        return {}
    return values


def _remember(gm, cid, walker) -> None:
    """A forward graph: keep what the walk read of its outputs for its backward (always replacing what
    an earlier graph of the same compile id left, so a stale entry is never read)."""
    if cid is None:
        return
    placeholders = [n.name for n in gm.graph.nodes if n.op == "placeholder"]
    if any(p.startswith("tangents") for p in placeholders):
        return  # a backward graph: it reads, the forward writes
    out = next((n for n in reversed(gm.graph.nodes) if n.op == "output"), None)
    names, values = set(), {}
    for a in _inductor.tree_leaves(out.args if out is not None else ()):
        if isinstance(a, torch.fx.Node):
            names.add(a.name)
            got = walker.memo.get(a)
            if got is not None and got.kind != "opaque":
                values[a.name] = got
    with _SAVED_LOCK:
        _SAVED[cid] = (names, values)
        _SAVED.move_to_end(cid)
        while len(_SAVED) > 256:
            _SAVED.popitem(last=False)


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
    _decomposed(gm, records, walker, cid)
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


# ----------------------------------------------------------------- per call: the real mask (profile())

_HEAVY = ("mm", "bmm", "addmm", "baddbmm", "matmul", "convolution", "_scaled_dot_product", "_flash_attention",
          "_efficient_attention", "_grouped_mm", "_scaled_mm")
_MAX_PROBE_NODES = 300


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
    total = 0
    for start in range(0, m.shape[-2], rows):
        block = m[..., start:start + rows, :]
        keep = block if block.dtype == torch.bool else (block > MASKED_AT)  # nan and -inf: masked
        total = total + keep.sum(dtype=torch.int64)  # left on the device: read when the caller needs it
    return total * repeats


def _repeats(shape, lead: int, tq: int, tk: int) -> int:
    """How often broadcasting a mask of ``shape`` (at least 2-D) to ``lead`` x (tq, tk) repeats each entry."""
    own = math.prod(shape[:-2])
    mq, mk = shape[-2], shape[-1]
    if lead % own or (mq not in (1, tq)) or (mk not in (1, tk)):
        raise ValueError(f"mask of shape {tuple(shape)} does not broadcast to ({lead} entries, {tq}, {tk})")
    return (lead // own) * (tq // mq) * (tk // mk)


class Probes:
    """Input-dependent masks of one graph, counted per call.  The node's cost keeps the kept pairs as a
    symbol ``pairs_<mask node>`` (its hint: the count known without values, dense or the size-only
    bound); a probe ``fn(inputs) -> int`` runs the graph's small mask subgraph on a call's real inputs
    and counts what it keeps.  ``attach`` leaves ``[(symbol, hint, fn)]`` on the GraphModule as
    ``_graphmfu_probes`` for the capture layer (capture.py), which tags compiled calls with them."""

    def __init__(self, gm):
        self.gm = gm
        self.items: list = []  # (symbol, hint, fn)
        self.by_key: dict = {}
        self._placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
        self._sizes = None
        self._copies = HostCopies()  # the mask inputs' host copies, shared by the probes of one call

    def attach(self) -> None:
        try:
            self.gm._graphmfu_probes = list(self.items)
        except (AttributeError, TypeError):
            pass

    # --------------------------------------------------------------- the mask's subgraph
    def _subgraph(self, mask_node):
        need, stack = set(), [mask_node]
        while stack:
            n = stack.pop()
            if n in need:
                continue
            need.add(n)
            if len(need) > _MAX_PROBE_NODES:
                return None
            if n.op == "call_function":
                name = op_name(n.target)
                if any(name.split(".")[1 if name.startswith(("aten.", "prims.")) else 0].startswith(h)
                       for h in _HEAVY):
                    return None  # not a mask computation worth re-running per call
            elif n.op not in ("placeholder", "get_attr"):
                return None
            stack.extend(n.all_input_nodes)
        g = torch.fx.Graph()
        env, used = {}, []
        index = {n: i for i, n in enumerate(self._placeholders)}
        for n in self.gm.graph.nodes:
            if n not in need:
                continue
            if n.op == "placeholder":
                env[n] = g.placeholder(n.name)
                used.append(index[n])
            else:
                env[n] = g.node_copy(n, lambda a: env[a])
        g.output(env[mask_node])
        return torch.fx.GraphModule(self.gm, g), used

    def _size_reader(self):
        """[(input index, dim or None, symbol)] of the graph's size symbols (as capture's size_args)."""
        if self._sizes is None:
            out = _inductor.size_symbols(self.gm)
            self._sizes = out
        return self._sizes

    def _ints(self, exprs, inputs):
        """Sizes (ints or sympy expressions of the graph's symbols) for one call."""
        if all(isinstance(e, int) for e in exprs):
            return exprs
        subs = {}
        for i, d, sym in self._size_reader():
            x = inputs[i]
            subs[sym] = int(x if d is None else x.shape[d])
        return [int(e) if isinstance(e, int) else int(e.xreplace(subs)) for e in exprs]

    # --------------------------------------------------------------- one SDPA node
    def per_call(self, rec, node, spec, mc: MaskCount) -> bool:
        """Give SDPA ``node`` (record ``rec``) a per-call pair count; False when its mask cannot be probed."""
        import sympy

        mask = _mask_arg(node, spec)
        qv, kv = _q_k(node, spec)
        exprs = [_sym_or_int(x) for x in (*qv.shape[:-2], qv.shape[-2], kv.shape[-2])]
        lead_e, tq_e, tk_e = sympy.Mul(*exprs[:-2]) if len(exprs) > 2 else 1, exprs[-2], exprs[-1]
        lead_e = int(lead_e) if getattr(lead_e, "is_Integer", False) or isinstance(lead_e, int) else lead_e
        key = (mask.name, str(lead_e), str(tq_e), str(tk_e))
        name = self.by_key.get(key)
        if name is None:
            sub = self._subgraph(mask)
            if sub is None:
                return False
            module, used = sub
            same = (_signature(module), tuple(used), *key[1:])  # the same mask computed twice (per layer)
            name = self.by_key.get(same)
            if name is not None:
                self.by_key[key] = name
                self._symbolic_cost(rec, node, spec, mc, name, lead_e, tq_e, tk_e)
                return True
            name = f"pairs_{mask.name}" if not any(k[0] == mask.name for k in self.by_key) else \
                f"pairs_{mask.name}_{node.name}"
            hint = mc.pairs * math.prod(_int_of(s) for s in qv.shape[:-2])
            dims = (lead_e, tq_e, tk_e)

            def probe(inputs, module=module, used=used, dims=dims, hint=hint):
                try:
                    lead, tq, tk = self._ints(list(dims), inputs)
                    with torch.no_grad(), _probe_range():  # the count's own ops too: graphmfu's, not the model's
                        return kept_total(module(*[inputs[i] for i in used]), lead, tq, tk)
                except Exception:  # noqa: BLE001 - never break the call: the count without values
                    return hint

            def defer(inputs, module=module, used=used, dims=dims, hint=hint):
                """No waiting for the device (the meter): the sizes now, host copies of the mask's inputs
                queued, the count on the host when the step is done.  None when the inputs are large
                (a 4-D mask: then the probe counts on the device at the call)."""
                xs = [inputs[i] for i in used]
                if sum(x.numel() * x.element_size() for x in xs if isinstance(x, torch.Tensor)) > _DEFER_BYTES:
                    return None
                lead, tq, tk = self._ints(list(dims), inputs)
                copies = [self._copies.of(inputs, i) for i in used]  # (no profile runs: no probe range)

                def finish():
                    try:
                        return _host_count(module, [c.wait() for c in copies], lead, tq, tk)
                    except Exception:  # noqa: BLE001 - the count without values
                        return hint

                def land():  # the step is done: the copies' values to ordinary memory, counted later
                    for c in copies:
                        c.land()
                finish.land = land
                return finish

            probe.defer = defer
            self.by_key[key] = self.by_key[same] = name
            self.items.append((name, hint, probe))
        self._symbolic_cost(rec, node, spec, mc, name, lead_e, tq_e, tk_e)
        return True

    @staticmethod
    def _symbolic_cost(rec, node, spec, mc, name, lead_e, tq_e, tk_e) -> None:
        import sympy

        from graphmfu.cost import symbolic_cost

        att = _attention_module()
        per_score = getattr(att, "VECTOR_PER_SCORE", 5)
        base = symbolic_cost(rec.sym) if rec.sym else rec.cost
        pairs = sympy.Symbol(name)
        dense = lead_e * tq_e * tk_e
        matrix = {k: sympy.simplify(sympy.sympify(v) / dense) * pairs for k, v in base.matrix_dense}
        vector = dict(base.vector)
        if len(vector) == 1:
            (k, v), = vector.items()
            vector[k] = sympy.expand(v - per_score * (dense - pairs))
        sym = Cost.of(matrix, dense=dict(base.matrix_dense), vector=vector, read=base.bytes_read,
                      written=base.bytes_written)
        qv, _ = _q_k(node, spec)
        bh = math.prod(_int_of(s) for s in qv.shape[:-2])
        tq, tk = _int_of(qv.shape[-2]), _int_of(_q_k(node, spec)[1].shape[-2])
        rec.cost = with_pairs(rec.cost, bh, tq, tk, mc.pairs)
        rec.sym, rec.cost_expr = sym.formulas(), sym.as_strings()
        where = (f"counted per call from the real mask {_mask_arg(node, spec).name} under profile() (symbol "
                 f"{name}; without values: {mc.pairs * bh})")
        if not mc.unknown:  # a size-only mask of a dynamic graph: exact at the compile-time sizes
            rec.note = "; ".join(filter(None, (rec.note, f"attn_mask pairs exact at the compile-time sizes, {where}")))
            return
        kinds = {k for k, _ in mc.unknown}
        rec.flag(UPPER_BOUND if mc.pairs < mc.dense else INPUTS if kinds == {"inputs"} else UNRECOGNISED)
        details = sorted({f"{k}: {d}" for k, d in mc.unknown})
        rec.note = f"{rec.note} ({'; '.join(details[:3])}); {where}"


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


def _signature(module) -> tuple:
    """A mask subgraph's structure with node names replaced by positions (two copies of one mask
    computation, e.g. one per layer, have the same signature)."""
    pos = {n: i for i, n in enumerate(module.graph.nodes)}

    def arg(a):
        if isinstance(a, torch.fx.Node):
            return ("node", pos[a])
        if isinstance(a, (list, tuple)):
            return tuple(arg(x) for x in a)
        if isinstance(a, dict):
            return tuple(sorted((k, arg(v)) for k, v in a.items()))
        return repr(a)

    return tuple((n.op, str(n.target) if n.op != "placeholder" else "", arg(n.args), arg(n.kwargs))
                 for n in module.graph.nodes)


_DEFER_BYTES = 1 << 20  # a mask's inputs copied to the host per call when they are at most this large


def _on_host(module):
    """``module`` (a mask subgraph) made to run on host tensors: device arguments and constants on the
    host (memoised on the module)."""
    host = getattr(module, "_graphmfu_host", None)
    if host is not None:
        return host
    import copy

    host = copy.deepcopy(module)
    for n in host.graph.nodes:
        if "device" in n.kwargs:
            n.kwargs = {**n.kwargs, "device": torch.device("cpu")}
        if n.op == "get_attr":
            obj = host
            *path, last = n.target.split(".")
            for p in path:
                obj = getattr(obj, p)
            v = getattr(obj, last)
            if isinstance(v, torch.Tensor):
                setattr(obj, last, v.cpu())
    host.recompile()
    module._graphmfu_host = host
    return host


_NUMPY_CHECKS = 3  # the first calls of each mask subgraph are counted with NumPy and with torch, and compared


def _host_count(module, copies, lead: int, tq: int, tk: int) -> int:
    """The pairs a mask subgraph keeps on host copies of its inputs: with NumPy (rules/host_eval.py, a
    few microseconds) once its first ``_NUMPY_CHECKS`` calls have given torch's count; with torch on the
    host when NumPy cannot evaluate it or ever disagreed."""
    he = sys.modules.get("graphmfu.rules.host_eval")
    state = module.__dict__.get("_graphmfu_numpy")  # [numpy fn or None, checks left]
    if state is None:
        state = module._graphmfu_numpy = [he.numpy_fn(module) if he is not None else None, _NUMPY_CHECKS]
    fn, n = state[0], None
    if fn is not None:
        try:
            n = kept_total(fn(*copies), lead, tq, tk)
        except Exception:  # noqa: BLE001 - torch counts it
            state[0] = None
        if n is not None and state[1] <= 0:
            return n
    with torch.no_grad():
        ref = int(kept_total(_on_host(module)(*copies), lead, tq, tk))
    if state[0] is not None:
        state[1] -= 1
        if n != ref:  # NumPy's evaluation differs from torch's: torch from now on
            state[0] = None
    return ref


def _guarded(fn, hint):
    def probe(inputs):
        try:
            return fn(inputs)
        except Exception:  # noqa: BLE001 - never break the call: the count without values
            return hint
    return probe


PROBE_RANGE = _inductor.PROBE_RANGE


def _probe_range():
    """The profiler range around a probe's own ops (graphmfu's overhead, not the model's work: the join
    leaves them out)."""
    return torch.profiler.record_function(_inductor.PROBE_RANGE)


def _sym_or_int(x):
    if isinstance(x, torch.SymInt):
        e = _inductor.sym_value(x)
        return int(e) if getattr(e, "is_Integer", False) else e
    return int(x)


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
