"""Collectives: the functional collectives of compiled graphs (``_c10d_functional``, and
``_c10d_functional_autograd`` for DTensor/TP) and the ``c10d`` ops an eager recording sees
(``dist.all_reduce`` -> ``c10d.allreduce_``; FSDP2 -> ``c10d._allgather_base_`` /
``c10d._reduce_scatter_base_``).

Cost (``Cost``): a collective does no matrix work and its reduction adds are the library's, not the
model's, so it has no FLOPs; its local DRAM traffic is its input read once and its output written
once (as any op).  ``wait_tensor`` costs nothing and launches no kernel (a stream wait).

Communication (``record.Comm``, stored on the op record beside its cost, never inside it: bus bytes
are a different resource than DRAM bytes and must not add into them): the NCCL-tests "bus bytes"
convention.  ``size`` S is the payload NCCL-tests names (all_reduce: the buffer; all_gather: the
gathered output = n x input; reduce_scatter: the input = n x output; all_to_all: the send buffer;
broadcast/reduce/send/recv: the buffer) and

    all_reduce 2(n-1)/n * S;  all_gather, reduce_scatter, all_to_all (n-1)/n * S;  broadcast, reduce, p2p 1 * S

for a group of n ranks.  Bus bytes / time is NCCL-tests' busbw, comparable to one direction of the
link the group runs on (``hardware/links.py``).  The group comes from the op's arguments: an explicit
``group_size`` (all_gather, reduce_scatter), a ProcessGroup (eager c10d ops), a group name (resolved
through ``_inductor.process_group`` when available, else only the default group's name is known);
a collective whose group cannot be resolved keeps ``bytes`` None and carries the flag
``comm_group_unknown``.
"""
from __future__ import annotations

import torch

from graphmfu import _inductor
from graphmfu.cost import REGISTRY, ZERO, Cost, nbytes, rule, table_rule, tensors
from graphmfu.record import Comm

GROUP_UNKNOWN = REGISTRY.flag(
    "comm_group_unknown", "collective: its process group could not be resolved; bus bytes unknown",
    "{n} collective(s) whose process group could not be resolved here: their bus bytes are unknown")

_F, _FA, _C = (getattr(torch.ops, ns) for ns in ("_c10d_functional", "_c10d_functional_autograd", "c10d"))


def _op(ns, name):
    try:
        return getattr(ns, name)
    except (AttributeError, RuntimeError):  # not defined by this torch
        return None


# --------------------------------------------------------------------------- bus bytes

def _ratio(num: int, den: int):
    """num/den exactly: an int when it divides, else a float."""
    return num // den if num % den == 0 else num / den


BUS_FACTOR = {  # kind -> (numerator(n), denominator(n)) of the NCCL-tests bus-bytes factor
    "all_reduce": (lambda n: 2 * (n - 1), lambda n: n),
    "all_gather": (lambda n: n - 1, lambda n: n),
    "reduce_scatter": (lambda n: n - 1, lambda n: n),
    "all_to_all": (lambda n: n - 1, lambda n: n),
    "gather": (lambda n: n - 1, lambda n: n),
    "scatter": (lambda n: n - 1, lambda n: n),
    "broadcast": (lambda n: 1, lambda n: 1),
    "reduce": (lambda n: 1, lambda n: 1),
    "send": (lambda n: 1, lambda n: 1),
    "recv": (lambda n: 1, lambda n: 1),
}


def bus_bytes(kind: str, size, n: int | None):
    """NCCL-tests bus bytes of a ``kind`` collective of payload ``size`` bytes over ``n`` ranks."""
    if n is None or not isinstance(size, int):
        return None
    num, den = BUS_FACTOR[kind]
    return _ratio(num(n) * size, den(n)) if n > 0 else None


# --------------------------------------------------------------------------- groups

def _group(g) -> tuple[str, int | None, list | None]:
    """(name, size, global ranks) of a group given as a ProcessGroup (boxed or not) or its name."""
    dist = torch.distributed
    if not dist.is_available():
        return str(g), None, None
    pg = g
    if isinstance(g, torch.ScriptObject):
        try:
            pg = dist.ProcessGroup.unbox(g)
        except Exception:  # noqa: BLE001 - another script object: unknown group
            return str(g), None, None
    if isinstance(g, str):
        resolve = getattr(_inductor, "process_group", None)
        pg = resolve(g) if resolve is not None else None
        if pg is None and dist.is_initialized() and dist.group.WORLD.group_name == g:
            pg = dist.group.WORLD
        if pg is None:
            return g, None, None
    if not isinstance(pg, dist.ProcessGroup):
        return str(g), None, None
    try:
        ranks = list(dist.get_process_group_ranks(pg))
    except Exception:  # noqa: BLE001 - a group this rank is not in, or no default group
        ranks = None
    return pg.group_name, pg.size(), ranks


def _int(x):
    """A payload size as an int (a SymInt/sympy size at its hint)."""
    if isinstance(x, int):
        return x
    try:
        return int(x)
    except TypeError:
        return _inductor.size_hint(x)


def make_comm(kind: str, size, group, n: int | None = None) -> Comm:
    name, gsize, ranks = _group(group)
    n = n if n is not None else gsize
    size = _int(size)
    return Comm(kind, size, bus_bytes(kind, size, n), n, name, ranks)


# --------------------------------------------------------------------------- payload per op family
# Each takes the op's arguments (tensors as TensorSpec, groups as given) and returns
# (kind, S bytes, group, n or None).  One row per op below.

def _buffer(kind):
    def payload(inp, *rest, group, **kw):  # all_reduce, broadcast: S = the buffer
        return kind, nbytes(inp), group, None
    return payload


def _gathered(inp, group_size, group, **kw):  # all_gather: S = the gathered output
    return "all_gather", nbytes(inp) * group_size, group, group_size


def _scattered(inp, reduce_op, group_size, group, **kw):  # reduce_scatter: S = the input
    return "reduce_scatter", nbytes(inp), group, group_size


def _all_to_all(inp, out_splits, in_splits, group, **kw):  # all_to_all: S = the send buffer
    n = len(in_splits) if in_splits else (len(out_splits) if out_splits else None)
    return "all_to_all", nbytes(inp), group, n


def _functional_args(op_key, args):
    """Map a functional collective's positional arguments to the payload function's."""
    a = list(args)
    if op_key in ("all_reduce", "all_reduce_", "all_reduce_coalesced", "all_reduce_coalesced_"):
        return _buffer("all_reduce")(a[0], group=a[2])
    if op_key in ("broadcast", "broadcast_"):
        return _buffer("broadcast")(a[0], group=a[2])
    if op_key.startswith("all_gather_into_tensor"):
        return _gathered(a[0], a[1], a[2])
    if op_key.startswith("reduce_scatter_tensor"):
        return _scattered(a[0], a[1], a[2], a[3])
    if op_key == "all_to_all_single":
        return _all_to_all(a[0], a[1], a[2], a[3])
    if op_key in ("isend", "irecv"):
        return ("send" if op_key == "isend" else "recv"), nbytes(a[0]), a[3], None
    raise KeyError(op_key)


FUNCTIONAL = [  # _c10d_functional (and _autograd) ops that communicate; each row: the op's name
    "all_reduce", "all_reduce_", "all_reduce_coalesced", "all_reduce_coalesced_", "broadcast", "broadcast_",
    "all_gather_into_tensor", "all_gather_into_tensor_out", "all_gather_into_tensor_coalesced",
    "reduce_scatter_tensor", "reduce_scatter_tensor_coalesced", "all_to_all_single", "isend", "irecv",
]

# c10d (eager) ops: name -> (kind, index of the payload tensor(s) S, index of the group)
C10D = {
    "allreduce_": ("all_reduce", 0, 1),
    "allreduce_coalesced_": ("all_reduce", 0, 1),
    "broadcast_": ("broadcast", 0, 1),
    "reduce_": ("reduce", 0, 1),
    "_allgather_base_": ("all_gather", 0, 2),
    "allgather_": ("all_gather", 0, 2),
    "allgather_into_tensor_coalesced_": ("all_gather", 0, 2),
    "allgather_coalesced_": ("all_gather", 0, 2),
    "_reduce_scatter_base_": ("reduce_scatter", 1, 2),
    "reduce_scatter_": ("reduce_scatter", 1, 2),
    "reduce_scatter_tensor_coalesced_": ("reduce_scatter", 1, 2),
    "alltoall_base_": ("all_to_all", 1, 2),
    "alltoall_": ("all_to_all", 1, 2),
    "gather_": ("gather", 0, 2),
    "scatter_": ("scatter", 1, 2),
    "send": ("send", 0, 1),
    "recv_": ("recv", 0, 1),
    "recv_any_source_": ("recv", 0, 1),
}
NO_COMM = ["barrier", "monitored_barrier_"]  # synchronisation: no payload


def _c10d_payload(name):
    kind, at, g = C10D[name]

    def payload(*args):
        return kind, nbytes(args[at]), args[g], None
    return payload


# --------------------------------------------------------------------------- rules (local cost)

def local(_):
    """A collective's own DRAM traffic: its tensor inputs read once, its tensor outputs written once."""
    def rule_fn(*args, out, **kwargs):
        return Cost.of(read=nbytes((args, kwargs)), written=nbytes(tensors(out)))
    return rule_fn


def inplace(_):
    """An in-place collective (c10d ops, ``*_`` functional ops): its buffers read and written once."""
    def rule_fn(*args, out, **kwargs):
        moved = nbytes(tensors(out)) or nbytes(args)
        return Cost.of(read=moved, written=moved)
    return rule_fn


_functional_ops = {}  # op packet -> its name
for _ns in (_F, _FA):
    for _n in FUNCTIONAL:
        _o = _op(_ns, _n)
        if _o is not None:
            _functional_ops[_o] = _n
table_rule({o: None for o, n in _functional_ops.items() if not n.endswith("_")}, local)
table_rule({o: None for o, n in _functional_ops.items() if n.endswith("_")}, inplace)

_c10d_ops = {o: n for n in C10D if (o := _op(_C, n)) is not None}
table_rule(_c10d_ops, inplace)

_waits = [o for o in (_op(_F, "wait_tensor"), _op(_C, "barrier"), _op(_C, "monitored_barrier_")) if o is not None]


@rule(*_waits)
def wait(*args, out, **kwargs):
    return ZERO


for _w in _waits[:1]:  # wait_tensor: a stream wait, no kernel of its own
    REGISTRY.declare(_w, no_kernel=True)

_wrap = _op(_F, "_wrap_tensor_autograd")
if _wrap is not None:  # wraps the async result for autograd: metadata only
    @rule(_wrap)
    def wrap(t, *, out):
        return ZERO
    REGISTRY.declare(_wrap, view=True, no_kernel=True)


# --------------------------------------------------------------------------- comm (record.Comm)

def is_collective(target) -> bool:
    packet = getattr(target, "overloadpacket", target)
    return packet in _functional_ops or packet in _c10d_ops


def comm_of(target, args) -> Comm | None:
    """The ``Comm`` of one collective op from its arguments (tensors as TensorSpec); None for any
    other op.  Called by the graph pass below (compiled graphs) and the eager recorder."""
    packet = getattr(target, "overloadpacket", target)
    if packet in _functional_ops:
        kind, size, group, n = _functional_args(_functional_ops[packet], args)
    elif packet in _c10d_ops:
        kind, size, group, n = _c10d_payload(_c10d_ops[packet])(*args)
    else:
        return None
    return make_comm(kind, size, group, n)


def attach(rec, comm: Comm | None) -> None:
    """Set ``rec.comm`` (flagged when the group is unknown)."""
    if comm is None:
        return
    rec.comm = comm
    if comm.bytes is None:
        rec.flag(GROUP_UNKNOWN)


@REGISTRY.graph_pass
def collectives(gm, records) -> None:
    """Set ``comm`` on every collective node of a captured graph."""
    from graphmfu.nodes import spec_of

    by_name = None
    for node in gm.graph.nodes:
        if node.op != "call_function" or not is_collective(node.target):
            continue
        if by_name is None:
            by_name = {r.name: r for r in records}
        rec = by_name.get(node.name)
        if rec is None:
            continue
        args = [_spec(a, spec_of) for a in node.args]
        attach(rec, comm_of(node.target, args))


def _spec(a, spec_of):
    if hasattr(a, "meta") and hasattr(a, "op"):  # an FX node
        return spec_of(a.meta.get("val"))
    if isinstance(a, (list, tuple)):
        return type(a)(_spec(x, spec_of) for x in a)
    return a



# --------------------------------------------------------------------------- FSDP2's buffer copies

def _all_gather_copy_in(inputs, output, split_sizes, numel, rank, *, out):
    # the rank's parameter shards copied into its slice of the all-gather buffer
    return Cost.of(read=nbytes(inputs), written=nbytes(inputs))


def _split_with_sizes_copy(gathered, split_sizes, dim=0, *, out):
    # the gathered buffer copied out into the unsharded parameters
    return Cost.of(read=nbytes(gathered), written=nbytes(out))


def _chunk_cat(tensors_, dim, num_chunks, *, out):
    # gradients packed into the reduce-scatter input (padded chunks)
    return Cost.of(read=nbytes(tensors_), written=nbytes(out))


def _fsdp_copy(dst, data, *, out):
    return Cost.of(read=nbytes(data), written=nbytes(data))


LIBRARY_OPS = {  # FSDP2's ops, defined once torch.distributed.fsdp is imported (registered then)
    "fsdp::all_gather_copy_in": _all_gather_copy_in,
    "fsdp::split_with_sizes_copy": _split_with_sizes_copy,
    "fsdp::chunk_cat": _chunk_cat,
    "fsdp::copy_": _fsdp_copy,
}


def register_library_ops() -> list:
    """Register the rules of LIBRARY_OPS whose op exists now (FSDP2 defines them when
    torch.distributed.fsdp is imported; the rules load after, or the eager recorder calls this again).
    Idempotent; returns the names registered by this call."""
    return REGISTRY.register_library(LIBRARY_OPS)


register_library_ops()
