"""Overheads, as ratios measured in one run (GPU):

1. step time under graphmfu.profile() / step time under a plain torch.profiler.profile() with the
   same activities (CPU + CUDA) — target <= 1.2;
2. step time with the graphmfu backend, not profiling / plain Inductor — target <= 1.01.

Steps: the minimal_llama prefill (T=512) and decode step, bf16, d 4096 (2 layers).  Each figure is
the median over 9 alternating blocks of 50 steps, timed with CUDA events.  Plain Inductor with its
caches off (graphmfu's compile setting) is timed too, to separate the cost of the setting from
graphmfu's own.
"""
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import torch  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402

import graphmfu  # noqa: E402
from examples.minimal_llama import build, parse_args  # noqa: E402


def block(step, n=50):
    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize()
    a.record()
    for _ in range(n):
        step()
    b.record()
    torch.cuda.synchronize()
    return a.elapsed_time(b) / n


def main():
    ma = parse_args(["--device", "cuda", "--dtype", "bf16", "--dim", "4096", "--ffn", "11008", "--heads", "32",
                     "--kv-heads", "32", "--layers", "2", "--seq", "512", "--vocab", "32000"])
    model, tokens, caches, next_tok, _ = build(ma)
    from graphmfu._inductor import caches_off, compile_plain

    def plain_caches_off(gm_, ex):  # plain Inductor under the cache setting graphmfu compiles with
        with caches_off():
            return compile_plain(gm_, ex)

    gm = torch.compile(model, backend=graphmfu.backend)
    plain = torch.compile(model)
    plain_nc = torch.compile(model, backend=plain_caches_off)
    torch.no_grad().__enter__()
    steps = {}
    for name, fn in (("graphmfu", gm), ("inductor", plain), ("inductor, caches off", plain_nc)):
        steps[name] = {"prefill": lambda fn=fn: fn(tokens), "decode": lambda fn=fn: fn(next_tok, caches)}
        for s in steps[name].values():
            for _ in range(5):
                s()
    acts = [ProfilerActivity.CPU, ProfilerActivity.CUDA]
    print(f"profile_overhead on {torch.cuda.get_device_name()}, torch {torch.__version__}")
    for stage in ("prefill", "decode"):
        r1, r2, t = [], [], {}
        for _ in range(9):
            with graphmfu.profile():
                tg = block(steps["graphmfu"][stage])
            with profile(activities=acts):
                tp = block(steps["graphmfu"][stage])
            r1.append(tg / tp)
            tb = block(steps["graphmfu"][stage])
            ti = block(steps["inductor"][stage])
            tn = block(steps["inductor, caches off"][stage])
            r2.append(tb / ti)
            t.setdefault("inductor caches off", []).append(tn)
            t.setdefault("profiled graphmfu", []).append(tg)
            t.setdefault("profiled plain", []).append(tp)
            t.setdefault("backend", []).append(tb)
            t.setdefault("inductor", []).append(ti)
        med = {k: statistics.median(v) for k, v in t.items()}
        q1, q2 = statistics.median(r1), statistics.median(r2)
        print(f"{stage}: step ms — under graphmfu.profile {med['profiled graphmfu']:.3f}, under torch.profiler "
              f"{med['profiled plain']:.3f}, graphmfu backend {med['backend']:.3f}, plain Inductor {med['inductor']:.3f}, "
              f"plain Inductor with caches off {med['inductor caches off']:.3f}")
        print(f"{stage}: graphmfu.profile / torch.profiler = {q1:.3f} (target <= 1.2: {'met' if q1 <= 1.2 else 'NOT met'}); "
              f"backend / Inductor = {q2:.3f} (target <= 1.01: {'met' if q2 <= 1.01 else 'NOT met'})")


if __name__ == "__main__":
    main()
