"""The forward -> backward memory: a backward graph receives the mask as a saved forward output (a
placeholder of the same name); the forward's pass remembers what it read of its outputs under Dynamo's
compile id (``_remember``) and the backward of the same compile reads it back (``_linked``).  ``_SAVED``
(last 256 compiles) and its lock are the module's state; decomposed.py's ``_DECOMP`` shares the lock."""
from __future__ import annotations

import collections
import threading

import torch

from graphmfu import _inductor


_SAVED: "collections.OrderedDict[str, tuple]" = collections.OrderedDict()
_SAVED_LOCK = threading.Lock()


def _linked(gm, cid) -> dict:
    """What the forward graph of the same compile read of its outputs, when ``gm`` is its backward."""
    if cid is None:
        return {}
    with _SAVED_LOCK:
        entry = _SAVED.get(cid)
    if entry is None:
        return {}
    outputs, values = entry
    saved = [n.name for n in gm.graph.nodes if n.op == "placeholder" and not n.name.startswith("tangents")]
    if not saved or not set(saved) <= outputs:
        return {}
    return values


def _remember(gm, cid, walker) -> None:
    """A forward graph: keep what the walk read of its outputs for its backward (always replacing what
    an earlier graph of the same compile id left, so a stale entry is never read)."""
    if cid is None:
        return
    placeholders = [n.name for n in gm.graph.nodes if n.op == "placeholder"]
    if any(p.startswith("tangents") for p in placeholders):
        return  # a backward graph: it reads, the forward writes
    out = next((n for n in reversed(gm.graph.nodes) if n.op == "output"), None)
    names, values = set(), {}
    for a in _inductor.tree_leaves(out.args if out is not None else ()):
        if isinstance(a, torch.fx.Node):
            names.add(a.name)
            got = walker.memo.get(a)
            if got is not None and got.kind != "opaque":
                values[a.name] = got
    with _SAVED_LOCK:
        _SAVED[cid] = (names, values)
        _SAVED.move_to_end(cid)
        while len(_SAVED) > 256:
            _SAVED.popitem(last=False)
