"""Every collective a layout implies, per rank and step, with its NCCL-tests bus bytes and its link.

Bus bytes follow NCCL-tests (as ``rules/collectives.py`` for measured collectives): for a group of ``n``
ranks and payload ``S`` (all-reduce: the buffer; all-gather: the gathered output; reduce-scatter: the input
before scattering; all-to-all: the send buffer; send: the message)

    all_reduce 2(n-1)/n * S;   all_gather, reduce_scatter, all_to_all (n-1)/n * S;   send/recv 1 * S

and bus bytes / time is the bus bandwidth, comparable to one direction of the link.  Per microbatch and
layer on a rank with ``T = microbatch_size * seq / cp`` tokens and activations ``A = T * hidden * dtype``:

* **TP** with sequence parallelism: forward all-gather before attention and before the MLP, reduce-scatter
  after each (S = A); backward the conjugates (2 reduce-scatters, 2 all-gathers) and the all-gathers of the
  two inputs again for the weight gradients (Megatron's SP keeps them sharded): 6 all-gathers + 4
  reduce-scatters.  Without SP: 2 all-reduces forward, 2 backward (S = A).  Full recompute repeats the forward's.
  The vocabulary-parallel head adds one all-gather (forward) and one reduce-scatter (backward) of A with SP.
* **CP** all-gather (Llama 3): forward all-gather of K and V of the whole sequence
  (``S = mbs * seq * kv_heads/tp * (d_k + d_v) * dtype``), backward all-gather again and reduce-scatter of
  dK, dV (same S).  Ring: ``cp - 1`` sends of the local K/V block forward, ``2 (cp - 1)`` backward.
* **EP**: per MoE layer, all-to-all dispatch and combine of the routed tokens, forward and backward:
  ``S = tokens * top_k * hidden * dtype`` per direction (tokens = T, or T/tp with SP).
* **PP**: each microbatch crosses ``v`` chunk boundaries per rank forward and backward: ``S = A`` (``A/tp``
  with SP: the sharded activations are sent).
* **DP / FSDP / HSDP** once per step over the ``dp * cp`` ranks holding the same parameters (P per rank):
  DDP all-reduce of gradients; FSDP all-gather of parameters (twice when resharded after the forward) and
  reduce-scatter of gradients; HSDP both within the shard group and an all-reduce of the shard across replicas.
  Expert parameters reduce over ``dp * cp / ep`` ranks.
"""
from __future__ import annotations

import dataclasses

from graphmfu.parallel.layout import Layout
from graphmfu.parallel.model import ModelShape

def bus_bytes(kind: str, size: float, n: int) -> float:
    """NCCL-tests bus bytes of one ``kind`` collective of payload ``size`` (bytes, a float on paper) over ``n``
    ranks, by the factors of rules/collectives.py (the measured collectives' rule)."""
    from graphmfu.rules.collectives import BUS_FACTOR

    if n <= 1 and kind != "send":
        return 0.0
    num, den = BUS_FACTOR[kind]
    return size * (num(n) / den(n))


@dataclasses.dataclass(frozen=True)
class Collective:
    dim: str  # tp | cp | ep | pp | dp
    kind: str
    n: int  # group size
    size: float  # payload S in bytes (NCCL-tests)
    count: float  # how many per microbatch (per_step False) or per step (per_step True), on one rank
    intra: bool  # the group is inside one node
    what: str
    per_step: bool = False
    per_layer: str | None = None  # the layer kind it repeats for (None: once per microbatch / step)

    @property
    def bus(self) -> float:
        return bus_bytes(self.kind, self.size, self.n)

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "bus": self.bus}


def _tp(lay: Layout, shape: ModelShape, act: float) -> list:
    out, tp, intra = [], lay.tp, lay.intra_node("tp")
    if tp == 1:
        return out
    rc = lay.recompute == "full"
    for kind in dict.fromkeys(shape.kinds):
        if lay.sp:
            out += [Collective("tp", "all_gather", tp, act, 6 + 2 * rc, intra, "layer: 2 fw + 2 bw + 2 wgrad re-gathers",
                               per_layer=kind),
                    Collective("tp", "reduce_scatter", tp, act, 4 + 2 * rc, intra, "layer: 2 fw + 2 bw",
                               per_layer=kind)]
        else:
            out.append(Collective("tp", "all_reduce", tp, act, 4 + 2 * rc, intra, "layer: 2 fw + 2 bw",
                                  per_layer=kind))
    if lay.sp:
        out += [Collective("tp", "all_gather", tp, act, 1, intra, "head: fw"),
                Collective("tp", "reduce_scatter", tp, act, 1, intra, "head: bw")]
    else:
        out.append(Collective("tp", "all_reduce", tp, act, 1, intra, "head: bw"))
    return out


def _cp(lay: Layout, shape: ModelShape) -> list:
    cp = lay.cp
    if cp == 1:
        return []
    kv_heads = max(shape.kv_heads // lay.tp, 1)
    kv = lay.microbatch_size * lay.seq * kv_heads * (shape.qk_head_dim + shape.v_head_dim) * shape.dtype_bytes
    intra, rc = lay.intra_node("cp"), lay.recompute == "full"
    out = []
    for kind in dict.fromkeys(shape.kinds):
        if lay.cp_mode == "ring":
            out.append(Collective("cp", "send", cp, kv / cp, (cp - 1) * (3 + rc), intra,
                                  "layer: K/V blocks around the ring, fw + 2x bw", per_layer=kind))
        else:
            out += [Collective("cp", "all_gather", cp, kv, 2 + rc, intra, "layer: K/V fw + again bw", per_layer=kind),
                    Collective("cp", "reduce_scatter", cp, kv, 1, intra, "layer: dK/dV bw", per_layer=kind)]
    return out


def _ep(lay: Layout, shape: ModelShape) -> list:
    if lay.ep == 1 or "moe" not in shape.kinds:
        return []
    tokens = lay.tokens_per_rank_mb // (lay.tp if lay.sp else 1)
    size = tokens * shape.top_k * shape.hidden * shape.dtype_bytes
    n = 4 + 2 * (lay.recompute == "full")
    return [Collective("ep", "all_to_all", lay.ep, size, n, lay.ep_intra_node(),
                       "MoE layer: dispatch + combine, fw and bw", per_layer="moe")]


def _pp(lay: Layout, act: float) -> list:
    if lay.pp == 1:
        return []
    size = act / lay.tp if lay.sp else act
    return [Collective("pp", "send", 2, size, 2 * lay.v, lay.intra_node("pp"),
                       "activations fw + gradients bw at each of v chunk boundaries")]


def params_per_rank(lay: Layout, shape: ModelShape, stage) -> tuple[float, float]:
    """(dense, expert) parameters one rank of ``stage`` holds: dense / tp, routed experts / (ep * tp)."""
    dense = expert = 0.0
    for k in stage.kinds:
        e = shape.expert_params[k]
        dense += (shape.layer_params[k] - e) / lay.tp
        expert += e / (lay.ep * lay.tp)
    if stage.first:
        dense += shape.embed_params / lay.tp
    if stage.last:
        dense += (shape.head_params + shape.other_params) / lay.tp
    return dense, expert


def _dp_group(out: list, what: str, params: float, n: int, shard: int, lay: Layout, a, intra: bool) -> None:
    if n <= 1 or params == 0:
        return
    g, p = a.grad_reduce_bytes, a.param_bytes
    shard = max(min(shard, n), 1)
    if shard == 1:
        out.append(Collective("dp", "all_reduce", n, params * g, 1, intra, f"{what}: DDP gradients", True))
        return
    gathers = 2 if lay.reshard_after_forward else 1
    out += [Collective("dp", "all_gather", shard, params * p, gathers, intra, f"{what}: parameters", True),
            Collective("dp", "reduce_scatter", shard, params * g, 1, intra, f"{what}: gradients", True)]
    if n // shard > 1:
        out.append(Collective("dp", "all_reduce", n // shard, params * g / shard, 1, False,
                              f"{what}: HSDP shard across replicas", True))


def _dp(lay: Layout, shape: ModelShape, stage, a) -> list:
    dense, expert = params_per_rank(lay, shape, stage)
    intra = lay.intra_node("dp") and lay.intra_node("cp") and lay.stride("dp") * lay.d <= lay.gpus_per_node
    out: list = []
    _dp_group(out, "dense", dense, lay.replicas, lay.shard, lay, a, intra)
    _dp_group(out, "experts", expert, lay.replicas // lay.ep, lay.shard, lay, a, False)
    return out


def collectives(lay: Layout, shape: ModelShape, stage, a) -> list[Collective]:
    """The collectives one rank of pipeline ``stage`` takes part in (``a``: the Assumptions, for dtypes)."""
    act = lay.tokens_per_rank_mb * shape.hidden * shape.dtype_bytes
    own = [c for c in _tp(lay, shape, act) if c.per_layer is None or c.per_layer in stage.kinds]
    if not stage.last:
        own = [c for c in own if not c.what.startswith("head")]
    own += [c for c in _cp(lay, shape) + _ep(lay, shape) if c.per_layer in stage.kinds]
    return own + _pp(lay, act) + _dp(lay, shape, stage, a)


__all__ = ["Collective", "collectives", "bus_bytes", "params_per_rank"]
