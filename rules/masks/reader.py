"""The FX mask reader: ``Walker`` reads the subgraph that computes a mask into a ``V`` (formula.py),
node by node (memoised), through the ``@handles`` handlers: sources (iota, arange, full...), same values
in another dtype or storage, views, arithmetic, comparisons and logic.  A node it cannot read becomes
an opaque leaf (``Unknown``'s message says why)."""
from __future__ import annotations

import dataclasses
import math

import torch

from graphmfu import _inductor
from graphmfu.cost import op_name
from graphmfu.rules.masks.formula import (BIAS, FALSE, TRUE, Lin, Unknown, V, _as_lin, _as_pieces, _bias_arith,
                                          _cast_number, _normalise, _pieces, _scalar_value, absolute, and_, as_bool,
                                          atom, const, floordiv, leaf, not_, or_, remainder, var)


_MAX_NODES = 4000  # nodes walked per graph


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
