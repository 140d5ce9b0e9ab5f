"""``graphmfu.meter()``: MFU, MBU, TFLOP/s and tokens/s for every step, with no profiler.

    meter = graphmfu.meter(model=model)
    for batch in loader:
        with meter.step(tokens=batch.numel()):
            loss = model(batch); loss.backward(); opt.step(); opt.zero_grad()
    print(meter.summary())

What a step measures (device-free, :class:`Step`): its time (CUDA events on a GPU, ``perf_counter`` on
the CPU), how often each compiled graph ran and with which size symbols (a call counter: the
registry's call tagger reports every graph call to the meters attached to it), and the time spent in
graph calls (events around each call).  What it derives (:func:`row`, one function of a step, the
graphs and a device): FLOPs and bytes of the graphs that ran, each call costed at its own sizes (the
symbolic costs of dynamic graphs: varying batch, sequence and KV-cache length are exact), MFU/HFU/MBU/
SOL through ``roofline.utilisation`` (the one definition), tokens/s, FLOPs per token beside 2ND / 6ND.

Outside a step nothing is attached: the compiled graphs are Inductor's own objects.  Inside, each
graph call costs a dict update (and, with an input-dependent mask, one small host copy of what the
mask reads, into a pooled pinned buffer), and on every ``graph_time``-th step (default 10; 1: every
step) two events around each call.  A step's time runs from its start event to its end event; when
the device is still running earlier work as a step starts (a loop that runs ahead of the GPU), the
start event would complete when that work ends, as the previous step's end event does: the step starts
at that event instead (one event per step on the stream).  Nothing synchronises: once a step's end
event has completed (seen at a later step's start) its times are read and its copies land; its mask counts, costs and row are derived when read
(``records``, ``summary()``, which wait for running steps) — or as each step finishes when
``on_record``, ``print_every`` or ``world_every`` ask for every row, whose work is then in the loop.

FLOPs come from compiled graphs only; work outside them (an eager optimizer, the loss in eager mode,
data loading) is time without FLOPs, shown as ``graph_time_share`` < 1 and ``outside_graphs_s``.
"""
from __future__ import annotations

import collections
import contextlib
import dataclasses
import sys
import threading
import time
from typing import Callable

import torch

from graphmfu import _inductor
from graphmfu.cost import Cost
from graphmfu.errors import GraphMFUError
from graphmfu.hardware import DeviceSpec, get_device
from graphmfu.registry import DEFAULT, Registry
from graphmfu.roofline import matrix_time_s, place, rate, utilisation


@dataclasses.dataclass
class Step:
    """What one meter step measured (no device in it)."""
    step: int
    step_s: float
    graph_s: float | None  # time inside compiled graph calls (None: not timed on this step)
    stage_s: dict  # forward | backward | optimizer | inference -> seconds in that kind of graph call
    calls: dict  # (graph key, ((symbol, value), ...)) -> number of calls
    tokens: int | None = None
    samples: int | None = None
    processed: int | None = None  # tokens computed (speculative decoding: drafted + verified)
    foreign: dict = dataclasses.field(default_factory=dict)  # calls of graphs graphmfu did not compile:
    # {"compiled": Inductor graphs compiled elsewhere, "cuda_graph": CUDA graphs replayed outside any graph call}
    extra: dict = dataclasses.field(default_factory=dict)  # what an integration knows of the step (a serving
    # engine's prefill/decode tokens, requests, context) — shown in the row; "notes": lines said in its note
    padding: object = None  # padding.Padding: the step's padded and real rows (model FLOPs exclude the padded)


@dataclasses.dataclass(frozen=True)
class CallCost:
    """One graph call's cost at its sizes (device-free)."""
    stage: str
    kernels: tuple  # Cost per kernel whose cost depends on the call's values (bytes = its own traffic)
    total: Cost  # model work: recomputed forward FLOPs excluded
    recompute: Cost  # FLOPs of recomputed forward nodes (activation checkpointing): HFU only
    attention: Cost  # attention ops (matrix FLOPs of Q@K^T and P@V, effective and dense)
    kv_bytes: int  # key and value bytes read by the attention ops (decode: the KV cache)
    plan: "GraphPlan | None" = None  # the graph's plan: its fixed kernels (the same at every call)
    _t_min: dict = dataclasses.field(default_factory=dict, compare=False, repr=False)  # device -> seconds

    def t_min(self, dev: DeviceSpec) -> float:
        """The call's roofline time on ``dev`` (its kernels each at their own bound), memoized."""
        t = self._t_min.get(dev.name)
        if t is None:
            t = self._t_min[dev.name] = sum(place(k, dev).t_min_s for k in self.kernels) + (
                self.plan.fixed_t_min(dev) if self.plan else 0.0)
        return t


class Meter:
    """Per-step numbers of the graphs compiled with ``graphmfu.backend`` (or into ``registry``).

    ``device``: the ceilings (name, alias, DeviceSpec; default: the current GPU, else measured CPU).
    ``model`` / ``params``: N for 2ND/6ND (:func:`graphmfu.params.active_params`: without embeddings,
    active experts only).  ``on_record(row)``: called with each finished step's row.  ``print_every``:
    print a one-line row every N steps (to stderr).  ``world_every``: every N steps, one all-reduce over
    ``group`` (default: the whole world) adds ``world_mfu``, ``world_tflops``, ``world_tokens_per_s``
    and ``world_flops`` of those N steps to the N-th row (a synchronisation then; off by default).
    ``graph_time``: events around every graph call on every N-th step (default 10, from the
    first; 1: every step; 0: never) give ``graph_s``/``graph_time_share`` and the time per stage on
    those steps (None on the others).  ``sync``: finish each step at its end (a synchronisation per
    step) instead of lazily.  ``history``: keep only the last N steps (memory
    bounded in a loop that runs for hours; by default every step is kept until the meter is dropped)."""

    def __init__(self, device=None, *, registry: Registry | None = None, model=None, params: int | None = None,
                 top_k: int | None = None, num_experts: int | None = None, on_record: Callable | None = None,
                 print_every: int = 0, graph_time: int = 10, cuda: bool | None = None, sync: bool = False,
                 file=None, world_every: int = 0, group=None, history: int | None = None):
        self.registry = registry or DEFAULT
        self.cuda = torch.cuda.is_available() if cuda is None else bool(cuda)
        self.device = device if isinstance(device, DeviceSpec) else get_device(device if device is not None else
                                                                              ("cuda" if self.cuda else "cpu"))
        if params is None and model is not None:
            from graphmfu.params import active_params

            params = active_params(model, top_k=top_k, num_experts=num_experts)
        self.params = params
        self.on_record = on_record
        self.print_every = int(print_every)
        self.graph_time = int(graph_time)
        self.sync = sync
        self.file = file
        self.world_every = int(world_every)
        self.group = group
        if history is not None and int(history) < 1:
            raise GraphMFUError(f"meter(history=N) keeps the last N steps; N must be at least 1, got {history!r}")
        self.history = int(history) if history is not None else None
        self._window: list = []  # rows since the last world reduction
        self._steps: collections.deque = collections.deque(maxlen=self.history)  # resolved steps
        self._rows: collections.deque = collections.deque(maxlen=self.history)
        self._pending: list = []  # steps whose end event may still be running
        # finished steps not yet counted and costed (beyond ``history``: never read, never derived)
        self._landed: collections.deque = collections.deque(maxlen=self.history)
        self._costs: dict = {}  # (key, values) -> CallCost
        self._attention = None
        self._plans: dict = {}  # graph key -> GraphPlan
        self._lock = threading.Lock()
        self._open = None  # the step being measured
        self.raised = 0  # steps whose body raised: not recorded
        self._events: list = []  # a pool of CUDA timing events
        self._n = 0

    # ---------------------------------------------------------------- measuring
    @contextlib.contextmanager
    def step(self, tokens: int | None = None, samples: int | None = None, processed: int | None = None,
             stream=None):
        """Measure one step.  ``tokens``: tokens this step produced or trained on (speculative decoding:
        the accepted ones, with ``processed`` the tokens computed: goodput MFU beside raw MFU);
        ``samples``: sequences/images; ``stream``: the CUDA stream the step's work runs on (default: the
        current one), where its start and end events go."""
        st = self.begin(tokens, samples, processed, stream)
        try:
            yield st
        except BaseException:
            self.abort(st)
            raise
        self.end(st, stream)

    def begin(self, tokens: int | None = None, samples: int | None = None, processed: int | None = None,
              stream=None) -> "_Open":
        """``step()``'s start, for an integration that opens and closes steps itself (an engine's loop, where
        a context manager's own cost counts): every ``begin`` is followed by ``end`` or ``abort``."""
        if self._open is not None:
            raise GraphMFUError("meter.step() is already open: steps do not nest (close the previous "
                                "'with meter.step():' block first)")
        st = _Open(self._n, tokens, samples, processed)
        st.timed = bool(self.graph_time) and self._n % self.graph_time == 0
        self._n += 1
        self._open = st
        self.registry.tagger.attach(self)
        _inductor.ForeignCalls.listen(self)
        prev = self._pending[-1] if self._pending else None
        busy = False
        if self.cuda and prev is not None and not prev.end_shared:
            prev.done = prev.done or prev.end.query()  # remembered: the step lands without asking the device again
            busy = not prev.done
        if busy:
            # the device is still running earlier work: a start event recorded now would complete when
            # that work ends, as the previous step's end event does — one event fewer on the stream
            st.start, prev.end_shared = prev.end, True
            st.prev = prev
        else:
            st.start = self._mark(stream)  # the events bracket the user's code, not the meter's own bookkeeping
        return st

    def abort(self, st: "_Open") -> None:
        """A step whose body raised did not run to its end: not a step (counted in ``raised``)."""
        self._close()
        self.raised += 1
        self._drop(st)

    def end(self, st: "_Open", stream=None) -> None:
        """``step()``'s end (after ``begin``)."""
        st.end = self._mark(stream)
        self._close()
        if st.discard:  # an integration's step that turned out to run nothing: not a step
            self._drop(st)
            return
        self._pending.append(st)
        world = self.world_every and (st.index + 1) % self.world_every == 0
        # steps whose end event has completed land here, a few per step (none waited for unless asked; the
        # step just ended is not asked about: its end event was recorded a moment ago)
        self._drain(block=self.sync or not self.cuda or world, newest=False)  # world steps: finished on every rank

    def _close(self) -> None:
        self.registry.tagger.detach(self)
        _inductor.ForeignCalls.unlisten(self)
        self._open = None

    def _drop(self, st: "_Open") -> None:
        """A step not recorded: its events back to the pool (a start shared with the previous step's end, when
        that step is still pending, goes back with it)."""
        if not self.cuda:
            return
        if st.end is not None:
            self._events.append(st.end)
        if st.prev is not None and st.prev in self._pending:
            st.prev.end_shared = False  # the previous step gives its end event back itself
        elif st.start is not None:
            self._events.append(st.start)

    @contextlib.contextmanager
    def hold(self):
        """Keep graphmfu's per-call hooks in place from one step to the next (a serving engine's loop of
        many short steps): a step then attaches the meter to hooks already in place instead of putting
        them in and taking them out (each compiled graph's class swapped, Inductor's call wrapped), at the
        price of the hooks' small cost on calls made between steps."""
        hold = _Hold()
        self.registry.tagger.attach(hold)
        _inductor.ForeignCalls.listen(hold)
        try:
            yield self
        finally:
            self.registry.tagger.detach(hold)
            _inductor.ForeignCalls.unlisten(hold)

    def call_begin(self, key: str, values: dict | None):
        """The call tagger's report of a compiled graph call starting (any thread)."""
        st = self._open
        if st is None:
            return None
        if values and any(_inductor.deferred(v) for v in values.values()):
            st.deferred.append((key, values))  # a probe's count on the device: read when the step is done
            sizes = None
        else:
            sizes = tuple(values.items()) if values else ()
            with self._lock:
                st.calls[(key, sizes)] = st.calls.get((key, sizes), 0) + 1
        return (st, key, sizes, self._mark()) if st.timed else None

    def foreign_call(self, kind: str) -> None:
        """A graph graphmfu did not compile ran (``_inductor.ForeignCalls``): counted, not costed."""
        st = self._open
        if st is not None:
            with self._lock:
                st.foreign[kind] = st.foreign.get(kind, 0) + 1

    def call_end(self, token) -> None:
        if token is not None:
            st, key, sizes, start = token
            st.spans.append((key, sizes, start, self._mark()))

    def _mark(self, stream=None):
        if not self.cuda:
            return time.perf_counter()
        ev = self._events.pop() if self._events else torch.cuda.Event(enable_timing=True)
        ev.record() if stream is None else ev.record(stream)
        return ev

    def _elapsed(self, a, b) -> float:
        return (b - a) if not self.cuda else a.elapsed_time(b) / 1e3

    def _drain(self, block: bool, most: int = 2, newest: bool = True) -> None:
        """Land the steps whose end event has completed, at ``most`` per call (a backlog, e.g. after the
        loop synchronised, lands over the next steps instead of at once); ``block``: wait for them all.
        Rows are derived when read (``records``), or here when a callback, printing or a world reduction
        wants each step as it finishes."""
        landed = 0
        while self._pending:
            st = self._pending[0]
            if self.cuda and not block and (landed >= most or (not newest and len(self._pending) == 1) or
                                            not (st.done or st.end.query())):
                break
            landed += 1
            if self.cuda and block:  # otherwise query() just said it has completed
                st.end.synchronize()
            self._pending.pop(0)
            self._land(st)
        if self._landed and (self.on_record is not None or self.print_every or self.world_every or self.sync):
            self._resolve()

    def _land(self, st) -> None:
        """A finished step: its times read from its events (back to the pool), its probes' host copies
        landed (pinned buffers back to their pools); counted and costed when resolved."""
        for _, values in st.deferred:
            for v in values.values():
                if isinstance(v, _inductor.Deferred):
                    v.land()
        st.step_s = self._elapsed(st.start, st.end)
        if self.cuda:  # a shared end event goes back with the next step (its start), which lands later
            self._events.append(st.start)
            if not st.end_shared:
                self._events.append(st.end)
            self._events.extend(e for _, _, a, b in st.spans for e in (a, b))
        st.spans = [(key, self._elapsed(a, b)) for key, _, a, b in st.spans]
        st.start = st.end = None
        self._landed.append(st)

    def _resolve(self) -> None:
        while self._landed:
            self._finish(self._landed.popleft())

    def _finish(self, st) -> None:
        for key, values in st.deferred:  # the step is done: reading the counts waits for nothing
            try:
                sizes = tuple((k, int(v)) for k, v in values.items())
            except Exception:  # noqa: BLE001 - a probe that fails: the graph's hints (noted in its record)
                sizes = tuple((k, v) for k, v in values.items() if not _inductor.deferred(v))
            st.calls[(key, sizes)] = st.calls.get((key, sizes), 0) + 1
        stage_s: dict = {}
        graph_s = None
        if st.timed:
            graph_s = 0.0
            for key, dt in st.spans:
                graph_s += dt
                stage = self._stage(key)
                stage_s[stage] = stage_s.get(stage, 0.0) + dt
        step = Step(st.index, st.step_s, graph_s, stage_s, dict(st.calls), st.tokens, st.samples, st.processed,
                    dict(st.foreign), dict(st.extra), st.padding)
        self._steps.append(step)
        r = self.row(step)
        if self.world_every:
            self._window.append(r)
            if (step.step + 1) % self.world_every == 0:
                r.update(self._world(self._window))
                self._window = []
        self._rows.append(r)
        if self.on_record is not None:
            self.on_record(r)
        if self.print_every and (step.step + 1) % self.print_every == 0:
            print(line(r), file=self.file or sys.stderr)

    def _world(self, rows: list[dict]) -> dict:
        """One all-reduce (sum) over the ranks of the window's matrix time at peak, FLOPs, tokens and
        step time: world MFU = sum of matrix time / sum of step time (world FLOPs over world peak over
        the mean step), world TFLOP/s and tokens/s per mean step second."""
        dist = torch.distributed
        if not (dist.is_available() and dist.is_initialized()):
            return {}
        t_matrix = sum((r["mfu"] or 0.0) * r["step_s"] for r in rows)
        vec = [t_matrix, float(sum(r["flops"] for r in rows)), float(sum(r["tokens"] or 0 for r in rows)),
               sum(r["step_s"] for r in rows), float(len(rows))]
        on = "cuda" if dist.get_backend(self.group) == "nccl" else "cpu"
        x = torch.tensor(vec, dtype=torch.float64, device=on)
        dist.all_reduce(x, group=self.group)
        t_m, flops, tokens, step_s, n = x.tolist()
        world = dist.get_world_size(self.group)
        mean_step = step_s / world  # summed over ranks and the window: per-rank sum of step times
        return {"world_size": world, "world_steps": int(n / world), "world_flops": int(flops),
                "world_mfu": rate(t_m, step_s), "world_tflops": rate(flops, mean_step) and flops / mean_step / 1e12,
                "world_tokens_per_s": rate(tokens, mean_step) if tokens else None}

    # ---------------------------------------------------------------- costs (device-free)
    def cost(self, key: str, sizes: tuple) -> CallCost:
        """The cost of one call of graph ``key`` at ``sizes`` (memoized)."""
        c = self._costs.get((key, sizes))
        if c is None:
            c = self._costs[(key, sizes)] = self._plan(key).at(dict(sizes))
        return c

    def _plan(self, key: str) -> "GraphPlan":
        p = self._plans.get(key)
        if p is None:
            if self._attention is None:
                self._attention = _attention_events()
            p = self._plans[key] = GraphPlan(self._graph(key), self.registry.tagger.frames.get(key),
                                             self._attention)
        return p

    def _stage(self, key: str) -> str:
        return self._plan(key).stage

    def _graph(self, key: str):
        for g in self.registry.graphs:
            if g.key == key:
                return g
        g = self.registry.retired.get(key)
        if g is None:
            raise GraphMFUError(f"graph {key} ran in a meter step but is not in the meter's registry (compiled "
                                f"into another registry? pass graphmfu.meter(registry=...))")
        return g

    # ---------------------------------------------------------------- views
    @property
    def records(self) -> list[dict]:
        """One row per finished step (waits for steps still running on the GPU)."""
        self._drain(block=True)
        self._resolve()
        return list(self._rows)

    def latest(self) -> dict | None:
        """The row of the most recent step that has finished on the device, without waiting (None
        before the first): what a logger reads each time it logs."""
        self._drain(block=False)
        self._resolve()
        return self._rows[-1] if self._rows else None

    @property
    def steps(self) -> list[Step]:
        """What each finished step measured (device-free)."""
        self._drain(block=True)
        self._resolve()
        return list(self._steps)

    def row(self, step: Step, device: DeviceSpec | None = None) -> dict:
        return row(step, self.cost, device or self.device, self.params)

    def on(self, device) -> list[dict]:
        """The same steps placed on another device's ceilings."""
        dev = device if isinstance(device, DeviceSpec) else get_device(device)
        return [row(s, self.cost, dev, self.params) for s in self.steps]

    def summary(self, skip: int = 1) -> str:
        """A table of the steps, and their mean after ``skip`` warm-up steps."""
        from tabulate import tabulate

        rows = self.records
        if not rows:
            return "graphmfu meter: no step finished yet"
        cols = [("step", "step", "{}"), ("step_s", "ms", "{:.3f}"), ("tflops", "TFLOP/s", "{:.4g}"),
                ("mfu", "MFU", "{:.2%}"), ("hfu", "HFU", "{:.2%}"), ("mbu", "MBU", "{:.2%}"),
                ("tokens_per_s", "tok/s", "{:.1f}"), ("flops_per_token", "FLOP/tok", "{:.4g}"),
                ("flops_vs_nd", "÷ND", "{:.3f}"), ("graph_time_share", "in graphs", "{:.1%}")]
        if any(r.get("engine_step") for r in rows):  # a serving engine's steps (integrations.continuous_batching)
            cols[1:1] = [("engine_step", "engine", "{}"), ("prefill_tokens", "prefill", "{}"),
                         ("decode_tokens", "decode", "{}")]
        if any(r.get("padding_share") is not None for r in rows):
            cols.append(("padding_share", "padding", "{:.0%}"))

        def fmt(r, k, f):
            v = r.get(k)
            if v is None:
                return "-"
            return f.format(v * 1e3 if k == "step_s" else v)

        body = [[fmt(r, k, f) + (" !" if k == "step" and r.get("flags") else "") for k, _, f in cols] for r in rows]
        tail = [r for r in (rows[skip:] or rows) if "no_graphs" not in r.get("flags", ())]  # foreign steps stay:
        # their own graphs' numbers are real, the flag says what they leave out
        mean = {k: _mean([r.get(k) for r in tail]) for k, _, _ in cols}
        mean["step"] = f"mean {len(tail)}"
        body.append([mean["step"]] + [fmt(mean, k, f) for k, _, f in cols[1:]])
        head = (f"graphmfu meter — {self.device.name}, {len(rows)} step(s)"
                + (f", N = {self.params:,} parameters (active, without embeddings)" if self.params else ""))
        empty = [r["step"] for r in rows if "no_graphs" in r.get("flags", ()) and not r.get("foreign_calls")]
        first = []
        alien = [r for r in rows if r.get("foreign_calls")]
        if alien:  # not ours to count: said first
            first.append(f"! {len(alien)} of {len(rows)} step(s) ran graphs compiled outside graphmfu (steps "
                         f"{_few([r['step'] for r in alien])}, marked !): {alien[-1]['note']}")
        if empty:
            own = [r["note"] for r in rows if r["step"] in empty and r.get("note") and r["note"] != NO_GRAPHS]
            first.append(f"! {len(empty)} of {len(rows)} step(s) ran no compiled graph (steps {_few(empty)}, marked !): "
                         + (own[-1] if own else
                            "their FLOPs are not counted (0 is not their work) and they are left out of the means; "
                            "compile the model with graphmfu.backend (or use graphmfu.capture_all()) and run it "
                            "inside the step"))
        said = {"no_graphs", "foreign_graphs"}
        other = [r for r in rows if set(r.get("flags", ())) - said and r["step"] not in empty and not r.get("foreign_calls")]
        if other:  # an integration's flag (attention outside graphs, a replayed CUDA graph ...): its words first
            flags = sorted({f for r in other for f in r["flags"]} - said)
            first.append(f"! {len(other)} of {len(rows)} step(s) flagged {', '.join(flags)} (steps "
                         f"{_few([r['step'] for r in other])}, marked !): {other[-1].get('note', '')}")
        if self.raised:
            first.append(f"! {self.raised} step(s) raised inside 'with meter.step()' and are not recorded")
        return "\n".join([*first, head, tabulate(body, headers=[h for _, h, _ in cols], disable_numparse=True)])


class _Hold:
    """A listener that counts nothing: while attached, the call hooks stay in place (Meter.hold)."""

    def call_begin(self, key, values):
        return None

    def call_end(self, token) -> None:
        pass

    def foreign_call(self, kind) -> None:
        pass


class _Open:
    """A step being measured."""

    def __init__(self, index, tokens, samples, processed):
        self.index, self.tokens, self.samples, self.processed = index, tokens, samples, processed
        self.calls: dict = {}
        self.foreign: dict = {}  # kind -> calls of graphs graphmfu did not compile
        self.deferred: list = []  # (graph key, values with device-side probe counts)
        self.spans: list = []  # (graph key, sizes, start, end) per timed call; (key, seconds) once landed
        self.start = self.end = None
        self.step_s = 0.0
        self.timed = False
        self.end_shared = False  # the next step starts at this step's end event
        self.done = False  # its end event is known to have completed (asked once, at the next step's begin)
        self.prev = None  # the previous step, when this one starts at its end event
        self.discard = False  # set inside the step: it is not recorded (an integration's empty step)
        self.extra: dict = {}  # set inside the step by an integration (Step.extra)
        self.padding = None  # set inside the step by an integration (Step.padding)


def _few(xs: list, most: int = 8) -> str:
    return ", ".join(map(str, xs[:most])) + (f", ... ({len(xs)} in all)" if len(xs) > most else "")


def _mean(xs):
    xs = [x for x in xs if x is not None and not isinstance(x, str)]
    return sum(xs) / len(xs) if xs else None


# --------------------------------------------------------------------------- costs of one call


def _stage(phase: str, frame: str | None) -> str:
    if phase == "backward":
        return "backward"
    if frame and ("/torch/optim/" in frame.replace("\\", "/")):
        return "optimizer"
    return phase  # forward | inference


def _attention_events() -> frozenset:
    """The profiler names of the ops whose rule lives in rules/attention.py (SDPA, flash, efficient,
    cuDNN, flex ...): the attention the meter reports separately."""
    from graphmfu.cost import REGISTRY, ensure_builtin_rules, event_name, op_name

    ensure_builtin_rules()
    return frozenset(event_name(op_name(op)) for op in REGISTRY.ops()
                     if REGISTRY.lookup(op).origin.split(":")[0].endswith("rules.attention"))


class GraphPlan:
    """What a call of one graph costs, prepared once: its stage, the kernels whose cost is the same at
    every call (summed once; their roofline time once per device), the kernels and the nodes that are
    evaluated per call (kernels with free symbols; recomputed and attention nodes)."""

    def __init__(self, g, frame: str | None = None, attention_ops: frozenset | None = None):
        self.g = g
        self.stage = _stage(g.phase, frame)
        self.attention_ops = _attention_events() if attention_ops is None else attention_ops
        varies = [_varies(k) for k in g.kernels]
        self.fixed = tuple(k.cost for k, v in zip(g.kernels, varies) if not v)
        self.fixed_total = sum(self.fixed, Cost())
        self.varying = tuple(k for k, v in zip(g.kernels, varies) if v)
        # with kernels (which carry the costs) only recomputed and attention nodes are read one by one
        self.nodes = [n for n in g.nodes if n.cost is not None and (
            not g.kernels or n.recompute or self.attention(n))]
        self._kv = {id(n): _kv_bytes(n, {}) for n in self.nodes if self.attention(n)
                    and not _shape_symbols(n)}  # key/value bytes of attention nodes with static shapes
        self._t_min: dict = {}  # device name -> roofline time of the fixed kernels
        self._padded: dict = {}  # (sizes, Padding) -> matrix work on padded rows

    def attention(self, n) -> bool:
        """An attention op (rules/attention.py), or attention's matmul written out (rules/masks: flagged)."""
        return n.event in self.attention_ops or "attention_matmul" in n.flags

    def fixed_t_min(self, dev: DeviceSpec) -> float:
        t = self._t_min.get(dev.name)
        if t is None:
            t = self._t_min[dev.name] = sum(place(k, dev).t_min_s for k in self.fixed)
        return t

    def at(self, values: dict) -> CallCost:
        """One call with size/probe ``values`` (missing symbols take their hints)."""
        g = self.g
        sizes = {**g.hints, **values} if (g.hints or values) else {}
        kernels = tuple(k.cost_at(sizes) for k in self.varying)
        recompute, attention, kv = Cost(), Cost(), 0
        node_total = Cost()
        for n in self.nodes:
            c = n.cost_at(sizes)
            if n.recompute:
                recompute = recompute + Cost(c.matrix, c.matrix_dense, c.vector)
                continue
            if not g.kernels:
                node_total = node_total + c
            if self.attention(n):
                attention = attention + Cost(c.matrix, c.matrix_dense)
                k = self._kv.get(id(n))
                kv += k if k is not None else _kv_bytes(n, sizes)
        total = sum(kernels, self.fixed_total) if g.kernels else node_total
        return CallCost(self.stage, kernels, total, recompute, attention, kv, self)

    def padded(self, sizes: tuple, p) -> Cost:
        """The matrix work of a call at ``sizes`` spent on ``p``'s padded rows (padding.padded_cost), memoized."""
        c = self._padded.get((sizes, p))
        if c is None:
            from graphmfu.padding import padded_cost

            c = self._padded[(sizes, p)] = padded_cost(self.g, dict(sizes), p, self.attention)
        return c


def call_cost(g, values: dict, frame: str | None = None, attention_ops: frozenset | None = None) -> CallCost:
    """One call of graph ``g`` with size/probe ``values`` (a plan made for this call alone)."""
    return GraphPlan(g, frame, attention_ops).at(values)


def _varies(k) -> bool:
    """Does kernel ``k``'s cost depend on a call's values (a formula with a free symbol)?"""
    from graphmfu.cost import _polynomial

    if not k.sym:
        return False
    texts = [v for part in ("matrix", "dense", "vector") for v in k.sym[part].values()]
    texts += [k.sym["read"], k.sym["written"]]
    return any(_polynomial(t) is None or _polynomial(t)[0] for t in texts)


def _shape_symbols(n) -> bool:
    """Does an op's key or value shape hold a size symbol?"""
    return any(isinstance(d, str) for shape, _ in n.inputs[1:3] for d in shape)


def _kv_bytes(n, sizes: dict) -> int:
    """Bytes of the key and value inputs of an attention op (its 2nd and 3rd tensor inputs)."""
    from graphmfu.cost import dim_at, itemsize
    import sympy

    out = 0
    subs = {sympy.Symbol(k): v for k, v in sizes.items()}
    for shape, dtype in n.inputs[1:3]:
        numel = 1
        for d in shape:
            numel *= dim_at(d, subs)
        out += int(numel) * itemsize(getattr(torch, dtype) if isinstance(dtype, str) and hasattr(torch, dtype)
                                     else torch.float32)
    return out


# --------------------------------------------------------------------------- the row (device-dependent)


def row(step: Step, cost: Callable, dev: DeviceSpec, params: int | None = None) -> dict:
    """Everything about one step on ``dev``: the one derivation of a meter row."""
    total, recompute, attention = Cost(), Cost(), Cost()
    t_min, kv, calls = 0.0, 0, 0
    stages: set = set()
    padded = Cost()
    for (key, sizes), n in step.calls.items():
        c = cost(key, sizes)
        stages.add(c.stage)
        calls += n
        for _ in range(n):
            total = total + c.total
            recompute = recompute + c.recompute
            attention = attention + c.attention
            if step.padding is not None and c.plan is not None:
                padded = padded + c.plan.padded(sizes, step.padding)
        kv += n * c.kv_bytes
        t_min += n * c.t_min(dev)
    executed = total
    if step.padding is not None:  # the model's work: the padded rows' products left out
        from graphmfu.padding import minus

        total = minus(total, padded)
    t = step.step_s
    u = utilisation(matrix_time_s(total, dev), total.bytes, t_min, t, dev)
    training = "backward" in stages
    out = {"step": step.step, "step_s": t, "graph_calls": calls,
           "flops": total.flops, "flops_dense": total.flops_dense, "flops_recompute": recompute.flops,
           "vector_flops": total.vector_flops, "bytes": total.bytes,
           "attention_flops": attention.flops, "attention_flops_dense": attention.flops_dense,
           "kv_bytes": kv, "tflops": rate(total.flops, t) and total.flops / t / 1e12,
           "mfu": u["mfu"], "hfu": rate(matrix_time_s(total, dev) + matrix_time_s(recompute, dev), t),
           "mbu": u["mbu"], "sol": u["sol"], "device": dev.name,
           "graph_s": step.graph_s, "graph_time_share": rate(step.graph_s, t) if step.graph_s is not None else None,
           "outside_graphs_s": (t - step.graph_s) if step.graph_s is not None else None,
           **{f"{k}_s": v for k, v in sorted(step.stage_s.items())},
           "tokens": step.tokens, "samples": step.samples,
           "tokens_per_s": rate(step.tokens, t) if step.tokens else None,
           "samples_per_s": rate(step.samples, t) if step.samples else None,
           "flops_per_token": rate(total.flops, step.tokens) if step.tokens else None,
           "params": params, "training": training}
    if params and step.tokens:
        nd = (6 if training else 2) * params * step.tokens
        out.update({"nd_flops": nd, "nd_rule": "6ND" if training else "2ND", "flops_vs_nd": total.flops / nd})
    else:
        out.update({"nd_flops": None, "nd_rule": None, "flops_vs_nd": None})
    if step.processed and step.tokens is not None and u["mfu"] is not None:
        out["goodput_mfu"] = u["mfu"] * step.tokens / step.processed
    if step.padding is not None:
        out.update({"flops_executed": executed.flops, "padding_flops": executed.flops - total.flops,
                    "padding_share": rate(executed.flops - total.flops, executed.flops),
                    "mfu_executed": rate(matrix_time_s(executed, dev), t), "padded_tokens": step.padding.padded_tokens})
    extra = {}
    for k, v in step.extra.items():  # an integration's record of the step, derived now (``fields()``)
        extra.update(v.fields() if hasattr(v, "fields") else {k: v})
    notes = list(extra.pop("notes", ()))
    more = list(extra.pop("flags", ()))
    out.update(extra)
    foreign = sum(step.foreign.values())
    out["foreign_calls"] = foreign
    out["flags"] = [f for f, on in (("no_graphs", not calls), ("foreign_graphs", foreign)) if on]
    out["flags"] += [f for f in more if f not in out["flags"]]
    if foreign:
        notes.insert(0, foreign_note(step.foreign))
    elif not calls:
        notes.append(NO_GRAPHS)
    if notes:
        out["note"] = "; ".join(notes)
    return out


NO_GRAPHS = ("no compiled graph ran in this step: its FLOPs are not counted (0 is not its work) and it is left out "
             "of the means; compile the model with graphmfu.backend (or use graphmfu.capture_all()) and run it "
             "inside the step")


def foreign_note(foreign: dict) -> str:
    from graphmfu.derive import likely_caller

    sites = [s for s in _inductor.compile_sites() if s["backend"] != "graphmfu"]
    parts = ", ".join(f"{n} {'CUDA-graph replay(s)' if k == 'cuda_graph' else 'graph call(s)'}"
                      for k, n in sorted(foreign.items()))
    return (f"{parts} compiled outside graphmfu ran in this step{likely_caller(sites)}: their FLOPs are not "
            f"counted; route every torch.compile through graphmfu with graphmfu.capture_all() (or compile with "
            f"graphmfu.backend)")


def line(r: dict) -> str:
    """One printable line of a row."""
    parts = [f"step {r['step']}", f"{r['step_s'] * 1e3:.2f} ms"]
    if r.get("foreign_calls"):
        parts.append(f"! {r['foreign_calls']} call(s) of graphs compiled outside graphmfu: not counted")
    elif "no_graphs" in r.get("flags", ()):
        parts.append("! no compiled graph ran: FLOPs not counted")
    if r.get("tflops") is not None:
        parts.append(f"{r['tflops']:.2f} TFLOP/s")
    for k in ("mfu", "hfu", "mbu"):
        if r.get(k) is not None:
            parts.append(f"{k.upper()} {r[k]:.1%}")
    if r.get("tokens_per_s"):
        parts.append(f"{r['tokens_per_s']:.0f} tok/s")
    if r.get("flops_vs_nd"):
        parts.append(f"FLOPs = {r['flops_vs_nd']:.3f}×{r['nd_rule']}")
    if r.get("graph_time_share") is not None:
        parts.append(f"{r['graph_time_share']:.0%} in graphs")
    return "graphmfu meter: " + " | ".join(parts)


def meter(device=None, **kwargs) -> Meter:
    """``graphmfu.meter()``: see :class:`Meter`."""
    return Meter(device, **kwargs)


__all__ = ["Meter", "Step", "GraphPlan", "meter", "row", "call_cost"]
