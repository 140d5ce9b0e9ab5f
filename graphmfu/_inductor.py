"""Every private torch / Inductor API graphmfu touches, each with a fallback.

This is the one module that changes when torch changes.  Checked on torch 2.13
(CPU) and 2.11 (CUDA).  Each function says what happens when the private API is
missing: graphmfu degrades (plain Inductor, no symbolic hints) rather than
breaking the user's model.
"""
from __future__ import annotations

import contextlib
import re
import threading
from typing import Any, Callable, Mapping

import torch


# --------------------------------------------------------------------------- compiling


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
            compiled = compile_fx_inner(gm_, example_inputs_, **kw)
        on_graph(gm_, example_inputs_, kw, kernels, compiled)
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


# --------------------------------------------------------------------------- graph calls

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


def frame_name() -> str | None:
    """``/path/torch/optim/adam.py:step``: the Python function Dynamo is compiling now (None outside a
    Dynamo compile, e.g. a backward compiled lazily at its first call, or when this torch hides it)."""
    try:
        from torch._dynamo.symbolic_convert import InstructionTranslator

        tx = InstructionTranslator.current_tx()
        code = tx.f_code
        return f"{code.co_filename}:{code.co_name}"
    except Exception:  # noqa: BLE001
        return None


def compiling_frame() -> tuple[str, Any, list] | None:
    """``(code, self, callers)`` of the Python frame Dynamo is compiling now: the code as
    ``file:function:line``, the frame's ``self`` (the module of a ``forward``; None for a plain function or
    a resume function without one) and the modules whose methods are running on the Python stack below it
    (outermost first: the model, then the submodules that called this frame eagerly, e.g. after a graph
    break).  None outside a Dynamo frame compile (a backward compiled lazily at its first call)."""
    import sys

    try:
        from torch._dynamo.symbolic_convert import InstructionTranslator

        tx = InstructionTranslator.current_tx()
        code = tx.f_code
        me = tx.f_locals.get("self") if "self" in code.co_varnames[:1] else None
    except Exception:  # noqa: BLE001
        return None
    callers, seen = [], set()
    f = sys._getframe(1)
    while f is not None:
        obj = f.f_locals.get("self") if "self" in f.f_code.co_varnames[:1] else None
        while isinstance(getattr(obj, "_orig_mod", None), torch.nn.Module):  # torch.compile's OptimizedModule
            obj = obj._orig_mod
        if isinstance(obj, torch.nn.Module) and id(obj) not in seen:
            seen.add(id(obj))
            callers.append(obj)
        f = f.f_back
    return f"{code.co_filename}:{code.co_name}:{code.co_firstlineno}", me, callers[::-1]


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
    for name, fn in probes:
        try:
            finish = fn.defer(inputs) if not resolve and getattr(fn, "defer", None) is not None else None
            if finish is not None:
                out[name] = Deferred(finish)
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
            values = call_values(args[0], sizes, probes, resolve=bool(tagger._active)) \
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


RESET_DYNAMO = "torch._dynamo.reset()"  # the call that clears Dynamo's marks (named in messages; this torch's API)
PROBE_RANGE = "graphmfu::probe"  # a profiler range around graphmfu's own per-call work (mask probes)
COMPILE_RANGE = "graphmfu::compile"  # a profiler range around each graph's Inductor compile
# Dynamo's own ranges around a frame's compile (bytecode tracing, AOTAutograd, Inductor), 2.11 and 2.13
_DYNAMO_COMPILE_RANGES = ("dynamo", "entire_frame_compile")


def is_compile_range(name: str) -> bool:
    """A profiler range during which torch compiles (its ATen ops run on fake tensors; GPU kernels in
    it are autotuning benchmarks), not the model running."""
    return name.startswith(COMPILE_RANGE) or name in _DYNAMO_COMPILE_RANGES


def is_python_frame(name: str) -> bool:
    """A Python-function event of a profile taken with ``with_stack=True`` (``file.py(12): fn``,
    ``<built-in method ...>``): not an op, only a frame between ops."""
    return name.startswith("<built-in ") or ".py(" in name


def profiler_running() -> bool:
    """Is a torch.profiler / autograd profiler session active in this process?"""
    try:
        return bool(torch.autograd.profiler._is_profiler_enabled)
    except AttributeError:  # pragma: no cover
        return False


def profiler_warmup() -> None:
    """Pay the profiler's first-use costs on the GPU (CUPTI's first runtime calls and kernel launch after the
    profiler starts) inside graphmfu's probe range, before the user's first stage: on an idle device that
    CPU time would otherwise open the first stage's span (an H200: 2-3 ms before a prefill's first launch,
    absent from CUDA events around the same code).  The join leaves the range's ops and kernels out."""
    with torch.profiler.record_function(PROBE_RANGE):
        ev = torch.cuda.Event()
        ev.record()
        torch.zeros(1, device="cuda").add_(1)
        torch.cuda.synchronize()


def all_threads_config():
    """The profiler's experimental config that records every thread (calls from worker threads), or
    None when this torch has no such option (then only threads the profiler saw start are recorded)."""
    try:
        from torch._C._profiler import _ExperimentalConfig

        return _ExperimentalConfig(profile_all_threads=True)
    except (ImportError, TypeError):
        return None


def compile_id() -> str | None:
    """Dynamo's id of the frame compile running now (``"0/1"``: frame 0, its second compile), or None."""
    try:
        from torch._guards import CompileContext

        cid = CompileContext.current_compile_id()
    except Exception:  # noqa: BLE001
        return None
    if cid is None:
        return None
    frame, attempt = getattr(cid, "frame_id", None), getattr(cid, "frame_compile_id", None)
    return f"{frame}/{attempt}" if frame is not None else str(cid)


def kernel_profile_config() -> dict:
    """Inductor config that makes C++ (CPU) kernels visible to the profiler (``graph_<id>_<kernel>``)."""
    cfg = _module("torch._inductor.config")
    return {"cpp.enable_kernel_profile": True} if cfg is not None and hasattr(cfg, "cpp") and hasattr(
        cfg.cpp, "enable_kernel_profile") else {}


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


# --------------------------------------------------------------------------- Dynamo's names

_ROOT = re.compile(r"^(?:L|G)\[['\"]([^'\"]+)['\"]\]")
_ITEM = re.compile(r"\[['\"]?([^'\"\]]+)['\"]?\]")


def module_path(raw: str) -> str:
    """Dynamo's ``L['self'].layers[0]._modules['attn'].q`` -> ``layers.0.attn.q``.

    A module passed as the compiled frame's local (``L[...]``: ``self``, or a
    function's argument) is the root and is dropped; a global one
    (``G['model']``) keeps its name."""
    s = raw.strip()
    m = _ROOT.match(s)
    keep = None
    if m:
        if s.startswith("G"):
            keep = m.group(1)
        s = s[m.end():]
    s = re.sub(r"(^|\.)_modules(?=\[)", r"\1", s)  # ._modules['x'], not an attribute like down_modules
    s = _ITEM.sub(lambda mm: "." + mm.group(1), s)
    parts = [p for p in s.split(".") if p]
    if keep:
        parts.insert(0, keep)
    return ".".join(parts)


def frame_prefix(gm, names: Mapping[int, list]) -> str:
    """The module path, in the analysed model, of the module a Dynamo graph's frame runs in.

    Dynamo names a frame's parameters from the frame's locals (``L['self']._modules['block']...
    ._parameters['weight']``); the same parameter's name in the model (``names``: id -> its names,
    several when tied, e.g. ``decoder.block.0...weight``) ends with that local path, and what comes
    before it is the prefix.  "" when the frame is the model's own (or nothing tells: no parameter,
    only tied ones, no grapharg metadata on this torch)."""
    prefixes = None
    for node in gm.graph.nodes:
        if node.op != "placeholder":
            continue
        arg = node.meta.get("grapharg")
        source = getattr(getattr(arg, "source", None), "name", None)
        if not isinstance(source, str) or not source.startswith("L["):
            continue
        try:
            example = getattr(arg, "example", None)
        except Exception:  # noqa: BLE001 - a freed weak reference
            continue
        local = module_path(source.replace("._parameters[", "[").replace("._buffers[", "["))
        found = {full[:len(full) - len(local)].rstrip(".")
                 for full in (names.get(id(example), ()) if example is not None else ())
                 if local and full.endswith(local) and (len(full) == len(local) or full[-len(local) - 1] == ".")}
        if found:
            prefixes = found if prefixes is None else prefixes & found
    # tied parameters give several places: those every parameter of the frame agrees on; still
    # several (a frame with tied parameters only) or none: "" (the paths stay the frame's own)
    return next(iter(prefixes)) if prefixes is not None and len(prefixes) == 1 else ""


@contextlib.contextmanager
def fresh_dynamo():
    """Analysis compiles a throwaway copy of the model: lift recompile limits so repeated
    analyses never fall back to eager, without resetting the user's compiled code."""
    cfg = torch._dynamo.config
    patches = {k: 1 << 30 for k in ("recompile_limit", "cache_size_limit", "accumulated_recompile_limit",
                                    "accumulated_cache_size_limit") if hasattr(cfg, k)}
    with cfg.patch(**patches), caches_off():
        yield


@contextlib.contextmanager
def no_dynamo_marks():
    """Leave no Dynamo state on the code objects an analysis touched.

    A frame whose compile fails softly (e.g. a data-dependent read inside AOTAutograd, which Dynamo
    turns into a graph break) is marked "skip" on its code object for every later call of that code
    (``ConvertFrameReturn``'s default ``FrameAction.SKIP``, ``apply_to_code``): a later analysis of the
    same classes would run those frames eagerly, and the user's own ``torch.compile`` of them too.
    Every code object Dynamo is handed during the block is recorded (``convert_frame.input_codes.add``
    is wrapped for its duration); afterwards, codes Dynamo had never seen before are reset
    (``reset_code``: their cache entries, all of this analysis', and any mark go), and codes seen before
    get the default strategy back (Dynamo only hands it codes it does not skip, so that was their
    strategy when the analysis began; their cache entries stay).  Fallback (those APIs missing): nothing
    recorded, nothing reset."""
    try:
        from torch._C._dynamo.eval_frame import (_FrameAction, _FrameExecStrategy, reset_code,
                                                 set_code_exec_strategy)
        from torch._dynamo import convert_frame

        tracker = convert_frame.input_codes
        before = set(tracker.seen_ids)
        add = tracker.add
    except Exception:  # noqa: BLE001 - this torch keeps its marks elsewhere: nothing to undo
        yield
        return
    touched: dict[int, Any] = {}

    def recording_add(code):
        touched[id(code)] = code
        return add(code)

    tracker.add = recording_add  # an instance attribute over the method, for this block only
    counted = _fallback_counters()
    saved = {cat: dict(c) for cat, c in counted.items()}
    try:
        yield
    finally:
        if tracker.__dict__.get("add") is recording_add:
            del tracker.add
        for cat, c in counted.items():  # the analysis's graph breaks are not the user's (dynamo_fallbacks)
            c.clear()
            c.update(saved[cat])
        for key, code in touched.items():
            with contextlib.suppress(Exception):
                if key in before:
                    set_code_exec_strategy(code, _FrameExecStrategy(_FrameAction.DEFAULT, _FrameAction.DEFAULT))
                else:
                    reset_code(code)


_FALLBACK_KINDS = {"unimplemented": "fell back to eager", "graph_break": "graph break"}


def _fallback_counters() -> dict:
    """Dynamo's process-wide counters of what it could not compile: ``unimplemented`` (a frame or call it
    gave up on) and ``graph_break`` (a break it resumed after), message -> count."""
    try:
        from torch._dynamo.utils import counters
    except Exception:  # noqa: BLE001
        return {}
    return {cat: counters[cat] for cat in _FALLBACK_KINDS}


def dynamo_fallbacks() -> dict:
    """``{(kind, message): count}`` of everything Dynamo could not compile in this process so far (kind:
    "fell back to eager" or "graph break"; message: Dynamo's own, reason, explanation and hints).  Compare
    two readings to see what happened in between.  Analyses (``no_dynamo_marks``) leave no trace here."""
    return {(_FALLBACK_KINDS[cat], msg): int(n) for cat, c in _fallback_counters().items() for msg, n in c.items()
            if n > 0}


def fallback_reason(message: str) -> str:
    """One line of a Dynamo message: each break's first line and explanation (a break while handling
    another is chained with ->), whether the frame ran eagerly, and the first hint
    (``Attempted to wrap RNN, GRU, or LSTM: Dynamo does not support RNN, GRU, or LSTM. Hint: ...``)."""
    parts, hint = [], ""
    for seg in str(message).split("*** While handling this graph break, another graph break occurred: ***"):
        lines = [ln.strip() for ln in seg.splitlines() if ln.strip()]
        if not lines:
            continue
        expl = next((ln[len("Explanation:"):].strip() for ln in lines if ln.startswith("Explanation:")), "")
        parts.append(lines[0] + (f": {expl}" if expl and expl not in lines[0] else ""))
        hint = hint or next((ln[len("Hint:"):].strip() for ln in lines if ln.startswith("Hint:")), "")
    out = " -> ".join(parts) or "?"
    return out + (f" Hint: {hint}" if hint else "")


def ignores_compile_internals() -> bool:
    """Does this torch let a dispatch mode say ``ignore_compile_internals()`` (off while Dynamo and
    AOTAutograd trace, on while compiled code runs)?  Without it, a Python dispatch mode on the stack makes
    Dynamo skip every frame: graphmfu then installs none during an analysis."""
    return hasattr(dispatch_mode_base(), "ignore_compile_internals")


def current_autograd_node():
    """The autograd node running now (backward), or None (forward, or no such API)."""
    get = getattr(torch._C, "_current_autograd_node", None)
    return get() if get is not None else None


@contextlib.contextmanager
def swapped_tensors(modules, make: Callable, slots=()):
    """For the block, the parameters and buffers of ``modules`` (and their submodules) are
    ``make(t)`` (a Parameter again for a parameter, same requires_grad; one replacement per tensor,
    so tied weights stay tied), and so are the tensors held in ``slots``: ``(holder, key)`` pairs,
    a closure cell (key None) or a dict entry (a function's globals).  Afterwards, even on error, the
    very same objects are back in place: nothing of the user's model or gradients changes.
    Yields the map id(original) -> replacement."""
    memo: dict = {}
    undo: list = []

    def swap(t, param: bool):
        new = memo.get(id(t))
        if new is None:
            new = make(t)
            if param:
                new = torch.nn.Parameter(new, requires_grad=t.requires_grad)
            memo[id(t)] = new
        return new

    try:
        seen: set = set()
        for root in modules:
            for mod in root.modules():
                if id(mod) in seen:
                    continue
                seen.add(id(mod))
                for table, param in ((mod._parameters, True), (mod._buffers, False)):
                    for name, t in list(table.items()):
                        if isinstance(t, torch.Tensor):
                            undo.append((table, name, t))
                            table[name] = swap(t, param)
        for holder, key in slots:
            if key is None:
                t = holder.cell_contents
                undo.append((holder, None, t))
                holder.cell_contents = swap(t, isinstance(t, torch.nn.Parameter))
            else:
                t = holder[key]
                undo.append((holder, key, t))
                holder[key] = swap(t, isinstance(t, torch.nn.Parameter))
        yield memo
    finally:
        for holder, key, t in reversed(undo):
            if key is None:
                holder.cell_contents = t
            else:
                holder[key] = t


def to_meta(t: torch.Tensor) -> torch.Tensor:
    """A meta tensor of ``t``'s shape, dtype and strides (float tensors keep requires_grad)."""
    m = t.detach().to("meta") if t.device.type != "meta" else t.detach()
    return m.requires_grad_(t.requires_grad) if (t.is_floating_point() or t.is_complex()) else m


class CpuAttention(torch.overrides.TorchFunctionMode):
    """While planning on meta tensors: ``F.scaled_dot_product_attention`` runs the op it would run on
    CPU tensors (the fused ``_scaled_dot_product_flash_attention_for_cpu`` the compiled analysis
    sees; on meta it would take its math decomposition).  Which one CPU picks is asked once per
    argument signature, of SDPA itself on CPU fake tensors.  Fallback: SDPA as meta runs it."""

    def __init__(self):
        super().__init__()
        self.choice: dict = {}
        self.flash = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.nn.functional.scaled_dot_product_attention and self.flash is not None:
            try:
                a = _sdpa_args(*args, **kwargs)
            except TypeError:
                a = None
            if a is not None and all(isinstance(t, torch.Tensor) and t.device.type == "meta" for t in a[:3]) \
                    and self._fused(a):
                q, k, v, mask, dropout_p, is_causal, scale, _ = a
                if mask is not None and mask.dtype == torch.bool:  # as ATen does before the fused kernel
                    mask = torch.where(mask, torch.scalar_tensor(0.0, dtype=q.dtype, device=mask.device),
                                       torch.scalar_tensor(float("-inf"), dtype=q.dtype, device=mask.device))
                return self.flash(q, k, v, dropout_p, is_causal, attn_mask=mask, scale=scale)[0]
        return func(*args, **kwargs)

    def _fused(self, a) -> bool:
        def sig(t):
            return None if t is None else (tuple(t.shape), t.stride(), t.dtype, t.requires_grad)

        key = (sig(a[0]), sig(a[1]), sig(a[2]), sig(a[3]), *a[4:], torch.is_grad_enabled())
        got = self.choice.get(key)
        if got is None:
            try:
                got = self._probe(a)
            except Exception:  # noqa: BLE001 - cannot tell: SDPA as meta runs it
                got = False
            self.choice[key] = got
        return got

    def _probe(self, a) -> bool:
        from torch._subclasses.fake_tensor import FakeTensorMode
        from torch.utils._python_dispatch import TorchDispatchMode, _disable_current_modes

        class Ops(TorchDispatchMode):
            def __init__(self):
                super().__init__()
                self.ops: set = set()

            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                self.ops.add(func)
                return func(*args, **(kwargs or {}))

        with _disable_current_modes():  # the planner's recorder must not see the probe
            fm = FakeTensorMode()
            with fm:
                fake = [None if t is None else torch.empty_strided(t.shape, t.stride(), dtype=t.dtype, device="cpu")
                        .requires_grad_(t.requires_grad) for t in a[:4]]
            with fm, Ops() as seen:
                torch.nn.functional.scaled_dot_product_attention(*fake, dropout_p=a[4], is_causal=a[5], scale=a[6],
                                                                 enable_gqa=a[7])
        return self.flash.default in seen.ops


def _sdpa_args(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
    return query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa


def is_dynamo_error(e: BaseException) -> bool:
    """One of Dynamo's wrapper exceptions (TorchRuntimeError, Unsupported...), which hide the real
    error in ``__context__`` (raised ``from None``)."""
    return type(e).__module__.startswith("torch._dynamo")


@contextlib.contextmanager
def named_module_tracker(roots):
    """``module_tracker`` over several roots: ``roots`` is [(path prefix, module)], each module's
    path its prefix joined to its name under its root (the first root naming a module wins)."""
    from torch.utils.module_tracker import ModuleTracker

    tracker = ModuleTracker()
    tracker._graphmfu_seeded = False
    if hasattr(tracker, "_known_modules") and hasattr(tracker, "_seen_modules"):
        for prefix, root in roots:
            for name, mod in root.named_modules(remove_duplicate=False):
                if mod not in tracker._known_modules:
                    tracker._known_modules[mod] = ".".join(p for p in (prefix, name) if p)
                    tracker._seen_modules.add(mod)
        tracker._graphmfu_seeded = True
    with tracker:
        yield tracker


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


class ModuleTagger(torch.overrides.TorchFunctionMode):
    """While recording eagerly: remembers, for each new autograd node, the module that created it, so
    the backward ops that node runs are attributed to that module (what ``fwd_nn_module_stack`` gives
    the compiled backward).  The map lives in this object (strong references for the recording's
    lifetime; autograd nodes take no weak references); nothing is written into the user's tensors
    or graph."""

    def __init__(self, tracker):
        super().__init__()
        self.tracker = tracker
        self.modules: dict = {}  # autograd node -> module path

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if torch.is_grad_enabled():
            mod = tracked_module(self.tracker)
            for t in tree_leaves(out):
                if isinstance(t, torch.Tensor) and t.grad_fn is not None:
                    self._tag(t.grad_fn, mod)
        return out

    def _tag(self, node, mod: str) -> None:
        stack = [node]
        while stack:
            n = stack.pop()
            if n is None or n in self.modules:
                continue
            try:
                self.modules[n] = mod
                stack.extend(nf for nf, _ in n.next_functions)
            except (AttributeError, RuntimeError, TypeError):
                continue

    def backward_module(self):
        """(in backward?, module of the autograd node running now or None).  Uses the private
        ``torch._C._current_autograd_node``; without it, the tracker's own (approximate) view."""
        get = getattr(torch._C, "_current_autograd_node", None)
        if get is None:
            try:
                return bool(self.tracker.is_bw), None
            except Exception:  # noqa: BLE001
                return False, None
        node = get()
        if node is None:
            return False, None
        try:
            return True, self.modules.get(node)
        except TypeError:
            return True, None


# --------------------------------------------------------------------------- ops and values


def is_op(op) -> bool:
    """An ATen/custom op overload, packet, or higher-order operator (what rules register on)."""
    return op_kind(op) is not None


def op_kind(op) -> str | None:
    """"overload" | "packet" | "higher_order" | None."""
    from torch._ops import HigherOrderOperator, OpOverload, OpOverloadPacket

    if isinstance(op, OpOverload):
        return "overload"
    if isinstance(op, OpOverloadPacket):
        return "packet"
    if isinstance(op, HigherOrderOperator):
        return "higher_order"
    return None


def decomposed_from(node) -> str | None:
    """The ATen op a post-grad / AOT graph node was decomposed from (``aten.addmm.default`` for the mul
    and sum Inductor writes for a small or GEMV-shaped addmm), when it is another op than the node's own;
    else None.  Read from the node's ``original_aten`` meta (AOTAutograd keeps it while tracing)."""
    orig = getattr(node, "meta", {}).get("original_aten")
    if orig is None or orig is getattr(node, "target", None):
        return None
    return str(orig)


def sym_value(x):
    """An int for a SymInt with a fixed value, else the sympy expression behind it (SymFloat/SymBool
    too); other values unchanged."""
    if isinstance(x, (torch.SymInt, torch.SymFloat, torch.SymBool)):
        node = x.node
        if isinstance(x, torch.SymInt) and hasattr(node, "maybe_as_int") and node.maybe_as_int() is not None:
            return node.maybe_as_int()
        return node.expr
    return x


def tree_leaves(obj) -> list:
    """Leaves of nested containers (lists, tuples, dicts, dataclasses and registered pytree nodes)."""
    from torch.utils import _pytree

    return _pytree.tree_leaves(obj)


def dispatch_mode_base():
    """The base class of a Python dispatch mode (sees every ATen op below autograd)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    return TorchDispatchMode


def flex_attention_ops() -> tuple:
    """(flex_attention, flex_attention_backward) higher-order ops, or () when this torch has none."""
    try:
        from torch._higher_order_ops.flex_attention import flex_attention, flex_attention_backward
    except ImportError:  # pragma: no cover
        return ()
    return flex_attention, flex_attention_backward


def own_tensors(module: torch.nn.Module) -> list:
    """(parameters, buffers) registered directly on ``module`` (not its children), None slots
    skipped."""
    return ([p for _, p in module.named_parameters(recurse=False, remove_duplicate=False)],
            [b for _, b in module.named_buffers(recurse=False, remove_duplicate=False)])


def int_mm(a, b):
    """int8 x int8 -> int32 matrix product (``torch._int_mm``); NotImplementedError when this torch
    has none (the CPU ceiling measurement then skips its int8 peak)."""
    fn = getattr(torch, "_int_mm", None)
    if fn is None:  # pragma: no cover
        raise NotImplementedError("this torch has no torch._int_mm")
    return fn(a, b)


def higher_order_ops() -> dict:
    """name -> higher-order operator (``cond``, ``invoke_subgraph``, ...) of this torch."""
    try:
        from torch._ops import _higher_order_ops
    except ImportError:  # pragma: no cover
        return {}
    return dict(_higher_order_ops)


def size_hint(x) -> int | None:
    """An int size as it is at compile time: an int, or a SymInt's hint (None: no hint, e.g. unbacked)."""
    if isinstance(x, int):
        return x
    if isinstance(x, torch.SymInt):
        node = x.node
        if hasattr(node, "maybe_as_int") and node.maybe_as_int() is not None:
            return node.maybe_as_int()
        hint = getattr(node, "hint", None)
        if hint is not None:
            return int(hint)
        try:
            return int(node.shape_env.size_hint(node.expr))
        except Exception:  # noqa: BLE001 - no hint (unbacked symbol)
            return None
    return None


def real_tensors():
    """A context where new tensors are real even inside a fake (or any dispatch) mode: a graph pass
    that computes with small tensors (rules/masks.py counts mask pairs) runs under analyze()'s fake mode."""
    from torch.utils._python_dispatch import _disable_current_modes

    return _disable_current_modes()


def is_fake(t) -> bool:
    """Is ``t`` a FakeTensor (shapes only, no values)?"""
    try:
        from torch._subclasses.fake_tensor import FakeTensor
    except ImportError:  # pragma: no cover
        return False
    return isinstance(t, FakeTensor)


def register_backend(name: str, fn) -> None:
    """Register ``fn`` as a named torch.compile backend (``backend="graphmfu"``); once per name."""
    from torch._dynamo.backends import registry

    if name in getattr(registry, "_COMPILER_FNS", {}):
        return
    registry.register_backend(compiler_fn=fn, name=name)


def scaled_mm(a, b, scale_a, scale_b, out_dtype):
    """fp8 x fp8 -> out_dtype product (``torch._scaled_mm``; ``a`` row-major, ``b`` column-major, fp32 scalar
    scales); NotImplementedError when this torch has none."""
    fn = getattr(torch, "_scaled_mm", None)
    if fn is None:
        raise NotImplementedError("this torch has no torch._scaled_mm")
    return fn(a, b, scale_a=scale_a, scale_b=scale_b, out_dtype=out_dtype)


def process_group(name):
    """The ProcessGroup a functional collective names (its ``group_name``; torch 2.13 may pass the group
    itself), None when this process has no such group.  Uses torch's private resolver."""
    if not isinstance(name, str):
        return name
    try:
        from torch.distributed.distributed_c10d import _resolve_process_group
    except ImportError:  # pragma: no cover - resolver moved
        return None
    try:
        return _resolve_process_group(name)
    except Exception:  # noqa: BLE001 - unknown name in this process
        return None


def size_symbols(gm) -> list:
    """Where a graph's inputs carry each size symbol: ``[(input index, dim or None, sympy symbol)]``
    (dim None: the input is the size itself), first occurrence of each symbol."""
    out, seen = [], set()
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    for i, node in enumerate(placeholders):
        val = node.meta.get("val")
        dims = [(None, val)] if isinstance(val, torch.SymInt) else (
            list(enumerate(val.shape)) if isinstance(val, torch.Tensor) else [])
        for d, size in dims:
            expr = sym_value(size) if isinstance(size, torch.SymInt) else None
            if getattr(expr, "is_Symbol", False) and str(expr) not in seen:
                seen.add(str(expr))
                out.append((i, d, expr))
    return out


# --------------------------------------------------------------------------- graphs compiled outside graphmfu
#
# torch.compile builds a wrapper per call (_TorchCompileInductorWrapper for Inductor, _TorchCompileWrapper for
# any other backend); Inductor's compiled graphs are CompiledFxGraph objects whose calls run the kernels.  Three
# observers, all in this module: where each torch.compile call came from (compile_sites, recorded from import on,
# bounded), how often graphs graphmfu did not compile were called while someone listens (ForeignCalls: the
# meter), and routing Inductor wrappers made before capture_all() to graphmfu's backend (route_inductor).

_SITES_MAX = 64
_sites: list = []  # {"backend", "mode", "caller", "line"}: torch.compile calls seen, newest last
_sites_lock = threading.Lock()
_observed: list = []


def _caller() -> str:
    """The first frame outside torch and graphmfu: ``transformers/modeling_utils.py:4826 get_compiled_call``."""
    import os
    import sys

    torch_dir = os.path.dirname(torch.__file__)
    here = os.path.dirname(os.path.abspath(__file__))
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
