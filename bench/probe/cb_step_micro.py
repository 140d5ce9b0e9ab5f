"""Per-step host cost of graphmfu's parts in a continuous-batching engine step, on the GPU machine:
(1) ``Meter.step(stream=)`` around one small kernel, against the bare loop; (2) a cProfile of graphmfu's own
functions in ``EngineSteps._measured`` (the engine's compute left out), over 20 served runs of
bench/cb_hf_gpu.py's workload.

    python bench/probe/cb_step_micro.py [--cpu]
"""
import argparse
import cProfile
import os
import pstats
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch  # noqa: E402

import graphmfu  # noqa: E402


def micro(device):
    x = torch.zeros(16, device=device)
    s = torch.cuda.Stream() if device == "cuda" else None
    n = 3000
    for label, body in (("bare", None), ("meter.step(stream=)", graphmfu.meter())):
        m = body
        ctx = m.hold() if m is not None else None
        if ctx is not None:
            ctx.__enter__()
        for rep in range(2):
            t = time.perf_counter()
            for _ in range(n):
                if m is None:
                    x.add_(1)
                else:
                    with m.step(tokens=8, stream=s):
                        x.add_(1)
            dt = (time.perf_counter() - t) / n * 1e6
        if ctx is not None:
            ctx.__exit__(None, None, None)
        print(f"  {label:28s} {dt:7.1f} us per step")


def profiled(device):
    from transformers import GenerationConfig

    from bench.cb_hf_gpu import CPU, GPU, build, cb_config, prompts, run, serve
    from graphmfu.integrations import continuous_batching as cbm

    torch._dynamo.config.recompile_limit = 64
    c = CPU if device == "cpu" else GPU
    ps = prompts(c)
    gc = GenerationConfig(max_new_tokens=c["NEW"], do_sample=False, eos_token_id=-1, pad_token_id=0)
    ours = build(c, device, torch.float32 if device == "cpu" else torch.bfloat16)
    with graphmfu.capture_all(), cbm.EngineSteps(meter=graphmfu.meter()):
        run(ours, ps, gc, cb_config(c, 1), persistent=True)
    pr = cProfile.Profile()
    orig = cbm.EngineSteps._measured
    wall = [0.0, 0]

    def measured(self, compute, *a):
        inner = [0.0]

        def comp(*x, **k):
            pr.disable()
            t = time.perf_counter()
            try:
                return compute(*x, **k)
            finally:
                inner[0] += time.perf_counter() - t
                pr.enable()
        t0 = time.perf_counter()
        pr.enable()
        try:
            return orig(self, comp, *a)
        finally:
            pr.disable()
            wall[0] += time.perf_counter() - t0 - inner[0]
            wall[1] += 1
    cbm.EngineSteps._measured = measured
    try:
        with cbm.EngineSteps(meter=graphmfu.meter()):
            for _ in range(20):
                serve(ours, ps, gc)
    finally:
        cbm.EngineSteps._measured = orig
    print(f"  _measured less the engine's compute: {wall[0] / max(wall[1], 1) * 1e6:.1f} us per step "
          f"({wall[1]} steps, under cProfile)")
    pstats.Stats(pr).sort_stats("tottime").print_stats(25)


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--cpu", action="store_true")
    a = ap.parse_args()
    dev = "cpu" if a.cpu else "cuda"
    print("===== Meter.step, host microseconds per step")
    micro(dev)
    print("===== EngineSteps._measured, graphmfu's functions by own time")
    profiled(dev)
