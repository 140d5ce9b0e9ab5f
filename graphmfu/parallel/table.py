"""The answer of ``plan_parallel``: predictions for one model over candidate layouts, ranked, as rows and a text
table with the breakdown, collectives, memory and every assumption of the best one; and the candidate search.

Ranking: layouts whose per-rank memory fits the device first, then by tokens/s.  Candidates (``search``) keep
the global batch (sequences per step) and sequence length fixed and vary tp (dividing the node and the heads),
cp (powers of two, only for sequences of 16K tokens and more), pp (dividing the world, at most the layers), v (1,
or one layer per chunk when that is at most 8 chunks), ep (MoE: powers of two dividing the experts and dp*cp),
recompute (none or full) and dp (what is left of the world); microbatches = global batch / (dp * microbatch size).
"""
from __future__ import annotations

import json
import time
from pathlib import Path

from graphmfu.cost import dtype_name
from graphmfu.errors import GraphMFUError
from graphmfu.parallel.layout import Layout
from graphmfu.parallel.predict import PARTS, Prediction, Predictor
from graphmfu.render import Section, num, tabulate

GB = 1e9


def _rank_key(p: Prediction):
    return (p.memory["fits"] is False, -p.tokens_per_s)


class ParallelPlan:
    """Predictions of one model on one device over layouts, ranked (``rows``, ``breakdown``, ``table()``)."""

    def __init__(self, costs, device, assumptions, layouts: list, seconds: float | None = None):
        t0 = time.perf_counter()
        self.shape, self.costs, self.device, self.assumptions = costs.shape, costs, device, assumptions
        self.layouts = list(layouts)
        predictor = Predictor(costs, device, assumptions)
        self.predictions = sorted((predictor.predict(lay) for lay in self.layouts), key=_rank_key)
        self.seconds = (seconds or 0.0) + time.perf_counter() - t0

    def replan(self, **assumptions) -> "ParallelPlan":
        """The same layouts and per-op costs under changed assumptions (no new analysis): e.g. ``gemm=0.6``,
        ``tp_overlap=1``, ``internode='roce-400g'``."""
        return ParallelPlan(self.costs, self.device, self.assumptions.replace(**assumptions), self.layouts)

    @property
    def best(self) -> Prediction:
        return self.predictions[0]

    @property
    def rows(self) -> list[dict]:
        return [p.row() for p in self.predictions]

    @property
    def breakdown(self) -> dict:
        """The best layout's step time by part (seconds) and each part's share of the step."""
        return breakdown(self.best)

    def find(self, **degrees) -> Prediction:
        for p in self.predictions:
            if all(getattr(p.layout, k if k != "dp" else "d") == v for k, v in degrees.items()):
                return p
        raise GraphMFUError(f"plan: no layout with {degrees} among the {len(self.predictions)} planned")

    # ------------------------------------------------------------------ text
    def sections(self, top: int = 20) -> list[Section]:
        s, dev, best = self.shape, self.device, self.best
        head = Section("graphmfu parallel plan (on paper)", lines=[
            s.describe(), f"device {dev.name}: dense {best.peak_flops / 1e12:g} TFLOP/s ({dtype_name(s.dtype)}), DRAM "
            f"{dev.dram_gbps:g} GB/s; seq {best.layout.seq}, microbatch {best.layout.microbatch_size} sequence(s)",
            f"costs: one layer per kind analysed on meta tensors (analyze(fast=True)'s per-op record) and scaled by "
            f"the layer counts; analysis {self.costs.seconds:.2f} s, plan {self.seconds:.2f} s",
            "MFU = model FLOPs / (world x step x peak); MFU dense counts every attention score (PaLM's 6N+12LHQT, the "
            "Llama 3 paper's convention), MFU causal the pairs the causal mask keeps (graphmfu's)"])
        rows = []
        for i, p in enumerate(self.predictions[:top or None], 1):
            fits = {True: "yes", False: "NO", None: "?"}[p.memory["fits"]]
            rows.append([str(i), p.layout.label(), f"{p.step_s:.3g}", num(p.tokens_per_s), f"{p.tflops_per_gpu_dense:.0f}",
                         f"{p.mfu_dense * 100:.1f}", f"{p.mfu * 100:.1f}", f"{p.memory['total'] / GB:.0f} {fits}",
                         _top_parts(p)])
        ranked = Section(f"layouts, ranked ({len(self.predictions)} planned; memory-fitting first, then tokens/s)",
                         ["#", "layout", "step s", "tokens/s", "TFLOP/s/GPU dense", "MFU dense %", "MFU causal %",
                          "GB/rank fits", "largest parts of the step"], rows)
        return [head, ranked] + detail(best) + [Section("assumptions", lines=self.assumptions.lines())]

    def table(self, top: int = 20) -> str:
        out = []
        for sec in self.sections(top):
            if sec.title:
                out.append(sec.title)
            out.extend(sec.lines)
            if sec.rows:
                out.append(tabulate(sec))
            out.append("")
        return "\n".join(out).rstrip() + "\n"

    def __str__(self) -> str:
        return self.table()

    def to_dict(self) -> dict:
        return {"schema": "graphmfu.parallel/1", "model": self.shape.describe(), "device": self.device.to_dict(),
                "rows": self.rows, "breakdown": self.breakdown, "assumptions": self.assumptions.to_dict(),
                "collectives": self.best.comms, "memory": _mem(self.best)}

    def save(self, path) -> Path:
        p = Path(path)
        p.write_text(json.dumps(self.to_dict(), indent=1, default=str))
        return p


def breakdown(p: Prediction) -> dict:
    return {"step_s": p.step_s, **{k: p.breakdown[k] for k in PARTS},
            "share": {k: p.breakdown[k] / p.step_s for k in PARTS}}


def _top_parts(p: Prediction, n: int = 4) -> str:
    parts = sorted(PARTS, key=lambda k: -p.breakdown[k])[:n]
    return ", ".join(f"{k} {p.breakdown[k] / p.step_s * 100:.0f}%" for k in parts if p.breakdown[k] > 0)


def _mem(p: Prediction) -> dict:
    return {k: v for k, v in p.memory.items() if k != "stages"}


def detail(p: Prediction) -> list[Section]:
    """The breakdown, collectives and memory of one prediction."""
    lay = p.layout
    parts = [[k, f"{p.breakdown[k]:.4g}", f"{p.breakdown[k] / p.step_s * 100:.1f}"] for k in PARTS]
    bd = Section(f"step of {lay.label()}: {p.step_s:.4g} s on pipeline rank {p.stage} (the slowest)",
                 ["part", "seconds", "% of step"], parts + [["total", f"{p.step_s:.4g}", "100.0"]])
    rows = [[c["dim"], c["kind"], str(c["n"]), c["link"], c["what"], num(c["size"], "B"), f"{c['per_step']:g}",
             num(c["bus_bytes_step"], "B"), f"{c['t_roof_s'] * 1e3:.4g}", f"{c['t_busbw_s'] * 1e3:.4g}"]
            for c in p.comms]
    comm = Section("collectives per rank and step (NCCL-tests bus bytes; time at the link's roof and at its bus "
                   "bandwidth; exposed parts are in the step above)",
                   ["dim", "kind", "n", "link", "what", "payload S", "per step", "bus bytes", "ms @roof", "ms @busbw"],
                   rows)
    m = p.memory
    hbm = "?" if m["hbm"] is None else f"{m['hbm'] / GB:.0f}"
    mem = Section(f"memory per rank (pipeline rank {m['stage']}, the larger of the first and last; device {hbm} GB)",
                  ["params", "grads", "optimizer", "activations none", "activations full recompute", "in flight",
                   "total"],
                  [[f"{m['params'] / GB:.1f}", f"{m['grads'] / GB:.1f}", f"{m['optimizer'] / GB:.2f}",
                    f"{m['activations_no_recompute'] / GB:.1f}", f"{m['activations_full_recompute'] / GB:.1f}",
                    f"{m['in_flight']:.3g}", f"{m['total'] / GB:.1f}"]])
    r = p.per_rank
    rank = Section(None, lines=[f"per rank and step: {num(r['flops'])} matrix FLOPs ({num(r['gemm_flops'])} GEMM, "
                                f"{num(r['attention_flops'])} attention), {num(r['vector_flops'])} "
                                f"vector FLOPs, {num(r['bytes'], 'B')} DRAM bytes (one layer of each kind analysed, "
                                f"scaled by the rank's layers and microbatches)"])
    return [bd, rank, comm, mem]


# --------------------------------------------------------------------------- candidates


def _divisors(n: int) -> list:
    return [d for d in range(1, n + 1) if n % d == 0]


def candidates(base: Layout, shape, global_batch: int, max_pp: int = 64) -> list[Layout]:
    """Layouts of ``base.world`` ranks for ``shape`` at ``base``'s seq, keeping ``global_batch`` sequences/step."""
    out = []
    node = base.gpus_per_node
    tps = [t for t in _divisors(node) if shape.heads % t == 0]
    cps = [c for c in (1, 2, 4, 8, 16, 32) if base.seq % c == 0 and (c == 1 or base.seq >= 16384)]
    slots = shape.layers + (2 if base.balance_ends else 0)
    pps = [p for p in _divisors(base.world) if p <= min(max_pp, shape.layers)]
    eps = [1] if not shape.experts else [e for e in (1, 2, 4, 8, 16, 32, 64, 128, 256) if shape.experts % e == 0]
    for tp in tps:
        for cp in cps:
            for pp in pps:
                if base.world % (tp * cp * pp):
                    continue
                dp = base.world // (tp * cp * pp)
                if global_batch % (dp * base.microbatch_size):
                    continue
                m = global_batch // (dp * base.microbatch_size)
                vs = [1] + ([slots // pp] if pp > 1 and slots % pp == 0 and 1 < slots // pp <= 8 else [])
                for v, ep, rc in ((v, ep, rc) for v in vs for ep in eps for rc in ("none", "full")):
                    if (dp * cp) % ep:
                        continue
                    lay = base.replace(tp=tp, cp=cp, pp=pp, dp=dp, ep=ep, virtual_stages=v, microbatches=m,
                                       recompute=rc)
                    try:
                        lay.validate().check_model(shape)
                    except GraphMFUError:
                        continue
                    out.append(lay)
    if not out:
        raise GraphMFUError(f"plan --search: no layout of {base.world} ranks fits {shape.name} with a global batch of "
                            f"{global_batch} sequences of {base.seq} tokens; change the world or the batch")
    return out


__all__ = ["ParallelPlan", "breakdown", "detail", "candidates"]
