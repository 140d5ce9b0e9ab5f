"""Parallel layouts measured on gloo ranks on a CPU (issue 19, part 2): DDP, expert parallelism, HSDP, and the
meter's world numbers on an FSDP2 loop, each against the hand count and, where it applies, plan_parallel.

    python bench/parallel_cpu.py            # two spawns: 2 ranks (DDP, EP, FSDP2 meter) and 4 ranks (HSDP 2x2)

What runs (tests/test_parallel_ranks.py runs the same workers and checks each number by hand):

1. DDP: ``DistributedDataParallel(torch.compile(Net(), backend=graphmfu's))`` (one gradient bucket), one training
   step profiled on each rank, gathered on rank 0; an eager DDP at a 32 KiB bucket cap for DDP's bucket rebuild.
   Without ``graphmfu.ddp.watch`` the profile's notes say the all-reduce ran outside the graphs (time measured,
   bytes not counted); with it each bucket is a graph whose ``c10d.allreduce_`` carries S = the bucket's bytes
   and bus bytes 2(n-1)/n x S, joined to its measured ``c10d::allreduce_`` op.
2. Expert parallelism: a top-2 MoE layer (4 SwiGLU experts, 2 per rank, capacity = tokens x top_k / experts)
   whose dispatch and combine are ``torch.distributed._functional_collectives.all_to_all_single`` inside one
   compiled graph (fullgraph), trained one step: 4 all-to-alls (dispatch and combine, forward and backward) of
   S = tokens x top_k x hidden x 4 bytes each, against the collective model plan_parallel uses
   (``graphmfu.parallel.collectives`` on the same shapes).
3. HSDP: FSDP2 ``fully_shard(mesh=init_device_mesh("cpu", (2, 2)))`` on 4 ranks (replicate x shard), the step
   recorded eagerly (graphmfu.eager.record: every all-gather, reduce-scatter and the all-reduce of each shard
   across replicas) and gathered; against plan_parallel(world=4, dp=4, fsdp=2).
4. The meter on an FSDP2 loop (blocks compiled before fully_shard, as torchtitan does) with 4 rows on rank 0 and
   8 on rank 1: ``graphmfu.meter(world_every=2)``: world FLOPs = the sum of the ranks' hand counts.

Every number is per rank and per training step unless the row says "world".  Measured time on gloo is the CPU
time of the enqueuing op (gloo runs the transfer on its own thread): bus bandwidths from it mean nothing here.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

dist = torch.distributed
D, T = 32, 4  # Net: width, rows per rank (DDP, HSDP)
MT, MD, MF, ME, MK = 16, 32, 64, 4, 2  # MoE: tokens per rank, hidden, expert FFN, experts, top-k
BUCKET_MB = 32768 / 2 ** 20  # eager DDP: one block's gradients (2 x 32 x 128 fp32 = 32 KiB) per bucket
DEVICE = "h100-sxm"  # the roofline reports are placed on (the numbers checked here do not depend on it)


# --------------------------------------------------------------------------- models


class Block(nn.Module):
    def __init__(self, d=D):
        super().__init__()
        self.a, self.b = nn.Linear(d, 4 * d, bias=False), nn.Linear(4 * d, d, bias=False)

    def forward(self, x):
        return x + self.b(torch.relu(self.a(x)))


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.layers = nn.ModuleList([Block(), Block()])

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        return x


class MoE(nn.Module):
    """Top-k routed SwiGLU experts, ``ME / n`` on each of ``n`` ranks, static shapes: each expert takes
    ``capacity = MT * MK / ME`` tokens of each rank (later ones are dropped, empty slots are zeros), so the
    dispatch and combine are equal-split all-to-alls of ``ME * capacity = MT * MK`` rows."""

    def __init__(self, n: int):
        super().__init__()
        self.n, self.local, self.cap = n, ME // n, MT * MK // ME
        self.router = nn.Linear(MD, ME, bias=False)
        self.w1 = nn.Parameter(torch.randn(self.local, MD, MF) * 0.1)  # gate
        self.w3 = nn.Parameter(torch.randn(self.local, MD, MF) * 0.1)  # up
        self.w2 = nn.Parameter(torch.randn(self.local, MF, MD) * 0.1)  # down

    def forward(self, x):
        from torch.distributed import _functional_collectives as funcol

        n, el, cap = self.n, self.local, self.cap
        weight, idx = self.router(x).softmax(-1).topk(MK, dim=-1)  # [MT, MK]
        expert = idx.reshape(-1)
        onehot = F.one_hot(expert, ME)
        pos = (onehot.cumsum(0) * onehot).sum(-1) - 1  # place in its expert's queue
        slot = torch.where(pos < cap, expert * cap + pos, ME * cap)  # over capacity: the dummy row
        send = x.new_zeros(ME * cap + 1, MD).index_add(0, slot, x.repeat_interleave(MK, 0))[:ME * cap]
        got = funcol.all_to_all_single(send, None, None, dist.group.WORLD)  # dispatch: my experts' rows
        h = got.view(n, el, cap, MD).transpose(0, 1).reshape(el, n * cap, MD)
        out = torch.bmm(F.silu(torch.bmm(h, self.w1)) * torch.bmm(h, self.w3), self.w2)
        back = out.view(el, n, cap, MD).transpose(0, 1).reshape(n * el * cap, MD)
        ret = funcol.all_to_all_single(back, None, None, dist.group.WORLD)  # combine: back to the token's rank
        ret = torch.cat([ret, ret.new_zeros(1, MD)])
        return (ret[slot].view(MT, MK, MD) * weight.unsqueeze(-1)).sum(1)


# --------------------------------------------------------------------------- hand counts (the bench's column)


def net_flops(rows: int) -> int:
    """Net's training step: forward 2 blocks x 2 linears x 2*rows*32*128; backward dW + dX of every linear except
    the first block's input gradient (the input needs none): 32768*rows + 32768*rows + 24576*rows."""
    lin = 2 * rows * D * 4 * D
    return 4 * lin + 4 * lin + 3 * lin


def moe_forward_flops() -> int:
    """Active experts (MT * MK token-slots x 3 products of 2*MD*MF) plus the router (2*MT*MD*ME)."""
    return MT * MK * 2 * 3 * MD * MF + 2 * MT * MD * ME


PARAM_BYTES = 2 * 2 * D * 4 * D * 4  # Net's fp32 parameters: 65,536 B (32,768 per block)


# --------------------------------------------------------------------------- one rank


def _init(rank: int, world: int, init: str) -> None:
    os.environ.update(LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world))  # as torchrun sets them
    dist.init_process_group("gloo", init_method=f"file://{init}", rank=rank, world_size=world)


def _step(model, x):
    model(x).sum().backward()


def _comm_rows(rep) -> list:
    return [{"graph": g.id, "source": g.source, "phase": g.phase, "op": n.op, "module": n.module, "kind": n.comm.kind,
             "size": n.comm.size, "bytes": n.comm.bytes, "group_size": n.comm.group_size, "ranks": n.comm.ranks}
            for g in rep.record.graphs for n in g.nodes if n.comm is not None]


def _world(w) -> dict | None:
    if w is None:
        return None
    keep = ("kind", "group_size", "link", "count", "size", "comm_bytes", "ranks", "time_s")
    return {"totals": w.totals, "collectives": [{k: c[k] for k in keep} for c in w.collectives],
            "stages": [{k: s[k] for k in ("name", "ranks", "flops")} for s in w.stages], "text": w.table()}


def ddp(rank: int) -> dict:
    import graphmfu
    from graphmfu.capture import Backend
    from graphmfu.gather import gather
    from graphmfu.registry import Registry

    reg = Registry()
    torch.manual_seed(0)
    # one bucket (DDP's default cap): Dynamo's DDPOptimizer, which splits a compiled model's graph at bucket
    # boundaries, asserts that the first bucket (1 MiB) is no larger than the others
    model = nn.parallel.DistributedDataParallel(torch.compile(Net(), backend=Backend(registry=reg)))
    torch.manual_seed(1 + rank)
    x = torch.randn(T, D)
    for _ in range(2):  # compile; DDP rebuilds its buckets after the first backward
        _step(model, x)
    with graphmfu.ProfileSession(registry=reg) as p0, graphmfu.stage("train"):
        _step(model, x)
    rep0 = p0.report(device=DEVICE)
    res = {"unwatched": {"comm": _comm_rows(rep0), "notes": list(rep0.record.timing.notes)}}
    watched = graphmfu.ddp.watch(model, registry=reg)
    _step(model, x)
    with graphmfu.ProfileSession(registry=reg) as p, graphmfu.stage("train"):
        _step(model, x)
    rep = p.report(device=DEVICE)
    ids = {g.id for g in rep.record.graphs if g.source == "ddp"}
    back = graphmfu.Report.load(rep.save(Path(tempfile.mkdtemp()) / "ddp.json"))  # the bucket graphs round-trip
    res["roundtrip"] = back.totals == rep.totals and _comm_rows(back) == _comm_rows(rep) and bool(back.summary())
    res.update(flops=rep.totals["flops"], stages={s["name"]: s["flops"] for s in rep.stages}, comm=_comm_rows(rep),
               hook_calls=watched.buckets, notes=list(rep.record.notes),
               joined=[{"name": k["name"], "time_s": k["time_s"]} for k in rep.kernels if k["graph"] in ids],
               unknown=rep.coverage()["nodes_unknown"], world=_world(gather(rep)))
    # buckets: an eager DDP with one 32 KiB bucket per block (DDP's first bucket is 1 MiB before its rebuild)
    reg2 = Registry()
    torch.manual_seed(0)
    model2 = nn.parallel.DistributedDataParallel(Net(), bucket_cap_mb=BUCKET_MB)
    w2 = graphmfu.ddp.watch(model2, registry=reg2)
    first = []
    for _ in range(3):
        _step(model2, x)
        first = first or _comm_rows(graphmfu.Report(reg2.record(), graphmfu.get_device(DEVICE)))
    rebuilt = _comm_rows(graphmfu.Report(reg2.record(), graphmfu.get_device(DEVICE)))
    ref = Net()  # the hook averages as DDP does: each gradient = the mean over ranks of the local gradients
    ref.load_state_dict(model2.module.state_dict())
    model2.zero_grad()
    _step(model2, x)
    _step(ref, x)
    same = True
    for a, b in zip(model2.module.parameters(), ref.parameters()):
        mean = b.grad.clone()
        dist.all_reduce(mean)
        same = same and bool(torch.allclose(a.grad, mean / dist.get_world_size(), atol=1e-6))
    res["buckets"] = {"first": first, "rebuilt": rebuilt, "hook_calls": w2.buckets, "notes": list(reg2.notes),
                      "grads_are_the_mean": same}
    return res


def ep(rank: int, world: int) -> dict:
    import graphmfu
    from graphmfu.capture import Backend
    from graphmfu.gather import gather
    from graphmfu.registry import Registry

    reg = Registry()
    torch.manual_seed(10 + rank)  # each rank holds its own experts
    moe = MoE(world)
    model = torch.compile(moe, backend=Backend(registry=reg), fullgraph=True)
    x = torch.randn(MT, MD, requires_grad=True)
    _step(model, x)  # compile
    same = bool(torch.allclose(model(x), moe(x), atol=1e-5))  # compiled = eager, the collectives included
    with graphmfu.ProfileSession(registry=reg) as p, graphmfu.stage("train"):
        _step(model, x)
    rep = p.report(device=DEVICE)
    return {"same_as_eager": same, "flops": rep.totals["flops"], "forward": rep.phase("forward")["flops"],
            "backward": rep.phase("backward")["flops"], "graphs": sorted(g.phase for g in rep.record.graphs),
            "stages": {s["name"]: s["flops"] for s in rep.stages}, "comm": _comm_rows(rep),
            "unknown": rep.coverage()["nodes_unknown"], "world": _world(gather(rep))}


def fsdp_meter(rank: int) -> dict:
    import graphmfu
    from graphmfu.capture import Backend
    from graphmfu.registry import Registry
    from torch.distributed.fsdp import fully_shard

    reg = Registry()
    torch.manual_seed(0)
    net = Net()
    for i, blk in enumerate(net.layers):  # torchtitan's order: compile each block, then shard
        net.layers.register_module(str(i), torch.compile(blk, backend=Backend(registry=reg), fullgraph=True))
    for blk in net.layers:
        fully_shard(blk)
    fully_shard(net)
    rows = T * (1 + rank)  # 4 rows on rank 0, 8 on rank 1
    x = torch.randn(rows, D)
    _step(net, x)  # compile
    meter = graphmfu.meter(registry=reg, world_every=2, cuda=False, device=DEVICE)
    for _ in range(4):
        with meter.step(tokens=rows):
            _step(net, x)
    keep = ("flops", "mfu", "step_s", "world_size", "world_steps", "world_flops", "world_mfu", "world_tflops",
            "world_tokens_per_s")
    return {"rows": [{k: r[k] for k in keep if k in r} for r in meter.records],
            "peak_fp32": graphmfu.get_device(DEVICE).matrix_tflops("fp32") * 1e12}


def hsdp(rank: int) -> dict:
    import graphmfu
    from graphmfu import eager
    from graphmfu.gather import gather
    from graphmfu.registry import Registry
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh("cpu", (2, 2), mesh_dim_names=("replicate", "shard"))
    torch.manual_seed(0)
    net = Net()
    for blk in net.layers:
        fully_shard(blk, mesh=mesh)
    fully_shard(net, mesh=mesh)
    torch.manual_seed(1 + rank)
    x = torch.randn(T, D)
    _step(net, x)
    reg = Registry()
    # the step recorded op by op (not profiled: on a CPU the recording of an FSDP2 step does not join its profile,
    # see docs/distributed.md)
    eager.record(net, lambda: _step(net, x), "train", reg, "cpu")
    rep = graphmfu.Report(reg.record(), graphmfu.get_device(DEVICE))
    return {"flops": rep.totals["flops"], "failures": list(rep.record.failures), "comm": _comm_rows(rep),
            "world": _world(gather(rep))}


def _run(rank: int, world: int, init: str, out: str, parts: tuple) -> None:
    _init(rank, world, init)
    res = {}
    try:
        for name in parts:
            t0 = time.perf_counter()
            res[name] = {"ddp": lambda: ddp(rank), "ep": lambda: ep(rank, world), "meter": lambda: fsdp_meter(rank),
                         "hsdp": lambda: hsdp(rank)}[name]()
            res[name]["seconds"] = time.perf_counter() - t0
    except Exception as e:  # noqa: BLE001 - reported to the caller
        res["error"] = f"{type(e).__name__}: {e}\n{traceback.format_exc()}"
    with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
        json.dump(res, f, default=str)
    dist.destroy_process_group()


def spawn(world: int, parts: tuple) -> list[dict]:
    """Run ``parts`` on ``world`` gloo ranks (torch.multiprocessing spawn); each rank's results."""
    import torch.multiprocessing as mp

    out = tempfile.mkdtemp(prefix="graphmfu-parallel-")
    mp.spawn(_run, args=(world, os.path.join(out, "init"), out, parts), nprocs=world, join=True)
    res = []
    for r in range(world):
        with open(os.path.join(out, f"rank{r}.json")) as f:
            res.append(json.load(f))
    return res


# --------------------------------------------------------------------------- the plan's numbers


def plan_net(world: int, fsdp: int) -> dict:
    """plan_parallel on Net with one [T, D] microbatch per rank, fp32 parameters and gradients: per-rank FLOPs and
    per-step payload / bus bytes by collective kind."""
    from graphmfu.parallel import plan_parallel

    p = plan_parallel(Net(), torch.zeros(T, D), world=world, dp=world, fsdp=fsdp, reshard_after_forward=fsdp > 1,
                      assumptions={"param_bytes": 4}).best
    out = {"flops": p.per_rank["flops"]}
    for c in p.comms:
        o = out.setdefault(c["kind"], {"count": 0, "size": 0.0, "bus": 0.0, "n": c["n"]})
        o["count"] += c["per_step"]
        o["size"] += c["size"] * c["per_step"]
        o["bus"] += c["bus_bytes_step"]
    return out


def plan_ep(world: int = 2) -> dict:
    """The EP all-to-alls of the plan's collective model (what plan_parallel adds per MoE layer) for the MoE's own
    shapes in fp32.  plan_parallel itself plans routed experts from a transformers config only (a plain module has
    no experts to it), so the shape is given here: one MoE layer, ME experts, top-MK, hidden MD, MT tokens."""
    from graphmfu.hardware import get_device
    from graphmfu.parallel.assumptions import Assumptions
    from graphmfu.parallel.collectives import collectives
    from graphmfu.parallel.layout import Layout
    from graphmfu.parallel.model import ModelShape
    from graphmfu.parallel.pipeline import stages

    experts = 3 * ME * MD * MF
    shape = ModelShape("MoE", 1, ["moe"], {"moe": 0}, MD, 1, 1, MD, MD, 0, {"moe": experts + ME * MD},
                       {"moe": experts}, 0, 0, 0, experts=ME, top_k=MK, dtype=torch.float32, hf=False)
    lay = Layout(world, dp=world, ep=world, fsdp=1, seq=MT, microbatches=1).validate()
    lay.check_model(shape)
    (stage,) = stages(shape.kinds, 1)
    (c,) = [c for c in collectives(lay, shape, stage, Assumptions.for_device(get_device(DEVICE), None))
            if c.dim == "ep"]
    return {"kind": c.kind, "n": c.n, "size": c.size, "count": c.count, "bus": c.bus}


# --------------------------------------------------------------------------- the table


def _kind(comm: list, kind: str, source: str | None = None) -> dict:
    rows = [c for c in comm if c["kind"] == kind and (source is None or c["source"] == source)]
    return {"count": len(rows), "size": sum(c["size"] for c in rows), "bus": sum(c["bytes"] for c in rows),
            "n": sorted({c["group_size"] for c in rows})}


def _ddp_rows(d: dict, pd: dict) -> list:
    ar = _kind(d["comm"], "all_reduce", "ddp")
    bk = d["buckets"]
    half = f"{PARAM_BYTES // 2}/{PARAM_BYTES // 2}"
    return [("matrix FLOPs (fw+bw, compiled)", d["flops"], net_flops(T), pd["flops"]),
            ("all_reduce buckets (DDP's default cap: one)", ar["count"], 1, pd["all_reduce"]["count"]),
            ("all_reduce payload S = gradient bytes", ar["size"], PARAM_BYTES, pd["all_reduce"]["size"]),
            ("all_reduce bus bytes 2(n-1)/n S", ar["bus"], 2 * (2 - 1) * PARAM_BYTES // 2, pd["all_reduce"]["bus"]),
            ("buckets joined to a measured c10d::allreduce_", len([k for k in d["joined"] if k["time_s"] > 0]), 1,
             None),
            ("eager DDP 32 KiB cap, 1st backward (module:S/bus)",
             " ".join(f"{c['module']}:{c['size']}/{c['bytes']}" for c in bk["first"]), f"layers:{PARAM_BYTES}/"
             f"{PARAM_BYTES}", None),
            ("eager DDP 32 KiB cap, rebuilt buckets",
             " ".join(f"{c['module']}:{c['size']}/{c['bytes']}" for c in bk["rebuilt"]),
             f"layers.1:{half} layers.0:{half}", None),
            ("eager DDP: gradients = mean over ranks", bk["grads_are_the_mean"], True, None)]


def _ep_rows(e: dict, pe: dict) -> list:
    a = _kind(e["comm"], "all_to_all")
    one = MT * MK * MD * 4
    return [("forward matrix FLOPs (experts + router)", e["forward"], moe_forward_flops(), None),
            ("training matrix FLOPs (fw + 2x fw bw)", e["flops"], 3 * moe_forward_flops(), None),
            ("all_to_all count (dispatch+combine, fw+bw)", a["count"], 4, pe["count"]),
            ("all_to_all S each = MT*top_k*MD*4", a["size"] // max(a["count"], 1), one, pe["size"]),
            ("all_to_all bus bytes (n-1)/n S, step", a["bus"], 4 * one // 2, pe["count"] * pe["bus"]),
            ("compiled output = eager output", e["same_as_eager"], True, None)]


def _hsdp_rows(h: dict, ph: dict) -> list:
    rows = [("matrix FLOPs (eager recording)", h["flops"], net_flops(T), ph["flops"])]
    for kind, size, bus in (("all_gather", 2 * PARAM_BYTES, PARAM_BYTES),
                            ("reduce_scatter", PARAM_BYTES, PARAM_BYTES // 2),
                            ("all_reduce", PARAM_BYTES // 2, PARAM_BYTES // 2)):
        k = _kind(h["comm"], kind)
        group = "replica" if kind == "all_reduce" else "shard"
        rows += [(f"{kind} x{k['count']} payload ({group} group, n={k['n'][0] if k['n'] else '?'})", k["size"], size,
                  ph[kind]["size"]),
                 (f"{kind} bus bytes", k["bus"], bus, ph[kind]["bus"])]
    return rows


def table(two: list[dict], four: list[dict]) -> str:
    def n(x):
        return "-" if x is None else f"{x:,.0f}" if isinstance(x, (int, float)) and not isinstance(x, bool) else str(x)

    out = [f"{'layout':<22} {'per rank and step (unless world)':<46} {'measured':>12} {'by hand':>12} {'plan':>12}"]

    def row(layout, what, measured, hand, planned=None):
        ok = "ok" if measured == hand else "DIFF"
        if max(len(n(measured)), len(n(hand))) > 12:  # a list: measured and by hand on lines of their own
            out.append(f"{layout:<22} {what:<46} {ok}")
            out.append(f"{'':<24}measured {n(measured)}\n{'':<24}by hand  {n(hand)}")
            return
        out.append(f"{layout:<22} {what:<46} {n(measured):>12} {n(hand):>12} {n(planned):>12}  {ok}")

    def ranks(name, per_rank):
        """One block when every rank gives the same rows (labelled 'each'), else one per rank."""
        world = len(per_rank)
        if all(rows == per_rank[0] for rows in per_rank):
            per_rank = [per_rank[0]]
        for r, rows in enumerate(per_rank):
            label = f"{name} rank {r}" if len(per_rank) > 1 else f"{name} (each of {world})"
            for i, x in enumerate(rows):
                row(label if i == 0 else "", *x)

    pd, ph, pe = plan_net(2, 1), plan_net(4, 2), plan_ep(2)
    ranks("DDP", [_ddp_rows(res["ddp"], pd) for res in two])
    w = two[0]["ddp"]["world"]
    row("DDP world", "matrix FLOPs (sum of ranks)", w["totals"]["flops"], 2 * net_flops(T), 2 * pd["flops"])
    row("", "bus bytes (sum of ranks)", w["totals"]["comm_bytes"], 2 * PARAM_BYTES, 2 * pd["all_reduce"]["bus"])
    (c,) = w["collectives"]
    out.append(f"{'':<22} measured all_reduce (its joined c10d::allreduce_: the enqueue, on gloo): "
               f"{c['time_s'] * 1e3:.3f} ms per rank and step")
    unw = [x for x in two[0]["ddp"]["unwatched"]["notes"] if "outside graphmfu's graphs" in x]
    out.append(f"{'':<22} without graphmfu.ddp.watch: {len(two[0]['ddp']['unwatched']['comm'])} collective(s) in "
               f"the record, and the profile's note:\n{'':<24}{unw[0] if unw else 'NONE'}")
    ranks("EP", [_ep_rows(res["ep"], pe) for res in two])
    row("EP world", "matrix FLOPs (sum of ranks)", two[0]["ep"]["world"]["totals"]["flops"], 6 * moe_forward_flops())
    ranks("HSDP 2x2", [_hsdp_rows(res["hsdp"], ph) for res in four])
    row("HSDP world", "matrix FLOPs (sum of 4 ranks)", four[0]["hsdp"]["world"]["totals"]["flops"], 4 * net_flops(T),
        4 * ph["flops"])
    m0, m1 = (res["meter"]["rows"] for res in two)
    for r, rows in enumerate((m0, m1)):
        row(f"FSDP2 meter rank {r}", f"FLOPs of each of 4 steps ({T * (1 + r)} rows)",
            sorted({x["flops"] for x in rows}), [net_flops(T * (1 + r))])
    row("FSDP2 meter world", "world_flops at steps 2 and 4", [m0[1]["world_flops"], m0[3]["world_flops"]],
        [2 * (net_flops(T) + net_flops(2 * T))] * 2)
    steps = m0[:2] + m1[:2]
    t_matrix = sum(x["flops"] for x in steps) / two[0]["meter"]["peak_fp32"]
    out.append(f"{'':<22} world_mfu {m0[1]['world_mfu']:.4e} = matrix time at the {DEVICE} fp32 peak "
               f"{t_matrix:.4e} s / summed step time {sum(x['step_s'] for x in steps):.4e} s "
               f"= {t_matrix / sum(x['step_s'] for x in steps):.4e}")
    secs = {k: max(res[k]["seconds"] for res in two) for k in ("ddp", "ep", "meter")}
    secs["hsdp"] = max(res["hsdp"]["seconds"] for res in four)
    out.append("seconds per part (slowest rank, compile included): " + ", ".join(f"{k} {v:.1f}" for k, v in
                                                                               secs.items()))
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--world-text", action="store_true", help="also print rank 0's gathered world reports")
    args = ap.parse_args()
    t0 = time.perf_counter()
    two = spawn(2, ("ddp", "ep", "meter"))
    four = spawn(4, ("hsdp",))
    for res in two + four:
        if "error" in res:
            raise SystemExit(res["error"])
    print(f"graphmfu parallel layouts on gloo ranks (CPU), torch {torch.__version__}, {os.cpu_count()} cores, "
          f"{time.strftime('%Y-%m-%d')}")
    print(table(two, four))
    if args.world_text:
        for name, res in (("DDP", two[0]["ddp"]), ("EP", two[0]["ep"]), ("HSDP", four[0]["hsdp"])):
            print(f"\n--- {name}: rank 0's gathered world report\n{res['world']['text']}")
    print(f"\nwall {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
