"""Node records: one per ATen node of a captured graph, with its module, shapes
and cost.  Pure functions of an FX graph; nothing here knows about Inductor."""
from __future__ import annotations

import dataclasses
import operator
import re
from typing import Any, Mapping

import torch
import torch.fx

from graphmfu.cost import REGISTRY, Cost, TensorSpec, ensure_builtin_rules, op_name
from graphmfu.errors import GraphMFUError


@dataclasses.dataclass
class NodeRecord:
    graph: int
    phase: str  # forward | backward | inference
    index: int  # position among the graph's call_function nodes
    name: str  # FX node name
    op: str  # aten.mm.default
    module: str  # layers.0.attn.q ("" = the model root)
    inputs: list  # [[shape, dtype], ...] of tensor inputs
    outputs: list
    cost: Cost | None  # evaluated with the compile-time hints; None = no rule
    cost_expr: dict | None = None  # symbolic cost as strings, when shapes are dynamic
    output_bytes: int = 0
    recompute: bool = False  # a forward node recomputed inside a backward graph
    note: str = ""

    @property
    def known(self) -> bool:
        return self.cost is not None


class AnalysisError(Exception):
    """Raised (and caught by the capture layer) when a node cannot be analysed."""

    def __init__(self, node_name: str, op: str, cause: BaseException):
        super().__init__(f"node {node_name} ({op}): {type(cause).__name__}: {cause}")
        self.node_name, self.op, self.cause = node_name, op, cause


# --------------------------------------------------------------------------- module paths

_ROOT = re.compile(r"^(?:L|G)\[['\"]([^'\"]+)['\"]\]")
_ITEM = re.compile(r"\[['\"]?([^'\"\]]+)['\"]?\]")


def module_path(raw: str) -> str:
    """Dynamo's ``L['self'].layers[0]._modules['attn'].q`` -> ``layers.0.attn.q``.

    A module passed as the compiled frame's local (``L[...]``: ``self``, or a
    function's argument) is the root and is dropped; a global one
    (``G['model']``) keeps its name."""
    s = raw.strip()
    m = _ROOT.match(s)
    keep = None
    if m:
        if s.startswith("G"):
            keep = m.group(1)
        s = s[m.end():]
    s = re.sub(r"(^|\.)_modules(?=\[)", r"\1", s)  # ._modules['x'], not an attribute like down_modules
    s = _ITEM.sub(lambda mm: "." + mm.group(1), s)
    parts = [p for p in s.split(".") if p]
    if keep:
        parts.insert(0, keep)
    return ".".join(parts)


def node_module(node: torch.fx.Node, backward: bool) -> str:
    keys = ("fwd_nn_module_stack", "nn_module_stack") if backward else ("nn_module_stack", "fwd_nn_module_stack")
    for key in keys:
        stack = node.meta.get(key)
        if stack:
            last = list(stack.values())[-1]
            raw = last[0] if isinstance(last, tuple) else str(last)
            return module_path(raw)
    return ""


# --------------------------------------------------------------------------- specs


def dim(x) -> Any:
    """An int, or the sympy expression behind a SymInt."""
    if isinstance(x, torch.SymInt):
        node = x.node
        if hasattr(node, "maybe_as_int") and node.maybe_as_int() is not None:
            return node.maybe_as_int()
        return node.expr
    return int(x) if not isinstance(x, (int,)) and hasattr(x, "__index__") else x


def spec_of(val) -> Any:
    """FakeTensor/tuple/SymInt meta value -> TensorSpec/tuple/expr."""
    if isinstance(val, torch.Tensor):
        return TensorSpec(tuple(dim(s) for s in val.shape), val.dtype)
    if isinstance(val, (list, tuple)):
        return type(val)(spec_of(v) for v in val) if not isinstance(val, torch.Size) else tuple(dim(v) for v in val)
    if isinstance(val, (torch.SymInt, torch.SymFloat, torch.SymBool)):
        return val.node.expr
    return val


def _arg(a):
    if isinstance(a, torch.fx.Node):
        if "val" in a.meta:
            return spec_of(a.meta["val"])
        return None  # e.g. a get_attr of a subgraph
    if isinstance(a, (list, tuple)):
        return type(a)(_arg(x) for x in a)
    if isinstance(a, dict):
        return {k: _arg(v) for k, v in a.items()}
    if isinstance(a, (torch.SymInt, torch.SymFloat, torch.SymBool)):
        return a.node.expr
    return a


def _shapes(specs) -> list:
    from graphmfu.cost import tensors

    return [[list(map(_jsonable, t.shape)), str(t.dtype).replace("torch.", "")] for t in tensors(specs)]


def _jsonable(x):
    return x if isinstance(x, int) else str(x)


# --------------------------------------------------------------------------- records


def is_op_node(node: torch.fx.Node) -> bool:
    """call_function nodes that are tensor ops (not getitem, not SymInt arithmetic)."""
    if node.op != "call_function" or node.target is operator.getitem:
        return False
    if not isinstance(node.target, (torch._ops.OpOverload, torch._ops.HigherOrderOperator)):
        val = node.meta.get("val")
        return isinstance(val, torch.Tensor)  # a python-level call producing a tensor: unknown
    val = node.meta.get("val")
    if val is None:
        return True
    if isinstance(val, (torch.SymInt, torch.SymFloat, torch.SymBool, int, float, bool)):
        return False
    return True


def records_from_graph(gm: torch.fx.GraphModule, graph_id: int, phase: str,
                       hints: Mapping | None = None) -> list[NodeRecord]:
    """Apply the rules to every op node of ``gm``.  Raises AnalysisError naming the node."""
    ensure_builtin_rules()
    backward = phase == "backward"
    records = []
    index = 0
    for node in gm.graph.nodes:
        if not is_op_node(node):
            continue
        opn = op_name(node.target)
        try:
            rec = _record(node, graph_id, phase, index, opn, backward, hints or {})
        except Exception as e:  # noqa: BLE001 - re-raised with the node's name
            raise AnalysisError(node.name, opn, e) from e
        records.append(rec)
        index += 1
    _mark_decomposed_attention(gm, records)
    return records


def _record(node, graph_id, phase, index, opn, backward, hints) -> NodeRecord:
    args = tuple(_arg(a) for a in node.args)
    kwargs = {k: _arg(v) for k, v in node.kwargs.items()}
    out = spec_of(node.meta.get("val"))
    from graphmfu.cost import nbytes

    out_bytes = nbytes(out)
    rule = REGISTRY.lookup(node.target)
    cost = cost_expr = None
    if rule is not None:
        cost = rule(*args, out=out, **kwargs)
        if not isinstance(cost, Cost):
            raise TypeError(f"rule {rule.origin} returned {type(cost).__name__}, not a Cost")
        if cost.is_symbolic:
            cost_expr = cost.as_strings()
            try:
                cost = cost.evaluate(hints)
            except GraphMFUError:  # a data-dependent (unbacked) size: this node only is not counted
                return NodeRecord(graph=graph_id, phase=phase, index=index, name=node.name, op=opn,
                                  module=node_module(node, backward), inputs=_shapes((args, kwargs)),
                                  outputs=_shapes(out), cost=None, cost_expr=cost_expr,
                                  note="cost depends on a data-dependent size; not counted")
    if not isinstance(out_bytes, int):
        try:
            out_bytes = Cost(bytes_written=out_bytes).evaluate(hints).bytes_written
        except GraphMFUError:
            out_bytes = 0
    tag = node.meta.get("partitioner_tag")
    return NodeRecord(
        graph=graph_id, phase=phase, index=index, name=node.name, op=opn,
        module=node_module(node, backward), inputs=_shapes((args, kwargs)), outputs=_shapes(out),
        cost=cost, cost_expr=cost_expr, output_bytes=int(out_bytes),
        recompute=bool(backward and (tag == "is_forward" or (tag is None and "nn_module_stack" in node.meta
                                                              and "fwd_nn_module_stack" not in node.meta))),
    )


# softmax as one node, or (after Inductor's decompositions, as in every captured graph) its exp
_SOFTMAX = {"aten._softmax.default", "aten._safe_softmax.default", "aten.softmax.int", "aten.exp.default"}
_MATMUL = {"aten.bmm.default", "aten.mm.default", "aten.matmul.default", "aten.baddbmm.default"}
_PASS = {"view", "_unsafe_view", "reshape", "expand", "clone", "permute", "transpose", "unsqueeze", "squeeze",
         "mul", "div", "add", "where", "masked_fill", "native_dropout", "_to_copy", "convert_element_type",
         "getitem", "sub", "exp", "sum", "amax"}


def _mark_decomposed_attention(gm, records) -> None:
    """Flag softmax (or its decomposed exp) nodes sitting between two matmuls: attention in
    decomposed form, counted dense (its mask, if any, is data the rules cannot see)."""
    by_name = {r.name: r for r in records}
    for node in gm.graph.nodes:
        if node.op != "call_function" or op_name(node.target) not in _SOFTMAX:
            continue
        if _reaches(node, up=True) and _reaches(node, up=False):
            rec = by_name.get(node.name)
            if rec is not None:
                rec.note = "decomposed attention: softmax between matmuls; counted dense (mask not visible)"


def _reaches(node, up: bool, depth: int = 8) -> bool:
    frontier = [node]
    for _ in range(depth):
        nxt = []
        for n in frontier:
            neigh = n.all_input_nodes if up else list(n.users)
            for m in neigh:
                if m.op != "call_function":
                    continue
                name = op_name(m.target)
                if name in _MATMUL:
                    return True
                short = name.split(".")[1] if name.startswith(("aten.", "prims.")) else name
                if short in _PASS:
                    nxt.append(m)
        frontier = nxt
    return False
