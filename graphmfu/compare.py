"""``graphmfu.compare``: the same model, eager and compiled, under identical conditions.

Per side, in this order: ``warmup`` untimed iterations of every stage (the compiled side compiles
here); then ``iters`` iterations under ``torch.profiler`` with the same activities, each stage call
inside ``graphmfu.stage(name)`` and between two ``torch.cuda.Event``\\ s (wall clock on CPU), which
the report checks its own span against; then ``iters`` iterations with no profiler (``clean`` times:
the speedup a user sees without any tool attached).  The eager side also records one call of each
stage with the dispatch recorder (``eager.py``), before its profile, so its overhead never lands in
the timed iterations.
"""
from __future__ import annotations

import time
from typing import Any, Callable, Mapping

import torch

from graphmfu import _inductor, eager
from graphmfu.capture import Backend
from graphmfu.comparison import Comparison
from graphmfu.errors import GraphMFUError
from graphmfu.hardware import device_for
from graphmfu.profile import ProfileSession
from graphmfu.progress import progress
from graphmfu.registry import Registry
from graphmfu.stage import open_stages, stage


def _first_line(e: BaseException) -> str:
    msg = str(e).strip().splitlines()
    return f"{type(e).__name__}: {msg[0] if msg else ''}"


def _grad_context(training: bool):
    return torch.enable_grad() if training else torch.no_grad()


def normalise_stages(args: tuple, kwargs: dict, stages, training: bool) -> dict[str, Callable]:
    """``stages``: None (one stage "forward" on ``args``), or {name: args tuple | callable(model)}."""
    def call_with(a, kw):
        def fn(m):
            with _grad_context(training):
                out = m(*a, **kw)
                if training:
                    _backward(out)
            return out
        return fn

    if stages is None:
        return {"train" if training else "forward": call_with(args, kwargs)}
    if not isinstance(stages, Mapping) or not stages:
        raise GraphMFUError(f"compare(stages=...) takes a non-empty dict {{name: args tuple or callable(model)}}, "
                            f"got {type(stages).__name__}")
    if args or kwargs:
        raise GraphMFUError("compare(model, *args, stages=...): give the inputs once, either as args (one stage) "
                            "or inside stages")
    out = {}
    for name, v in stages.items():
        if not isinstance(name, str) or not name or "/" in name:
            raise GraphMFUError(f"compare: stage names are non-empty strings without '/', got {name!r}")
        if callable(v):
            out[name] = v
        elif isinstance(v, (tuple, list)):
            out[name] = call_with(tuple(v), {})
        else:
            raise GraphMFUError(f"compare: stage {name!r} must be an args tuple or a callable(model), "
                                f"got {type(v).__name__}")
    return out


def _backward(out) -> None:
    leaves = [t for t in _inductor.tree_leaves(out)
              if isinstance(t, torch.Tensor) and t.requires_grad and t.is_floating_point()]
    if not leaves:
        raise GraphMFUError("compare(training=True): the model's output does not require grad")
    torch.autograd.backward([t.float().sum() for t in leaves])


def _is_cuda(model, args, kwargs) -> bool:
    for t in [*model.parameters(), *model.buffers(), *_inductor.tree_leaves((args, kwargs))]:
        if isinstance(t, torch.Tensor):
            return t.is_cuda
    return False


class _Timer:
    """CUDA events around each stage call (wall clock on CPU); mean seconds per call."""

    def __init__(self, cuda: bool):
        self.cuda, self.marks = cuda, {}

    def run(self, name: str, fn: Callable[[], Any]):
        if self.cuda:
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            self.marks.setdefault(name, []).append((a, b))
        else:
            t0 = time.perf_counter()
            fn()
            self.marks.setdefault(name, []).append(time.perf_counter() - t0)

    def mean_s(self) -> dict[str, float]:
        if self.cuda:
            torch.cuda.synchronize()
        out = {}
        for k, v in self.marks.items():
            secs = [m[0].elapsed_time(m[1]) * 1e-3 if isinstance(m, tuple) else m for m in v]
            out[k] = sum(secs) / len(secs)
        return out


def _loop(stage_fns: dict, model, iters: int, timer: _Timer | None, staged: bool, side: str, step=None,
          bar=None, what: str = "") -> None:
    for _ in range(iters):
        for name, fn in stage_fns.items():
            def call(fn=fn):
                try:
                    fn(model)
                except GraphMFUError:
                    raise
                except Exception as e:  # noqa: BLE001 - the user's model failed: say which side and stage
                    hint = ("; fix the model or the stage inputs, or compare a model that compiles" if side == "compiled"
                            else "; check the stage inputs")
                    raise GraphMFUError(f"model fails {'under torch.compile' if side == 'compiled' else 'eagerly'} "
                                        f"in stage {name!r}: {_first_line(e)}{hint}") from None
            if staged:
                with stage(name):
                    timer.run(name, call) if timer else call()
            else:
                timer.run(name, call) if timer else call()
        if step is not None:
            step()
        if bar is not None:
            bar.update(1, f"{side}: {what}")


def _schedule(iters: int) -> dict:
    """One profiler warm-up iteration (traced, then discarded: the profiler's own start-up cost lands
    there), then ``iters`` recorded ones; the same on both sides."""
    from torch.profiler import schedule

    return {"schedule": schedule(wait=0, warmup=1, active=iters, repeat=1)}


def _settle(step, cuda: bool):
    """End of the profiler's warm-up iteration: its GPU work finishes before the recorded window opens."""
    def fn():
        if cuda:
            torch.cuda.synchronize()
        step()
    return fn


def compare(model, *args, stages=None, warmup: int = 3, iters: int = 5, mode: str | None = None,
            training: bool = False, device=None, clean: bool = True, **kwargs):
    """Run ``model`` eagerly and compiled (graphmfu backend, ``mode``) under identical conditions and
    return a :class:`~graphmfu.comparison.Comparison` (``.table()``, ``.markdown()``, ``.save()``).

    ``stages``: {name: args tuple or callable(model)}; default one stage on ``args``/``kwargs``
    (under ``no_grad``, or forward + backward with ``training=True``).  ``device``: the ceilings
    (default: where the model lives)."""
    if not isinstance(model, torch.nn.Module):
        raise GraphMFUError(f"compare(model, ...) takes a torch.nn.Module, got {type(model).__name__}")
    for name, v in (("warmup", warmup), ("iters", iters)):
        if not isinstance(v, int) or v < (0 if name == "warmup" else 1):
            raise GraphMFUError(f"compare({name}=...) takes an int >= {0 if name == 'warmup' else 1}, got {v!r}")
    if open_stages():
        raise GraphMFUError(f"compare() called inside graphmfu.stage({open_stages()[-1]!r}); call it outside stages")
    fns = normalise_stages(args, kwargs, stages, training)
    cuda = _is_cuda(model, args, kwargs)
    events, clean_s = {}, {}
    with progress(total=warmup + max(warmup, 1) + 2 * (1 + iters + (iters if clean else 0)) + 1,
                  desc="graphmfu compare") as bar:
        # ---- eager: one recorded call per stage (outside the profile), then the same profile as compiled
        _loop(fns, model, warmup, None, False, "eager", bar=bar, what="warm-up")
        e_registry = Registry()
        for name, fn in fns.items():
            eager.record(model, lambda fn=fn: fn(model), name, e_registry, "cuda" if cuda else "cpu")
        bar.update(1, "eager: recorded ops")
        e_report, events["eager"], clean_s["eager"] = _profiled(fns, model, e_registry, cuda, iters, clean, "eager",
                                                                device, bar)

        # ---- compiled
        c_registry = Registry()
        compiled = torch.compile(model, backend=Backend(mode=mode, registry=c_registry))
        _loop(fns, compiled, max(warmup, 1), None, False, "compiled", bar=bar, what="warm-up (compiles)")
        c_report, events["compiled"], clean_s["compiled"] = _compiled_side(fns, compiled, c_registry, cuda, iters,
                                                                           clean, device, bar)
    dev = device_for((g.device for g in c_registry.graphs), device)
    return Comparison.of(e_report, c_report, dev,
                         {"warmup": warmup, "iters": iters, "mode": mode, "training": training, "cuda": cuda,
                          "profiler": "CPU+CUDA" if cuda else "CPU", "stages": list(fns)}, events, clean_s)


def _compiled_side(fns, compiled, registry, cuda: bool, iters: int, clean: bool, device, bar):
    if not registry.graphs:
        raise GraphMFUError("compare: the compiled side produced no graph"
                            + (f" ({registry.failures[0]})" if registry.failures else
                               " (torch.compile fell back to running the model eagerly)")
                            + "; the model fails under torch.compile: run it with "
                              "torch.compile(model, fullgraph=True) to see why")
    return _profiled(fns, compiled, registry, cuda, iters, clean, "compiled", device, bar)


def _profiled(fns, model, registry, cuda: bool, iters: int, clean: bool, side: str, device, bar=None):
    """One side's profile (warm-up iteration, then ``iters`` recorded ones with CUDA events), its report,
    the event times, and the times of ``iters`` unprofiled iterations."""
    timer = _Timer(cuda)
    with ProfileSession(registry=registry, cuda=cuda, **_schedule(iters)) as session:
        _loop(fns, model, 1, None, True, side, step=_settle(session.prof.step, cuda), bar=bar,
              what="profiler warm-up")
        _loop(fns, model, iters, timer, True, side, step=session.prof.step, bar=bar, what="profiled")
    events = timer.mean_s()
    report = session.report(device)
    unprofiled = _Timer(cuda)
    if clean:
        _loop(fns, model, iters, unprofiled, False, side, bar=bar, what="no profiler")
    return report, events, unprofiled.mean_s() if clean else {}


__all__ = ["compare", "normalise_stages"]
