"""Multi-GPU validation (issue 13): FSDP2 training and TP prefill of a Llama-shaped model, compiled
with graphmfu.backend, every rank's report gathered on rank 0.

    torchrun --nproc_per_node 2 bench/multi_gpu.py            # 2 GPUs, NCCL (bf16, d 2048, T 1024)
    torchrun --nproc_per_node 2 bench/multi_gpu.py --cpu      # the same logic on CPU over gloo (tiny)

What it runs and checks (printed as a table, written under $OUT):

1. compile orders: which of four FSDP2 x torch.compile orders give Dynamo graphs to a custom backend
   (fully_shard then torch.compile(model); per-block torch.compile then fully_shard — torchtitan's
   order; fully_shard then per-block module.compile(); skip_fsdp_hooks=False where it exists);
2. FSDP2 training step (2 layers, blocks compiled before fully_shard, as torchtitan does), profiled in
   stages forward/backward: per-rank matrix FLOPs of the compiled blocks (profiled stages) = the hand
   count 3 x layers x block forward; the eager recording of the whole step (embedding, head, loss
   too) = the hand count of the step; the eager
   recording of the same step: every all-gather / reduce-scatter payload = the bytes of one FSDP
   group's parameters (dim 0 padded to the world size), bus bytes = payload x (n-1)/n; exposed
   communication per stage (collective kernel time no compute kernel overlapped);
3. TP=n prefill (DTensor parallelize_module: q/k/v/w1/w3 colwise, o/w2 rowwise), compiled: per-rank
   block matrix FLOPs = 1/n of the unsharded model's; the row-wise all_reduces inside the graph with
   bus bytes 2(n-1)/n x activation bytes.

Files under $OUT: multi_gpu.txt (everything printed), world_fsdp.{txt,md,json}, world_tp.{txt,json},
trace_rank0_fsdp.json.gz (rank 0's annotated Chrome trace).  Runtime on 2x H200: about 2 minutes.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import json
import math
import os
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import graphmfu  # noqa: E402
from graphmfu import eager, overlap  # noqa: E402
from graphmfu.capture import Backend  # noqa: E402
from graphmfu.gather import gather  # noqa: E402
from graphmfu.registry import Registry  # noqa: E402

dist = torch.distributed


# --------------------------------------------------------------------------- the model


@dataclasses.dataclass
class Cfg:
    dim: int = 2048
    heads: int = 16
    ffn: int = 5632
    vocab: int = 32000
    layers: int = 2
    seq: int = 1024
    batch: int = 2
    dtype: torch.dtype = torch.bfloat16

    @property
    def head_dim(self) -> int:
        return self.dim // self.heads


class RMSNorm(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * self.weight


class Attention(nn.Module):
    def __init__(self, c: Cfg):
        super().__init__()
        self.c = c
        self.q, self.k, self.v, self.o = (nn.Linear(c.dim, c.dim, bias=False) for _ in range(4))

    def forward(self, x):
        b, t, _ = x.shape
        hd = self.c.head_dim
        # -1 heads: under TP each rank holds heads / n of them
        q, k, v = (p(x).view(b, t, -1, hd).transpose(1, 2) for p in (self.q, self.k, self.v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.o(y.transpose(1, 2).reshape(b, t, -1))


class MLP(nn.Module):
    def __init__(self, c: Cfg):
        super().__init__()
        self.w1, self.w3 = nn.Linear(c.dim, c.ffn, bias=False), nn.Linear(c.dim, c.ffn, bias=False)
        self.w2 = nn.Linear(c.ffn, c.dim, bias=False)

    def forward(self, x):
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class Block(nn.Module):
    def __init__(self, c: Cfg):
        super().__init__()
        self.attn_norm, self.attn, self.mlp_norm, self.mlp = RMSNorm(c.dim), Attention(c), RMSNorm(c.dim), MLP(c)

    def forward(self, x):
        x = x + self.attn(self.attn_norm(x))
        return x + self.mlp(self.mlp_norm(x))


class Llama(nn.Module):
    def __init__(self, c: Cfg):
        super().__init__()
        self.embed = nn.Embedding(c.vocab, c.dim)
        self.layers = nn.ModuleList([Block(c) for _ in range(c.layers)])
        self.norm, self.head = RMSNorm(c.dim), nn.Linear(c.dim, c.vocab, bias=False)

    def forward(self, tokens):
        x = self.embed(tokens)
        for layer in self.layers:
            x = layer(x)
        return self.head(self.norm(x))


def block_forward_flops(c: Cfg, shards: int = 1) -> int:
    """Matrix FLOPs of one block's forward on one rank holding 1/shards of every projection.
    Projections: q, k, v, o (d x d) and w1, w3, w2 (d x f): 2 N (4 d^2 + 3 d f); attention: Q K^T and
    P V over the causal pairs T(T+1)/2 per (batch, head), 2 * 2 * hd FLOPs per pair."""
    n_tok = c.batch * c.seq
    proj = 2 * n_tok * (4 * c.dim * c.dim + 3 * c.dim * c.ffn)
    attn = 2 * 2 * c.batch * c.heads * (c.seq * (c.seq + 1) // 2) * c.head_dim
    return (proj + attn) // shards


def train_flops(c: Cfg) -> int:
    """One training step, matrix FLOPs: forward (blocks + LM head 2 N d V), backward 2x forward
    (weight and input gradients of every matmul — the first block's input is the embedding's output,
    which needs a gradient; attention backward = 4 products = 2x its forward).  The embedding's own
    gradient is an index-add: vector work, no matrix FLOPs."""
    fwd = c.layers * block_forward_flops(c) + 2 * c.batch * c.seq * c.dim * c.vocab
    return 3 * fwd


# --------------------------------------------------------------------------- helpers


class Out:
    """Prints and keeps every line (written to $OUT/multi_gpu.txt on rank 0)."""

    def __init__(self, rank):
        self.rank, self.buf = rank, io.StringIO()

    def __call__(self, *a):
        if self.rank == 0:
            line = " ".join(str(x) for x in a)
            print(line, flush=True)
            self.buf.write(line + "\n")


def fsdp_groups(model) -> list[int]:
    """Bytes of each fully_shard group's parameters, dim 0 padded to the world size (FSDP2's layout)."""
    from torch.distributed.fsdp import FSDPModule

    n = dist.get_world_size()
    sizes = []
    for mod in model.modules():
        if not isinstance(mod, FSDPModule):
            continue
        owned = {id(p) for sub in mod.modules() if sub is not mod and isinstance(sub, FSDPModule)
                 for p in sub.parameters()}
        total = 0
        for p in mod.parameters():
            if id(p) in owned:
                continue
            shape = tuple(p.shape)  # a DTensor's shape is the global (unsharded) one
            rows = math.ceil(shape[0] / n) * n if shape else n
            total += rows * (math.prod(shape[1:]) if shape else 1) * p.element_size()
        if total:
            sizes.append(total)
    return sizes


def shard(model, blocks_compiled_with=None):
    from torch.distributed.fsdp import fully_shard

    if blocks_compiled_with is not None:  # torchtitan: compile each block, register it back, then shard
        for i, blk in enumerate(model.layers):
            model.layers.register_module(str(i), torch.compile(blk, backend=blocks_compiled_with, fullgraph=True))
    for blk in model.layers:
        fully_shard(blk)
    fully_shard(model)
    return model


def step(model, tokens, stages=False):
    ctx = graphmfu.stage if stages else (lambda name: contextlib.nullcontext())
    with ctx("forward"):
        logits = model(tokens)
        loss = F.cross_entropy(logits.flatten(0, 1).float(), tokens.flatten())
    with ctx("backward"):
        loss.backward()
    return loss


# --------------------------------------------------------------------------- parts


def compile_orders(c: Cfg, dev, out: Out) -> dict:
    """How many Dynamo graphs a counting backend receives in each FSDP2 x compile order."""
    small = dataclasses.replace(c, layers=2, seq=min(c.seq, 64), batch=1)
    tokens = torch.randint(0, small.vocab, (small.batch, small.seq), device=dev)
    results = {}
    has_flag = hasattr(torch._dynamo.config, "skip_fsdp_hooks")
    orders = ["shard_then_compile_model", "compile_blocks_then_shard", "shard_then_blocks_compile"]
    if has_flag:
        orders.append("shard_then_compile_model_fsdp_hooks_traced")
    for order in orders:
        torch._dynamo.reset()
        seen = []

        def counting(gm, example_inputs):
            seen.append(len(gm.graph.nodes))
            return gm.forward

        torch.manual_seed(0)
        m = Llama(small).to(dev, small.dtype)
        flag = contextlib.nullcontext()
        if order == "compile_blocks_then_shard":
            cm = shard(m, blocks_compiled_with=counting)
        elif order == "shard_then_blocks_compile":
            cm = shard(m)
            for blk in cm.layers:
                blk.compile(backend=counting)
        else:
            cm = torch.compile(shard(m), backend=counting)
            if order.endswith("traced"):
                flag = torch._dynamo.config.patch(skip_fsdp_hooks=False)
        err = ""
        try:
            with flag:
                for _ in range(2):
                    step(cm, tokens)
        except Exception as e:  # noqa: BLE001 - reported in the table
            err = f"{type(e).__name__}: {str(e).splitlines()[0][:120]}"
        results[order] = {"graphs": len(seen), "nodes": seen[:8], "error": err}
        out(f"  {order:45s} graphs={len(seen):3d} {err}")
    torch._dynamo.reset()
    return results


def fsdp_part(c: Cfg, dev, out: Out, out_dir: Path) -> dict:
    rank, n = dist.get_rank(), dist.get_world_size()
    reg = Registry()
    torch.manual_seed(0)
    model = shard(Llama(c).to(dev, c.dtype), blocks_compiled_with=Backend(registry=reg))
    tokens = torch.randint(0, c.vocab, (c.batch, c.seq), device=dev)
    t0 = time.time()
    for _ in range(2):  # compile + warm
        step(model, tokens)
        model.zero_grad(set_to_none=True)
    warm_s = time.time() - t0
    with graphmfu.ProfileSession(registry=reg) as p:
        step(model, tokens, stages=True)
    rep = p.report()
    if not rep.record.timing.exposed_comm:  # until ProfileSession feeds overlap itself
        rep.record.timing.exposed_comm = overlap.exposed([(t[0], t[1]) for t in getattr(p, "_traces", [])])
    if rank == 0:
        with contextlib.suppress(Exception):
            p.export_chrome_trace(out_dir / "trace_rank0_fsdp.json.gz")
    stage_flops = {s["name"]: s["flops"] for s in rep.stages}
    measured = stage_flops.get("forward", 0) + stage_flops.get("backward", 0)  # the compiled blocks' kernels
    # the same step recorded eagerly (FSDP2's collectives run outside the compiled blocks)
    torch.manual_seed(0)
    plain = shard(Llama(c).to(dev, c.dtype))
    step(plain, tokens)
    plain.zero_grad(set_to_none=True)
    ereg = Registry()
    g = eager.record(plain, lambda: step(plain, tokens), "train", ereg, dev.type)
    comms = [n_.comm for n_ in (g.nodes if g is not None else []) if n_.comm is not None]
    groups = fsdp_groups(plain)
    world = gather(rep)
    eager_flops = graphmfu.Report(ereg.record(), rep.device).totals["flops"] if g is not None else None
    res = {"rank": rank, "graphs": len(rep.record.graphs), "warm_s": warm_s, "flops": measured,
           "hand": 3 * c.layers * block_forward_flops(c), "eager_flops": eager_flops, "eager_hand": train_flops(c),
           "eager_unknown": sorted({x.op for x in (g.nodes if g is not None else []) if x.cost is None}),
           "stage_flops": stage_flops, "exposed": rep.record.timing.exposed_comm,
           "comm": [dataclasses.asdict(x) for x in comms], "groups": groups,
           "eager_failures": ereg.failures}
    every = [None] * n
    dist.all_gather_object(every, res)
    if world is not None:
        for ext in ("txt", "md", "json"):
            world.save(out_dir / f"world_fsdp.{ext}")
        out(world.table())
        out("FSDP2 training step (blocks compiled before fully_shard; embedding, head and loss run eagerly):")
        out(f"  {'rank':>4} {'graphs':>6} {'compiled blocks':>16} {'hand 3L*block':>16} {'equal':>6} "
            f"{'eager whole step':>16} {'hand step':>16} {'equal':>6}  eager unknown ops")
        for r in every:
            out(f"  {r['rank']:4d} {r['graphs']:6d} {r['flops']:16d} {r['hand']:16d} {str(r['flops'] == r['hand']):>6} "
                f"{r['eager_flops']!s:>16} {r['eager_hand']:16d} {str(r['eager_flops'] == r['eager_hand']):>6}  "
                f"{r['eager_unknown']}")
        for r in every:
            gathers = [x for x in r["comm"] if x["kind"] == "all_gather"]
            scatters = [x for x in r["comm"] if x["kind"] == "reduce_scatter"]
            sizes = set(r["groups"])
            ok_g = all(x["size"] in sizes and x["bytes"] * n == x["size"] * (n - 1) for x in gathers)
            ok_s = all(x["bytes"] * n == x["size"] * (n - 1) for x in scatters)
            out(f"  rank {r['rank']}: {len(gathers)} all-gathers, {len(scatters)} reduce-scatters; group param bytes "
                f"{sorted(sizes)}; every all-gather payload = one group's params and bus = S(n-1)/n: {ok_g}; "
                f"reduce-scatter bus = S(n-1)/n: {ok_s}; eager failures {r['eager_failures']}")
            for e in r["exposed"]:
                out(f"    exposed comm, stage {e['stage']}: comm {e['comm_s'] * 1e3:.3f} ms, exposed "
                    f"{e['exposed_s'] * 1e3:.3f} ms, compute {e['compute_s'] * 1e3:.3f} ms")
    return res


def tp_part(c: Cfg, dev, out: Out, out_dir: Path) -> dict:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

    rank, n = dist.get_rank(), dist.get_world_size()
    mesh = init_device_mesh(dev.type, (n,))
    torch.manual_seed(0)
    model = Llama(c).to(dev, c.dtype)
    plan = {"attn.q": ColwiseParallel(), "attn.k": ColwiseParallel(), "attn.v": ColwiseParallel(),
            "attn.o": RowwiseParallel(), "mlp.w1": ColwiseParallel(), "mlp.w3": ColwiseParallel(),
            "mlp.w2": RowwiseParallel()}
    for blk in model.layers:
        parallelize_module(blk, mesh, plan)
    reg = Registry()
    cm = torch.compile(model, backend=Backend(registry=reg))
    tokens = torch.randint(0, c.vocab, (c.batch, c.seq), device=dev)
    with torch.no_grad():
        cm(tokens)
        with graphmfu.ProfileSession(registry=reg) as p, graphmfu.stage("prefill"):
            cm(tokens)
    rep = p.report()
    block_flops = sum(nd.cost.flops for g in rep.record.graphs for nd in g.nodes
                      if nd.cost is not None and nd.module.startswith("layers."))
    comms = [nd.comm for g in rep.record.graphs for nd in g.nodes if nd.comm is not None]
    act = c.batch * c.seq * c.dim * torch.tensor([], dtype=c.dtype).element_size()
    res = {"rank": rank, "block_flops": block_flops, "hand": c.layers * block_forward_flops(c, shards=n),
           "unsharded": c.layers * block_forward_flops(c), "comm": [dataclasses.asdict(x) for x in comms],
           "act_bytes": act, "unknown": rep.coverage()["nodes_unknown"]}
    world = gather(rep)
    every = [None] * n
    dist.all_gather_object(every, res)
    if world is not None:
        for ext in ("txt", "json"):
            world.save(out_dir / f"world_tp.{ext}")
        out(world.table())
        out(f"TP={n} prefill (compiled): per-rank block matrix FLOPs vs unsharded / {n}")
        for r in every:
            ars = [x for x in r["comm"] if x["kind"] == "all_reduce"]
            ok = all(x["size"] == r["act_bytes"] and x["bytes"] * n == 2 * (n - 1) * x["size"] for x in ars)
            out(f"  rank {r['rank']}: {r['block_flops']} vs {r['hand']} (= {r['unsharded']} / {n}): "
                f"{r['block_flops'] == r['hand']}; {len(ars)} all_reduce(s) of the activation ({r['act_bytes']} B), "
                f"bus = 2(n-1)/n S: {ok}; unknown nodes {r['unknown']}")
    return res


# --------------------------------------------------------------------------- main


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cpu", action="store_true", help="gloo on CPU with a tiny config (logic check)")
    ap.add_argument("--parts", default="orders,fsdp,tp")
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    a = ap.parse_args()
    cuda = torch.cuda.is_available() and not a.cpu
    local = int(os.environ.get("LOCAL_RANK", 0))
    if cuda:
        torch.cuda.set_device(local)
    dist.init_process_group("nccl" if cuda else "gloo")
    dev = torch.device(f"cuda:{local}" if cuda else "cpu")
    c = Cfg() if cuda else Cfg(dim=64, heads=4, ffn=176, vocab=128, seq=16, batch=2, dtype=torch.float32)
    out_dir = Path(a.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    out = Out(dist.get_rank())
    out(f"graphmfu multi-GPU bench: torch {torch.__version__}, world {dist.get_world_size()}, "
        f"{'NCCL on ' + torch.cuda.get_device_name(local) if cuda else 'gloo on CPU'}; config {c}")
    t0 = time.time()
    results = {}
    parts = a.parts.split(",")
    try:
        if "orders" in parts:
            out("compile orders (Dynamo graphs a counting backend received, per rank 0):")
            results["orders"] = compile_orders(c, dev, out)
        if "fsdp" in parts:
            results["fsdp"] = fsdp_part(c, dev, out, out_dir)
        if "tp" in parts:
            try:
                results["tp"] = tp_part(c, dev, out, out_dir)
            except Exception as e:  # noqa: BLE001 - reported, the rest stands
                out(f"TP part failed: {type(e).__name__}: {e}")
    finally:
        out(f"total {time.time() - t0:.1f} s")
        if dist.get_rank() == 0:
            (out_dir / "multi_gpu.txt").write_text(out.buf.getvalue())
            (out_dir / "multi_gpu.json").write_text(json.dumps(results, indent=1, default=str))
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
