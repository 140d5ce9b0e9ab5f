"""A parallel layout: how one training step is split over a world of ranks, and one clear line when it cannot be.

Degrees (``world = tp * cp * pp * dp``):

* ``tp`` tensor parallelism (Megatron's column/row sharding of every layer's matrices); with
  ``sequence_parallel`` (default on when ``tp > 1``) the norms, residuals and dropout between them run on
  ``seq / tp`` tokens and the all-reduces become all-gather + reduce-scatter (Korthikanti et al. 2022);
* ``cp`` context parallelism: each sequence split over ``cp`` ranks (causal work balanced by 2*cp chunks);
  ``cp_mode`` ``allgather`` (Llama 3: all-gather K/V, attend the local queries) or ``ring`` (ring attention);
* ``pp`` pipeline stages, each holding ``virtual_stages`` (v) model chunks (interleaved 1F1B when v > 1),
  ``microbatches`` (m) per step of ``microbatch_size`` sequences each; ``balance_ends``: the embedding and the
  head (with the loss) take a layer's slot each on the first and last stage (Llama 3: one layer fewer there);
* ``dp`` data-parallel replicas; the ``dp * cp`` ranks that hold the same parameters reduce gradients together.
  ``fsdp`` is the shard group of parameters, gradients and optimizer states among them: ``None`` all of them
  (FSDP / ZeRO-3), ``1`` none (DDP), between: HSDP (shard within ``fsdp`` ranks, all-reduce across the
  ``dp * cp / fsdp`` replicas).  ``reshard_after_forward`` False keeps the gathered parameters for the
  backward (Llama 3: no second all-gather);
* ``ep`` expert parallelism: the routed experts of MoE layers split over ``ep`` ranks of the ``dp * cp`` ranks.

``order`` lists the dimensions innermost first (default Llama 3's ``tp, cp, pp, dp``, section 3.3.2 of
arXiv:2407.21783): a group whose ranks fit in one node (``gpus_per_node``) runs on the intra-node fabric
(NVLink), else on the inter-node one.
"""
from __future__ import annotations

import dataclasses
import math

from graphmfu.errors import GraphMFUError

DIMS = ("tp", "cp", "pp", "dp")
RECOMPUTE = ("none", "selective", "full")
CP_MODES = ("allgather", "ring")


@dataclasses.dataclass(frozen=True)
class Layout:
    world: int
    tp: int = 1
    pp: int = 1
    dp: int | None = None
    cp: int = 1
    ep: int = 1
    fsdp: int | None = None
    microbatches: int | None = None
    virtual_stages: int = 1
    microbatch_size: int = 1
    seq: int = 2048
    sequence_parallel: bool | None = None
    recompute: str = "none"
    cp_mode: str = "allgather"
    balance_ends: bool = False
    reshard_after_forward: bool = False
    order: tuple = DIMS
    gpus_per_node: int = 8

    # ------------------------------------------------------------------ derived
    @property
    def d(self) -> int:
        """The data-parallel degree (``world / (tp*cp*pp)`` when not given)."""
        return self.dp if self.dp is not None else self.world // max(self.tp * self.cp * self.pp, 1)

    @property
    def m(self) -> int:
        """Microbatches per step (default: ``pp``, the fewest that fill a 1F1B pipeline)."""
        return self.microbatches if self.microbatches is not None else self.pp

    @property
    def v(self) -> int:
        return self.virtual_stages

    @property
    def sp(self) -> bool:
        return self.tp > 1 if self.sequence_parallel is None else bool(self.sequence_parallel)

    @property
    def replicas(self) -> int:
        """Ranks that hold the same (dense) parameters and reduce their gradients together: ``dp * cp``."""
        return self.d * self.cp

    @property
    def shard(self) -> int:
        """The FSDP shard group size (1: DDP, nothing sharded)."""
        return self.replicas if self.fsdp is None else self.fsdp

    @property
    def sequences(self) -> int:
        """Sequences per step over the whole world (global batch)."""
        return self.d * self.m * self.microbatch_size

    @property
    def tokens(self) -> int:
        return self.sequences * self.seq

    @property
    def tokens_per_rank_mb(self) -> int:
        """Tokens one rank's layers see per microbatch before sequence parallelism: ``mbs * seq / cp``."""
        return self.microbatch_size * self.seq // self.cp

    def size(self, dim: str) -> int:
        return {"tp": self.tp, "cp": self.cp, "pp": self.pp, "dp": self.d}[dim]

    def stride(self, dim: str) -> int:
        """Rank distance between neighbours of ``dim``'s groups (product of the inner dimensions)."""
        s = 1
        for name in self.order:
            if name == dim:
                return s
            s *= self.size(name)
        raise GraphMFUError(f"plan_parallel: order {self.order} has no {dim!r}; give all of {', '.join(DIMS)}")

    def intra_node(self, dim: str, n: int | None = None) -> bool:
        """Whether one group of ``n`` ranks (default: the dimension's size) along ``dim`` fits in one node."""
        n = self.size(dim) if n is None else n
        span = self.stride(dim) * n
        return n <= 1 or (span <= self.gpus_per_node and self.gpus_per_node % span == 0)

    def ep_intra_node(self) -> bool:
        """EP groups take consecutive ranks of the ``cp * dp`` ranks (the inner of the two first)."""
        inner = min(("cp", "dp"), key=lambda d: self.order.index(d))
        outer = "dp" if inner == "cp" else "cp"
        if self.ep <= self.size(inner):
            return self.intra_node(inner, self.ep)
        return self.intra_node(outer, math.ceil(self.ep / self.size(inner))) and self.intra_node(inner)

    def label(self) -> str:
        v = f"(v{self.v})" if self.v > 1 else ""
        ep = f" EP{self.ep}" if self.ep > 1 else ""
        sh = "" if self.shard == self.replicas else (" DDP" if self.shard == 1 else f" HSDP{self.shard}")
        rc = "" if self.recompute == "none" else f" rc:{self.recompute}"
        return f"TP{self.tp} CP{self.cp} PP{self.pp}{v} DP{self.d}{ep}{sh} m{self.m}{rc}"

    def replace(self, **kw) -> "Layout":
        return dataclasses.replace(self, **kw)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d.update(dp=self.d, microbatches=self.m, sequence_parallel=self.sp, order=list(self.order))
        return d

    # ------------------------------------------------------------------ checks
    def validate(self) -> "Layout":
        """Self-consistency (the model's own limits: ``check_model``); one GraphMFUError line per problem."""
        for name in ("world", "tp", "pp", "cp", "ep", "virtual_stages", "microbatch_size", "seq", "gpus_per_node"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise GraphMFUError(f"plan_parallel: {name}={v!r} must be a positive integer")
        for name in ("dp", "microbatches", "fsdp"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 1):
                raise GraphMFUError(f"plan_parallel: {name}={v!r} must be a positive integer (or left out)")
        inner = self.tp * self.cp * self.pp
        if self.dp is None and self.world % inner:
            raise GraphMFUError(f"plan_parallel: world {self.world} is not divisible by tp*cp*pp = {self.tp}*{self.cp}"
                                f"*{self.pp} = {inner}; pick degrees whose product divides the world size")
        if inner * self.d != self.world:
            raise GraphMFUError(f"plan_parallel: tp*cp*pp*dp = {self.tp}*{self.cp}*{self.pp}*{self.d} = "
                                f"{inner * self.d} != world {self.world}; pick degrees whose product is the world "
                                f"size (dp={self.world // inner if self.world % inner == 0 else '?'} would fit)")
        if self.recompute not in RECOMPUTE:
            raise GraphMFUError(f"plan_parallel: recompute={self.recompute!r}; use one of {', '.join(RECOMPUTE)}")
        if self.cp_mode not in CP_MODES:
            raise GraphMFUError(f"plan_parallel: cp_mode={self.cp_mode!r}; use one of {', '.join(CP_MODES)}")
        if sorted(self.order) != sorted(DIMS):
            raise GraphMFUError(f"plan_parallel: order={self.order!r} must list each of {', '.join(DIMS)} once")
        if self.seq % self.cp:
            raise GraphMFUError(f"plan_parallel: seq {self.seq} is not divisible by cp={self.cp}; each context-"
                                f"parallel rank holds seq/cp tokens")
        if self.sp and self.tokens_per_rank_mb % self.tp:
            raise GraphMFUError(f"plan_parallel: sequence parallelism splits {self.tokens_per_rank_mb} tokens per "
                                f"rank over tp={self.tp}, which does not divide them; change seq or tp, or "
                                f"sequence_parallel=False")
        if self.replicas % self.ep:
            raise GraphMFUError(f"plan_parallel: ep={self.ep} must divide dp*cp = {self.replicas} (experts are "
                                f"split over ranks that hold the same dense parameters)")
        if self.replicas % self.shard:
            raise GraphMFUError(f"plan_parallel: fsdp={self.fsdp} must divide dp*cp = {self.replicas} (the ranks "
                                f"holding the same parameters): 1 = DDP, {self.replicas} = full FSDP")
        if self.v > 1 and self.pp == 1:
            raise GraphMFUError("plan_parallel: virtual_stages > 1 needs pp > 1 (interleaving splits each "
                                "pipeline rank's layers into chunks)")
        return self

    def check_model(self, shape) -> None:
        """The model's limits: heads, KV heads and vocabulary over tp, layers over pp*v, experts over ep."""
        if shape.heads % self.tp:
            raise GraphMFUError(f"plan_parallel: tp={self.tp} does not divide the {shape.heads} attention heads of "
                                f"{shape.name}; pick a tp that divides them")
        slots = shape.layers + (2 if self.balance_ends else 0)
        if slots < self.pp * self.v:
            raise GraphMFUError(f"plan_parallel: {shape.name} has {shape.layers} layers, fewer than pp*v = "
                                f"{self.pp}*{self.v} pipeline chunks; lower pp or virtual_stages")
        if self.ep > 1 and not shape.experts:
            raise GraphMFUError(f"plan_parallel: ep={self.ep} but {shape.name} has no routed experts; use ep=1")
        if shape.experts and shape.experts % self.ep:
            raise GraphMFUError(f"plan_parallel: ep={self.ep} does not divide the {shape.experts} routed experts "
                                f"of {shape.name}")


__all__ = ["Layout", "DIMS", "RECOMPUTE", "CP_MODES"]
