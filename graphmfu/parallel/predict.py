"""Time per rank and step, and what it makes of MFU: compute at the device's ceilings plus exposed communication
on the links' roofs, paced by the pipeline.

Per microbatch, on each pipeline rank (the slowest paces the pipeline):

* every op of its layers and of its outside ops (``costs.py``), divided over ``tp * cp`` (experts' weight-shaped
  tensors over ``ep * tp``), takes its roofline time at the *achieved* ceilings: ``max(matrix FLOPs / (peak of
  its dtype x gemm or attention fraction) + vector FLOPs / vector peak, bytes / (DRAM x dram fraction))``.
  Attention runs the FLOPs the causal mask keeps (FlashAttention skips masked blocks) at the attention fraction;
* recompute: full re-runs every layer op's forward, selective the attention forwards;
* FP32 gradient accumulation: a read-modify-write of the rank's gradients per microbatch (when m > 1);
* exposed TP, CP and EP collectives: bus bytes / (link bus bandwidth) x (1 - overlap); ring CP exposes only
  what its sends take beyond the attention they hide under.

Per step: ``(m + (p-1)/v)`` microbatch-times of the slowest rank (the bubble is the ``(p-1)/v`` part), the
exposed pipeline sends (2(p-1) hops of the warm-up and cool-down chains with asynchronous P2P, all of them
otherwise), the exposed data-parallel collectives (one layer's all-gather and reduce-scatter, plus what does
not fit under the step's compute), and the optimizer step (a streaming pass over the sharded states).

MFU = model FLOPs per step / (world x step time x the dense bf16 peak).  Two counts of the model FLOPs are given:
``flops`` (graphmfu's: attention at the pairs the causal mask keeps, docs/conventions.md) and ``flops_dense``
(every score counted: PaLM's 6N + 12LHQT, which the Llama 3 paper cites for its MFU and Meta's torchtitan
implements "not accounting for sparsity in causal attention").
"""
from __future__ import annotations

import dataclasses

from graphmfu.cost import dtype_name
from graphmfu.hardware import DeviceSpec
from graphmfu.parallel.collectives import collectives, params_per_rank
from graphmfu.parallel.costs import Costs, OpCost
from graphmfu.parallel.layout import Layout
from graphmfu.parallel.memory import memory
from graphmfu.parallel.pipeline import bubble_ratio, stages

PARTS = ("gemm", "attention", "vector", "recompute", "grad_accum", "tp", "cp", "ep", "bubble", "pp", "dp",
         "optimizer")
RANK = ("flops", "gemm_flops", "attention_flops", "vector_flops", "bytes")  # per rank, per microbatch


@dataclasses.dataclass
class Prediction:
    layout: Layout
    step_s: float
    tokens_per_s: float
    flops: float  # model FLOPs per step, whole world (causal attention)
    flops_dense: float  # every score counted
    peak_flops: float  # dense peak of one device (FLOP/s)
    breakdown: dict  # seconds per step on the slowest rank, by PARTS
    per_rank: dict  # the slowest rank's matrix / vector FLOPs and bytes per step
    memory: dict
    comms: list  # per collective: dim, kind, n, link, size, bus bytes per step, time at roof and busbw, exposed
    stage: int  # the pipeline rank that paces the step
    stages: list = dataclasses.field(default_factory=list)  # per pipeline rank: layers, per-step FLOPs/bytes, t/mb

    @property
    def world(self) -> int:
        return self.layout.world

    @property
    def mfu(self) -> float:
        return self.flops / (self.world * self.step_s * self.peak_flops)

    @property
    def mfu_dense(self) -> float:
        return self.flops_dense / (self.world * self.step_s * self.peak_flops)

    @property
    def tflops_per_gpu(self) -> float:
        return self.flops / (self.world * self.step_s) / 1e12

    @property
    def tflops_per_gpu_dense(self) -> float:
        return self.flops_dense / (self.world * self.step_s) / 1e12

    def row(self) -> dict:
        lay = self.layout
        return {"layout": lay.label(), "world": lay.world, "tp": lay.tp, "cp": lay.cp, "pp": lay.pp, "v": lay.v,
                "dp": lay.d, "ep": lay.ep, "microbatches": lay.m, "seq": lay.seq, "tokens_per_step": lay.tokens,
                "step_s": self.step_s, "tokens_per_s": self.tokens_per_s, "tflops_per_gpu": self.tflops_per_gpu,
                "tflops_per_gpu_dense": self.tflops_per_gpu_dense, "mfu": self.mfu, "mfu_dense": self.mfu_dense,
                "memory_gb": self.memory["total"] / 1e9, "fits": self.memory["fits"],
                **{f"rank_{k}": v for k, v in self.per_rank.items()},
                **{f"t_{k}": v for k, v in self.breakdown.items()}}


class Predictor:
    """Costs of one model at one (seq, microbatch size), a device and a set of assumptions -> predictions."""

    def __init__(self, costs: Costs, device: DeviceSpec, assumptions):
        self.costs, self.device, self.a = costs, device, assumptions
        self.vector_peak = device.vector_tflops("fp32") * 1e12
        self.dram = device.dram_gbps * 1e9 * assumptions.dram

    # ------------------------------------------------------------------ one op
    def op_time(self, op: OpCost, lay: Layout, in_layer: bool) -> float:
        div = lay.tp * lay.cp if (op.sharded or lay.sp or not in_layer) else lay.cp
        frac = self.a.attention if op.cls == "attention" else self.a.gemm
        compute = (op.flops / div) / (self.device.matrix_tflops(op.dtype) * 1e12 * frac) if op.flops else 0.0
        compute += (op.vector_flops / div) / self.vector_peak
        moved = (op.bytes - op.expert_bytes) / div + op.expert_bytes / (lay.ep * lay.tp)
        return max(compute, moved / self.dram)

    def _ops(self, ops, lay: Layout, in_layer: bool) -> dict:
        out = dict.fromkeys(("gemm", "attention", "vector", "recompute", "flops", "gemm_flops", "attention_flops",
                             "vector_flops", "bytes"), 0.0)
        for op in ops:
            t = self.op_time(op, lay, in_layer)
            out[op.cls] += t
            if in_layer and op.phase == "forward" and (lay.recompute == "full" or
                                                       (lay.recompute == "selective" and op.cls == "attention")):
                out["recompute"] += t
            div = lay.tp * lay.cp if (op.sharded or lay.sp or not in_layer) else lay.cp
            out["flops"] += op.flops / div
            if op.cls != "vector":
                out[f"{op.cls}_flops"] += op.flops / div
            out["vector_flops"] += op.vector_flops / div
            out["bytes"] += (op.bytes - op.expert_bytes) / div + op.expert_bytes / (lay.ep * lay.tp)
        return out

    # ------------------------------------------------------------------ one pipeline rank, one microbatch
    def stage_time(self, lay: Layout, stage, kind_cache: dict) -> tuple[dict, list]:
        parts = dict.fromkeys(PARTS, 0.0) | dict.fromkeys(RANK, 0.0)
        for k in stage.kinds:
            if k not in kind_cache:
                kind_cache[k] = self._ops(self.costs.layer[k], lay, True)
            for key, v in kind_cache[k].items():
                parts[key] += v
        for ops, here in ((self.costs.first, stage.first), (self.costs.last, stage.last)):
            if here:
                for key, v in self._ops(ops, lay, False).items():
                    parts[key] += v
        if lay.m > 1:
            dense, expert = params_per_rank(lay, self.costs.shape, stage)
            moved = (dense + expert) * (2 * self.a.grad_accum_bytes + self.a.param_bytes)
            parts["grad_accum"] = moved / self.dram
        comms = collectives(lay, self.costs.shape, stage, self.a)
        for c in comms:
            if c.per_step or c.dim in ("pp", "dp"):
                continue
            times = c.count * (stage.kinds.count(c.per_layer) if c.per_layer else 1)
            t = times * self.comm_time(c)
            if c.dim == "cp" and lay.cp_mode == "ring":
                t = max(0.0, t - parts["attention"])
            else:
                t *= 1 - {"tp": self.a.tp_overlap, "cp": self.a.cp_overlap, "ep": self.a.ep_overlap}[c.dim]
            parts[c.dim] += t
        return parts, comms

    def link(self, c):
        return self.a.nvlink if c.intra and "nvlink" in self.a.items else self.a.internode

    def comm_time(self, c) -> float:
        return c.bus / (self.link(c).busbw_gbps * 1e9)

    # ------------------------------------------------------------------ one step
    def predict(self, lay: Layout) -> Prediction:
        shape = self.costs.shape
        st = stages(shape.kinds, lay.pp, lay.balance_ends)
        cache: dict = {}
        timed = [(s, *self.stage_time(lay, s, cache)) for s in st]
        slow, parts, comms = max(timed, key=lambda x: sum(x[1][p] for p in PARTS))
        t_mb = sum(parts[p] for p in PARTS)
        m, p, v = lay.m, lay.pp, lay.v
        bd = {k: parts[k] * m for k in PARTS}
        bd["bubble"] = t_mb * (bubble_ratio(p, m, v) * m if p > 1 else 0.0)
        pipe = t_mb * m + bd["bubble"]
        sends = [c for c in comms if c.dim == "pp"]
        if sends:
            t_send = self.comm_time(sends[0])
            bd["pp"] = 2 * (p - 1) * t_send if self.a.pp_async else m * sends[0].count * t_send
        t_dp = sum(c.count * self.comm_time(c) for c in comms if c.dim == "dp")
        exposed = min(self.a.dp_exposed_layers / max(slow.layers, 1), 1.0)
        bd["dp"] = t_dp * exposed + max(0.0, t_dp * (1 - exposed) - pipe)
        dense, expert = params_per_rank(lay, shape, slow)
        shard = dense / lay.shard + expert / max(min(lay.shard, lay.replicas // lay.ep), 1)
        bd["optimizer"] = shard * (2 * self.a.optimizer_bytes + self.a.grad_reduce_bytes + self.a.param_bytes) / self.dram
        step = sum(bd.values())
        flops = self.costs.total("flops") * m * lay.d
        dense_f = self.costs.total("flops_dense") * m * lay.d
        peak = self.device.matrix_tflops(_dtype(shape)) * 1e12
        per_stage = [{"rank": s.rank, "layers": s.layers, "first": s.first, "last": s.last,
                      "t_microbatch_s": sum(pt[k] for k in PARTS), **{k: pt[k] * m for k in RANK}}
                     for s, pt, _ in timed]
        per_rank = {k: v for k, v in per_stage[slow.rank].items() if k in RANK}
        return Prediction(lay, step, lay.tokens / step, flops, dense_f, peak, bd, per_rank,
                          memory(lay, self.costs, st, self.a), self._comm_rows(lay, slow, comms), slow.rank, per_stage)

    def _comm_rows(self, lay: Layout, stage, comms) -> list:
        rows = []
        for c in comms:
            n_step = c.count * (1 if c.per_step else lay.m * (stage.kinds.count(c.per_layer) if c.per_layer else 1))
            f = self.link(c)
            rows.append({"dim": c.dim, "kind": c.kind, "n": c.n, "link": f.name, "what": c.what, "size": c.size,
                         "per_step": n_step, "bus_bytes_step": c.bus * n_step,
                         "t_roof_s": c.bus * n_step / (f.gbps * 1e9), "t_busbw_s": c.bus * n_step / (f.busbw_gbps * 1e9)})
        return rows


def _dtype(shape) -> str:
    return dtype_name(shape.dtype)


__all__ = ["Predictor", "Prediction", "PARTS"]
