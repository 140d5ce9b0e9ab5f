"""Tensors and sizes: fake and meta copies of tensors, a model's tensors swapped for a block, real tensors inside
a fake mode, and a graph's size symbols (where its inputs carry them, their values and hints).
"""
from __future__ import annotations

import contextlib
from typing import Callable, Mapping

import torch


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


def is_fake(t) -> bool:
    """Is ``t`` a FakeTensor (shapes only, no values)?"""
    try:
        from torch._subclasses.fake_tensor import FakeTensor
    except ImportError:  # pragma: no cover
        return False
    return isinstance(t, FakeTensor)


def to_meta(t: torch.Tensor) -> torch.Tensor:
    """A meta tensor of ``t``'s shape, dtype and strides (float tensors keep requires_grad)."""
    m = t.detach().to("meta") if t.device.type != "meta" else t.detach()
    return m.requires_grad_(t.requires_grad) if (t.is_floating_point() or t.is_complex()) else m


def real_tensors():
    """A context where new tensors are real even inside a fake (or any dispatch) mode: a graph pass
    that computes with small tensors (rules/masks.py counts mask pairs) runs under analyze()'s fake mode."""
    from torch.utils._python_dispatch import _disable_current_modes

    return _disable_current_modes()


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


# --------------------------------------------------------------------------- sizes


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


def sym_value(x):
    """An int for a SymInt with a fixed value, else the sympy expression behind it (SymFloat/SymBool
    too); other values unchanged."""
    if isinstance(x, (torch.SymInt, torch.SymFloat, torch.SymBool)):
        node = x.node
        if isinstance(x, torch.SymInt) and hasattr(node, "maybe_as_int") and node.maybe_as_int() is not None:
            return node.maybe_as_int()
        return node.expr
    return x


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
