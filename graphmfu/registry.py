"""A capture registry: the graphs compiled through a backend, as an object you can make two of.

``graphmfu.backend`` fills the default registry (``graphmfu.report()`` reads it); ``Backend(registry=...)``
fills another (``graphmfu.compare`` uses its own).  A registry owns its graphs, failures, warn-once
state and the call tagger of its compiled graphs; ``clear()`` forgets all of it and takes a new uid, so
graphs compiled before a reset can never be joined to graphs compiled after it.
"""
from __future__ import annotations

import itertools
import threading
import time
import uuid
import warnings

import torch

from graphmfu._inductor import CallTagger
from graphmfu.record import GraphRecord, Record


class Registry:
    """The graphs compiled so far (thread-safe)."""

    def __init__(self):
        self._lock = threading.Lock()
        self.tagger = CallTagger()
        self._start()

    def _start(self) -> None:
        self.uid = uuid.uuid4().hex[:12]
        self._ids = itertools.count()
        self.graphs: list[GraphRecord] = []
        self.failures: list[str] = []
        self._warned: set[str] = set()
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

    def adopt(self, keys) -> None:
        """Bring retired graphs whose ``keys`` ran in a profile back, under new ids."""
        with self._lock:
            for key in keys:
                g = self.retired.pop(key, None)
                if g is not None:
                    self.graphs.append(g.renumbered(next(self._ids)))

    def record(self, timing=None) -> Record:
        """The collected record of the graphs so far (with ``timing`` from a profile, if any)."""
        with self._lock:
            graphs, failures = list(self.graphs), list(self.failures)
        rank, world = _rank()
        return Record(graphs=graphs, failures=failures, timing=timing, torch=torch.__version__,
                      created=time.strftime("%Y-%m-%dT%H:%M:%S%z"), rank=rank, world_size=world,
                      device=_local_device(g.device for g in graphs))


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
