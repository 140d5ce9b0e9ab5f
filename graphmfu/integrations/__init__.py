"""Thin adapters that put the meter where people log: transformers' Trainer and Lightning.

Each adapter module imports its framework; importing it without the framework installed is one clear
error saying what to install.  ``graphmfu.integrations.transformers.GraphMFUCallback`` and
``graphmfu.integrations.lightning.GraphMFUCallback`` open a meter step around every training step and
log the row's numbers (``graphmfu/mfu``, ``graphmfu/tflops`` ...) through the framework's own logger.
"""
from __future__ import annotations

import contextlib

LOGGED = ("mfu", "hfu", "mbu", "tflops", "tokens_per_s", "flops_per_token", "flops_vs_nd", "graph_time_share",
          "step_s")


def logged(row: dict | None, prefix: str = "graphmfu/") -> dict:
    """The numbers of a meter row worth logging, under ``prefix`` (None values left out)."""
    if not row:
        return {}
    if "no_graphs" in row.get("flags", ()):  # no compiled graph ran: its 0 FLOPs are not a measurement
        return {prefix + k: float(row[k]) for k in ("step_s", "tokens_per_s") if row.get(k) is not None}
    return {prefix + k: float(row[k]) for k in LOGGED if row.get(k) is not None}


class StepScope:
    """Opens and closes meter steps from two separate callbacks (begin / end of a training step)."""

    def __init__(self, meter):
        self.meter = meter
        self._cm: contextlib.AbstractContextManager | None = None

    def begin(self, tokens=None, samples=None) -> None:
        self.end()
        self._cm = self.meter.step(tokens=tokens, samples=samples)
        self._cm.__enter__()

    def end(self) -> None:
        cm, self._cm = self._cm, None
        if cm is not None:
            cm.__exit__(None, None, None)


def require(module: str, extra: str):
    """Import ``module`` or fail with one line saying what to install."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as e:
        from graphmfu.errors import GraphMFUError

        raise GraphMFUError(f"graphmfu's {extra} integration needs {module}: pip install {extra}") from e
