"""Calls of graphmfu's compiled graphs: a CallTagger swaps an Inductor compiled graph's class for a tagging
subclass while a profile or a meter listens, so that each call opens a profiler range (``graphmfu::graph
<key>|s0=24``) and is reported to the meters, with the call's values (size symbols, probes) read from its
inputs, now or deferred.
"""
from __future__ import annotations

import contextlib
import sys
import threading

import torch

from graphmfu._inductor.dynamo import frame_name
from graphmfu._inductor.foreign import _in_graph
from graphmfu._inductor.profiler import PROBE_RANGE, profiler_running


CALL_RANGE = "graphmfu::graph "  # + graph key: a profiler range around each call of a compiled graph
_TAGGED: dict = {}  # Inductor's class -> its tagging subclass (a memo; holds no session state)


class CallTagger:
    """The compiled graphs of one capture registry.  While at least one profile session of that
    registry runs (``enable``/``disable`` nest), each call of such a graph opens a profiler range
    ``graphmfu::graph <key>`` (kernel names repeat across graphs; the range tells them apart); while a
    meter step runs (``attach``/``detach``), each call is reported to the meter (``call_begin(key,
    values)`` before, ``call_end(token)`` after).  Otherwise the objects are Inductor's own: zero
    overhead.  A graph that cannot be tagged runs untagged and is not joined (the report says so).

    Per call, a dynamic graph's size symbols are read from its inputs (``size_args``) and each probe
    (``(name, fn)``: ``fn(inputs) -> int``, e.g. the unmasked (query, key) pairs of an input-dependent
    mask) is evaluated; the values travel with the call (range name ``<key>|s0=24,pairs_x=900``, the
    meter's ``values``) and the cost formulas are evaluated with them.  A probe that fails gives no
    value (the cost stays at its hint, with its note)."""

    def __init__(self):
        self._lock = threading.Lock()
        self._compiled: list = []  # weak references
        self._active = 0
        self._on = False
        self.meters: list = []  # meters in a step now (read without the lock by the tagging call)
        self.frames: dict = {}  # graph key -> "file:function" of the Python frame it was compiled from

    @property
    def active(self) -> bool:
        return self._active > 0

    def add(self, compiled, key: str, size_args=(), probes=()) -> None:
        """Remember a compiled graph; ``size_args`` ([input index, dim or None, symbol]) say where each
        call's size symbols are read, ``probes`` ([(name, fn)]) what else is evaluated per call."""
        import weakref

        try:
            compiled._graphmfu_key = key
            compiled._graphmfu_sizes = tuple(tuple(a) for a in size_args)
            compiled._graphmfu_probes = tuple(probes)
            compiled._graphmfu_tagger = self
            frame = frame_name()
            with self._lock:
                if frame is not None:
                    self.frames[key] = frame
                self._compiled.append(weakref.ref(compiled))
                if self._on:  # compiled inside a profiled block or a meter step: tag it now
                    compiled.__class__ = _tagging_class(_base_class(type(compiled)))
        except (TypeError, AttributeError):
            pass

    def enable(self) -> None:
        with self._lock:
            self._active += 1
            self._update()

    def disable(self) -> None:
        with self._lock:
            self._active = max(self._active - 1, 0)
            self._update()

    def attach(self, meter) -> None:
        """Report every call to ``meter`` until ``detach``."""
        with self._lock:
            self.meters = [*self.meters, meter]  # replaced, never mutated: the tagging call reads it unlocked
            self._update()

    def detach(self, meter) -> None:
        with self._lock:
            self.meters = [m for m in self.meters if m is not meter]
            self._update()

    def _update(self) -> None:
        on = self._active > 0 or bool(self.meters)
        if on != self._on:
            self._on = on
            self._swap(on)

    def _swap(self, on: bool) -> None:
        alive = []
        for ref in self._compiled:
            obj = ref()
            if obj is None:
                continue
            alive.append(ref)
            with contextlib.suppress(TypeError, AttributeError):
                base = _base_class(type(obj))
                obj.__class__ = _tagging_class(base) if on else base
        self._compiled[:] = alive


_counts = threading.local()  # .fn: this thread's provider of probe values (``counts_from``)


@contextlib.contextmanager
def counts_from(fn):
    """While open, in this thread, each probe of a graph call asks ``fn(name, probe, inputs)`` first: an int
    (the count, from what the caller knows: a serving engine's own sequence lengths) or None (the probe
    runs).  ``fn`` may run ``probe(inputs)`` itself (to check its knowledge against the mask)."""
    prev = swap_counts(fn)
    try:
        yield
    finally:
        swap_counts(prev)


def swap_counts(fn):
    """``counts_from`` without a context manager (an engine's per-step path): this thread's provider set
    to ``fn``; returns the one it replaces, to be put back."""
    prev = getattr(_counts, "fn", None)
    _counts.fn = fn
    return prev


def call_values(inputs, size_args, probes=(), resolve: bool = True) -> dict:
    """``{"s0": 24, "pairs_x": 900}``: the size symbols' values in one call's inputs (Inductor passes a
    list) and the probes' values; what cannot be read is left out.  ``resolve=False`` leaves a probe's
    result as it came (a count still on the GPU: reading it would wait for the device; the meter reads
    it once the step has finished)."""
    out = {}
    for i, d, name in size_args:
        try:
            x = inputs[i]
            out[name] = int(x if d is None else x.shape[d])
        except (IndexError, TypeError, AttributeError):
            continue
    known = getattr(_counts, "fn", None)
    for name, fn in probes:
        try:
            if known is not None:
                v = known(name, fn, inputs)
                if v is not None:
                    out[name] = v
                    continue
            finish = fn.defer(inputs) if not resolve and getattr(fn, "defer", None) is not None else None
            if finish is not None:
                out[name] = _package().Deferred(finish)
                continue
            if not resolve:
                out[name] = fn(inputs)
                continue
            # read the count inside graphmfu's probe range: the read (a tensor's item()) is graphmfu's
            # work, not the model's; outside it a profile saw it as an unattributed op
            with (torch.profiler.record_function(PROBE_RANGE) if profiler_running() else contextlib.nullcontext()):
                out[name] = int(fn(inputs))
        except Exception:  # noqa: BLE001 - a probe never breaks the call
            continue
    return out


class Deferred:
    """A probe's count to be read later: ``fn.defer(inputs)`` queued host copies of what it reads
    (without waiting for the device) and returned ``finish()``, which counts on the host.  The meter's
    way of counting an input-dependent mask per call with no synchronisation."""
    __slots__ = ("finish",)

    def __init__(self, finish):
        self.finish = finish

    def __int__(self) -> int:
        return int(self.finish())

    def land(self) -> None:
        """The device work the count reads has completed: free what the copies held (pinned buffers)
        so that the count can be made any time later."""
        land = getattr(self.finish, "land", None)
        if land is not None:
            land()


def deferred(v) -> bool:
    """Is a call value still to be read (a device count or a deferred probe)?"""
    return isinstance(v, (torch.Tensor, Deferred))


def parse_call_range(name: str) -> tuple[str, dict | None]:
    """``graphmfu::graph <key>|s0=24`` -> (key, {"s0": 24}); (key, None) for a static graph."""
    rest = name[len(CALL_RANGE):]
    key, _, sizes = rest.partition("|")
    if not sizes:
        return key, None
    return key, {k: int(v) for k, v in (p.split("=") for p in sizes.split(",") if "=" in p)}


def _base_class(cls):
    return cls.__dict__.get("_graphmfu_base", cls)


def _tagging_class(cls):
    sub = _TAGGED.get(cls)
    if sub is None:
        base_call = cls.__call__

        def __call__(self, *args, **kwargs):
            tagger = getattr(self, "_graphmfu_tagger", None)
            if tagger is None:
                return base_call(self, *args, **kwargs)
            key = self._graphmfu_key
            sizes, probes = self._graphmfu_sizes, self._graphmfu_probes
            # a profile needs the values now (its range name); a meter alone reads deferred counts later
            values = _package().call_values(args[0], sizes, probes, resolve=bool(tagger._active)) \
                if (sizes or probes) and args else None
            meters = tagger.meters
            tokens = [m.call_begin(key, values) for m in meters] if meters else None
            _in_graph.depth = getattr(_in_graph, "depth", 0) + 1  # what runs inside is this graph's (ForeignCalls)
            try:
                if tagger._active:
                    name = key + ("|" + ",".join(f"{k}={int(v)}" for k, v in values.items()) if values else "")
                    with torch.profiler.record_function(CALL_RANGE + name):
                        return base_call(self, *args, **kwargs)
                return base_call(self, *args, **kwargs)
            finally:
                _in_graph.depth -= 1
                if tokens is not None:
                    for m, t in zip(meters, tokens):
                        m.call_end(t)

        sub = type(cls.__name__, (cls,), {"__call__": __call__, "__module__": cls.__module__,
                                          "_graphmfu_base": cls})
        _TAGGED[cls] = sub
    return sub


def _package():
    """The package ``graphmfu._inductor`` as it is now.  The tagging call and ``call_values`` look up
    ``call_values`` and ``Deferred`` on it at call time, as when the package was one module: a patch of the
    package's name (a bench timing ``call_values``, a test counting ``Deferred``s) reaches them.  Looked up,
    not imported: no room imports the package's ``__init__``."""
    return sys.modules[__package__]
