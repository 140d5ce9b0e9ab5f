"""Control flow and subgraph calls (higher-order ops): ``cond`` and ``invoke_subgraph``
(``torch.compiler.nested_compile_region``).  Their graphs arrive as ``Subgraph`` costs computed
with the same rules.  A ``cond`` predicate is data: the report counts the costlier branch (the most
either call can do) and flags the node; FlopCounterMode, which runs one branch on real data, counts
the branch taken."""
import torch

from graphmfu import _inductor
from graphmfu.cost import REGISTRY, Cost, Subgraph, nbytes, rule

BRANCH = REGISTRY.flag("data_dependent_branch", "cond: the predicate is data; counted the costlier branch",
                       "{n} torch.cond node(s): the predicate is data, each counted at its costlier branch")

_hops = _inductor.higher_order_ops()


def _weight(c: Cost):
    return (c.flops, c.vector_flops, c.bytes)


if "cond" in _hops:
    REGISTRY.declare(_hops["cond"], flag=BRANCH.name)

    @rule(_hops["cond"])
    def cond(pred, true_fn, false_fn, operands, *rest, out, **kw):
        branches = [b for b in (true_fn, false_fn) if isinstance(b, Subgraph)]
        if not branches:
            raise ValueError("cond branches are not visible as subgraphs")
        best = max(branches, key=lambda b: _weight(b.cost))
        if best.unknown:
            raise ValueError(f"cond branch holds ops without a rule: {', '.join(best.unknown)}")
        return best.cost + Cost.of(read=nbytes(pred))


if "invoke_subgraph" in _hops:
    @rule(_hops["invoke_subgraph"])
    def invoke_subgraph(body, identifier=None, *operands, out, **kw):
        if not isinstance(body, Subgraph):
            raise ValueError("invoke_subgraph body is not visible as a subgraph")
        if body.unknown:
            raise ValueError(f"subgraph holds ops without a rule: {', '.join(body.unknown)}")
        return body.cost
