"""``graphmfu.profile()``: the PyTorch profiler around a block (CUPTI on CUDA; on CPU, Inductor's C++
kernel profiling), then ``.report()``: the record of the registry's graphs with this session's
measured kernels joined to them (``join.py``).

A session is an object: two sessions one after another, or sessions of different registries, never
share state.  While a session runs, the registry's compiled graphs open a call range per call."""
from __future__ import annotations

import torch

from graphmfu import join
from graphmfu.errors import GraphMFUError
from graphmfu.hardware import device_for
from graphmfu.registry import DEFAULT, Registry
from graphmfu.report import Report
from graphmfu.stage import clear_open_stages, open_stages


class ProfileSession:
    """``with graphmfu.profile() as p: ...`` then ``p.report()``."""

    def __init__(self, registry: Registry | None = None, cuda: bool | None = None, **profiler_kwargs):
        self.registry = registry or DEFAULT
        self.cuda = torch.cuda.is_available() if cuda is None else cuda
        self.profiler_kwargs = profiler_kwargs
        self.prof = None
        self._running = False

    def __enter__(self):
        if self._running:
            raise GraphMFUError("this graphmfu.profile() session is already running; nest stages, not profiles")
        from torch.profiler import ProfilerActivity, profile

        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if self.cuda else [])
        self.prof = profile(activities=acts, **self.profiler_kwargs)
        if self.cuda:
            torch.cuda.synchronize()
        self.registry.tagger.enable()
        self._running = True
        try:
            self.prof.__enter__()
        except BaseException:
            self.registry.tagger.disable()
            self._running = False
            raise
        return self

    def __exit__(self, exc_type, exc, tb):
        try:
            if self.cuda:
                torch.cuda.synchronize()
        finally:
            self.prof.__exit__(exc_type, exc, tb)
            self.registry.tagger.disable()
            self._running = False
        left = open_stages()
        if left and exc_type is None:
            clear_open_stages()
            raise GraphMFUError(f"stage {left[-1]!r} was left open when graphmfu.profile() ended; close it "
                                f"(use 'with graphmfu.stage(...)') inside the profiled block")
        return False

    def record(self):
        """The registry's record with this session's timing."""
        if self.prof is None:
            raise GraphMFUError("profile().report() called before the profiled block ran; use "
                                "'with graphmfu.profile() as p: ...' then p.report()")
        graphs = list(self.registry.graphs)
        measured, stages, notes = join.join(self.prof, graphs, self.cuda)
        if not any(m.graph is not None for m in measured):
            compiled_calls = any(e.name.startswith(join.INDUCTOR_CALL) for e in self.prof.events())
            if compiled_calls:
                raise GraphMFUError("the profiled model was compiled without graphmfu's backend: use "
                                    "torch.compile(model, backend=graphmfu.backend)")
            raise GraphMFUError("no graphmfu-compiled graph ran inside graphmfu.profile(); compile with "
                                "backend=graphmfu.backend, run it once to compile, then run it inside the block")
        return self.registry.record(join.timing(measured, stages, notes, self.cuda))

    def report(self, device=None) -> Report:
        """The Report of the graphs compiled so far, with every kernel of this session timed."""
        rec = self.record()
        return Report(rec, device_for((g.device for g in rec.graphs), device))


def profile(**profiler_kwargs) -> ProfileSession:
    """Profile the block; ``.report()`` returns the Report with measured kernels, modules and stages."""
    return ProfileSession(**profiler_kwargs)


__all__ = ["profile", "ProfileSession"]
