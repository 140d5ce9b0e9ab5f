"""Mask subgraphs evaluated on the host with NumPy: the meter's per-call mask counts at a few
microseconds instead of one eager ATen call per node.

A mask subgraph (``masks.Probes``: the few nodes that build an attention mask from a call's inputs,
e.g. ``iota(S) <= cache_position[-1]``) is compiled once into a list of NumPy calls, one per node, each
result cast to the dtype the node has in the graph (``meta["val"]``), so that NumPy's type promotion
never decides a value.  An op missing from ``_NUMPY`` below, a dtype NumPy lacks (bfloat16) or no NumPy
at all: ``numpy_fn`` returns None and the caller evaluates the subgraph with torch on the host.  The
caller also checks the first calls of each subgraph against torch (``masks._host_count``) and falls back
for good on any difference.

Op knowledge (what each ATen op computes) lives here, beside the rules."""
from __future__ import annotations

import torch

from graphmfu.cost import op_name

_DTYPES = {torch.bool: "bool", torch.uint8: "uint8", torch.int8: "int8", torch.int16: "int16",
           torch.int32: "int32", torch.int64: "int64", torch.float16: "float16", torch.float32: "float32",
           torch.float64: "float64"}


def _np():
    try:
        import numpy
    except ImportError:  # torch runs without NumPy: the caller evaluates with torch
        return None
    return numpy


def np_dtype(dtype):
    """The NumPy dtype of a torch dtype (None when NumPy has none).  bfloat16 is computed in float32:
    a mask's values (0, the dtype's minimum, -inf) are exact in both, and the caller's checks against
    torch catch a count that rounding would change."""
    np = _np()
    name = _DTYPES.get(dtype) or ("float32" if dtype == torch.bfloat16 else None)
    return None if np is None or name is None else np.dtype(name)


def _host_array(x):
    """A host tensor as a NumPy array (bfloat16 as float32)."""
    return (x.float() if x.dtype == torch.bfloat16 else x).numpy()


# --------------------------------------------------------------------------- the ops


def _iota(np, length, *, start=0, step=1, dtype=torch.int64, **_):
    return np.arange(start, start + length * step, step, dtype=np_dtype(dtype))


def _arange(np, *args, dtype=None, **_):
    start, end, step = (0, args[0], 1) if len(args) == 1 else (args[0], args[1], args[2] if len(args) > 2 else 1)
    return np.arange(start, end, step)


def _full(np, size, value, *, dtype=None, **_):
    return np.full(tuple(size), value, dtype=np_dtype(dtype) if dtype is not None else None)


def _scalar_tensor(np, value, *, dtype=None, **_):
    return np.array(value, dtype=np_dtype(dtype) if dtype is not None else None)


def _zeros(np, size, *, dtype=None, **_):
    return np.zeros(tuple(size), dtype=np_dtype(dtype) if dtype is not None else np.float32)


def _ones(np, size, *, dtype=None, **_):
    return np.ones(tuple(size), dtype=np_dtype(dtype) if dtype is not None else np.float32)


def _convert(np, x, dtype, *_, **__):
    return np.asarray(x).astype(np_dtype(dtype))


def _to_copy(np, x, *, dtype=None, **_):
    return np.array(x, dtype=np_dtype(dtype)) if dtype is not None else np.array(x)


def _same(np, x, *_, **__):
    return x


def _view(np, x, size, *_, **__):
    return np.reshape(x, tuple(size))


def _unsqueeze(np, x, dim):
    x = np.asarray(x)
    return np.expand_dims(x, dim if dim >= 0 else dim + x.ndim + 1)


def _squeeze(np, x, dim=None):
    x = np.asarray(x)
    if dim is None:
        return np.squeeze(x)
    dims = [d % max(x.ndim, 1) for d in (dim if isinstance(dim, (list, tuple)) else [dim])]
    return np.squeeze(x, axis=tuple(d for d in dims if x.ndim and x.shape[d] == 1))


def _expand(np, x, size, *_, **__):
    x = np.asarray(x)
    lead = len(size) - x.ndim
    target = tuple(x.shape[i - lead] if s == -1 else s for i, s in enumerate(size))
    return np.broadcast_to(x, target)


def _permute(np, x, dims):
    return np.transpose(x, tuple(dims))


def _transpose(np, x, a, b):
    return np.swapaxes(x, a, b)


def _t(np, x):
    return np.transpose(x)


def _select(np, x, dim, index):
    return np.take(x, index, axis=dim)


def _slice(np, x, dim=0, start=None, end=None, step=1):
    x = np.asarray(x)
    key = [slice(None)] * x.ndim
    key[dim] = slice(start, end, step)
    return x[tuple(key)]


def _index(np, x, indices):
    return np.asarray(x)[tuple(slice(None) if i is None else i for i in indices)]


def _where(np, c, a, b):
    return np.where(c, a, b)


def _masked_fill(np, x, mask, value):
    return np.where(mask, value, x)


def _binary(fn):
    def f(np, a, b, *, alpha=None, **_):
        return fn(np)(a, b if alpha is None or alpha == 1 else b * alpha)
    return f


def _unary(fn):
    def f(np, a, *_, **__):
        return fn(np)(a)
    return f


def _div(np, a, b, *, rounding_mode=None):
    if rounding_mode is None:
        return np.true_divide(a, b)
    if rounding_mode == "floor":
        return np.floor_divide(a, b)
    q = np.true_divide(a, b)  # "trunc"
    if np.issubdtype(np.result_type(a, b), np.integer):
        fl = np.floor_divide(a, b)
        return fl + ((fl < 0) & (fl * b != a))
    return np.trunc(q)


def _rsub(np, a, b, *, alpha=1):
    return np.subtract(b, a if alpha == 1 else a * alpha)


def _clamp(np, x, min=None, max=None):  # noqa: A002 - ATen's argument names
    return np.clip(x, min, max)


def _reduce(name):
    def f(np, x, dim=None, keepdim=False, *, dtype=None):
        axis = None if dim is None else (tuple(dim) if isinstance(dim, (list, tuple)) else dim)
        if isinstance(axis, tuple) and not axis:
            axis = None
        out = getattr(np, name)(x, axis=axis, keepdims=keepdim)
        return out if dtype is None else np.asarray(out).astype(np_dtype(dtype))
    return f


def _cumsum(np, x, dim, *, dtype=None):
    return np.cumsum(x, axis=dim, dtype=np_dtype(dtype) if dtype is not None else None)


def _cat(np, xs, dim=0):
    return np.concatenate([np.asarray(x) for x in xs], axis=dim)


def _stack(np, xs, dim=0):
    return np.stack(xs, axis=dim)


def _pad(np, x, pad, value=0):
    x = np.asarray(x)
    widths = [(0, 0)] * x.ndim
    for i in range(len(pad) // 2):
        widths[x.ndim - 1 - i] = (pad[2 * i], pad[2 * i + 1])
    if any(a < 0 or b < 0 for a, b in widths):
        raise ValueError("negative padding")
    return np.pad(x, widths, constant_values=value)


_CMP = {"eq": "equal", "ne": "not_equal", "lt": "less", "le": "less_equal", "gt": "greater", "ge": "greater_equal"}
_BIN = {"add": "add", "sub": "subtract", "mul": "multiply", "bitwise_and": "bitwise_and",
        "bitwise_or": "bitwise_or", "bitwise_xor": "bitwise_xor", "logical_and": "logical_and",
        "logical_or": "logical_or", "logical_xor": "logical_xor", "minimum": "minimum", "maximum": "maximum",
        "remainder": "mod", "fmod": "fmod", "floor_divide": "floor_divide", "pow": "power"}
_UN = {"abs": "abs", "neg": "negative", "bitwise_not": "invert", "logical_not": "logical_not",
       "isnan": "isnan", "isinf": "isinf", "sign": "sign"}

# the op packet (``aten.le``: every overload) -> fn(np, *args, **kwargs)
_NUMPY = {
    "prims.iota": _iota, "aten.arange": _arange, "aten.full": _full, "aten.scalar_tensor": _scalar_tensor,
    "aten.zeros": _zeros, "aten.ones": _ones, "prims.convert_element_type": _convert, "aten._to_copy": _to_copy,
    "aten.clone": _same, "aten.alias": _same, "aten.lift_fresh_copy": _same, "aten.detach": _same,
    "aten.view": _view, "aten.reshape": _view, "aten._unsafe_view": _view, "aten.unsqueeze": _unsqueeze,
    "aten.squeeze": _squeeze, "aten.expand": _expand, "aten.permute": _permute, "aten.transpose": _transpose,
    "aten.t": _t, "aten.select": _select, "aten.slice": _slice, "aten.index": _index, "aten.where": _where,
    "aten.masked_fill": _masked_fill, "aten.div": _div, "aten.rsub": _rsub, "aten.clamp": _clamp, "aten.any": _reduce("any"),
    "aten.all": _reduce("all"), "aten.sum": _reduce("sum"), "aten.amax": _reduce("max"),
    "aten.amin": _reduce("min"), "aten.cumsum": _cumsum, "aten.cat": _cat, "aten.stack": _stack,
    "aten.constant_pad_nd": _pad,
    **{f"aten.{k}": _binary(lambda np, v=v: getattr(np, v)) for k, v in {**_CMP, **_BIN}.items()},
    **{f"aten.{k}": _unary(lambda np, v=v: getattr(np, v)) for k, v in _UN.items()},
}


# --------------------------------------------------------------------------- compiling a subgraph


def numpy_fn(module):
    """``module`` (an FX mask subgraph) as ``fn(*inputs) -> ndarray`` over host tensors, ints and
    arrays; None when an op or a dtype has no NumPy evaluation here.  Nodes that read no input are
    computed once, here."""
    np = _np()
    if np is None:
        return None
    nodes = list(module.graph.nodes)
    slot = {n: i for i, n in enumerate(nodes)}
    consts: dict = {}  # slot -> its value, for nodes that read no input
    inputs_at, calls = [], []  # (slot, input position); (slot, fn, flat args or None, args, kwargs, cast)
    out_slot = None

    def ref(a):  # an argument: ("slot", i) read per call, ("const", value), ("seq", type, [refs])
        if isinstance(a, torch.fx.Node):
            return ("const", consts[slot[a]]) if slot[a] in consts else ("slot", slot[a])
        if isinstance(a, (list, tuple)):
            return ("seq", type(a), [ref(x) for x in a])
        if isinstance(a, torch.Tensor):
            raise ValueError("tensor constant in arguments")
        return ("const", a)

    def live(r):  # does an argument read a node that depends on the inputs?
        return r[0] == "slot" or (r[0] == "seq" and any(live(x) for x in r[2]))

    def get(env, r):
        if r[0] == "slot":
            return env[r[1]]
        if r[0] == "seq":
            return r[1](get(env, x) for x in r[2])
        return r[1]

    for n in nodes:
        if n.op == "placeholder":
            inputs_at.append((slot[n], len(inputs_at)))
        elif n.op == "get_attr":
            obj = module
            for p in n.target.split("."):
                obj = getattr(obj, p)
            if not isinstance(obj, torch.Tensor) or np_dtype(obj.dtype) is None:
                return None
            consts[slot[n]] = _host_array(obj.detach().cpu())
        elif n.op == "call_function":
            fn = _NUMPY.get(".".join(op_name(n.target).split(".")[:2]))
            val = n.meta.get("val")
            cast = np_dtype(val.dtype) if isinstance(val, torch.Tensor) else None
            if fn is None or cast is None:
                return None
            try:
                args = [ref(a) for a in n.args]
                kwargs = {k: ref(v) for k, v in n.kwargs.items() if k not in ("device", "layout", "pin_memory",
                                                                                "requires_grad", "memory_format")}
            except ValueError:
                return None
            if not any(live(a) for a in (*args, *kwargs.values())):  # reads no input: computed once
                try:
                    r = np.asarray(fn(np, *[get([], a) for a in args], **{k: get([], v) for k, v in kwargs.items()}))
                except Exception:  # noqa: BLE001 - a NumPy evaluation that fails: torch evaluates it
                    return None
                consts[slot[n]] = r if r.dtype == cast else r.astype(cast)
                continue
            flat = None if kwargs or any(a[0] == "seq" for a in args) else [(a[0] == "slot", a[1]) for a in args]
            calls.append((slot[n], fn, flat, args, kwargs, cast))
        elif n.op == "output":
            a = n.args[0]
            if not isinstance(a, torch.fx.Node):
                return None
            out_slot = slot[a]
        else:
            return None
    if out_slot is None:
        return None
    if out_slot in consts:
        folded = consts[out_slot]
        return lambda *inputs: folded

    def run(*inputs):
        env = [None] * len(nodes)
        for i, k in inputs_at:
            x = inputs[k]
            env[i] = _host_array(x) if isinstance(x, torch.Tensor) else x
        for i, fn, flat, args, kwargs, cast in calls:
            if flat is not None:
                r = fn(np, *[env[v] if is_slot else v for is_slot, v in flat])
            else:
                r = fn(np, *[get(env, a) for a in args], **{k: get(env, v) for k, v in kwargs.items()})
            r = np.asarray(r)
            env[i] = r if r.dtype == cast else r.astype(cast)
        return env[out_slot]

    return run


__all__ = ["numpy_fn", "np_dtype"]
