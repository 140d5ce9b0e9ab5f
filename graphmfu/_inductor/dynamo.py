"""Dynamo: the frame and the compile running now (the function, its ``self`` and the modules calling it, its
compile id), Dynamo's names for modules (``L['self'].layers[0]`` -> ``layers.0``) and where a frame's module
sits in the model, the marks and counters its compiles leave behind (undone after an analysis; read as the
user's fallbacks), and its wrapper errors.
"""
from __future__ import annotations

import contextlib
import re
from typing import Any, Mapping

import torch


RESET_DYNAMO = "torch._dynamo.reset()"  # the call that clears Dynamo's marks (named in messages; this torch's API)


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
        obj = uncompiled(obj)
        if isinstance(obj, torch.nn.Module) and id(obj) not in seen:
            seen.add(id(obj))
            callers.append(obj)
        f = f.f_back
    return f"{code.co_filename}:{code.co_name}:{code.co_firstlineno}", me, callers[::-1]


def uncompiled(obj):
    """The module ``torch.compile`` wrapped (``OptimizedModule._orig_mod``, through nested wrappers), else ``obj``."""
    while isinstance(getattr(obj, "_orig_mod", None), torch.nn.Module):
        obj = obj._orig_mod
    return obj


def uncompiled_name(name: str) -> str:
    """A parameter or module name under a compiled module without the wrapper's level (``_orig_mod.a.w`` ->
    ``a.w``)."""
    return ".".join(b for b in name.split(".") if b != "_orig_mod")


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


# --------------------------------------------------------------------------- marks and fallbacks


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


def is_dynamo_error(e: BaseException) -> bool:
    """One of Dynamo's wrapper exceptions (TorchRuntimeError, Unsupported...), which hide the real
    error in ``__context__`` (raised ``from None``)."""
    return type(e).__module__.startswith("torch._dynamo")
