"""Calibrating one assumption on one known run: the value of (say) the achieved GEMM fraction at which the plan
predicts a run's measured or published MFU.  The fitted value then stands for everything the plan does not
model in that run (sustained clocks under the power limit, kernels below their microbenchmark, stragglers, data
loading ...) and predicts other layouts of the same stack; its status says ``calibrated`` and its source names
the run it was fitted on.  Prediction is monotone in each efficiency, so a bisection finds it.
"""
from __future__ import annotations

from graphmfu.errors import GraphMFUError
from graphmfu.parallel.assumptions import Assumption
from graphmfu.parallel.layout import Layout
from graphmfu.parallel.predict import Predictor


def fit(costs, device, assumptions, layout: Layout, target_mfu: float, quantity: str = "gemm",
        dense: bool = True, what: str = "", lo: float = 0.05, hi: float = 1.0):
    """(value, assumptions with ``quantity`` set to it): the plan of ``layout`` then predicts ``target_mfu``
    (a fraction; ``dense``: MFU counting every attention score, else the causal count)."""
    if not 0 < target_mfu < 1:
        raise GraphMFUError(f"fit: target MFU {target_mfu!r} must be a fraction between 0 and 1 (e.g. 0.43)")

    def mfu(x):
        p = Predictor(costs, device, assumptions.replace(**{quantity: x})).predict(layout)
        return p.mfu_dense if dense else p.mfu

    a, b = mfu(lo), mfu(hi)
    if not a <= target_mfu <= b:
        raise GraphMFUError(f"fit: no {quantity} in [{lo}, {hi}] predicts {target_mfu * 100:.1f}% MFU for "
                            f"{layout.label()} (it spans {a * 100:.1f}% to {b * 100:.1f}%)")
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if mfu(mid) < target_mfu else (lo, mid)
    value = (lo + hi) / 2
    src = (f"fitted so that {layout.label()} at seq {layout.seq} predicts {target_mfu * 100:.1f}% MFU "
           f"({'every attention score counted' if dense else 'causal attention'}){': ' + what if what else ''}")
    return value, assumptions.replace(**{quantity: Assumption(quantity, value, "calibrated", src)})


__all__ = ["fit"]
