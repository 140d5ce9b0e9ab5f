"""Per-rank memory of a layout: parameters, gradients, optimizer states and activations, with and without
recompute, for the first pipeline stage (the most activations in flight) and the last (the head and loss).

* parameters (``param_bytes``, bf16): the rank's share (dense / tp, routed experts / (ep * tp), embedding on
  the first stage, head and final norm on the last), all of it resident during the step unless FSDP reshards
  after the forward (then 1/shard plus two layers gathered at a time);
* gradients (``grad_accum_bytes``, fp32 in Llama 3): whole while microbatches accumulate, 1/shard otherwise;
* optimizer states (``optimizer_bytes``: fp32 master + Adam's two moments), 1/shard (experts: 1/min(shard,
  dp*cp/ep));
* activations: the bytes autograd saves per layer and microbatch, measured on the probe (``costs.py``), split
  over ``tp * cp`` (norms and residuals over ``tp`` only with sequence parallelism), times the stage's layers,
  times the microbatches in flight (``pipeline.in_flight``).  Full recompute keeps only each layer's input
  (``T * hidden * dtype``, / tp with SP) plus one layer's activations while it is recomputed; selective
  recompute (Korthikanti et al. 2022) re-runs only the attention core, whose fused kernel saves no scores, so
  its memory is taken as no recompute's.

Not counted: allocator fragmentation, communication buffers, the CUDA context, temporary workspaces.
"""
from __future__ import annotations

from graphmfu.parallel.collectives import params_per_rank
from graphmfu.parallel.costs import Costs
from graphmfu.parallel.layout import Layout
from graphmfu.parallel.pipeline import Stage, in_flight

GB = 1e9


def _layer_activations(lay: Layout, costs: Costs, kind: str) -> float:
    """Saved bytes of one layer of ``kind``, one microbatch, on one rank."""
    whole, sharded = costs.saved[kind], costs.saved_sharded[kind]
    rest = whole - sharded
    return sharded / (lay.tp * lay.cp) + rest / ((lay.tp if lay.sp else 1) * lay.cp)


def stage_memory(lay: Layout, costs: Costs, stage: Stage, a) -> dict:
    """Bytes on one rank of ``stage``: params, grads, optimizer, activations (none / full recompute), totals."""
    shape = costs.shape
    dense, expert = params_per_rank(lay, shape, stage)
    shard = lay.shard
    expert_shard = max(min(shard, lay.replicas // lay.ep), 1)
    params_n = dense + expert
    if lay.reshard_after_forward and shard > 1:
        biggest = max((shape.layer_params[k] / lay.tp for k in stage.kinds), default=0)
        params = (dense / shard + expert / expert_shard + 2 * biggest) * a.param_bytes
    else:
        params = params_n * a.param_bytes
    grads = (params_n if lay.m > 1 else dense / shard + expert / expert_shard) * a.grad_accum_bytes
    optimizer = (dense / shard + expert / expert_shard) * a.optimizer_bytes
    flight = in_flight(lay.pp, lay.m, lay.v, stage.rank)
    per_layer = [_layer_activations(lay, costs, k) for k in stage.kinds]
    none = sum(per_layer) * flight
    layer_input = lay.tokens_per_rank_mb * shape.hidden * shape.dtype_bytes / (lay.tp if lay.sp else 1)
    full = layer_input * len(per_layer) * flight + max(per_layer, default=0)
    if stage.last:
        head = costs.saved_last / (lay.tp * lay.cp)
        none += head
        full += head
    act = full if lay.recompute == "full" else none
    total = params + grads + optimizer + act
    return {"stage": stage.rank, "params": params, "grads": grads, "optimizer": optimizer,
            "activations_no_recompute": none, "activations_full_recompute": full, "activations": act,
            "in_flight": flight, "total": total}


def memory(lay: Layout, costs: Costs, stage_list: list, a) -> dict:
    """The peak over the first and last stages, with both stages' breakdown and whether it fits."""
    ends = [stage_list[0]] + ([stage_list[-1]] if len(stage_list) > 1 else [])
    per = [stage_memory(lay, costs, s, a) for s in ends]
    peak = max(per, key=lambda d: d["total"])
    hbm = a.items["hbm_gb"].value * GB if "hbm_gb" in a.items else None
    return {**peak, "stages": per, "hbm": hbm, "fits": None if hbm is None else peak["total"] <= hbm}


__all__ = ["memory", "stage_memory"]
