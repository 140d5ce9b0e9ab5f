"""``graphmfu.capture_all()``: every ``torch.compile`` in the process compiles with graphmfu's backend.

Frameworks compile for you: transformers' ``generate()`` compiles the model's ``__call__`` itself (static
cache, CUDA), its continuous batching compiles its step, flex attention compiles its kernels.  Those compiles
use Inductor, not graphmfu, and graphmfu would see none of their graphs.  While capture_all is on:

* ``torch.compile(...)`` and ``nn.Module.compile(...)`` (which calls it) with the Inductor backend (the
  default, ``backend=None`` or ``"inductor"``) get graphmfu's backend with the caller's ``mode`` and
  ``options`` (Inductor config, ``mode="reduce-overhead"``'s CUDA graphs included); ``dynamic``,
  ``fullgraph`` and every other argument go to torch.compile unchanged.  graphmfu's backend compiles with
  Inductor, so outputs are those of the original backend.
* an Inductor wrapper made before capture_all (``f = torch.compile(g)`` earlier, a decorator at import)
  compiles its next graphs the same way (frames it already compiled keep their plain Inductor code until
  Dynamo recompiles them, e.g. after a reset of Dynamo).
* any other backend (``"aot_eager"``, ``"cudagraphs"``, a function) is left alone and named in ``left_alone``
  (and in one warning): its graphs are not counted.

    with graphmfu.capture_all():
        out = model.generate(ids, max_new_tokens=32, cache_implementation="static")
    print(graphmfu.report().summary())

``graphmfu run`` uses it.  Two captures cannot be on at once (the second is an error)."""
from __future__ import annotations

import threading
from typing import Callable

import torch

from graphmfu import _inductor
from graphmfu.capture import Backend, backend as backend_factory
from graphmfu.errors import GraphMFUError
from graphmfu.registry import DEFAULT, Registry

_inductor.observe_compiles()  # from import on: a graph compiled outside graphmfu is named by its compile's caller

_active: list = []  # the capture that is on (at most one: torch.compile is one function)
_lock = threading.Lock()


def _what(model) -> str:
    """``LlamaForCausalLM.__call__``, ``ModelRunner._forward_process_and_sample``, ``f``: what was compiled."""
    owner = getattr(model, "__self__", None)
    fn = getattr(model, "__func__", model)
    name = getattr(fn, "__name__", type(model).__name__)
    if owner is not None:
        return f"{type(owner).__name__}.{'__call__' if name in ('_wrapped_call_impl', '_call_impl') else name}"
    if isinstance(model, torch.nn.Module):
        return type(model).__name__
    return getattr(fn, "__qualname__", name)


def _inductor_backend(backend) -> bool:
    return backend is None or backend == "inductor"


def _ours(backend) -> bool:
    return backend is backend_factory or isinstance(backend, Backend) or backend == "graphmfu" or \
        getattr(backend, "_graphmfu_backend", False)


class CaptureAll:
    """Routes torch.compile to graphmfu's backend until ``close()`` (or the end of its ``with`` block).

    ``routed``: one entry per routed torch.compile call (``what`` was compiled, the ``caller``, ``mode``,
    ``dynamic``); ``left_alone``: calls with another backend.  ``wrap(backend) -> backend`` lets a caller put
    its own layer around graphmfu's backend (``graphmfu run`` counts compiles), ``on_compiled(obj) -> obj``
    sees each compiled result."""

    def __init__(self, registry: Registry | None = None, *, wrap: Callable | None = None,
                 on_compiled: Callable | None = None):
        self.registry = registry or DEFAULT
        self.routed: list[dict] = []
        self.left_alone: list[dict] = []
        self._wrap = wrap or (lambda b: b)
        self._on_compiled = on_compiled or (lambda c: c)
        self._original = None
        self._undo_route = None
        self.open()

    # ---------------------------------------------------------------- on / off
    def open(self) -> "CaptureAll":
        with _lock:
            if _active:
                raise GraphMFUError("graphmfu.capture_all() is already on (torch.compile is one function): close "
                                    "the first (its 'with' block, or .close()) before starting another")
            _active.append(self)
        _inductor.observe_compiles()
        self._original = torch.compile
        torch.compile = self._compile(self._original)
        self._undo_route = _inductor.route_inductor(self._for_wrapper)
        return self

    def close(self) -> None:
        with _lock:
            if self not in _active:
                return
            _active.remove(self)
        if torch.compile is not self._original and getattr(torch.compile, "_graphmfu_capture", None) is self:
            torch.compile = self._original
        if self._undo_route is not None:
            self._undo_route()

    def __enter__(self) -> "CaptureAll":
        return self

    def __exit__(self, *exc) -> bool:
        self.close()
        return False

    # ---------------------------------------------------------------- routing
    def _backend(self, mode=None, options=None):
        return self._wrap(Backend(mode=mode, options=options, registry=self.registry))

    def _for_wrapper(self, config: dict):
        """graphmfu's backend for an Inductor wrapper made before capture_all (its mode already expanded)."""
        self.routed.append({"what": "(a torch.compile made before capture_all)", "caller": "?", "mode": None,
                            "dynamic": None, "options": dict(config)})
        return self._backend(options=config)

    def _compile(self, original):
        capture = self

        def compile(model=None, **kw):
            if model is None:  # @torch.compile(mode=...): a decorator factory
                return lambda m: compile(m, **kw)
            backend = kw.get("backend", None)
            entry = {"what": _what(model), "caller": _inductor._caller(), "mode": kw.get("mode"),
                     "dynamic": kw.get("dynamic")}
            if _inductor_backend(backend):
                kw["backend"] = capture._backend(kw.pop("mode", None), kw.pop("options", None))
                capture.routed.append(entry)
            elif _ours(backend):  # graphmfu's already (its registered name too): through the caller's layer
                kw["backend"] = capture._wrap(backend_factory if backend == "graphmfu" else backend)
                capture.routed.append(entry)
            else:
                name = backend if isinstance(backend, str) else getattr(backend, "__name__", type(backend).__name__)
                capture.left_alone.append({**entry, "backend": str(name)})
                capture.registry.warn_once(f"left_alone:{name}", (
                    f"graphmfu.capture_all(): torch.compile({entry['what']}, backend={name!r}) from {entry['caller']} "
                    f"is not Inductor and is left alone: its graphs are not counted"))
            return capture._on_compiled(original(model, **kw))

        compile.__doc__ = original.__doc__
        compile.__wrapped__ = original
        compile._graphmfu_capture = capture
        return compile


def capture_all(registry: Registry | None = None) -> CaptureAll:
    """Route every ``torch.compile`` / ``nn.Module.compile`` in the process (yours and any framework's) to
    graphmfu's backend, keeping the caller's mode, options and ``dynamic``; on until ``.close()`` or the end
    of ``with graphmfu.capture_all():``.  See graphmfu/capture_all.py."""
    return CaptureAll(registry)


def active() -> CaptureAll | None:
    """The capture that is on, if any."""
    return _active[0] if _active else None


__all__ = ["capture_all", "CaptureAll", "active"]

