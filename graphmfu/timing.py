"""Stages, the profiler session, and the join of measured kernels to the kernel map.

``graphmfu.stage(name)`` opens an NVTX range (for nsys/ncu filtering) and a profiler range
``graphmfu::stage <name>``.  ``graphmfu.profile()`` runs the PyTorch profiler (CUPTI on CUDA; on
CPU, Inductor's C++ kernel profiling) and, in ``.report()``, joins every measured kernel to the
kernel map:

* each call of a graphmfu-compiled graph is a ``graphmfu::graph <id>`` range (so graphs are told
  apart even though kernel names repeat across graphs);
* inside a call, the launch sites (direct children of Inductor's ``## Call CompiledFxGraph`` range)
  are matched in order to the graph's kernel list: a Triton/C++ kernel by its exact name, an extern
  kernel by its ATen op (``extern_kernels.mm`` <-> ``aten::mm``);
* on CUDA each launch site's GPU kernels come from CUPTI's launch correlation
  (``linked_correlation_id``), with their device timestamps; a cuBLAS GEMM with a split-K reduce is
  one extern kernel with two GPU kernels;
* under CUDA graphs (``mode="reduce-overhead"``) a graph call is one ``cudaGraphLaunch``: its GPU
  kernels are joined by order — Triton kernels anchor by name, the GPU kernels between two anchors
  go to the extern kernels between them (1:1 when counts agree, else all to a single extern, else
  the group is reported as joined by order only);
* GPU kernels outside compiled graphs are listed as "outside graphs" with the ATen op that launched
  them.

A kernel belongs to the innermost stage whose CPU range contains its launch (any thread, so the
autograd engine's backward thread counts too), and rolls up into enclosing stages once.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import re
import threading

import torch

from graphmfu import _inductor
from graphmfu.errors import GraphMFUError
from graphmfu.kernels import extern_op_name

STAGE_RANGE = "graphmfu::stage "
INDUCTOR_CALL = "## Call CompiledFxGraph"  # Inductor's profiler range around each compiled-graph call
_local = threading.local()
_IGNORED_OPS = re.compile(r"^(aten::(empty|empty_strided|as_strided|view|reshape|resize_|set_|detach|alias|"
                          r"_reshape_alias|lift_fresh|unsqueeze|squeeze|t|permute|transpose|expand|slice|select)"
                          r"$|cuda|cu[A-Z]|Activity Buffer|Torch-Compiled|## )")


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
        if torch.cuda.is_available():
            torch.cuda.nvtx.range_push(self.name)
        self._rf = torch.profiler.record_function(STAGE_RANGE + "/".join(_stack()))
        self._rf.__enter__()
        return self

    def _recreate_cm(self):  # each decorated call (recursion, threads) gets its own range
        return stage(self.name)

    def __exit__(self, *exc):
        self._rf.__exit__(*exc)
        if torch.cuda.is_available():
            torch.cuda.nvtx.range_pop()
        st = _stack()
        if st and st[-1] == self.name:
            st.pop()
        return False


def open_stages() -> list[str]:
    return list(_stack())


# --------------------------------------------------------------------------- measured events


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
    where: str = ""  # "inside graph" | "outside graphs"
    stage: str | None = None  # innermost stage (set when the report is built)
    op: object = dataclasses.field(default=None, repr=False, compare=False)  # launching CPU FunctionEvent
    site: object = dataclasses.field(default=None, repr=False, compare=False)  # its launch site in a graph call

    @property
    def time_s(self) -> float:
        return (self.end_us - self.start_us) * 1e-6


def _children(events):
    kids: dict[int, list] = {}
    for e in events:
        p = e.cpu_parent
        if p is not None:
            kids.setdefault(id(p), []).append(e)
    for v in kids.values():
        v.sort(key=lambda e: e.time_range.start)
    return kids


def _ancestors(e):
    p = e.cpu_parent
    while p is not None:
        yield p
        p = p.cpu_parent


@functools.lru_cache(maxsize=None)
def _cpp_kernel(name: str):
    m = re.match(r"^graph_\d+_(.+)$", name)
    return m.group(1) if m else None


def _launch_sites(call, kids):
    """Direct children of Inductor's call range inside a graphmfu call range (or of the range itself)."""
    inner = [c for c in kids.get(id(call), []) if c.name.startswith(INDUCTOR_CALL)]
    parent = inner[0] if inner else call
    return parent, kids.get(id(parent), [])


def _graph_of(e):
    """The graphmfu graph id whose call range encloses CPU event ``e`` (or None)."""
    for a in _ancestors(e):
        if a.name.startswith(_inductor.CALL_RANGE):
            return int(a.name[len(_inductor.CALL_RANGE):])
    return None


def cpu_events(prof) -> list:
    """The CPU-side events (ops, ranges) of a finished torch.profiler session."""
    return [e for e in prof.events() if getattr(e.device_type, "name", str(e.device_type)) == "CPU"]


def stage_ranges(events) -> list[dict]:
    """Every ``graphmfu.stage`` occurrence: name (``a/b`` when nested) and CPU start/end."""
    return [{"name": e.name[len(STAGE_RANGE):], "start_us": e.time_range.start, "end_us": e.time_range.end}
            for e in events if e.name.startswith(STAGE_RANGE)]


def gpu_kernels(prof, events) -> list[Measured]:
    """The GPU kernels of the session, each with the CPU op that launched it (CUPTI correlation)."""
    op_by_corr = {e.id: e for e in events if not re.match(r"^(cuda|cu[A-Z])", e.name)}
    out = []
    for name, start, end, linked in _inductor.device_kernels(prof, op_by_corr):
        if name.startswith("graphmfu::"):
            continue  # GPU-side copies of our own ranges
        op = op_by_corr.get(linked)
        out.append(Measured(name, start, end, op.name if op else "", op.time_range.start if op else start, op=op))
    return out


def collect(prof, cuda: bool, cpu_graphs: set | None = None):
    """(cpu events, measured kernels, graph calls) from a finished torch.profiler session.

    GPU kernels come from CUPTI; kernels of CPU graphs (``cpu_graphs``: ids of graphs whose tensors
    live on the CPU) are their C++ kernel / extern op events, timed on the CPU — also when CUDA is
    being profiled, so a CPU model profiled on a GPU machine is still joined."""
    events = cpu_events(prof)
    kids = _children(events)
    calls = [e for e in events if e.name.startswith(_inductor.CALL_RANGE)]
    measured: list[Measured] = gpu_kernels(prof, events) if cuda else []
    cpu_graphs = cpu_graphs or set()
    eager_cpu = not cuda or not measured  # no GPU work at all: eager CPU ops are the kernels
    for e in events:
        if _cpp_kernel(e.name):
            pass
        elif not e.name.startswith("aten::") or _IGNORED_OPS.match(e.name):
            continue
        elif _in_call(e):
            if cuda and _graph_of(e) not in cpu_graphs:
                continue  # a CUDA graph's extern op: its GPU kernels are measured instead
        elif not (eager_cpu and _top_level_op(e)):
            continue
        measured.append(Measured(e.name, e.time_range.start, e.time_range.end, e.name, e.time_range.start, op=e))
    return events, kids, calls, measured


def _top_level_op(e) -> bool:
    """An eager ATen op outside compiled graphs, not nested in another ATen op (CPU: its own time)."""
    return not any(a.name.startswith(("aten::", INDUCTOR_CALL, "graph_")) for a in _ancestors(e))


def _in_call(e) -> bool:
    """A CPU op that is a launch site: a direct child of Inductor's call range."""
    p = e.cpu_parent
    return p is not None and p.name.startswith(INDUCTOR_CALL)


def join(prof, graphs: dict, cuda: bool) -> tuple[list[Measured], list[dict], list[str]]:
    """Join measured kernels to ``graphs`` (id -> GraphRecord).  Returns (measured, stage ranges, notes)."""
    events, kids, calls, measured = collect(prof, cuda, {gid for gid, g in graphs.items() if g.device == "cpu"})
    notes: list[str] = []
    by_op: dict[int, list[Measured]] = {}
    for m in measured:
        op = m.op
        if op is None:
            continue
        # map each measured kernel to its launch site: the op directly under Inductor's call range
        site = op
        for a in [op, *_ancestors(op)]:
            if a.cpu_parent is not None and a.cpu_parent.name.startswith(INDUCTOR_CALL):
                site = a
                break
            if a.name.startswith(INDUCTOR_CALL):
                site = a  # CUDA graph replay: the launch is the call itself
                break
        m.site = site
        by_op.setdefault(id(site), []).append(m)
    ncalls: dict[int, int] = {}
    for call in sorted(calls, key=lambda e: e.time_range.start):
        gid = int(call.name[len(_inductor.CALL_RANGE):])
        g = graphs.get(gid)
        if g is None:
            continue
        k = ncalls.get(gid, 0)
        ncalls[gid] = k + 1
        parent, sites = _launch_sites(call, kids)
        replay = by_op.get(id(parent), [])
        if replay:
            _join_by_order(sorted(replay, key=lambda m: m.start_us), g, k, notes)
        _join_sites(sites, by_op, g, k)
    for m in measured:
        if m.graph is None:
            inside = m.op is not None and any(a.name.startswith(INDUCTOR_CALL)
                                              for a in [m.op, *_ancestors(m.op)])
            m.where = "inside graph" if inside else "outside graphs"
        else:
            m.where = "inside graph"
    stages = stage_ranges(events)
    if calls and not any(m.graph is not None for m in measured):
        notes.append("graph calls were profiled but no kernel could be joined")
    return measured, stages, notes


def _join_sites(sites, by_op, g, call_index) -> None:
    expected = g.kernels
    i = 0
    for site in sites:
        ms = by_op.get(id(site), [])
        if not ms:
            continue
        name = site.name
        j = i
        while j < len(expected):
            e = expected[j]
            if (not e.extern and (name == e.name or _cpp_kernel(name) == e.name)) or \
                    (e.extern and name == extern_op_name(e.name)):
                break
            j += 1
        if j == len(expected):
            continue  # an op Inductor did not list as a kernel (e.g. a copy): left unattributed
        for m in ms:
            m.graph, m.kernel, m.call, m.how = g.id, expected[j].index, call_index, ("op" if expected[j].extern else "name")
        i = j + 1


def _join_by_order(kernels: list[Measured], g, call_index, notes) -> None:
    """CUDA graph replay: Triton kernels anchor by name; GPU kernels between anchors go to externs."""
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
            note = (f"graph {g.id}: {len(pending)} GPU kernels replayed for {len(ext)} extern kernels "
                    f"({', '.join(e.name for e in ext)}); joined by order only")
            if note not in notes:
                notes.append(note)
        else:
            pairs = []
        for e, m in pairs:
            m.graph, m.kernel, m.call, m.how = g.id, e.index, call_index, "order"
        pending.clear()

    for m in kernels:
        j = pos
        while j < len(expected) and not (not expected[j].extern and expected[j].name == m.name):
            j += 1
        if j < len(expected):
            flush([e for e in expected[pos:j] if e.extern])
            m.graph, m.kernel, m.call, m.how = g.id, expected[j].index, call_index, "order"
            pos = j + 1
        else:
            pending.append(m)
    flush([e for e in expected[pos:] if e.extern])


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


# --------------------------------------------------------------------------- the session


class ProfileSession:
    """``with graphmfu.profile() as p: ...`` then ``p.report()``."""

    _active = None

    def __init__(self, registry=None, cuda: bool | None = None, **profiler_kwargs):
        from graphmfu.capture import GRAPHS

        self.registry = registry or GRAPHS
        self.cuda = torch.cuda.is_available() if cuda is None else cuda
        self.profiler_kwargs = profiler_kwargs
        self.prof = None
        self._report = None

    def __enter__(self):
        if ProfileSession._active is not None:
            raise GraphMFUError("graphmfu.profile() is already running; nest stages, not profiles")
        from torch.profiler import ProfilerActivity, profile

        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if self.cuda else [])
        self.prof = profile(activities=acts, **self.profiler_kwargs)
        if self.cuda:
            torch.cuda.synchronize()
        _inductor.set_call_tags(True)
        ProfileSession._active = self
        self.prof.__enter__()
        return self

    def __exit__(self, exc_type, exc, tb):
        try:
            if self.cuda:
                torch.cuda.synchronize()
        finally:
            self.prof.__exit__(exc_type, exc, tb)
            _inductor.set_call_tags(False)
            ProfileSession._active = None
        left = open_stages()
        if left and exc_type is None:
            _stack().clear()
            raise GraphMFUError(f"stage {left[-1]!r} was left open when graphmfu.profile() ended; close it "
                                f"(use 'with graphmfu.stage(...)') inside the profiled block")
        return False

    def report(self, device=None):
        """The Report of the graphs compiled so far, with every kernel of this session timed."""
        if self.prof is None:
            raise GraphMFUError("profile().report() called before the profiled block ran; use "
                                "'with graphmfu.profile() as p: ...' then p.report()")
        from graphmfu import _device_for
        from graphmfu.report import build

        graphs = {g.id: g for g in self.registry.graphs}
        measured, stages, notes = join(self.prof, graphs, self.cuda)
        ran = {m.graph for m in measured if m.graph is not None}
        if not ran:
            compiled_calls = any(e.name.startswith(INDUCTOR_CALL) for e in self.prof.events())
            if compiled_calls:
                raise GraphMFUError("the profiled model was compiled without graphmfu's backend: use "
                                    "torch.compile(model, backend=graphmfu.backend)")
            raise GraphMFUError("no graphmfu-compiled graph ran inside graphmfu.profile(); compile with "
                                "backend=graphmfu.backend, run it once to compile, then run it inside the block")
        return build(list(graphs.values()), _device_for(graphs.values(), device), self.registry.failures,
                     timing={"measured": measured, "stages": stages, "notes": notes, "cuda": self.cuda})


def profile(**profiler_kwargs) -> ProfileSession:
    """Profile the block; ``.report()`` returns the Report with measured kernels, modules and stages."""
    return ProfileSession(**profiler_kwargs)


__all__ = ["stage", "profile", "ProfileSession", "join", "busy_us", "stage_of"]
