"""Probe (kept for reference): why the default-mode decode step's device idle time grows from batch 8 to 32
(the shape what-if of bench/headroom_gpu.py: idle 2.3 -> 4.6 ms per step under the profiler, kernels +4%).

Per batch, the 8-layer Llama-8B-shaped decode of the what-if (cache 1024, default compile): host time of one call
(perf_counter, no sync; the device synchronised before), wall time of one call (synchronised after), the caching
allocator's device allocations and frees over 10 calls, and under graphmfu.profile() span, busy and host time
inside graph calls.

    python bench/probe/decode_host_diag.py
"""
from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

import graphmfu  # noqa: E402
from headroom_gpu import CALLS, build, compiled, fresh  # noqa: E402

CFG = dict(dim=4096, layers=8, heads=32, kv_heads=8, ffn=14336, vocab=128256, max_seq=2048)


def main() -> int:
    fresh()
    m = compiled(build(CFG, "cuda", torch.bfloat16))
    hd = CFG["dim"] // CFG["heads"]
    print(f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}; decode, {CFG['layers']} layers d{CFG['dim']}, "
          f"cache 1024, default compile")
    for b in (8, 32, 8, 32):
        tok = torch.randint(0, 1000, (b, 1), device="cuda")
        caches = [tuple(torch.randn(b, CFG["kv_heads"], 1024, hd, device="cuda", dtype=torch.bfloat16)
                        for _ in range(2)) for _ in range(CFG["layers"])]
        torch._dynamo.mark_dynamic(tok, 0)
        for k, v in caches:
            torch._dynamo.mark_dynamic(k, 0)
            torch._dynamo.mark_dynamic(v, 0)
        with torch.no_grad():
            for _ in range(3):
                m(tok, caches)
            host, wall = [], []
            for _ in range(20):
                torch.cuda.synchronize()
                t = time.perf_counter()
                m(tok, caches)
                host.append(time.perf_counter() - t)
                torch.cuda.synchronize()
                wall.append(time.perf_counter() - t)
            s0 = torch.cuda.memory_stats()
            for _ in range(CALLS):
                m(tok, caches)
            torch.cuda.synchronize()
            s1 = torch.cuda.memory_stats()
            with graphmfu.profile() as p:
                with graphmfu.stage("decode"):
                    for _ in range(CALLS):
                        m(tok, caches)
        st = {x["name"]: x for x in p.report().stages}["decode"]
        d = {k: s1.get(k, 0) - s0.get(k, 0) for k in ("num_device_alloc", "num_device_free", "num_alloc_retries",
                                                     "allocation.all.allocated")}
        print(f"batch {b}: host per call {statistics.median(host) * 1e3:.3f} ms, wall per call (synchronised) "
              f"{statistics.median(wall) * 1e3:.3f} ms; over {CALLS} calls cudaMalloc {d['num_device_alloc']}, "
              f"cudaFree {d['num_device_free']}, retries {d['num_alloc_retries']}, allocations "
              f"{d['allocation.all.allocated']}; profiled per call: span {st['span_s'] / CALLS * 1e3:.3f} ms, busy "
              f"{st['busy_s'] / CALLS * 1e3:.3f}, idle {(st['span_s'] - st['busy_s']) / CALLS * 1e3:.3f}, host in graph "
              f"calls {st['host_in_graphs_s'] / CALLS * 1e3:.3f}, launches {st['kernel_launches'] / CALLS:.0f}",
              flush=True)
        del caches
    return 0


if __name__ == "__main__":
    sys.exit(main())
