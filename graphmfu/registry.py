"""A capture registry: the graphs compiled through a backend, as an object you can make two of.

``graphmfu.backend`` fills the default registry (``graphmfu.report()`` reads it); ``Backend(registry=...)``
fills another (``graphmfu.compare`` uses its own).  A registry owns its graphs, failures, warn-once
state and the call tagger of its compiled graphs; ``clear()`` forgets all of it and takes a new uid, so
graphs compiled before a reset can never be joined to graphs compiled after it.
"""
from __future__ import annotations

import contextlib
import itertools
import re
import threading
import time
import uuid
import warnings
import weakref

import torch

from graphmfu import _inductor
from graphmfu._inductor import CallTagger
from graphmfu.record import GraphRecord, Record


class ModulePlaces:
    """Where the module of a compiled frame sits in the model.  After a graph break Dynamo compiles a
    submodule's ``forward`` (or a resume function inside it) as a frame of its own, and the frame's module
    paths are relative to it (``o`` for ``layers.0.attn.o``).  The outermost module running on the Python
    stack when the frame compiles is the model; the frame's module (its ``self``, else the innermost module
    that called it) gets its path in the model as the prefix.  Path tables are kept per model, weakly."""

    def __init__(self):
        self._paths: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # model -> {id(module): path}

    def prefix(self, me, callers) -> str:
        own = me if isinstance(me, torch.nn.Module) else (callers[-1] if callers else None)
        root = callers[0] if callers else own
        if own is None or root is None or own is root:
            return ""
        for refresh in (False, True):
            paths = None if refresh else self._paths.get(root)
            if paths is None:
                paths = {id(m): n for n, m in root.named_modules(remove_duplicate=False)}
                with contextlib.suppress(TypeError):
                    self._paths[root] = paths
            if id(own) in paths:
                return paths[id(own)]
        return ""


class Registry:
    """The graphs compiled so far (thread-safe)."""

    def __init__(self):
        self._lock = threading.Lock()
        self.tagger = CallTagger()
        self.places = ModulePlaces()  # where compiled frames' modules sit in the model (kept across clear())
        self._start()

    def _start(self) -> None:
        self.uid = uuid.uuid4().hex[:12]
        self._ids = itertools.count()
        self.graphs: list[GraphRecord] = []
        self.failures: list[str] = []
        self.notes: list[str] = []
        self._warned: set[str] = set()
        self.frames: dict = {}  # AOTAutograd graph id -> (frame, module prefix) of its forward's compile
        self._fallbacks_before = _inductor.dynamo_fallbacks()  # what Dynamo could not compile before now
        if not hasattr(self, "retired"):
            self.retired: dict[str, GraphRecord] = {}  # key -> graph compiled before a clear()

    def next_id(self) -> int:
        with self._lock:
            return next(self._ids)

    def key(self, gid: int) -> str:
        """A graph's identity beyond this registry and process (profiler ranges and merged records)."""
        return f"{self.uid}:{gid}"

    def add(self, g: GraphRecord) -> None:
        with self._lock:
            self.graphs.append(g)

    def fail(self, msg: str) -> None:
        with self._lock:
            self.failures.append(msg)

    def note(self, msg: str) -> None:
        """A line for the report's notes (what was counted and how; not a failure)."""
        with self._lock:
            if msg not in self.notes:
                self.notes.append(msg)

    def warn_once(self, key: str, msg: str) -> None:
        with self._lock:
            if key in self._warned:
                return
            self._warned.add(key)
        warnings.warn(msg, RuntimeWarning, stacklevel=4)

    def clear(self) -> None:
        """Forget every graph, failure and warning (``report()`` starts empty, ids restart at 0).  Graphs
        compiled before keep their key: if one runs in a later profile it is adopted under a new id, so
        a model warmed up before ``reset()`` can still be profiled, and never joins another's graph."""
        with self._lock:
            self.retired.update({g.key: g for g in self.graphs})
            self._start()

    def retire(self, keys) -> None:
        """Take the graphs with these ``keys`` out of the record (a producer's layout that no longer runs:
        DDP's first bucket layout); kept as retired, so a profile that saw one run adopts it back."""
        keys = set(keys)
        with self._lock:
            self.retired.update({g.key: g for g in self.graphs if g.key in keys})
            self.graphs = [g for g in self.graphs if g.key not in keys]

    def adopt(self, keys) -> None:
        """Bring retired graphs whose ``keys`` ran in a profile back, under new ids."""
        with self._lock:
            for key in keys:
                g = self.retired.pop(key, None)
                if g is not None:
                    self.graphs.append(g.renumbered(next(self._ids)))

    def fallbacks(self) -> list[tuple]:
        """``[(kind, reason, count)]``: what Dynamo could not compile since this registry started (or was
        cleared), most frequent first: graph breaks and frames that fell back to eager, whose ops ran
        outside every compiled graph (Dynamo's counters are process-wide: any torch.compile counts)."""
        before = self._fallbacks_before
        out = [(kind, _inductor.fallback_reason(msg), n - before.get((kind, msg), 0))
               for (kind, msg), n in _inductor.dynamo_fallbacks().items()]
        return sorted((x for x in out if x[2] > 0), key=lambda x: (-x[2], -x[1].count(" -> ")))

    def record(self, timing=None) -> Record:
        """The collected record of the graphs so far (with ``timing`` from a profile, if any)."""
        with self._lock:
            graphs, failures, notes = list(self.graphs), list(self.failures), list(self.notes)
        rank, world = _rank()
        fell = self.fallbacks() if graphs else []
        if fell:
            notes.append(fallback_note(fell))
        return Record(graphs=graphs, failures=failures, notes=notes, timing=timing, torch=torch.__version__,
                      created=time.strftime("%Y-%m-%dT%H:%M:%S%z"), rank=rank, world_size=world,
                      device=_local_device(g.device for g in graphs))


FALLBACK_HEAD = "Dynamo could not compile everything"
_FALLBACK_PART = re.compile(r"(?:^|; )(graph break|fell back to eager) x(\d+): ")


def fallback_note(fallbacks: list[tuple], most: int = 3) -> str:
    """One line on what Dynamo did not compile (``Registry.fallbacks()``): it ran eagerly, outside the graphs.
    ``fallbacks_noted`` reads it back."""
    n = sum(c for _, _, c in fallbacks)
    parts = [f"{kind} x{c}: {reason}" for kind, reason, c in fallbacks[:most]]
    more = f"; and {len(fallbacks) - most} other reason(s)" if len(fallbacks) > most else ""
    return (f"{FALLBACK_HEAD} ({n} graph break(s) / eager fallback(s) since graphmfu.reset()): "
            f"what ran there ran eagerly, outside these graphs, and is not counted — " + "; ".join(parts) + more)


def fallbacks_noted(notes: list[str]) -> list[tuple]:
    """``[(kind, reason, count)]`` read back from a record's notes (``fallback_note``'s line: a saved report
    keeps the notes, not the registry)."""
    out = []
    for note in notes:
        if not note.startswith(FALLBACK_HEAD) or " — " not in note:
            continue
        body = re.sub(r"; and \d+ other reason\(s\)$", "", note.split(" — ", 1)[1])
        bits = _FALLBACK_PART.split(body)  # ['', kind, count, reason, kind, count, reason, ...]
        for i in range(1, len(bits) - 2, 3):
            out.append((bits[i], bits[i + 2].strip(), int(bits[i + 1])))
    return out


def _rank() -> tuple[int, int]:
    """(rank, world size) of the default process group, (0, 1) without one."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _local_device(graph_devices) -> str:
    """The device this process ran its graphs on: ``cuda:<current device>`` when any graph ran on a GPU
    (each rank of a job drives its own), else the graphs' device (``cpu``), "" with no graph."""
    devs = {str(d).split(":")[0] for d in graph_devices}
    if "cuda" in devs and torch.cuda.is_available():
        return f"cuda:{torch.cuda.current_device()}"
    return "cpu" if "cpu" in devs else (sorted(devs)[0] if devs else "")


DEFAULT = Registry()

__all__ = ["Registry", "DEFAULT"]
