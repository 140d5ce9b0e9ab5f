"""Probe (kept for reference): the host time per kernel launch with and without the profiler.

(a) The headroom bench's norm-plant trunk (a 2-layer Llama d1024 compiled by graphmfu) at each batch x seq:
    host time of one call with no profiler (perf_counter around the call, the device synchronised before and
    after, median of 20) over its launches, against ``host_in_graphs_s`` per launch of the same calls under
    ``graphmfu.profile()``.
(b) An eager ``add_`` on a 16-element tensor, 200 launches timed on the host, without and with the profiler:
    whether such a calibration at a profile's start would predict (a)'s difference.

    python bench/probe/profiler_launch_cost.py [--shapes 16x1024,32x1024]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

import graphmfu  # noqa: E402
from headroom_gpu import CALLS, SMALL, _Trunk, build, compiled, fresh  # noqa: E402


def host_per_call(fn, n=20) -> float:
    ts = []
    for _ in range(n):
        torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
        torch.cuda.synchronize()
    return statistics.median(ts)


def aten_launch(n=200, profiled=False) -> float:
    x = torch.zeros(16, device="cuda")
    x.add_(1)
    torch.cuda.synchronize()

    def run():
        t = time.perf_counter()
        for _ in range(n):
            x.add_(1)
        dt = (time.perf_counter() - t) / n
        torch.cuda.synchronize()
        return dt
    if not profiled:
        return min(run() for _ in range(5))
    with graphmfu.profile():
        return min(run() for _ in range(5))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shapes", default="16x1024,32x1024")
    a = ap.parse_args(argv)
    print(f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}")
    plain, prof = aten_launch(), aten_launch(profiled=True)
    print(f"eager add_ on 16 floats, host per launch (best of 5 x 200): {plain * 1e6:.2f} us without the profiler, "
          f"{prof * 1e6:.2f} us under graphmfu.profile(): +{(prof - plain) * 1e6:.2f} us")
    for shape in a.shapes.split(","):
        b, s = (int(x) for x in shape.split("x"))
        fresh()
        tokens = torch.randint(0, 1000, (b, s), device="cuda")
        body = compiled(_Trunk(build(SMALL, "cuda", torch.bfloat16)))
        with torch.no_grad():
            for _ in range(3):
                body(tokens)
            host = host_per_call(lambda: body(tokens))
            torch.cuda.synchronize()
            with graphmfu.profile() as p:
                with graphmfu.stage("step"):
                    for _ in range(CALLS):
                        body(tokens)
        st = {x["name"]: x for x in p.report().stages}["step"]
        launches = st["kernel_launches"] / CALLS
        inside = st["host_in_graphs_s"] / CALLS
        busy = st["busy_s"] / CALLS
        print(f"trunk {b}x{s}: {launches:.0f} launches per call, device busy {busy * 1e3:.3f} ms per call "
              f"(mean kernel {busy / launches * 1e6:.1f} us); host per call without the profiler "
              f"{host * 1e3:.3f} ms = {host / launches * 1e6:.2f} us per launch; under the profiler "
              f"{inside * 1e3:.3f} ms = {inside / launches * 1e6:.2f} us per launch "
              f"(+{(inside - host) / launches * 1e6:.2f} us); idle {(st['span_s'] - st['busy_s']) / CALLS * 1e3:.3f} "
              f"ms per call of span {st['span_s'] / CALLS * 1e3:.3f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
