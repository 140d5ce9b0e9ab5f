"""Unfused memory-bound chains: several memory-bound kernels, one op each, in a row on one tensor.

A run (in launch order, one graph, one stage, one module) of at least ``MIN_CHAIN`` kernels of a single
memory-bound op each, where at least two of them read or write a tensor of the run's largest shape, is a
chain a fused kernel would run as one: read the chain's first input once, write its last output once.
lost_s = the chain's measured time x (1 - fused bytes / the chain's bytes): the bytes fusion saves, at the
bandwidth the chain reached.  Eager recordings (every op its own kernel) and compiled graphs Inductor left
unfused are read alike; fused kernels (several origin ops) never form a chain.
"""
from __future__ import annotations

from collections import defaultdict
from math import prod

from graphmfu.headroom.evidence import Cause, Context
from graphmfu.render import ms, num

MIN_CHAIN = 3


def _shapes(op) -> list:
    return [tuple(s) for s, _ in (*op.inputs, *op.outputs) if isinstance(s, (list, tuple))
            and all(isinstance(d, int) for d in s)]


def _runs(ctx: Context):
    rows = defaultdict(list)
    for k in ctx.kernels:
        rows[(k["graph"], k["stage"])].append(k)
    for ks in rows.values():
        ks.sort(key=lambda k: k["index"])
        run: list = []
        for k in ks:
            ops = ctx.ops(k)
            single = len(ops) == 1 and k["bound"] == "memory" and not k["flops"]
            if single and run and (k["index"] != run[-1][0]["index"] + 1 or k["module"] != run[-1][0]["module"]):
                yield run
                run = []
            if single:
                run.append((k, ops[0]))
            else:
                if run:
                    yield run
                run = []
        if run:
            yield run


def unfused_chains(ctx: Context) -> list[Cause]:
    out = []
    for run in _runs(ctx):
        if len(run) < MIN_CHAIN:
            continue
        big = max((s for _, op in run for s in _shapes(op)), key=prod, default=None)
        if big is None or sum(big in _shapes(op) for _, op in run) < 2:
            continue
        first, last = ctx.kernel_record(run[0][0]).cost, ctx.kernel_record(run[-1][0]).cost
        chain = sum(ctx.kernel_record(k).cost.bytes for k, _ in run)
        fused = first.bytes_read + last.bytes_written
        t = sum(k["time_s"] for k, _ in run)
        lost = t * (1 - fused / chain) if chain and fused < chain else 0.0
        k0 = run[0][0]
        ops = " -> ".join(op.op.split(".")[1] for _, op in run)
        eager = ctx.graph(k0["graph"]).source == "eager"
        evidence = (f"{len(run)} memory-bound kernels, one op each, on a {list(big)} tensor ({ops}): "
                    f"{num(chain, 'B')} moved per call where one fused kernel moves ~{num(fused, 'B')}; "
                    f"{ms(t)} ms measured")
        action = ("fuse them: torch.compile this code (Inductor fuses the chain into one kernel), or call the fused "
                  "op (F.layer_norm / F.rms_norm / F.gelu)" if eager else
                  "Inductor left them unfused: look for a graph break, an extern kernel or a view between them "
                  "(TORCH_LOGS=fusion), or call the fused op")
        out.append(Cause("unfused_chain", f"{k0['module'] or '(root)'} ({k0['stage'] or 'no stage'})", lost,
                         evidence, action))
    return out


__all__ = ["unfused_chains", "MIN_CHAIN"]
