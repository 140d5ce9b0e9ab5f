"""Pipeline parallelism: which layers each stage holds, and the bubble of its schedule.

* **1F1B** (PipeDream-Flush, Narayanan et al. 2021) with ``p`` stages and ``m`` microbatches: a step takes
  ``(m + p - 1)`` microbatch-slots of the slowest stage, so the idle share of a step is ``(p-1)/(m+p-1)``
  and the bubble costs ``(p-1)/m`` of the compute time.
* **Interleaved 1F1B** with ``v`` model chunks per rank: ``(p-1)/(v*m + p-1)`` of the step, ``(p-1)/(v*m)`` of
  the compute (the Llama 3 paper's "overall pipeline bubble ratio is (PP-1)/(V*M)", section 3.3.2).

Stages: the layers are spread as evenly as they go over ``p`` ranks (the first ranks take one more when they
do not divide); with ``balance_ends`` the embedding and the head (with its loss) each take one layer's slot
on the first and last rank (Llama 3: "we reduce one Transformer layer each from the first and the last
stages").  Each rank's per-microbatch time is its layers' plus its outside ops' (embedding on the first,
final norm + head + loss on the last); the slowest rank paces the pipeline.

Activations in flight (memory): under 1F1B stage ``i`` holds ``min(m, p - i)`` microbatches' activations,
the first stage the most.  Interleaved, rank ``i`` runs ``2(p-i-1) + (v-1)p`` warm-up chunk-forwards before
its first backward (Megatron-LM's schedule), so it holds ``min(m*v, 2(p-i-1) + (v-1)p + 1)`` chunks of
``1/v`` of its layers: ``p + (p-1)/v`` microbatches' worth on the first stage, i.e. 1F1B's ``p`` times
``1 + (p-1)/(p*v)`` (Korthikanti et al. 2022, "Reducing Activation Recomputation in Large Transformer
Models", section 4.2.3).
"""
from __future__ import annotations

import dataclasses

from graphmfu.errors import GraphMFUError


def bubble_fraction(p: int, m: int, v: int = 1) -> float:
    """Idle share of a step: 1F1B ``(p-1)/(m+p-1)``, interleaved ``(p-1)/(v*m+p-1)``."""
    if p < 1 or m < 1 or v < 1:
        raise GraphMFUError(f"bubble: stages {p}, microbatches {m} and virtual stages {v} must be >= 1")
    return (p - 1) / (v * m + p - 1)


def bubble_ratio(p: int, m: int, v: int = 1) -> float:
    """Bubble time over compute time: ``(p-1)/(v*m)`` (the Llama 3 paper's form)."""
    if p < 1 or m < 1 or v < 1:
        raise GraphMFUError(f"bubble: stages {p}, microbatches {m} and virtual stages {v} must be >= 1")
    return (p - 1) / (v * m)


def in_flight(p: int, m: int, v: int = 1, rank: int = 0) -> float:
    """Microbatches' worth of its own layers' activations pipeline rank ``rank`` holds at its peak."""
    if v == 1:
        return float(min(m, p - rank))
    return min(m * v, 2 * (p - rank - 1) + (v - 1) * p + 1) / v


@dataclasses.dataclass(frozen=True)
class Stage:
    rank: int  # pipeline rank
    kinds: tuple  # the kinds of its layers, in order
    first: bool  # holds the embedding (and what runs before the first layer)
    last: bool  # holds the final norm, head and loss

    @property
    def layers(self) -> int:
        return len(self.kinds)


def stages(kinds: list, p: int, balance_ends: bool = False) -> list[Stage]:
    """The layers of each pipeline rank (the chunks of one rank are its share, interleaved or not)."""
    n = len(kinds)
    slots = n + (2 if balance_ends else 0)
    base, extra = divmod(slots, p)
    counts = [base + (1 if i < extra else 0) for i in range(p)]
    if balance_ends:  # the embedding and the head each take one slot
        counts[0] -= 1
        counts[-1] -= 1
    if min(counts) < 0 or (p > 1 and sum(counts) != n):
        raise GraphMFUError(f"plan_parallel: {n} layers cannot fill {p} pipeline stages")
    out, at = [], 0
    for i, c in enumerate(counts):
        out.append(Stage(i, tuple(kinds[at:at + c]), i == 0, i == p - 1))
        at += c
    return out


__all__ = ["bubble_fraction", "bubble_ratio", "in_flight", "Stage", "stages"]
