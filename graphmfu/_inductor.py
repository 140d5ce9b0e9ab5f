"""Every private torch / Inductor API graphmfu touches, each with a fallback.

This is the one module that changes when torch changes.  Checked on torch 2.13
(CPU) and 2.11 (CUDA).  Each function says what happens when the private API is
missing: graphmfu degrades (plain Inductor, no symbolic hints) rather than
breaking the user's model.
"""
from __future__ import annotations

import contextlib
from typing import Any, Callable, Mapping

import torch


# --------------------------------------------------------------------------- compiling


def compile_with_inner_hook(gm, example_inputs, on_graph: Callable, config_patches: dict | None = None):
    """Compile ``gm`` with Inductor; call ``on_graph(post_grad_gm, example_inputs, kw, kernels)`` once
    per forward / backward / inference graph, after Inductor's post-grad passes ran on it in place.
    ``kernels`` lists the kernels Inductor generated or called, in codegen (= launch) order, as
    ``{"name", "extern", "origins": [fx node names], "inductor_bytes"}``.  ``on_graph`` returns a
    graph id (or None); every later call of the compiled graph is tagged with it (see ``tag_calls``).

    ``on_graph`` must not raise (the caller guards it).  Raises ``HookUnavailable`` when this torch
    has no ``inner_compile`` hook, so the caller can fall back to plain Inductor."""
    try:
        from torch._inductor.compile_fx import compile_fx, compile_fx_inner
    except ImportError as e:  # pragma: no cover - torch without Inductor
        raise HookUnavailable(str(e)) from e

    def inner(gm_, example_inputs_, **kw):
        with caches_off(), kernel_hook() as kernels:
            compiled = compile_fx_inner(gm_, example_inputs_, **kw)
        gid = on_graph(gm_, example_inputs_, kw, kernels)
        if gid is not None:
            tag_calls(compiled, gid)
        return compiled

    try:
        with caches_off():
            return compile_fx(gm, example_inputs, inner_compile=inner, config_patches=config_patches or None)
    except TypeError as e:
        if "inner_compile" in str(e) or "config_patches" in str(e):
            raise HookUnavailable(str(e)) from e
        raise


def compile_plain(gm, example_inputs, config_patches: dict | None = None):
    from torch._inductor.compile_fx import compile_fx

    return compile_fx(gm, example_inputs, config_patches=config_patches or None)


class HookUnavailable(Exception):
    pass


# --------------------------------------------------------------------------- kernels

_HOOK_MODULES = ("torch._inductor.debug", "torch._inductor.codegen.cpp", "torch._inductor.codegen.triton",
                 "torch._inductor.codegen.cpp_wrapper_cpu", "torch._inductor.codegen.simd")
_HOOK_NAME = "set_kernel_post_grad_provenance_tracing"


@contextlib.contextmanager
def kernel_hook():
    """Record every kernel Inductor emits while compiling (Triton, C++, templates, extern kernels).

    Inductor calls ``set_kernel_post_grad_provenance_tracing(node_schedule, kernel_name, is_extern)``
    for each kernel it emits, whatever the provenance level (2.11 and 2.13); it is bound by name in
    several modules, so each binding is wrapped for the duration of the compile.  Without it the
    list stays empty (no kernel map; the node-level report is unaffected)."""
    kernels: list[dict] = []
    original = getattr(_module("torch._inductor.debug"), _HOOK_NAME, None)
    if original is None:
        yield kernels
        return

    def hook(node_schedule, kernel_name, is_extern=False, *a, **k):
        with contextlib.suppress(Exception):
            kernels.append(_kernel_entry(node_schedule, kernel_name, is_extern))
        return original(node_schedule, kernel_name, is_extern, *a, **k)

    patched = []
    for name in _HOOK_MODULES:
        mod = _module(name)
        if mod is not None and getattr(mod, _HOOK_NAME, None) is original:
            setattr(mod, _HOOK_NAME, hook)
            patched.append(mod)
    try:
        yield kernels
    finally:
        for mod in patched:
            setattr(mod, _HOOK_NAME, original)


def _kernel_entry(node_schedule, kernel_name, is_extern) -> dict:
    if is_extern:
        on = getattr(node_schedule, "origin_node", None)
        origins = [on.name] if on is not None else [o.name for o in getattr(node_schedule, "origins", ())]
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


# --------------------------------------------------------------------------- graph calls

CALL_RANGE = "graphmfu::graph "  # + graph id: a profiler range around each call of a compiled graph
_TAGGED: dict = {}  # Inductor's class -> its tagging subclass
_COMPILED: list = []  # weak references to every compiled graph graphmfu may tag
_TAGGING = [False]  # a graphmfu.profile() session is running


def tag_calls(compiled, gid: int) -> None:
    """Remember Inductor's compiled graph (a CompiledFxGraph / OutputCode) so that, while graphmfu
    profiles, each of its calls opens a profiler range ``graphmfu::graph <gid>`` (kernel names repeat
    across graphs; the range tells them apart).  Outside profiling the object is untouched: zero
    overhead.  If it cannot be tagged, its calls are untagged and not joined (the report says so)."""
    import weakref

    try:
        compiled._graphmfu_gid = gid
        _COMPILED.append(weakref.ref(compiled))
        if _TAGGING[0]:  # compiled inside a profiled block: tag it now
            compiled.__class__ = _tagging_class(type(compiled))
    except (TypeError, AttributeError):
        pass


def _tagging_class(cls):
    sub = _TAGGED.get(cls)
    if sub is None:
        base_call = cls.__call__

        def __call__(self, *args, **kwargs):
            with torch.profiler.record_function(CALL_RANGE + str(self._graphmfu_gid)):
                return base_call(self, *args, **kwargs)

        sub = type(cls.__name__, (cls,), {"__call__": __call__, "__module__": cls.__module__,
                                          "_graphmfu_base": cls})
        _TAGGED[cls] = sub
    return sub


def set_call_tags(on: bool) -> None:
    """Swap every live compiled graph to its tagging subclass (on) or back to Inductor's class (off)."""
    _TAGGING[0] = on
    alive = []
    for ref in _COMPILED:
        obj = ref()
        if obj is None:
            continue
        alive.append(ref)
        with contextlib.suppress(TypeError, AttributeError):
            cls = type(obj)
            if on and "_graphmfu_base" not in cls.__dict__:
                obj.__class__ = _tagging_class(cls)
            elif not on and "_graphmfu_base" in cls.__dict__:
                obj.__class__ = cls._graphmfu_base
    _COMPILED[:] = alive


def device_kernels(prof, op_by_corr: Mapping) -> list[tuple]:
    """GPU activities of a finished torch.profiler session as (name, start_us, end_us, linked
    correlation id), in the time base of ``prof.events()``.  The linked id is that of the CPU op
    enclosing the launch (CUPTI correlation).  Reads the profiler's kineto results (semi-private);
    without them, no GPU kernels (the report then attributes nothing and says so)."""
    try:
        kineto = prof.profiler.kineto_results.events()
        cpu, cuda = torch.autograd.DeviceType.CPU, torch.autograd.DeviceType.CUDA
    except AttributeError:
        return []
    # kineto times are absolute ns; FunctionEvent times are us from the trace start: align on the
    # CPU ops both list (same correlation id and name)
    offs = sorted(k.start_ns() / 1e3 - op_by_corr[k.correlation_id()].time_range.start for k in kineto
                  if k.device_type() == cpu and k.correlation_id() in op_by_corr
                  and op_by_corr[k.correlation_id()].name == k.name())
    offset = offs[len(offs) // 2] if offs else 0.0
    out = []
    for k in kineto:
        if k.device_type() == cuda:
            start = k.start_ns() / 1e3 - offset
            out.append((k.name(), start, start + k.duration_ns() / 1e3, k.linked_correlation_id()))
    return out


def kernel_profile_config() -> dict:
    """Inductor config that makes C++ (CPU) kernels visible to the profiler (``graph_<id>_<kernel>``)."""
    cfg = _module("torch._inductor.config")
    return {"cpp.enable_kernel_profile": True} if cfg is not None and hasattr(cfg, "cpp") and hasattr(
        cfg.cpp, "enable_kernel_profile") else {}


@contextlib.contextmanager
def caches_off():
    """AOTAutogradCache and FxGraphCache hits skip the hook (no graph, empty report): turn them off
    for the graphs graphmfu compiles.  Missing config keys are skipped."""
    stack = contextlib.ExitStack()
    with stack:
        for mod_name, key in (("torch.compiler.config", "force_disable_caches"),
                              ("torch._inductor.config", "force_disable_caches"),
                              ("torch._inductor.config", "fx_graph_cache"),
                              ("torch._functorch.config", "enable_autograd_cache")):
            mod = _module(mod_name)
            if mod is None or not hasattr(mod, key):
                continue
            value = key == "force_disable_caches"
            with contextlib.suppress(Exception):
                stack.enter_context(mod.patch(**{key: value}))
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
        from graphmfu.errors import GraphMFUError

        raise GraphMFUError(f"unknown mode {mode!r}; use one of default, reduce-overhead, max-autotune, "
                            f"max-autotune-no-cudagraphs") from e


# --------------------------------------------------------------------------- shapes


def shape_hints(example_inputs) -> dict:
    """sympy Symbol -> int for the symbols of a dynamic-shape graph (empty if static or unknown)."""
    try:
        from torch._guards import detect_fake_mode

        mode = detect_fake_mode(example_inputs)
    except Exception:
        mode = None
    env = getattr(mode, "shape_env", None)
    hints: dict = {}
    if env is not None:
        # 2.13 renamed var_to_val (now deprecated) to backed_var_to_val; 2.11 has only the old name
        table = getattr(env, "backed_var_to_val", None)
        if not isinstance(table, Mapping):
            table = getattr(env, "var_to_val", None)
        if isinstance(table, Mapping):
            hints.update({k: int(v) for k, v in table.items() if _intlike(v)})
    # SymInt inputs carry their own hints
    for x in example_inputs:
        if isinstance(x, torch.SymInt):
            with contextlib.suppress(Exception):
                hints.setdefault(x.node.expr, int(x.node.hint))
    return hints


def _intlike(v) -> bool:
    try:
        int(v)
        return True
    except Exception:
        return False


# --------------------------------------------------------------------------- fake tensors


def fake_mode():
    from torch._subclasses.fake_tensor import FakeTensorMode

    return FakeTensorMode(allow_non_fake_inputs=False)


def to_fake(mode, t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A FakeTensor of ``t``'s shape, dtype and strides on ``device``; nothing allocated."""
    from torch._subclasses.fake_tensor import FakeTensor

    meta = t.detach().to("meta") if t.device.type != "meta" else t.detach()
    try:
        return FakeTensor(mode, meta, device)
    except TypeError:  # pragma: no cover - constructor signature changed: go through the mode
        with mode:
            return torch.empty_strided(t.shape, t.stride(), dtype=t.dtype, device=device)


def analysis_backend(on_graph: Callable[[Any, Any, str], None]):
    """A Dynamo backend that runs AOTAutograd with Inductor's decompositions and hands each
    forward/backward/inference graph to ``on_graph(gm, example_inputs, phase)``; the graph then
    runs as is (on fake tensors: shape propagation only)."""
    from torch._dynamo.backends.common import aot_autograd

    try:
        import torch._inductor.lowering  # noqa: F401 - some decompositions (max_pool2d) reach into it
        from torch._inductor.decomposition import select_decomp_table

        decomps = select_decomp_table()
    except Exception:  # pragma: no cover
        decomps = None

    def make(phase):
        def compiler(gm, example_inputs):
            on_graph(gm, example_inputs, phase)
            return gm.forward if hasattr(gm, "forward") else gm
        return compiler

    return aot_autograd(fw_compiler=make("forward"), bw_compiler=make("backward"),
                        inference_compiler=make("inference"), decompositions=decomps)


@contextlib.contextmanager
def fresh_dynamo():
    """Analysis compiles a throwaway copy of the model: lift recompile limits so repeated
    analyses never fall back to eager, without resetting the user's compiled code."""
    cfg = torch._dynamo.config
    patches = {k: 1 << 30 for k in ("recompile_limit", "cache_size_limit", "accumulated_recompile_limit",
                                    "accumulated_cache_size_limit") if hasattr(cfg, k)}
    with cfg.patch(**patches), caches_off():
        yield


def define_inductor_prims() -> None:
    """Inductor's own prims (max-pool offsets, random) exist only once this module is imported;
    the rules that cover them check for them at load time."""
    with contextlib.suppress(ImportError):
        import torch._inductor.inductor_prims  # noqa: F401


def matmul_allows_tf32() -> bool:
    try:
        return torch.get_float32_matmul_precision() != "highest" or bool(torch.backends.cuda.matmul.allow_tf32)
    except Exception:  # pragma: no cover
        return False


# --------------------------------------------------------------------------- eager module tracking


@contextlib.contextmanager
def module_tracker(model):
    """``torch.utils.module_tracker.ModuleTracker`` (public, forward and backward) with its private
    name table seeded from ``model.named_modules()``, so paths match the compiled graphs'
    (``layers.0.attn.q``, root = "") whichever module runs first.  Fallback when the private table
    is gone: the tracker's own names with their first component (the root's class name) dropped."""
    from torch.utils.module_tracker import ModuleTracker

    tracker = ModuleTracker()
    tracker._graphmfu_seeded = False
    if isinstance(model, torch.nn.Module) and hasattr(tracker, "_known_modules") and hasattr(tracker, "_seen_modules"):
        for name, mod in model.named_modules(remove_duplicate=False):
            tracker._known_modules[mod] = name
            tracker._seen_modules.add(mod)
        tracker._graphmfu_seeded = True
    with tracker:
        yield tracker


def tracked_module(tracker) -> str:
    """The innermost module the tracker is in ("" = root or none)."""
    names = [p for p in tracker.parents if p != "Global"]
    if not names:
        return ""
    if not getattr(tracker, "_graphmfu_seeded", False):
        names = [n.split(".", 1)[1] if "." in n else "" for n in names]
    return max(names, key=lambda n: (len(n.split(".")) if n else 0, n))


_NODE_KEY = "graphmfu_module"


class ModuleTagger(torch.overrides.TorchFunctionMode):
    """While recording eagerly: tags each new autograd node (``grad_fn.metadata``, public) with the
    module that created it, so the backward ops it runs are attributed to that module (what
    ``fwd_nn_module_stack`` gives the compiled backward)."""

    def __init__(self, tracker):
        super().__init__()
        self.tracker = tracker

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if torch.is_grad_enabled():
            mod = tracked_module(self.tracker)
            for t in torch.utils._pytree.tree_leaves(out):
                if isinstance(t, torch.Tensor) and t.grad_fn is not None:
                    _tag(t.grad_fn, mod)
        return out


def _tag(node, mod: str) -> None:
    stack = [node]
    while stack:
        n = stack.pop()
        if n is None:
            continue
        try:
            if _NODE_KEY in n.metadata:
                continue
            n.metadata[_NODE_KEY] = mod
        except (AttributeError, RuntimeError):
            continue
        stack.extend(nf for nf, _ in n.next_functions)


def backward_module(tracker):
    """(in backward?, module of the autograd node running now or None).  Uses the private
    ``torch._C._current_autograd_node``; without it, the tracker's own (approximate) backward view."""
    get = getattr(torch._C, "_current_autograd_node", None)
    if get is None:
        try:
            return bool(tracker.is_bw), None
        except Exception:  # noqa: BLE001
            return False, None
    node = get()
    if node is None:
        return False, None
    try:
        return True, node.metadata.get(_NODE_KEY)
    except (AttributeError, RuntimeError):
        return True, None
