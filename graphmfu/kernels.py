"""The kernel map: every kernel Inductor generated or called for a graph, with its origin ATen nodes,
module, FLOPs and bytes.

* FLOPs of a kernel = the sum of its origin nodes' costs.  A node that is an origin of several
  kernels counts once: in the extern kernel that runs it (a GEMM, SDPA, convolution) if there is
  one, else in the first kernel that lists it; the repeats are recomputation (HFU), not model
  work.  So the kernels of a graph sum to the graph's node totals.
* Bytes of a fused kernel = its *external* traffic: tensors that cross the boundary of the kernel's
  origin subgraph (read from outside, or used outside / returned), each once — computed on the FX
  graph with networkx.  Intermediates fused away cost nothing.  Inductor's own count
  (``get_read_write_buffers_sizes`` of the scheduler nodes) is kept beside it as
  ``bytes_inductor``.  An extern kernel (cuBLAS GEMM, SDPA, convolution) moves what its node moves.
* Module of a kernel = the longest common module path of its origin nodes (a kernel fusing
  ``layers.0.attn.q`` and ``layers.0.attn.k`` belongs to ``layers.0.attn``), so every kernel has
  exactly one module and module times never double count at any depth.
"""
from __future__ import annotations

import dataclasses
import operator

import networkx as nx
import torch

from graphmfu.cost import REGISTRY, ZERO, Cost, evaluate, nbytes, symbolic_cost
from graphmfu.nodes import spec_of
from graphmfu.record import KernelRecord, OpRecord


def common_module(paths) -> str:
    parts = [p.split(".") for p in paths if p]
    if not parts:
        return ""
    out = []
    for level in zip(*parts):
        if all(x == level[0] for x in level):
            out.append(level[0])
        else:
            break
    return ".".join(out)


def _dataflow(gm: torch.fx.GraphModule) -> nx.DiGraph:
    g = nx.DiGraph()
    for n in gm.graph.nodes:
        g.add_node(n.name)
        for a in n.all_input_nodes:
            g.add_edge(a.name, n.name)
    return g


SYMBOLIC = object()  # as ``hints``: keep sizes as expressions of the size symbols (per-call costs)


def _tensor_bytes(node: torch.fx.Node, hints=None) -> int:
    val = node.meta.get("val")
    if val is None:
        return 0
    b = nbytes(spec_of(val))
    if isinstance(b, int) or hints is SYMBOLIC:
        return b
    try:  # symbolic size: the compile-time hint
        return int(evaluate(b, hints or {}))
    except Exception:
        return 0


def _is_gather_of(consumer: torch.fx.Node, table: str) -> bool:
    """Does ``consumer`` read only the picked elements of ``table`` (rules/ declares such ops)?"""
    first = consumer.args[0] if consumer.args else None
    return REGISTRY.info(consumer.target).gather and isinstance(first, torch.fx.Node) and first.name == table


def boundary_bytes(gm: torch.fx.GraphModule, flow: nx.DiGraph, names: set,
                   kernels_of: dict | None = None, hints=None, views: set | None = None,
                   me: int | None = None) -> tuple[int, int]:
    """Bytes of the tensors crossing the boundary of the node set ``names``: each external input
    read once (a table read only through gathers costs the gathered elements), each result written
    once if something outside needs it materialised — not when every outside consumer's kernel
    recomputes it (``kernels_of``: node name -> set of kernel indices that contain it).  ``views``
    (nodes that move no bytes) are never stores; ``getitem`` of a node inside belongs inside."""
    by_name = {n.name: n for n in gm.graph.nodes}
    kernels_of = kernels_of or {}
    views = views or set()
    names = set(names)
    for n in list(names):  # split/chunk/unbind outputs are reached through getitem: not a read
        node = by_name.get(n)
        if node is not None:
            names.update(u.name for u in node.users if u.target is operator.getitem)
    # a view listed among the kernel's origins whose users all sit outside it (e.g. the view feeding an
    # extern attention) is not executed here: its input is not a read of this kernel
    while True:
        dangling = {n for n in names & views if n in flow and not any(u in names for u in flow.successors(n))}
        if not dangling:
            break
        names -= dangling
    inputs = {p for n in names if n in flow for p in flow.predecessors(n) if p not in names}
    read = written = 0
    for name in inputs:
        node = by_name.get(name)
        if node is None:
            continue
        nb = _tensor_bytes(node, hints)
        users = [by_name[u] for u in flow.successors(name) if u in names]
        if users and all(_is_gather_of(u, name) for u in users):
            nb = _min(nb, sum(_tensor_bytes(u, hints) for u in users))
        read += nb
    for name in names:
        node = by_name.get(name)
        if node is None or name in views or node.target is operator.getitem:
            continue
        split = REGISTRY.info(node.target).split_bytes if me is not None else None
        if split is not None and len(kernels_of.get(name, ())) > 1:  # one node lowered to several kernels
            mine, not_read = split(node, kernels_of, me, lambda n: _tensor_bytes(n, hints), inputs)
            read -= not_read
        else:
            mine = None
        if name in flow and _needs_store(name, names, flow, by_name, kernels_of, views):
            written += _tensor_bytes(node, hints) if mine is None else mine
    return _max0(read), written


def _min(a, b):
    if isinstance(a, int) and isinstance(b, int):
        return min(a, b)
    import sympy

    return sympy.Min(a, b)


def _max0(a):
    if isinstance(a, int):
        return max(a, 0)
    import sympy

    return sympy.Max(a, 0)


def _needs_store(name, names, flow, by_name, kernels_of, views=frozenset(), depth=0) -> bool:
    """Does a consumer outside ``names`` read ``name`` from memory?  Views and getitems are looked
    through; a consumer kernel that also contains ``name`` recomputes it instead."""
    mine = kernels_of.get(name, set())
    for u in flow.successors(name):
        node = by_name.get(u)
        transparent = node is not None and (u in views or node.target is operator.getitem)
        if u in names and not transparent:
            continue
        if node is None or node.op == "output":
            return True
        ks = kernels_of.get(u)
        if transparent or not ks:  # a view, a getitem or a node in no kernel: its consumers decide
            # past 8 levels: a view chain is assumed not to need a store, any other node to need one
            if (depth > 8 and not transparent) or (depth <= 8 and _needs_store(
                    u, names, flow, by_name, kernels_of, views, depth + 1)):
                return True
            continue
        if any(k not in mine for k in ks):  # a consumer kernel that does not recompute it reads it
            return True
    return False


def kernel_map(gm: torch.fx.GraphModule, graph_id: int, nodes: list[OpRecord],
               entries: list[dict], hints=None, phase: str = "") -> list[KernelRecord]:
    """Kernel records for one graph from the hook's ``entries`` (launch order) and its node records."""
    rec_by_name = {r.name: r for r in nodes}
    flow = _dataflow(gm) if entries else None
    entries = [_own_op_origins(e, rec_by_name) for e in entries]
    # an extern kernel (GEMM, SDPA, conv) owns the node it runs, even when a neighbouring fused
    # kernel lists that node among its origins (e.g. the layout copy feeding a cuDNN attention)
    owner: dict = {}
    for i, e in enumerate(entries):
        if e["extern"]:
            for n in e["origins"]:
                owner.setdefault(n, i)
    extern_owned = set(owner)
    for i, e in enumerate(entries):
        for n in e["origins"]:
            owner.setdefault(n, i)
    kernels_of: dict = {}
    for i, e in enumerate(entries):
        for n in e["origins"]:
            if not (n in extern_owned and not e["extern"]):
                kernels_of.setdefault(n, set()).add(i)
    views = {n.name for n in gm.graph.nodes if n.op == "call_function" and REGISTRY.info(n.target).view}
    dynamic = any(r.sym for r in nodes)
    out = []
    for i, e in enumerate(entries):
        origins = [n for n in e["origins"] if n in rec_by_name]
        cost = sym = ZERO
        node_bytes = 0
        for n in origins:
            r = rec_by_name[n]
            if r.cost is None:
                continue
            node_bytes += r.cost.bytes
            if owner.get(n) == i:
                # recomputed forward nodes (activation checkpointing) are HFU work: bytes, no FLOPs
                cost = cost + _owned(r.cost, r.recompute)
                if dynamic:
                    sym = sym + _owned(symbolic_cost(r.sym) if r.sym else r.cost, r.recompute)
        if e["extern"]:
            moved_read, moved_written = cost.bytes_read, cost.bytes_written
        else:
            mine = {n for n in e["origins"] if n not in extern_owned}
            moved_read, moved_written = boundary_bytes(gm, flow, mine, kernels_of, hints, views, me=i)
            ib = e.get("inductor_bytes")
            real = [n for n in mine if n not in views]
            if ib is not None and real and all(len(kernels_of.get(n, ())) > 1 for n in real) and \
                    moved_read + moved_written:
                # every node of this kernel is also in another kernel (Inductor split one FX node,
                # e.g. a cat into a cache copy and a new-token write): FX origins cannot tell the
                # kernels apart, Inductor's own buffer count can; keep our read/write proportion
                f = ib / (moved_read + moved_written)
                moved_read, moved_written = int(moved_read * f), ib - int(moved_read * f)
        cost = dataclasses.replace(cost, bytes_read=moved_read, bytes_written=moved_written)
        formulas = None
        if dynamic:  # the same cost as formulas of the size symbols, evaluated per call when profiled
            if not e["extern"]:
                r_, w_ = boundary_bytes(gm, flow, mine, kernels_of, SYMBOLIC, views, me=i)
                sym = dataclasses.replace(sym, bytes_read=r_, bytes_written=w_)
            formulas = sym.formulas()
        module = common_module(rec_by_name[n].module for n in origins)
        out.append(KernelRecord(graph_id, i, e["name"], extern_op_name(e["name"]) if e["extern"] else e["name"],
                                e["extern"], origins, module, phase, cost, e.get("inductor_bytes"), int(node_bytes),
                                formulas))
    return out


def _owned(c: Cost, recompute: bool) -> Cost:
    return Cost(bytes_read=c.bytes_read, bytes_written=c.bytes_written) if recompute else c


def _own_op_origins(entry: dict, rec_by_name: dict) -> dict:
    """An extern kernel without Inductor's ``origin_node`` (multi-output fallbacks such as SDPA) lists
    every FX node that fed its IR (layout copies, RoPE ...): keep the nodes of its own op."""
    if not entry["extern"] or len(entry["origins"]) <= 1:
        return entry
    base = extern_op_name(entry["name"]).split("::", 1)[1]
    own = [n for n in entry["origins"] if n in rec_by_name and rec_by_name[n].op.split(".")[1:2] == [base]]
    return {**entry, "origins": own} if own else entry


def extern_op_name(kernel_name: str) -> str:
    """``extern_kernels.mm`` / ``aten._scaled_dot_product_cudnn_attention.default`` -> ``aten::mm`` ..."""
    s = kernel_name
    for prefix in ("extern_kernels.", "torch.ops."):
        if s.startswith(prefix):
            s = s[len(prefix):]
    parts = s.split(".")
    if len(parts) >= 3:  # namespace.op.overload: aten._scaled_dot_product_cudnn_attention.default,
        return f"{parts[0]}::{parts[1]}"  # _c10d_functional.all_reduce_.default, transformers.grouped_mm_...
    if len(parts) == 2 and parts[0] == "aten":
        return f"aten::{parts[1]}"
    return f"aten::{parts[0]}"  # extern_kernels.mm -> aten::mm
