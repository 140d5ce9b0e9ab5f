"""Graphs compiled outside graphmfu.

torch.compile builds a wrapper per call (_TorchCompileInductorWrapper for Inductor, _TorchCompileWrapper for
any other backend); Inductor's compiled graphs are CompiledFxGraph objects whose calls run the kernels.  Three
observers, all in this room: where each torch.compile call came from (compile_sites, recorded from import on,
bounded), how often graphs graphmfu did not compile were called while someone listens (ForeignCalls: the
meter), and routing Inductor wrappers made before capture_all() to graphmfu's backend (route_inductor).  The
thread's graph call depth (``_in_graph``) is shared with the tagging call of graphmfu's own graphs (calls.py).
"""
from __future__ import annotations

import contextlib
import threading
from typing import Callable

import torch


_SITES_MAX = 64
_sites: list = []  # {"backend", "mode", "caller", "line"}: torch.compile calls seen, newest last
_sites_lock = threading.Lock()
_observed: list = []


def _caller() -> str:
    """The first frame outside torch and graphmfu: ``transformers/modeling_utils.py:4826 get_compiled_call``."""
    import os
    import sys

    torch_dir = os.path.dirname(torch.__file__)
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # graphmfu/ (this room is one below)
    f = sys._getframe(2)
    while f is not None:
        fn = os.path.abspath(f.f_code.co_filename)
        if not fn.startswith(torch_dir) and not fn.startswith(here) and "importlib" not in fn:
            parts = fn.replace("\\", "/").split("/")
            short = "/".join(parts[-2:]) if "site-packages" not in parts else "/".join(
                parts[parts.index("site-packages") + 1:])
            return f"{short}:{f.f_lineno} {f.f_code.co_name}"
        f = f.f_back
    return "?"


def observe_compiles() -> None:
    """Record the caller, backend and mode of every torch.compile call from now on (``compile_sites``): a
    graph that runs outside graphmfu is then named by where it was compiled.  Idempotent; a torch without
    these wrappers records nothing."""
    if _observed:
        return
    _observed.append(True)
    # (wrapper class, its arguments' backend, its arguments' mode)
    for cls_name, backend_of, mode_of in (
            ("_TorchCompileInductorWrapper", lambda a, k: "inductor", lambda a, k: a[0] if a else k.get("mode")),
            ("_TorchCompileWrapper", lambda a, k: a[0] if a else k.get("backend"),
             lambda a, k: a[1] if len(a) > 1 else k.get("mode"))):
        cls = getattr(torch, cls_name, None)
        if cls is None or "_graphmfu_observed" in cls.__dict__:
            continue
        init = cls.__init__

        def __init__(self, *args, _init=init, _backend_of=backend_of, _mode_of=mode_of, **kwargs):
            _init(self, *args, **kwargs)
            try:
                backend = _backend_of(args, kwargs)
                ours = getattr(backend, "_graphmfu_backend", False)
                name = backend if isinstance(backend, str) else getattr(backend, "__name__", type(backend).__name__)
                site = {"backend": "graphmfu" if ours else str(name), "mode": _mode_of(args, kwargs),
                        "caller": _caller()}
                with _sites_lock:
                    _sites.append(site)
                    del _sites[:-_SITES_MAX]
            except Exception:  # noqa: BLE001 - observing never breaks a compile
                pass

        cls.__init__ = __init__
        cls._graphmfu_observed = True


def compile_sites() -> list:
    """The torch.compile calls seen since graphmfu was imported (newest last, at most 64): backend, mode, caller."""
    with _sites_lock:
        return [dict(s) for s in _sites]


def _compiled_fx_class():
    try:
        from torch._inductor.output_code import CompiledFxGraph
        return CompiledFxGraph
    except Exception:  # noqa: BLE001
        return None


_in_graph = threading.local()  # .depth: a compiled graph call (ours or another's) is running in this thread


class ForeignCalls:
    """While at least one listener is registered, calls of Inductor graphs graphmfu did not compile
    (``CompiledFxGraph`` objects no CallTagger owns) and CUDA-graph replays outside any compiled graph call
    (a framework's own ``torch.cuda.CUDAGraph``) are reported to each listener's ``foreign_call(kind)``
    (kind "compiled" or "cuda_graph").  Installed on the first listener, removed with the last: zero
    overhead otherwise."""

    _lock = threading.Lock()
    listeners: list = []
    _saved: list = []

    @classmethod
    def listen(cls, listener) -> None:
        with cls._lock:
            cls.listeners = [*cls.listeners, listener]
            if len(cls.listeners) == 1:
                cls._install()

    @classmethod
    def unlisten(cls, listener) -> None:
        with cls._lock:
            cls.listeners = [x for x in cls.listeners if x is not listener]
            if not cls.listeners:
                cls._remove()

    @classmethod
    def _report(cls, kind: str) -> None:
        for x in cls.listeners:
            with contextlib.suppress(Exception):
                x.foreign_call(kind)

    @classmethod
    def _install(cls) -> None:
        fx = _compiled_fx_class()
        if fx is not None and "__call__" in fx.__dict__:
            call = fx.__dict__["__call__"]

            def __call__(self, *args, **kwargs):
                # a graph no CallTagger owns, called from outside every graph call (a CUDA-graph tree runs its
                # graphs from inside the graph's own call)
                if getattr(self, "_graphmfu_tagger", None) is None and not getattr(_in_graph, "depth", 0):
                    cls._report("compiled")
                _in_graph.depth = getattr(_in_graph, "depth", 0) + 1
                try:
                    return call(self, *args, **kwargs)
                finally:
                    _in_graph.depth -= 1
            cls._saved.append((fx, "__call__", call))
            fx.__call__ = __call__
        graph_cls = getattr(torch.cuda, "CUDAGraph", None)
        if graph_cls is not None and "replay" in graph_cls.__dict__:
            replay = graph_cls.__dict__["replay"]

            def replay_counted(self, *args, **kwargs):
                if not getattr(_in_graph, "depth", 0):
                    cls._report("cuda_graph")
                return replay(self, *args, **kwargs)
            cls._saved.append((graph_cls, "replay", replay))
            graph_cls.replay = replay_counted

    @classmethod
    def _remove(cls) -> None:
        while cls._saved:
            owner, name, orig = cls._saved.pop()
            setattr(owner, name, orig)


def graph_call_depth() -> int:
    """How many compiled graph calls are running in this thread (ours are counted by the CallTagger)."""
    return getattr(_in_graph, "depth", 0)


def route_inductor(make_backend) -> Callable[[], None]:
    """Compile every graph of an Inductor torch.compile wrapper (``_TorchCompileInductorWrapper``, also one made
    before this call) with ``make_backend(config)(gm, example_inputs)``, ``config`` being the wrapper's Inductor
    config (its mode expanded, its options).  Returns the undo.  The AOT-Inductor subclass is left alone."""
    cls = getattr(torch, "_TorchCompileInductorWrapper", None)
    if cls is None or "__call__" not in cls.__dict__:
        return lambda: None
    original = cls.__dict__["__call__"]

    def __call__(self, model_, inputs_, *args, **kwargs):
        if type(self) is not cls:
            return original(self, model_, inputs_, *args, **kwargs)
        config = {**getattr(self, "config", {}), **(kwargs.get("config_patches") or {})}
        return make_backend(config)(model_, inputs_)

    cls.__call__ = __call__

    def undo():
        if cls.__dict__.get("__call__") is __call__:
            cls.__call__ = original
    return undo
