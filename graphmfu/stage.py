"""``graphmfu.stage(name)``: an NVTX range (for nsys/ncu filtering) and a profiler range
``graphmfu::stage <name>`` (nested stages as ``outer/inner``) that the join attributes kernels by."""
from __future__ import annotations

import contextlib
import threading

import torch

from graphmfu.errors import GraphMFUError
from graphmfu.join import STAGE_RANGE

_local = threading.local()  # the stages open in this thread (a ContextVar-like stack per thread)


def _stack() -> list:
    if not hasattr(_local, "stages"):
        _local.stages = []
    return _local.stages


class stage(contextlib.ContextDecorator):
    """``with graphmfu.stage("prefill"):`` or ``@graphmfu.stage("decode")``.  Nests."""

    def __init__(self, name: str):
        if not isinstance(name, str) or not name or "/" in name:
            raise GraphMFUError(f"stage(name) takes a non-empty string without '/', got {name!r}")
        self.name = name
        self._rf = None

    def __enter__(self):
        _stack().append(self.name)
        self._rf = torch.profiler.record_function(STAGE_RANGE + "/".join(_stack()))
        self._rf.__enter__()  # first: the range the join reads covers all of the stage (NVTX's first use too)
        if torch.cuda.is_available():
            torch.cuda.nvtx.range_push(self.name)
        return self

    def _recreate_cm(self):  # each decorated call (recursion, threads) gets its own range
        return stage(self.name)

    def __exit__(self, *exc):
        if torch.cuda.is_available():
            torch.cuda.nvtx.range_pop()
        self._rf.__exit__(*exc)
        st = _stack()
        if st and st[-1] == self.name:
            st.pop()
        return False


def open_stages() -> list[str]:
    return list(_stack())


def clear_open_stages() -> None:
    _stack().clear()


__all__ = ["stage", "open_stages"]
