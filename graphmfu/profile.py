"""``graphmfu.profile()`` and ``graphmfu.attach(prof)``: measured kernels joined to the compiled graphs.

``graphmfu.profile(**kwargs)`` runs the PyTorch profiler around a block (CUPTI on CUDA; on CPU,
Inductor's C++ kernel profiling) and takes the profiler's own arguments: ``schedule``,
``on_trace_ready``, ``with_stack``, ``record_shapes``, ...  ``graphmfu.attach(prof)`` does the same
with a ``torch.profiler.profile`` the user already runs.  Every trace the profiler completes (one per
schedule cycle, or one at the end) is joined to the registry's graphs (``join.py``) and added to the
session; ``.report()`` is the record with all of it.  Calls from every thread are recorded.

A session is an object: sessions one after another, or sessions of different registries, share no
state.  While one runs, the registry's compiled graphs open a call range per call."""
from __future__ import annotations

import torch

from graphmfu import _inductor, join, overlap
from graphmfu.errors import GraphMFUError
from graphmfu.derive import likely_caller
from graphmfu.hardware import device_for
from graphmfu.registry import DEFAULT, Registry
from graphmfu.report import Report
from graphmfu.stage import clear_open_stages, open_stages

_NESTED = ("a torch.profiler is already running: graphmfu.profile() cannot start a second one (the profiler "
           "does not nest); inside your profiler use 'with graphmfu.attach(prof):', or pass its arguments "
           "(schedule=, on_trace_ready=, with_stack=, ...) to graphmfu.profile()")


class ProfileSession:
    """``with graphmfu.profile() as p: ...`` then ``p.report()``."""

    def __init__(self, registry: Registry | None = None, cuda: bool | None = None, prof=None, **profiler_kwargs):
        self.registry = registry or DEFAULT
        self.cuda = torch.cuda.is_available() if cuda is None else cuda
        self.profiler_kwargs = profiler_kwargs
        self.prof = prof  # a user's profiler (attach) or ours (created on enter)
        self._own = prof is None
        self._running = False
        self._user_ready = None
        self._traces: list = []  # (measured, stage ranges, notes, event count, profiler) per completed trace
        self._calls: dict = {}  # graph key -> calls seen in earlier traces (call indices stay distinct)

    # ---------------------------------------------------------------- the block
    def __enter__(self):
        if self._running:
            raise GraphMFUError("this graphmfu.profile() session is already running; nest stages, not profiles")
        if self._own:
            if _inductor.profiler_running():
                raise GraphMFUError(_NESTED)
            from torch.profiler import ProfilerActivity, profile

            kw = dict(self.profiler_kwargs)
            self._user_ready = kw.pop("on_trace_ready", None)
            kw.setdefault("activities", [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if self.cuda else []))
            if "experimental_config" not in kw and _inductor.all_threads_config() is not None:
                kw["experimental_config"] = _inductor.all_threads_config()  # calls from worker threads
            self.prof = profile(on_trace_ready=self._trace_ready, **kw)
        else:
            self._user_ready = self.prof.on_trace_ready
            self.prof.on_trace_ready = self._trace_ready
        if self.cuda:
            torch.cuda.synchronize()
        self.registry.tagger.enable()
        self._running = True
        try:
            if self._own:
                self.prof.__enter__()
            if self.cuda:
                _inductor.profiler_warmup()
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
            if self._own:
                self.prof.__exit__(exc_type, exc, tb)
            self.registry.tagger.disable()
            self._running = False
        left = open_stages()
        if left and exc_type is None:
            clear_open_stages()
            raise GraphMFUError(f"stage {left[-1]!r} was left open when graphmfu.profile() ended; close it "
                                f"(use 'with graphmfu.stage(...)') inside the profiled block")
        return False

    def step(self) -> None:
        """The profiler's ``step()`` (with a schedule: the end of one iteration)."""
        self.prof.step()

    def _trace_ready(self, prof) -> None:
        """A trace is complete (a schedule cycle, or the end): join it now, while its events exist."""
        self._join(prof)
        if self._user_ready is not None:
            self._user_ready(prof)

    def _join(self, prof) -> None:
        try:
            events = prof.events()
        except (AssertionError, RuntimeError):
            return  # no trace recorded (e.g. the block ended during the schedule's wait/warmup)
        if events is None:
            return
        keys = {e.name[len(_inductor.CALL_RANGE):] for e in events if e.name.startswith(_inductor.CALL_RANGE)}
        self.registry.adopt(keys - {g.key for g in self.registry.graphs})  # compiled before reset()
        graphs = list(self.registry.graphs)
        measured, stages, notes = join.join(prof, graphs, self.cuda)
        fsdp = overlap.fsdp_eager_note((e.name for e in events), len(keys))  # FSDP2 ran, no graph: eager
        if fsdp:
            notes.append(fsdp)
        recorded = {n.event for g in graphs for n in g.nodes if n.comm is not None}
        outside = overlap.outside_comm_note(measured, recorded)  # collectives no record holds: time, no bytes
        if outside:
            notes.append(outside)
        by_id = {g.id: g.key for g in graphs}
        top: dict = {}
        for m in measured:  # call indices continue across traces
            if m.graph is not None:
                m.call += self._calls.get(by_id[m.graph], 0)
                top[by_id[m.graph]] = max(top.get(by_id[m.graph], 0), m.call + 1)
        self._calls.update(top)
        self._traces.append((measured, stages, notes, len(events), getattr(prof, "profiler", None)))

    # ---------------------------------------------------------------- results
    def record(self):
        """The registry's record with every joined trace of this session."""
        if self.prof is None:
            raise GraphMFUError("profile().report() called before the profiled block ran; use "
                                "'with graphmfu.profile() as p: ...' then p.report()")
        if self._running:
            raise GraphMFUError("report() called inside the profiled block; call it after the block ends")
        if not self._traces and not self._own:
            self._join(self.prof)  # an attached profiler without a schedule: its one trace, now that it ended
        notes = list(dict.fromkeys(n for t in self._traces for n in t[2]))
        if not any(m.graph is not None for t in self._traces for m in t[0]):
            raise GraphMFUError(self._nothing_joined())
        traces = [(t[0], t[1]) for t in self._traces]
        timing = join.timing(traces, notes, self.cuda)  # sets each measured kernel's stage
        timing.exposed_comm = overlap.exposed(traces)  # collective time no compute kernel overlapped
        if timing.foreign_time_s:
            timing.foreign_sites = foreign_sites()
        return self.registry.record(timing)

    def _nothing_joined(self) -> str:
        if (self._traces and all(t[3] == 0 for t in self._traces)) or (not self._traces and self._own):
            return ("graphmfu.profile() recorded no events: another torch.profiler ran inside it and took the "
                    "profiling session over; profile with one profiler (pass its arguments to graphmfu.profile(), "
                    "or use graphmfu.attach(prof) inside your own)")
        if any(overlap.FSDP_EAGER_NOTE in t[2] for t in self._traces):
            return overlap.FSDP_EAGER_NOTE
        if any(e.name.startswith(join.INDUCTOR_CALL) for e in _events(self.prof)):
            return ("the profiled model was compiled without graphmfu's backend: every compiled graph in this profile "
                    "was compiled outside graphmfu" + likely_caller(foreign_sites()) + ", so nothing could be counted; "
                    + FOREIGN_FIX)
        return ("no graphmfu-compiled graph ran inside graphmfu.profile(); compile with backend=graphmfu.backend, "
                "run it once to compile, then run it inside the block")

    def report(self, device=None) -> Report:
        """The Report of the graphs compiled so far, with every kernel of this session timed.  On a
        measured CPU, a ceiling that a measured kernel beat is re-measured (and raised if still beaten):
        the device's source says so."""
        return self._placed(self.record(), device)

    @staticmethod
    def _placed(rec, device) -> Report:
        dev = device_for((g.device for g in rec.graphs), device)
        if dev.measured:
            from graphmfu.derive import observed_rates
            from graphmfu.hardware.cpu import raise_ceiling

            dev = raise_ceiling(dev, observed_rates(rec, dev.cache_mb))
        return Report(rec, dev)

    # ---------------------------------------------------------------- the annotated trace
    def export_chrome_trace(self, path, device=None) -> dict:
        """Write the profiler's Chrome trace (torch.profiler's ``export_chrome_trace``; Perfetto,
        chrome://tracing, HTA) with graphmfu's numbers in it: every joined kernel event's ``args`` get
        ``kernel_flop``/``kernel_num_gb`` and graphmfu's fields (costs, MFU, MBU, SOL, bound, module,
        nodes, stage, graph key), plus a stage track, MFU/MBU counter tracks per stage and
        ``distributedInfo``.  A path ending in ``.gz`` is gzipped.  Returns the summary written under
        the trace's ``graphmfu`` key (how many joined kernel events were found and annotated).

        The profiler exports its current trace: with a schedule, the last completed cycle.  That
        cycle is what gets annotated, with a Report of that cycle alone; to keep every cycle, call
        this from ``on_trace_ready`` (``graphmfu.profile(schedule=..., on_trace_ready=lambda prof:
        p.export_chrome_trace(f"trace_{prof.step_num}.json.gz"))``)."""
        import os
        import tempfile

        from graphmfu.render import trace as trace_render

        if self.prof is None:
            raise GraphMFUError("export_chrome_trace() called before the profiled block ran; use "
                                "'with graphmfu.profile() as p: ...' then p.export_chrome_trace(path)")
        if not self._traces and not self._own and not self._running:
            self._join(self.prof)  # an attached profiler without a schedule: its one trace
        current = getattr(self.prof, "profiler", None)
        if not self._traces or self._traces[-1][4] is not current:
            raise GraphMFUError("export_chrome_trace(): the profiler holds no joined trace (the block ended "
                                "before a schedule cycle recorded, or inside one that never completed); export "
                                "after a completed cycle, or from on_trace_ready")
        measured, stages, notes = self._traces[-1][:3]
        if not any(m.graph is not None for m in measured):
            raise GraphMFUError(self._nothing_joined())
        rep = self._placed(self.registry.record(join.timing([(measured, stages)], list(notes), self.cuda)), device)
        fd, tmp = tempfile.mkstemp(suffix=".json")
        os.close(fd)
        try:
            self.prof.export_chrome_trace(tmp)
            data = trace_render.read(tmp)
        finally:
            os.unlink(tmp)
        summary = trace_render.annotate(data, rep, measured, stages, trace=len(self._traces) - 1,
                                        traces=len(self._traces))
        trace_render.retitle(data, path)
        trace_render.write(data, path)
        if summary["annotated_kernel_events"] < summary["joined_kernel_events"]:
            import warnings

            warnings.warn(f"graphmfu: {summary['joined_kernel_events'] - summary['annotated_kernel_events']} of "
                          f"{summary['joined_kernel_events']} joined kernel events were not found in the exported "
                          f"trace and carry no graphmfu fields", stacklevel=2)
        return summary


FOREIGN_FIX = ("compile it with graphmfu.backend, or route every torch.compile in the process through graphmfu with "
               "graphmfu.capture_all() (frameworks that compile for you: transformers' generate(), continuous batching)")


def foreign_sites() -> list:
    """The torch.compile calls seen in this process with a backend other than graphmfu's (newest last)."""
    return [s for s in _inductor.compile_sites() if s["backend"] != "graphmfu"]


def _events(prof) -> list:
    try:
        return prof.events() or []
    except (AssertionError, RuntimeError):
        return []


def profile(**profiler_kwargs) -> ProfileSession:
    """Profile the block; ``.report()`` returns the Report with measured kernels, modules and stages.
    Takes ``torch.profiler.profile``'s arguments (``schedule``, ``on_trace_ready``, ``with_stack``, ...)."""
    return ProfileSession(**profiler_kwargs)


def attach(prof, registry: Registry | None = None) -> ProfileSession:
    """Join the kernels of a ``torch.profiler.profile`` you already run:
    ``with torch.profiler.profile(...) as prof, graphmfu.attach(prof) as g: ...`` then ``g.report()``
    (after the profiler ended).  Its schedule and ``on_trace_ready`` keep working."""
    if not hasattr(prof, "events") or not hasattr(prof, "on_trace_ready"):
        raise GraphMFUError(f"attach(prof) takes a torch.profiler.profile, got {type(prof).__name__}")
    cuda = any("CUDA" in str(a) for a in (getattr(prof, "activities", None) or ()))
    return ProfileSession(registry=registry, cuda=cuda, prof=prof)


__all__ = ["profile", "attach", "ProfileSession"]
