"""The join: measured kernels of a finished ``torch.profiler`` session -> the kernels of a record.

One join serves every producer.  A *call* is one run of a recorded graph:

* a compiled graph: each ``graphmfu::graph <key>`` range (opened around the graph's calls while a
  profile session runs); its *sites* are the direct children of Inductor's ``## Call
  CompiledFxGraph`` range inside it (kernel launches, extern ATen ops, allocations);
* an eager recording of a stage: each occurrence of that stage's ``graphmfu::stage`` range; its
  sites are the ``aten::`` events inside it, in start order (events nested in a matched site are
  that op's internals and skipped; composite ops the recorder never sees match nothing).

Sites are matched in order to the graph's kernels by the kernel's ``site`` name (a Triton/C++
kernel's name, ``aten::mm`` for an extern GEMM or an eager op).  A measured kernel belongs to the
matched site enclosing its launch: on CUDA, GPU kernels come from CUPTI's launch correlation, with
device timestamps (a GEMM with a split-K reduce is one site with two GPU kernels); on CPU the site
events themselves are the kernels, timed on the CPU.  Under CUDA graphs a graph call is one
``cudaGraphLaunch``: its GPU kernels are joined by order (Triton kernels anchor by name; the GPU
kernels between anchors go to the extern kernels between them).  Kernels that match nothing are
listed as unattributed ("inside graph" / "outside graphs"), never dropped.

A kernel belongs to the innermost stage whose CPU range contains its launch (any thread, so the
autograd engine's backward thread counts too), and rolls up into enclosing stages once.
"""
from __future__ import annotations

import bisect
import dataclasses
import functools
import re

from graphmfu import _inductor, timeline
from graphmfu.cost import REGISTRY
from graphmfu.record import GraphRecord, Timing

STAGE_RANGE = "graphmfu::stage "
# a kernel of a graph compiled outside graphmfu (plain Inductor, a framework's own torch.compile) or of a CUDA
# graph replayed outside any compiled call (a framework's own torch.cuda.CUDAGraph)
FOREIGN = "compiled outside graphmfu"
INDUCTOR_CALL = "## Call CompiledFxGraph"
# profiler names of op events that can be launch sites / CPU kernels: ATen, collectives, FSDP2's copies
OP_EVENTS = ("aten::", "_c10d_functional::", "_c10d_functional_autograd::", "c10d::", "fsdp::")  # Inductor's profiler range around each compiled-graph call
_RUNTIME = re.compile(r"^(cuda|cu[A-Z])")


@dataclasses.dataclass
class Measured:
    """One measured device kernel (or, on CPU, one kernel's CPU execution)."""
    name: str
    start_us: float
    end_us: float
    launch_op: str  # the CPU op that launched it (launch site)
    launch_start_us: float  # CPU time of the launch (for stage attribution)
    graph: int | None = None  # joined graph id
    kernel: int | None = None  # joined kernel index in that graph
    call: int | None = None  # which call of the graph (0, 1, ...)
    how: str = ""  # "name", "op", "order" or "" (unattributed)
    where: str = ""  # "inside graph" | "outside graphs" | FOREIGN (a graph graphmfu did not compile)
    stage: str | None = None  # innermost stage
    sizes: dict | None = None  # a dynamic graph's size symbols in this call
    op: object = dataclasses.field(default=None, repr=False, compare=False)  # launching CPU FunctionEvent
    linked: int | None = None  # a device kernel: the profiler id of the CPU op enclosing its launch (CUPTI)
    launch: object = dataclasses.field(default=None, repr=False, compare=False)  # its op, or the runtime call
    # (cudaGraphLaunch of a CUDA-graph replay) when no op encloses the launch

    @property
    def time_s(self) -> float:
        return (self.end_us - self.start_us) * 1e-6


@dataclasses.dataclass
class _Call:
    graph: GraphRecord
    index: int
    sites: list  # CPU events, start order
    nested: bool  # sites may nest (eager): skip events inside a matched site
    range: object = None  # the compiled call's Inductor range (CUDA-graph replays launch from it)
    cpu: bool = False  # the graph's kernels run on the CPU: its site events are the kernels
    sizes: dict | None = None  # a dynamic graph's size symbols in this call


# --------------------------------------------------------------------------- profiler events


def cpu_events(prof) -> list:
    """The CPU-side events (ops, ranges) of a finished torch.profiler session, without the Python
    frames a ``with_stack=True`` profile puts between them."""
    return [e for e in prof.events() if getattr(e.device_type, "name", str(e.device_type)) == "CPU"
            and not _inductor.is_python_frame(e.name)]


def _parent(e):
    """The enclosing op or range, looking through Python frames."""
    p = e.cpu_parent
    while p is not None and _inductor.is_python_frame(p.name):
        p = p.cpu_parent
    return p


def _children(events) -> dict:
    kids: dict[int, list] = {}
    for e in events:
        p = _parent(e)
        if p is not None:
            kids.setdefault(id(p), []).append(e)
    for v in kids.values():
        v.sort(key=lambda e: e.time_range.start)
    return kids


def _ancestors(e):
    p = _parent(e)
    while p is not None:
        yield p
        p = _parent(p)


def compile_ranges(events) -> list[tuple]:
    """(start_us, end_us, thread) of every compile that ran inside the profile (outermost ranges)."""
    out = []
    for e in events:
        if _inductor.is_compile_range(e.name) and not any(_inductor.is_compile_range(a.name) for a in _ancestors(e)):
            out.append((e.time_range.start, e.time_range.end, e.thread))
    return out


def probe_ranges(events) -> list[tuple]:
    """(start_us, end_us, thread) of graphmfu's own per-call probes (outermost ranges)."""
    return [(e.time_range.start, e.time_range.end, e.thread) for e in events
            if e.name == _inductor.PROBE_RANGE and not any(a.name == _inductor.PROBE_RANGE for a in _ancestors(e))]


def _in_compile(e, ranges) -> bool:
    t = e.time_range.start
    return any(s <= t <= end and thread == e.thread for s, end, thread in ranges)


@functools.lru_cache(maxsize=None)
def site_name(name: str) -> str:
    """A profiled C++ kernel is ``graph_<id>_<kernel>``: its site name is the kernel's."""
    m = re.match(r"^graph_\d+_(.+)$", name)
    return m.group(1) if m else name


def _is_cpp_kernel(name: str) -> bool:
    return site_name(name) != name


def _is_cpp_template(name: str) -> bool:
    """A C++ template kernel's profile name (``graph_0_kernel``, ``graph_0_<prefix>_kernel``)."""
    return _is_cpp_kernel(name) and (site_name(name) == "kernel" or site_name(name).endswith("_kernel"))


def stage_ranges(events) -> list[dict]:
    """Every ``graphmfu.stage`` occurrence: name (``a/b`` when nested), CPU start/end, and the CPU time inside
    graphmfu's graph calls (``in_calls_us``: the host's time in compiled code; the rest of the span is Python
    between the calls, eager ops, graph breaks' returns to Python)."""
    calls = sorted((e.time_range.start, e.time_range.end) for e in events if e.name.startswith(_inductor.CALL_RANGE))
    starts = [a for a, _ in calls]
    syncs = sorted(e.time_range.start for e in events if e.name in timeline.SYNCS)
    out = []
    for e in events:
        if not e.name.startswith(STAGE_RANGE):
            continue
        a, b = e.time_range.start, e.time_range.end
        inside = [(x, min(y, b)) for x, y in calls[bisect.bisect_left(starts, a):bisect.bisect_right(starts, b)]]
        out.append({"name": e.name[len(STAGE_RANGE):], "start_us": a, "end_us": b, "in_calls_us": busy_us(inside),
                    "syncs": bisect.bisect_right(syncs, b) - bisect.bisect_left(syncs, a)})
    return out


def gpu_kernels(prof, events) -> list[Measured]:
    """The GPU kernels of the session, each with the CPU op that launched it (CUPTI correlation)."""
    op_by_corr = {e.id: e for e in events if not _RUNTIME.match(e.name)}
    runtime = {e.id: e for e in events if _RUNTIME.match(e.name)}  # cudaLaunchKernel, cudaGraphLaunch ...
    out = []
    for name, start, end, linked in _inductor.device_kernels(prof, op_by_corr):
        if name.startswith("graphmfu::"):
            continue  # GPU-side copies of our own ranges
        op = op_by_corr.get(linked)
        launch = op if op is not None else runtime.get(linked)  # a CUDA-graph replay: the launch call itself
        out.append(Measured(name, start, end, op.name if op else "",
                            launch.time_range.start if launch is not None else None, op=op, linked=linked,
                            launch=launch))
    return launch_order(out)


def launch_order(measured: list[Measured]) -> list[Measured]:
    """Give kernels whose launch the profile lacks (no op, no runtime call) a launch time: on a stream
    kernels run in launch order, so such a kernel was launched before the next kernel on the device was
    and before it started itself — the earlier of the two.  Its start alone would not do: in a loop that
    runs ahead of the device, later steps are being launched by then, and the kernel would land in a
    later step's stage (one 31.5 ms training step spanned 117.9 ms on an H200)."""
    upper = float("inf")
    for m in sorted(measured, key=lambda m: m.start_us, reverse=True):
        if m.launch_start_us is None:
            m.launch_start_us = min(m.start_us, upper)
        else:
            upper = min(upper, m.launch_start_us)
    return measured


# --------------------------------------------------------------------------- calls and matching


def _calls(events, kids, graphs: list[GraphRecord], stages: list[dict]) -> list[_Call]:
    calls = []
    by_key = {g.key: g for g in graphs if g.source != "eager"}
    count: dict[int, int] = {}
    for e in sorted((e for e in events if e.name.startswith(_inductor.CALL_RANGE)), key=lambda e: e.time_range.start):
        key, sizes = _inductor.parse_call_range(e.name)
        g = by_key.get(key)
        if g is None:
            continue
        inner = [c for c in kids.get(id(e), []) if c.name.startswith(INDUCTOR_CALL)]
        parent = inner[0] if inner else e
        k = count[g.id] = count.get(g.id, -1) + 1
        calls.append(_Call(g, k, kids.get(id(parent), []), False, parent, g.device == "cpu", sizes))
    eager = {g.stage: g for g in graphs if g.source == "eager"}
    if eager:
        aten = sorted((e for e in events if e.name.startswith(OP_EVENTS)), key=lambda e: e.time_range.start)
        starts = [e.time_range.start for e in aten]
        occ = sorted((s for s in stages if s["name"] in eager), key=lambda s: s["start_us"])
        for k, s in enumerate(occ):
            g = eager[s["name"]]
            sites = aten[bisect.bisect_left(starts, s["start_us"]):bisect.bisect_right(starts, s["end_us"])]
            calls.append(_Call(g, k, sites, True, None, g.device == "cpu"))
    return calls


def _match(call: _Call) -> dict:
    """Ordered match of a call's sites to its graph's kernels: id(site event) -> kernel.  Each site
    takes the next kernel (in launch order) with its name; sites matching none (allocations, composite
    ops, internals) are passed over."""
    expected = call.graph.kernels
    out: dict[int, object] = {}
    pos, busy_until = 0, float("-inf")
    present = None
    for e in call.sites:
        if call.nested and e.time_range.start < busy_until:
            continue  # inside the previous match: that op's own internals
        name = site_name(e.name)
        j = pos
        while j < len(expected) and expected[j].site != name:
            j += 1
        if j == len(expected) and _is_cpp_template(e.name):
            # a C++ template (CPU flex attention, a max-autotune GEMM) profiles as graph_<id>_[<prefix>_]kernel,
            # not under the name Inductor gave it: the next kernel in order whose own name no site carries
            if present is None:
                present = {site_name(x.name) for x in call.sites}
            j = pos
            while j < len(expected) and (expected[j].extern or expected[j].site in present):
                j += 1
        if j < len(expected):
            out[id(e)] = expected[j]
            pos = j + 1
            busy_until = e.time_range.end
    return out


# --------------------------------------------------------------------------- the join


def join(prof, graphs: list[GraphRecord], cuda: bool) -> tuple[list[Measured], list[dict], list[str]]:
    """Join the measured kernels of ``prof`` to ``graphs``.  Returns (measured, stage ranges, notes)."""
    events = cpu_events(prof)
    compiles = compile_ranges(events)
    notes: list[str] = []
    if compiles:  # ops traced on fake tensors, autotuning benchmarks: the compile, not the model
        events = [e for e in events if not _in_compile(e, compiles) or _inductor.is_compile_range(e.name)]
        secs = sum(e - s for s, e, _ in compiles) * 1e-6
        notes.append(f"{len(compiles)} compile(s) ran inside the profile ({secs:.3g} s): their ops and kernels "
                     f"are excluded from kernels, time attribution and stage spans")
    probes = probe_ranges(events)
    if probes:  # graphmfu's own work (input-dependent masks counted per call): not the model's
        events = [e for e in events if not _in_compile(e, probes) or e.name == _inductor.PROBE_RANGE]
        secs = sum(e - s for s, e, _ in probes) * 1e-6
        notes.append(f"graphmfu counted input-dependent attention masks per call ({len(probes)} probe(s), "
                     f"{secs:.3g} s on the CPU): their ops and kernels are graphmfu's overhead, left out of "
                     f"kernels and time attribution")
    kids = _children(events)
    stages = stage_ranges(events)
    calls = _calls(events, kids, graphs, stages)
    matched: dict[int, tuple] = {}  # id(site event) -> (call, kernel)
    ranges = {id(c.range): c for c in calls if c.range is not None}
    for c in calls:
        m = _match(c)
        matched.update({k: (c, kern) for k, kern in m.items()})
        missed = len(c.graph.kernels) - len(m)
        if c.nested and missed:
            _note(notes, f"eager stage {c.graph.stage!r}: {missed} recorded op(s) not found in the profile "
                         f"(the op sequence changed between the recorded and the timed call)")
    measured = gpu_kernels(prof, events) if cuda else []
    if compiles or probes:
        # a kernel with no launching op (the profiler's first launches: graphmfu's warm-up) is graphmfu's when it
        # ran inside a probe range (the range waits for its kernels)
        measured = [m for m in measured if (not _in_compile(m.op, compiles + probes) if m.op is not None
                                            else not any(s <= m.start_us <= e for s, e, _ in probes))]
    replays: dict[int, list] = {}
    for m in measured:
        for a in ([m.op, *_ancestors(m.op)] if m.op is not None else []):
            hit = matched.get(id(a))
            if hit is not None:
                _assign(m, hit[0], hit[1], "op" if hit[1].extern else "name")
                break
            if id(a) in ranges:  # CUDA graph replay: launched by the call itself
                replays.setdefault(id(a), []).append(m)
                break
    for rid, ms in replays.items():
        _join_by_order(sorted(ms, key=lambda m: m.start_us), ranges[rid], notes)
    measured += _cpu_kernels(events, calls, matched, cpu_only=not measured)
    measured += _foreign(events, measured, cuda)
    for m in measured:
        if not m.where:
            inside = m.op is not None and any(a.name.startswith(INDUCTOR_CALL) for a in [m.op, *_ancestors(m.op)])
            m.where = "inside graph" if inside or m.graph is not None else "outside graphs"
    if any(not c.nested for c in calls) and not any(m.graph is not None for m in measured):
        notes.append("graph calls were profiled but no kernel could be joined")
    for s in stages:  # compiles inside a stage occurrence are not part of its span
        s["compiles"] = [(max(a, s["start_us"]), min(b, s["end_us"])) for a, b, _ in compiles
                         if a < s["end_us"] and b > s["start_us"]]
    return measured, stages, notes


def _foreign(events, measured: list[Measured], cuda: bool) -> list[Measured]:
    """Mark the kernels of graphs graphmfu did not compile (``FOREIGN``): launched inside an Inductor call range
    that no ``graphmfu::graph`` range encloses, or replayed by a CUDA graph launched outside every compiled call.
    On the CPU a foreign graph's C++ kernels are not profiled (Inductor names them only with its kernel
    profiling, which graphmfu turns on for its own graphs): each foreign call is one entry, its range's time."""
    def compiled(e) -> bool:
        return any(a.name.startswith((INDUCTOR_CALL, _inductor.CALL_RANGE)) for a in [e, *_ancestors(e)])

    foreign = {id(e): e for e in events if e.name.startswith(INDUCTOR_CALL)
               and not any(a.name.startswith((_inductor.CALL_RANGE, INDUCTOR_CALL)) for a in _ancestors(e))}
    hit: set = set()
    for m in measured:
        if m.graph is not None:
            continue
        src = m.op if m.op is not None else m.launch
        if src is None:
            continue
        chain = [src, *_ancestors(src)]
        inside = next((a for a in chain if id(a) in foreign), None)
        if inside is not None:
            m.where = FOREIGN
            hit.add(id(inside))
        elif m.op is None and src.name.startswith("cudaGraphLaunch") and not compiled(src):
            m.where = FOREIGN
    if cuda:
        return []
    return [Measured(e.name.strip("# "), e.time_range.start, e.time_range.end, e.name, e.time_range.start,
                     where=FOREIGN, op=e) for i, e in foreign.items() if i not in hit]


def _overlap(start: float, end: float, ranges) -> float:
    """Time of ``ranges`` (union) inside [start, end]."""
    return busy_us([(max(s, start), min(e, end)) for s, e, _ in ranges if s < end and e > start])


def _note(notes: list, note: str) -> None:
    if note not in notes:
        notes.append(note)


def _assign(m: Measured, call: _Call, kernel, how: str) -> None:
    m.graph, m.kernel, m.call, m.how, m.sizes = call.graph.id, kernel.index, call.index, how, call.sizes


def _cpu_kernels(events, calls, matched, cpu_only: bool) -> list[Measured]:
    """Kernels timed on the CPU: C++ kernel events and matched extern/eager op events of CPU graphs;
    unmatched launch sites inside CPU graph calls; and, when no GPU kernel ran at all, the outermost
    ATen ops outside every call (eager work around the graphs).  Views and ops that launch no kernel
    of their own are never kernels; an op enclosing a matched site is a wrapper, not a kernel."""
    in_eager_call = {id(e): c for c in calls if c.nested for e in c.sites}
    cpu_ranges = {id(c.range) for c in calls if c.cpu and c.range is not None}
    enclosing = set()  # ops with a matched site inside them
    site_events = {id(e): e for c in calls for e in c.sites}
    for sid in matched:
        e = site_events.get(sid)
        if e is not None:
            enclosing.update(id(a) for a in _ancestors(e))
    out: list[Measured] = []
    taken: set = set()
    for e in sorted(events, key=lambda e: e.time_range.start):
        hit = matched.get(id(e))
        cpp = _is_cpp_kernel(e.name)
        if not cpp and not e.name.startswith(OP_EVENTS):
            continue
        info = REGISTRY.info(e.name)
        if hit is not None:
            call, kernel = hit
            if call.cpu and not info.no_kernel:
                m = _measured(e, "inside graph")
                _assign(m, call, kernel, "op" if kernel.extern else "name")
                out.append(m)
                taken.add(id(e))
            continue
        if info.view or id(e) in enclosing or any(id(a) in taken or id(a) in matched for a in _ancestors(e)):
            continue
        parent = _parent(e)
        if parent is not None and parent.name.startswith(INDUCTOR_CALL):  # an unmatched launch site
            if id(parent) in cpu_ranges:
                out.append(_measured(e, "inside graph"))
                taken.add(id(e))
            continue
        if cpp:
            out.append(_measured(e, "inside graph"))
            taken.add(id(e))
            continue
        if any(a.name.startswith((INDUCTOR_CALL, "graph_")) for a in _ancestors(e)):
            continue
        eager = in_eager_call.get(id(e))
        if eager is not None:
            if eager.cpu and not info.no_kernel:  # an op the recording did not see: listed
                out.append(_measured(e, "outside graphs"))
                taken.add(id(e))
            continue
        if cpu_only and not any(a.name.startswith(OP_EVENTS) for a in _ancestors(e)):
            out.append(_measured(e, "outside graphs"))
            taken.add(id(e))
    return out


def _measured(e, where: str = "") -> Measured:
    return Measured(e.name, e.time_range.start, e.time_range.end, e.name, e.time_range.start, where=where, op=e)


def _join_by_order(kernels: list[Measured], call: _Call, notes: list) -> None:
    """CUDA graph replay: Triton kernels anchor by name; GPU kernels between anchors go to externs."""
    g = call.graph
    expected = g.kernels
    pos = 0
    pending: list[Measured] = []

    def flush(ext):
        if not pending:
            return
        if len(ext) == len(pending):
            pairs = list(zip(ext, pending))
        elif len(ext) == 1:
            pairs = [(ext[0], m) for m in pending]
        elif ext:
            pairs = [(ext[min(i, len(ext) - 1)], m) for i, m in enumerate(pending)]
            _note(notes, f"graph {g.id}: {len(pending)} GPU kernels replayed for {len(ext)} extern kernels "
                         f"({', '.join(e.name for e in ext)}); joined by order only")
        else:
            pairs = []
        for e, m in pairs:
            _assign(m, call, e, "order")
        pending.clear()

    for m in kernels:
        j = pos
        while j < len(expected) and not (not expected[j].extern and expected[j].name == m.name):
            j += 1
        if j < len(expected):
            flush([e for e in expected[pos:j] if e.extern])
            _assign(m, call, expected[j], "order")
            pos = j + 1
        else:
            pending.append(m)
    flush([e for e in expected[pos:] if e.extern])


# --------------------------------------------------------------------------- per-event attribution


def event_keys(measured: list[Measured]) -> dict[tuple, Measured]:
    """Each measured kernel under the key that names its event in the profiler's exported trace.

    A device kernel is ``("device", linked id, name, n)``: the profiler id of the CPU op that launched
    it (the trace's ``"External id"`` of the kernel event), its name and its place among that op's
    kernels of that name in start order (a CUDA-graph launch replays many kernels from one op).  A
    kernel timed on the CPU is its own CPU event: ``("host", id, name, 0)`` (the event's ``"External
    id"``).  Which (graph, kernel, call, sizes) each one is stays on the ``Measured``."""
    out: dict[tuple, Measured] = {}
    seen: dict[tuple, int] = {}
    for m in sorted(measured, key=lambda m: m.start_us):
        if m.linked is not None:
            base = ("device", m.linked, m.name)
        elif m.op is not None and m.op.name == m.name:
            base = ("host", m.op.id, m.name)
        else:
            continue
        n = seen[base] = seen.get(base, -1) + 1
        out[(*base, n)] = m
    return out


def site_groups(measured: list[Measured]) -> dict[tuple, list[Measured]]:
    """Joined kernels per call of a graph kernel (``(graph, kernel, call)``), in start order: a launch
    site can run several device kernels (a split-K GEMM and its reduce, attention and its reduction)."""
    out: dict[tuple, list] = {}
    for m in sorted((m for m in measured if m.graph is not None), key=lambda m: m.start_us):
        out.setdefault((m.graph, m.kernel, m.call), []).append(m)
    return out


# --------------------------------------------------------------------------- aggregation


def stage_of(m: Measured, stages: list[dict]) -> str | None:
    """Innermost stage whose CPU range contains the kernel's launch."""
    best = None
    for s in stages:
        if s["start_us"] <= m.launch_start_us <= s["end_us"]:
            if best is None or s["end_us"] - s["start_us"] < best["end_us"] - best["start_us"]:
                best = s
    return best["name"] if best else None


def busy_us(intervals) -> float:
    """Length of the union of [start, end] intervals."""
    total, cur_s, cur_e = 0.0, None, None
    for s, e in sorted(intervals):
        if cur_e is None or s > cur_e:
            if cur_e is not None:
                total += cur_e - cur_s
            cur_s, cur_e = s, e
        else:
            cur_e = max(cur_e, e)
    if cur_e is not None:
        total += cur_e - cur_s
    return total


def _in_stage(stage: str | None, name: str) -> bool:
    return bool(stage) and (stage == name or stage.startswith(name + "/"))


def _stage_rows(measured: list[Measured], stages: list[dict], keep: list | None = None) -> list[dict]:
    """Per stage name (inclusive of nested stages): calls, device span, busy time, launches.

    Span and busy are taken per occurrence of the stage (a repeated stage interleaved with another
    must not span the other's time) and summed.  A call's span starts when the device could start it,
    as a CUDA event recorded at the stage start measures: when the device was still running earlier work
    at the stage's CPU start, at the end of the work that started before the stage's first kernel (device
    order, not launch times: those are CPU clock readings); when it was idle (``profile()`` synchronises
    before it starts), the CPU's time from the stage start to its first kernel's launch before that
    kernel's start on the device: the leading launch gap is idle time of the stage, but the launch
    latency and any offset between the CPU and GPU clocks are not (an H200 prefill of 10 calls in one
    stage: the CPU start put the span 3.2% above CUDA events inside the stage).

    ``keep``: a one-element list, how many more launches may be stored: each occurrence's launch timeline
    (``timeline.occurrence``) goes on the row (``timelines``) while they last, then ``keep[0]`` is set to -1
    (the caller keeps none); None: none stored."""
    by_start = sorted(measured, key=lambda m: m.start_us)  # device order: what ran before a stage's first kernel
    starts = [m.start_us for m in by_start]
    prefix_end, cur = [], float("-inf")
    for m in by_start:
        cur = max(cur, m.end_us)
        prefix_end.append(cur)
    rows = []
    for name in sorted({s["name"] for s in stages}):
        ms = [m for m in measured if _in_stage(m.stage, name)]
        span = busy = 0.0
        lines = []  # the occurrences' launch timelines (timeline.occurrence)
        for occ in (s for s in stages if s["name"] == name):
            inside = [m for m in ms if occ["start_us"] <= m.launch_start_us <= occ["end_us"]]
            spans = [(m.start_us, m.end_us) for m in inside]
            if not spans and keep is not None:
                lines.append(timeline.occurrence([], 0.0, 0.0, 0.0))
            if spans:
                lead = min(inside, key=lambda m: m.start_us)
                first = lead.start_us
                i = bisect.bisect_left(starts, first)  # the device work that started before the stage's first
                free = prefix_end[i - 1] if i else occ["start_us"]  # profile() starts on an idle device
                if free > occ["start_us"]:  # the device was busy at the stage's start: it starts when free
                    start = min(first, free)
                else:  # idle: the stage starts on the device as the CPU's time to the first launch before it
                    start = first - max(0.0, min(lead.launch_start_us, first) - occ["start_us"])
                end = max(e for _, e in spans)
                compiling = _overlap(start, end, [(a, b, None) for a, b in occ.get("compiles", ())])
                span += (end - start - compiling) * 1e-6
                b_us = busy_us(spans)
                busy += b_us * 1e-6
                if keep is not None and keep[0] >= len(inside):
                    keep[0] -= len(inside)
                    lines.append(timeline.occurrence(inside, first - start, end - start - compiling, b_us,
                                                     occ.get("syncs", 0), bool(compiling)))
                elif keep is not None:
                    keep[0] = -1  # over the limit: the caller keeps none
        occs = [s for s in stages if s["name"] == name]
        rows.append({"name": name, "calls": len(occs), "span_s": span, "busy_s": busy, "launches": len(ms),
                     "host_s": sum(s["end_us"] - s["start_us"] for s in occs) * 1e-6,
                     "host_in_graphs_s": sum(s.get("in_calls_us", 0.0) for s in occs) * 1e-6, "timelines": lines})
    return rows


def timing(traces: list[tuple], notes: list[str], cuda: bool) -> Timing:
    """Aggregate joined traces (``(measured, stage ranges)`` each, in its own time base) into the
    record's ``Timing``: what was measured, nothing derived."""
    rows: dict = {}
    other: dict = {}
    stage_rows: dict = {}
    timelines: dict = {}
    keep = [timeline.MAX_LAUNCHES] if cuda else None  # CPU runs: predict() does not replay them
    total = attributed = foreign = 0.0
    for measured, stages in traces:
        first: dict = {}  # (graph, call) -> its earliest-launched kernel: one call, one stage
        for m in measured:
            if m.graph is not None:
                k = (m.graph, m.call)
                if k not in first or m.launch_start_us < first[k].launch_start_us:
                    first[k] = m
        call_stage = {k: stage_of(m, stages) for k, m in first.items()}
        for m in measured:
            m.stage = call_stage[(m.graph, m.call)] if m.graph is not None else stage_of(m, stages)
            total += m.time_s
            if m.graph is None:
                foreign += m.time_s if m.where == FOREIGN else 0.0
                o = other.setdefault((m.name, m.where, m.launch_op, m.stage),
                                     {"name": m.name, "where": m.where, "launch_op": m.launch_op, "stage": m.stage,
                                      "count": 0, "time_s": 0.0})
                o["count"] += 1
                o["time_s"] += m.time_s
                continue
            attributed += m.time_s
            sizes = tuple(sorted(m.sizes.items())) if m.sizes else None
            r = rows.setdefault((m.graph, m.kernel, m.stage, sizes),
                                {"graph": m.graph, "kernel": m.kernel, "stage": m.stage, "sizes": m.sizes,
                                 "calls": set(), "launches": 0, "time_s": 0.0, "gpu_kernels": [],
                                 "joined_by": set()})
            r["time_s"] += m.time_s
            r["launches"] += 1
            r["calls"].add(m.call)
            r["joined_by"].add(m.how)
            if m.name not in r["gpu_kernels"]:
                r["gpu_kernels"].append(m.name)
        for row in _stage_rows(measured, stages, keep):
            timelines.setdefault(row["name"], []).extend(row.pop("timelines"))
            acc = stage_rows.setdefault(row["name"], {"name": row["name"], "calls": 0, "span_s": 0.0, "busy_s": 0.0,
                                                      "launches": 0, "host_s": 0.0, "host_in_graphs_s": 0.0})
            for k in ("calls", "span_s", "busy_s", "launches", "host_s", "host_in_graphs_s"):
                acc[k] += row[k]
    launches = [{**r, "calls": len(r["calls"]), "joined_by": sorted(r["joined_by"])} for r in rows.values()]
    if keep is None or keep[0] < 0:  # a CPU run, or too long a profile to keep every launch: predict() says so
        timelines = {}
    return Timing(cuda=cuda, launches=launches, stages=sorted(stage_rows.values(), key=lambda r: r["name"]),
                  unattributed=list(other.values()), device_kernel_time_s=total, attributed_time_s=attributed,
                  notes=list(notes), foreign_time_s=foreign, timelines=timelines)


__all__ = ["Measured", "join", "timing", "launch_order", "stage_of", "busy_us", "cpu_events", "stage_ranges", "gpu_kernels",
           "event_keys", "site_groups", "STAGE_RANGE", "INDUCTOR_CALL", "FOREIGN"]
