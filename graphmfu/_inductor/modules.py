"""Eager module tracking: the module running now (torch's ``ModuleTracker`` with its private name table seeded
from the model, so paths match the compiled graphs'), the module that created each autograd node
(``ModuleTagger``, for the backward), the autograd node running now, and a module's own tensors.
"""
from __future__ import annotations

import contextlib

import torch

from graphmfu._inductor.ops import tree_leaves


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


def current_autograd_node():
    """The autograd node running now (backward), or None (forward, or no such API)."""
    get = getattr(torch._C, "_current_autograd_node", None)
    return get() if get is not None else None


def own_tensors(module: torch.nn.Module) -> list:
    """(parameters, buffers) registered directly on ``module`` (not its children), None slots
    skipped."""
    return ([p for _, p in module.named_parameters(recurse=False, remove_duplicate=False)],
            [b for _, b in module.named_buffers(recurse=False, remove_duplicate=False)])
