"""Compiling: Inductor with graphmfu's hook on each post-grad graph (and the kernels it emits, read through
Inductor's provenance call), plain Inductor, the analysis backend (AOTAutograd with Inductor's decompositions,
run on fake tensors), the settings around a compile (caches off, recompile limits lifted, a mode as config
patches, C++ kernels visible to the profiler) and backend registration.
"""
from __future__ import annotations

import contextlib
import threading
from typing import Any, Callable, Mapping

import torch

from graphmfu._inductor.dynamo import frame_prefix
from graphmfu._inductor.profiler import COMPILE_RANGE


def compile_with_inner_hook(gm, example_inputs, on_graph: Callable, config_patches: dict | None = None):
    """Compile ``gm`` with Inductor; call ``on_graph(post_grad_gm, example_inputs, kw, kernels, compiled)``
    once per forward / backward / inference graph, after Inductor's post-grad passes ran on it in
    place.  ``kernels`` lists the kernels Inductor generated or called, in codegen (= launch) order, as
    ``{"name", "extern", "origins": [fx node names], "inductor_bytes"}``; ``compiled`` is Inductor's
    compiled graph (see ``CallTagger``).

    ``on_graph`` must not raise (the caller guards it).  Raises ``HookUnavailable`` when this torch
    has no ``inner_compile`` hook, so the caller can fall back to plain Inductor."""
    try:
        from torch._inductor.compile_fx import compile_fx, compile_fx_inner
    except ImportError as e:  # pragma: no cover - torch without Inductor
        raise HookUnavailable(str(e)) from e

    def inner(gm_, example_inputs_, **kw):
        with torch.profiler.record_function(COMPILE_RANGE), caches_off(), kernel_hook() as kernels:
            compiled = compile_fx_inner(gm_, example_inputs_, **_stable_profile_names(kw))
        on_graph(gm_, example_inputs_, kw, kernels, compiled)
        return compiled

    try:
        with caches_off():
            return compile_fx(gm, example_inputs, inner_compile=inner, config_patches=config_patches or None)
    except TypeError as e:
        if "inner_compile" in str(e) or "config_patches" in str(e):
            raise HookUnavailable(str(e)) from e
        raise


# the graph id C++ kernels are compiled under while they are profiled (their names: graph_<id>_<kernel>)
PROFILE_GRAPH_ID = 0


def _stable_profile_names(kw: dict) -> dict:
    """``compile_fx_inner``'s arguments with one graph id for every graph while C++ kernels are profiled.

    With ``cpp.enable_kernel_profile`` Inductor writes ``RECORD_FUNCTION("graph_<id>_<kernel>")`` into each C++
    kernel's source, ``<id>`` its per-process graph counter; so the same kernel compiled twice in one process has
    two sources and Inductor's C++ code cache (keyed by the source) never hits: every compile builds its kernels
    again (measured: a second compile of one model took 9.84 s against plain Inductor's 3.37 s).  The id only
    names things (that prefix, the Python wrapper's record_function, a debug log; not CUDA graphs, not the
    caller's ``kw``: graphmfu pairs a forward with its backward by the caller's id); the join strips the prefix
    (``join.site_name``) and tells graphs apart by their call ranges."""
    cfg = _module("torch._inductor.config")
    cpp = getattr(cfg, "cpp", None) if cfg is not None else None
    if kw.get("graph_id") is None or not getattr(cpp, "enable_kernel_profile", False):
        return kw
    return {**kw, "graph_id": PROFILE_GRAPH_ID}


def compile_plain(gm, example_inputs, config_patches: dict | None = None):
    from torch._inductor.compile_fx import compile_fx

    return compile_fx(gm, example_inputs, config_patches=config_patches or None)


class HookUnavailable(Exception):
    pass


# --------------------------------------------------------------------------- kernels


_HOOK_MODULES = ("torch._inductor.debug", "torch._inductor.codegen.cpp", "torch._inductor.codegen.triton",
                 "torch._inductor.codegen.cpp_wrapper_cpu", "torch._inductor.codegen.simd")
_HOOK_NAME = "set_kernel_post_grad_provenance_tracing"


_hook_local = threading.local()  # .sink: the kernel list of the compile running in this thread
_hook_lock = threading.Lock()
_hook_installed: list = []


def _install_kernel_hook() -> bool:
    """Wrap Inductor's provenance call once, in every module that binds it by name.  The wrapper
    appends to the sink of the compile running in the *calling thread* (none: it only forwards), so
    concurrent compiles in other threads never record each other's kernels."""
    with _hook_lock:
        if _hook_installed:
            return _hook_installed[0]
        original = getattr(_module("torch._inductor.debug"), _HOOK_NAME, None)
        if original is None:
            _hook_installed.append(False)
            return False

        def hook(node_schedule, kernel_name, is_extern=False, *a, **k):
            sink = getattr(_hook_local, "sink", None)
            if sink is not None:
                with contextlib.suppress(Exception):
                    sink.append(_kernel_entry(node_schedule, kernel_name, is_extern))
            return original(node_schedule, kernel_name, is_extern, *a, **k)

        for name in _HOOK_MODULES:
            mod = _module(name)
            if mod is not None and getattr(mod, _HOOK_NAME, None) is original:
                setattr(mod, _HOOK_NAME, hook)
        _hook_installed.append(True)
        return True


@contextlib.contextmanager
def kernel_hook():
    """Record every kernel Inductor emits while this thread compiles (Triton, C++, templates, extern
    kernels).

    Inductor calls ``set_kernel_post_grad_provenance_tracing(node_schedule, kernel_name, is_extern)``
    for each kernel it emits, whatever the provenance level (2.11 and 2.13).  Without it the list
    stays empty (no kernel map; the node-level report is unaffected)."""
    kernels: list[dict] = []
    if not _install_kernel_hook():
        yield kernels
        return
    prev = getattr(_hook_local, "sink", None)
    _hook_local.sink = kernels
    try:
        yield kernels
    finally:
        _hook_local.sink = prev


def _kernel_entry(node_schedule, kernel_name, is_extern) -> dict:
    if is_extern:
        on = getattr(node_schedule, "origin_node", None)
        names = [o.name for o in getattr(node_schedule, "origins", ())]
        # origin_node can name another node whose buffer this kernel writes (the wait_tensor of a
        # collective that reuses a GEMM's output): trust it only when it is among the origins
        origins = [on.name] if on is not None and (not names or on.name in names) else names
        return {"name": str(kernel_name), "extern": True, "origins": origins, "inductor_bytes": None}
    origins: list[str] = []
    nbytes = 0
    for snode in node_schedule:
        node = getattr(snode, "node", None)
        if node is None:
            continue
        for o in getattr(node, "origins", ()):
            if o.name not in origins:
                origins.append(o.name)
        if nbytes is not None:
            try:
                nbytes += int(snode.get_read_write_buffers_sizes())
            except Exception:  # symbolic sizes: Inductor's count is not available
                nbytes = None
    return {"name": str(kernel_name), "extern": False, "origins": origins, "inductor_bytes": nbytes}


# --------------------------------------------------------------------------- settings


@contextlib.contextmanager
def caches_off():
    """AOTAutogradCache and FxGraphCache hits skip the hook (no graph, empty report): turn those two off
    for the graphs graphmfu compiles.  Not ``force_disable_caches``: it also bypasses Triton's autotune
    cache, so kernels could run other configs than under plain Inductor.  Missing keys are skipped."""
    stack = contextlib.ExitStack()
    with stack:
        for mod_name, key in (("torch._inductor.config", "fx_graph_cache"),
                              ("torch._functorch.config", "enable_autograd_cache")):
            mod = _module(mod_name)
            if mod is None or not hasattr(mod, key):
                continue
            with contextlib.suppress(Exception):
                stack.enter_context(mod.patch(**{key: False}))
        yield


@contextlib.contextmanager
def fresh_dynamo():
    """Analysis compiles a throwaway copy of the model: lift recompile limits so repeated
    analyses never fall back to eager, without resetting the user's compiled code."""
    cfg = torch._dynamo.config
    patches = {k: 1 << 30 for k in ("recompile_limit", "cache_size_limit", "accumulated_recompile_limit",
                                    "accumulated_cache_size_limit") if hasattr(cfg, k)}
    with cfg.patch(**patches), caches_off():
        yield


def _module(name):
    import importlib

    try:
        return importlib.import_module(name)
    except ImportError:
        return None


def mode_config(mode: str | None) -> dict:
    """``torch.compile``'s ``mode`` as Inductor config patches."""
    if not mode or mode == "default":
        return {}
    try:
        return dict(torch._inductor.list_mode_options(mode))
    except Exception as e:
        raise UnknownMode(f"unknown mode {mode!r}; use one of default, reduce-overhead, max-autotune, "
                          f"max-autotune-no-cudagraphs") from e


class UnknownMode(ValueError):
    """``mode_config`` was given a mode torch.compile does not know (the caller says it to the user)."""


def kernel_profile_config() -> dict:
    """Inductor config that makes C++ (CPU) kernels visible to the profiler (``graph_<id>_<kernel>``)."""
    cfg = _module("torch._inductor.config")
    return {"cpp.enable_kernel_profile": True} if cfg is not None and hasattr(cfg, "cpp") and hasattr(
        cfg.cpp, "enable_kernel_profile") else {}


# --------------------------------------------------------------------------- backends


def analysis_backend(on_graph: Callable[..., None], names: Callable[[], Mapping[int, list]] | None = None,
                     running: Callable[[], Any] | None = None):
    """A Dynamo backend that runs AOTAutograd with Inductor's decompositions and hands each
    forward/backward/inference graph to ``on_graph(gm, example_inputs, phase, prefix)``; the graph then
    runs as is (on fake tensors: shape propagation only).

    ``prefix`` is where the Dynamo frame's module sits in the analysed model: "" for the top frame,
    ``decoder`` for a frame Dynamo starts inside ``model.decoder`` after a graph break (its module
    paths are relative to that frame's ``self``).  ``names()`` maps id(parameter or buffer) -> its names
    in the analysed model (see ``frame_prefix``); without it the prefix is "".  ``running(graph)``: a
    context manager entered while each returned graph runs (what runs outside it ran outside the graphs),
    ``graph`` being what ``on_graph`` returned for it."""
    from torch._dynamo.backends.common import aot_autograd

    try:
        import torch._inductor.lowering  # noqa: F401 - some decompositions (max_pool2d) reach into it
        from torch._inductor.decomposition import select_decomp_table

        decomps = select_decomp_table()
    except Exception:  # pragma: no cover
        decomps = None

    def make(phase, prefix):
        def compiler(gm, example_inputs):
            graph = on_graph(gm, example_inputs, phase, prefix)
            run = gm.forward if hasattr(gm, "forward") else gm
            if running is None:
                return run

            def inside(*args):
                with running(graph):
                    return run(*args)
            if getattr(run, "_boxed_call", False):  # AOTAutograd calls it with one list of inputs, as ``run``
                inside._boxed_call = True
            return inside
        return compiler

    def backend(gm, example_inputs):
        prefix = frame_prefix(gm, names()) if names is not None else ""
        aot = aot_autograd(fw_compiler=make("forward", prefix), bw_compiler=make("backward", prefix),
                           inference_compiler=make("inference", prefix), decompositions=decomps)
        return aot(gm, example_inputs)

    return backend


def register_backend(name: str, fn) -> None:
    """Register ``fn`` as a named torch.compile backend (``backend="graphmfu"``); once per name."""
    from torch._dynamo.backends import registry

    if name in getattr(registry, "_COMPILER_FNS", {}):
        return
    registry.register_backend(compiler_fn=fn, name=name)
