"""Where graphmfu's per-step cost goes in transformers' continuous batching (H200 diagnosis for issue 20):
the engine's serving window (bench/cb_hf_gpu.py's setup and ``serve``: every request queued before the loop) for plain Inductor and for graphmfu's
compile with nothing attached, bookkeeping only, stages, and the meter; then a cProfile of the worker
thread's compute_batch + prepare_batch_tensors with the meter (graphmfu's functions by own time).

    python bench/probe/cb_cost_diag.py [--repeats 5]
"""
import argparse
import cProfile
import io
import os
import pstats
import statistics
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch  # noqa: E402

import graphmfu  # noqa: E402
from bench.cb_hf_gpu import CPU, GPU, build, cb_config, prompts, run, serve  # noqa: E402
from graphmfu.integrations.continuous_batching import EngineSteps  # noqa: E402


def main():
    from transformers import GenerationConfig
    from transformers.generation.continuous_batching import input_outputs, model_runner

    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--cpu", action="store_true", help="a small dry run on the CPU")
    ap.add_argument("--components-only", action="store_true", help="only the per-step parts")
    a = ap.parse_args()
    torch._dynamo.config.recompile_limit = 64
    c = CPU if a.cpu else GPU
    device, dtype = ("cpu", torch.float32) if a.cpu else ("cuda", torch.bfloat16)
    ps = prompts(c)
    gc = GenerationConfig(max_new_tokens=c["NEW"], do_sample=False, eos_token_id=-1, pad_token_id=0)
    plain = build(c, device, dtype)
    run(plain, ps, gc, cb_config(c, 1), persistent=True)
    ours = build(c, device, dtype)
    with graphmfu.capture_all(), EngineSteps(meter=graphmfu.meter()):
        run(ours, ps, gc, cb_config(c, 1), persistent=True)
    modes = {"plain": (plain, None), "graphmfu compile, nothing attached": (ours, None),
             "bookkeeping only (EngineSteps, no meter)": (ours, lambda: EngineSteps(meter=None, stages=False)),
             "meter": (ours, lambda: EngineSteps(meter=graphmfu.meter()))}
    if a.components_only:
        _components(ours, ps, gc)
        return
    times = {k: [] for k in modes}
    for _ in range(a.repeats):
        for k, (m, ctx) in modes.items():
            if ctx is None:
                times[k].append(serve(m, ps, gc)[1])
            else:
                with ctx():
                    times[k].append(serve(m, ps, gc)[1])
    base = statistics.median(times["plain"])
    for k, v in times.items():
        print(f"{k:40s} median {statistics.median(v) * 1e3:7.1f} ms  {statistics.median(v) / base - 1:+.2%}  "
              f"{[round(x * 1e3, 1) for x in v]}")
    _components(ours, ps, gc)
    for label, ctx in (("plain", None), ("meter", lambda: EngineSteps(meter=graphmfu.meter()))):
        prof = cProfile.Profile()
        cm = ctx() if ctx is not None else None
        if cm is not None:
            cm.__enter__()  # its patches first: the profile wraps them
        saved = []
        for cls, name in ((model_runner.ModelRunner, "compute_batch"),
                          (input_outputs.ContinuousBatchingIOs, "prepare_batch_tensors")):
            orig = getattr(cls, name)
            saved.append((cls, name, orig))

            def f(*args, _orig=orig, **kw):
                prof.enable()
                try:
                    return _orig(*args, **kw)
                finally:
                    prof.disable()
            setattr(cls, name, f)
        serve(plain if label == "plain" else ours, ps, gc)
        for cls, name, orig in saved:
            setattr(cls, name, orig)
        if cm is not None:
            cm.__exit__(None, None, None)
        s = io.StringIO()
        st = pstats.Stats(prof, stream=s)
        st.sort_stats("tottime").print_stats(25)
        print(f"===== cProfile, {label}, one generate_batch (worker thread: compute_batch + prepare_batch_tensors)")
        print("\n".join(s.getvalue().splitlines()[:45]))


def _components(model, ps, gc):
    """Per engine step, the worker thread's time in each part of graphmfu's work (perf_counter around it)."""
    import contextlib
    import functools
    import time

    from transformers.generation.continuous_batching import input_outputs

    from graphmfu import _inductor
    from graphmfu.integrations import continuous_batching as cbm

    acc = {"prepare (ours, beyond the engine's)": 0.0, "step (ours, around the engine's compute)": 0.0,
           "  of which Meter.begin": 0.0, "  of which Meter.end": 0.0,
           "call_values (sizes + probe)": 0.0, "probe alone": 0.0, "compute_batch (engine, inside the step)": 0.0}
    from graphmfu.meter import Meter

    orig_begin, orig_end = Meter.begin, Meter.end

    def timer(fn, key):
        def timed(self, *a, **k):
            t = time.perf_counter()
            try:
                return fn(self, *a, **k)
            finally:
                acc[key] += time.perf_counter() - t
        return timed
    timed_begin, timed_end = timer(orig_begin, "  of which Meter.begin"), timer(orig_end, "  of which Meter.end")
    Meter.begin, Meter.end = timed_begin, timed_end
    n = {"steps": 0}
    inner = input_outputs.ContinuousBatchingIOs.prepare_batch_tensors

    @functools.wraps(inner)
    def timed_inner(*a, **k):
        t = time.perf_counter()
        try:
            return inner(*a, **k)
        finally:
            acc["prepare (ours, beyond the engine's)"] -= time.perf_counter() - t
    input_outputs.ContinuousBatchingIOs.prepare_batch_tensors = timed_inner
    orig_measured = cbm.EngineSteps._measured

    def timed_measured(self, compute, *a):
        inner_t = [0.0]

        def timed_compute(*x, **k):
            t = time.perf_counter()
            try:
                return compute(*x, **k)
            finally:
                inner_t[0] += time.perf_counter() - t
        n["steps"] += 1
        t0 = time.perf_counter()
        try:
            return orig_measured(self, timed_compute, *a)
        finally:
            total = time.perf_counter() - t0
            acc["step (ours, around the engine's compute)"] += total - inner_t[0]
            acc["compute_batch (engine, inside the step)"] += inner_t[0]
    cbm.EngineSteps._measured = timed_measured
    orig_cv = _inductor.call_values

    def timed_cv(inputs, size_args, probes=(), resolve=True):
        t = time.perf_counter()
        try:
            return orig_cv(inputs, size_args, probes, resolve)
        finally:
            acc["call_values (sizes + probe)"] += time.perf_counter() - t
    _inductor.call_values = timed_cv
    wrapped = []

    def timed_probe(fn):
        def probe(inputs):
            t = time.perf_counter()
            try:
                return fn(inputs)
            finally:
                acc["probe alone"] += time.perf_counter() - t
        return probe
    try:
        steps = EngineSteps(meter=graphmfu.meter())
        with steps:
            outer = input_outputs.ContinuousBatchingIOs.prepare_batch_tensors

            @functools.wraps(outer)
            def timed_outer(*a, **k):
                t = time.perf_counter()
                try:
                    return outer(*a, **k)
                finally:
                    acc["prepare (ours, beyond the engine's)"] += time.perf_counter() - t
            input_outputs.ContinuousBatchingIOs.prepare_batch_tensors = timed_outer
            for g in graphmfu.registry.DEFAULT.tagger._compiled:
                obj = g()
                if obj is not None and getattr(obj, "_graphmfu_probes", None):
                    wrapped.append((obj, obj._graphmfu_probes))
                    obj._graphmfu_probes = tuple((name, timed_probe(fn)) for name, fn in obj._graphmfu_probes)
            for _ in range(3):
                serve(model, ps, gc)
            input_outputs.ContinuousBatchingIOs.prepare_batch_tensors = outer
    finally:
        Meter.begin, Meter.end = orig_begin, orig_end
        cbm.EngineSteps._measured = orig_measured
        _inductor.call_values = orig_cv
        input_outputs.ContinuousBatchingIOs.prepare_batch_tensors = inner
        for obj, probes in wrapped:
            obj._graphmfu_probes = probes
    print(f"===== per engine step ({n['steps']} steps), microseconds of the worker thread:")
    for k, v in acc.items():
        print(f"  {k:45s} {v / max(n['steps'], 1) * 1e6:9.1f}")


if __name__ == "__main__":
    main()
