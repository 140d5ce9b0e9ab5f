"""Op records from an FX graph: one per ATen node of a captured graph, with its module, shapes
and cost.  Pure functions of an FX graph; nothing here knows about Inductor."""
from __future__ import annotations

import operator
from typing import Any, Mapping

import torch
import torch.fx

from graphmfu import _inductor
from graphmfu._inductor import module_path
from graphmfu.cost import REGISTRY, Cost, Subgraph, TensorSpec, ensure_builtin_rules, nbytes, op_name, tensors
from graphmfu.errors import GraphMFUError
from graphmfu.record import OpRecord


class AnalysisError(Exception):
    """Raised (and caught by the capture layer) when a node cannot be analysed."""

    def __init__(self, node_name: str, op: str, cause: BaseException):
        super().__init__(f"node {node_name} ({op}): {type(cause).__name__}: {cause}")
        self.node_name, self.op, self.cause = node_name, op, cause


# --------------------------------------------------------------------------- module paths

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
        return _inductor.sym_value(x)
    return int(x) if not isinstance(x, (int,)) and hasattr(x, "__index__") else x


def spec_of(val) -> Any:
    """FakeTensor/tuple/SymInt meta value -> TensorSpec/tuple/expr."""
    if isinstance(val, torch.Tensor):
        return TensorSpec(tuple(dim(s) for s in val.shape), val.dtype)
    if isinstance(val, (list, tuple)):
        return type(val)(spec_of(v) for v in val) if not isinstance(val, torch.Size) else tuple(dim(v) for v in val)
    if isinstance(val, (torch.SymInt, torch.SymFloat, torch.SymBool)):
        return _inductor.sym_value(val)
    return val


def _arg(a, sub=None):
    """A node argument as rules see it: TensorSpec for tensors, sizes as ints/expressions, and for a
    subgraph (``get_attr`` of a GraphModule) ``sub(node)``: its Subgraph cost."""
    if isinstance(a, torch.fx.Node):
        if "val" in a.meta:
            return spec_of(a.meta["val"])
        return sub(a) if sub is not None and a.op == "get_attr" else None
    if isinstance(a, (list, tuple)):
        return type(a)(_arg(x, sub) for x in a)
    if isinstance(a, dict):
        return {k: _arg(v, sub) for k, v in a.items()}
    if isinstance(a, (torch.SymInt, torch.SymFloat, torch.SymBool)):
        return _inductor.sym_value(a)
    return a


def shapes(specs) -> list:
    """[[shape, dtype], ...] of the tensors inside ``specs`` (JSON-ready)."""
    return [[list(map(_jsonable, t.shape)), str(t.dtype).replace("torch.", "")] for t in tensors(specs)]


def _jsonable(x):
    return x if isinstance(x, int) else str(x)


# --------------------------------------------------------------------------- records


def is_op_node(node: torch.fx.Node) -> bool:
    """call_function nodes that are tensor ops (not getitem, not SymInt arithmetic)."""
    if node.op != "call_function" or node.target is operator.getitem:
        return False
    if _inductor.op_kind(node.target) not in ("overload", "higher_order"):
        val = node.meta.get("val")
        return isinstance(val, torch.Tensor)  # a python-level call producing a tensor: unknown
    val = node.meta.get("val")
    if val is None:
        return True
    if isinstance(val, (torch.SymInt, torch.SymFloat, torch.SymBool, int, float, bool)):
        return False
    return True


def records_from_graph(gm: torch.fx.GraphModule, graph_id: int, phase: str,
                       hints: Mapping | None = None, tf32: bool = False) -> list[OpRecord]:
    """Apply the rules to every op node of ``gm`` (then the rule files' graph passes).  Raises
    AnalysisError naming the node.  ``tf32``: fp32 matrix FLOPs ran as TF32 (counted as ``tf32``)."""
    ensure_builtin_rules()
    backward = phase == "backward"
    records = []
    index = 0
    for node in gm.graph.nodes:
        if not is_op_node(node):
            continue
        opn = op_name(node.target)
        try:
            rec = _record(node, graph_id, phase, index, opn, backward, hints or {}, tf32)
        except Exception as e:  # noqa: BLE001 - re-raised with the node's name
            raise AnalysisError(node.name, opn, e) from e
        records.append(rec)
        index += 1
    for graph_pass in REGISTRY.graph_passes:
        graph_pass(gm, records)
    return records


def apply_rule(target, args, kwargs, out, tf32: bool = False):
    """The cost of one op from its rule (None: no rule).  Raises what the rule raises; a rule that
    returns something else than a Cost is a TypeError."""
    rule = REGISTRY.lookup(target)
    if rule is None:
        return None
    cost = rule(*args, out=out, **kwargs)
    if not isinstance(cost, Cost):
        raise TypeError(f"rule {rule.origin} returned {type(cost).__name__}, not a Cost")
    return cost.relabel({"fp32": "tf32"}) if tf32 else cost


def op_flags(target) -> list:
    """The report flags every node of this op carries (declared in rules/)."""
    name = REGISTRY.info(target).flag
    return [REGISTRY.flags[name]] if name else []


def _subgraph(gm, graph_id, phase, hints, tf32):
    def sub(node):
        target = gm
        for part in str(node.target).split("."):
            target = getattr(target, part, None)
        if not isinstance(target, torch.fx.GraphModule):
            return None
        recs = records_from_graph(target, graph_id, phase, hints, tf32)
        return Subgraph(sum((r.cost for r in recs if r.cost is not None and not r.recompute), Cost()),
                        tuple(sorted({r.op for r in recs if r.cost is None})))
    return sub


def _record(node, graph_id, phase, index, opn, backward, hints, tf32) -> OpRecord:
    sub = _subgraph(node.graph.owning_module, graph_id, phase, hints, tf32)
    args = tuple(_arg(a, sub) for a in node.args)
    kwargs = {k: _arg(v, sub) for k, v in node.kwargs.items()}
    out = spec_of(node.meta.get("val"))
    out_bytes = nbytes(out)
    cost = apply_rule(node.target, args, kwargs, out, tf32)
    cost_expr = None
    sym = None
    if cost is not None:
        if cost.is_symbolic:
            cost_expr, sym = cost.as_strings(), cost.formulas()
            try:
                cost = cost.evaluate(hints)
            except GraphMFUError:  # a data-dependent (unbacked) size: this node only is not counted
                return OpRecord(graph=graph_id, phase=phase, index=index, name=node.name, op=opn,
                                module=node_module(node, backward), inputs=shapes((args, kwargs)),
                                outputs=shapes(out), cost=None, cost_expr=cost_expr,
                                note="cost depends on a data-dependent size; not counted")
    if not isinstance(out_bytes, int):
        try:
            out_bytes = Cost(bytes_written=out_bytes).evaluate(hints).bytes_written
        except GraphMFUError:
            out_bytes = 0
    tag = node.meta.get("partitioner_tag")
    rec = OpRecord(
        graph=graph_id, phase=phase, index=index, name=node.name, op=opn,
        module=node_module(node, backward), inputs=shapes((args, kwargs)), outputs=shapes(out),
        cost=cost, cost_expr=cost_expr, output_bytes=int(out_bytes), sym=sym,
        recompute=bool(backward and (tag == "is_forward" or (tag is None and "nn_module_stack" in node.meta
                                                              and "fwd_nn_module_stack" not in node.meta))),
    )
    for flag in op_flags(node.target):
        rec.flag(flag)
    return rec
