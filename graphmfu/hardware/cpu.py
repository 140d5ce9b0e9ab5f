"""Measured CPU ceilings: a short GEMM and copy microbenchmark, cached per machine.

There is no datasheet for "this CPU with this torch and this many threads", so graphmfu measures
one: fp32 and bf16 matrix products (1024^3 and 2048^3; 512^3 and 1024^3) and a 256 MB copy (bytes
read + written), the best of 5 of each (a ceiling), a few seconds in all.  The result is cached in
``$GRAPHMFU_CACHE_DIR`` (default ``~/.cache/graphmfu``) keyed by CPU model, thread count and torch
version; the report's device source says "measured"."""
from __future__ import annotations

import hashlib
import json
import os
import platform
import time
from functools import lru_cache
from pathlib import Path

from graphmfu.hardware import DeviceSpec


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _cache_path(key: str) -> Path:
    base = Path(os.environ.get("GRAPHMFU_CACHE_DIR", Path.home() / ".cache" / "graphmfu"))
    return base / f"cpu-{hashlib.sha1(key.encode()).hexdigest()[:12]}.json"


def _best_time(fn, reps=5) -> float:
    """Fastest of ``reps`` runs: a ceiling is what the machine can reach, not what it usually does."""
    fn()
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return min(ts)


def measure() -> dict:
    import torch

    out = {}
    for dtype, sizes, key in ((torch.float32, (1024, 2048), "fp32"), (torch.bfloat16, (512, 1024), "bf16")):
        for n in sizes:
            a = torch.randn(n, n, dtype=dtype)
            b = torch.randn(n, n, dtype=dtype)
            t = _best_time(lambda: torch.mm(a, b))
            out[key] = max(out.get(key, 0.0), 2 * n ** 3 / t / 1e12)
    src = torch.randn(64 * 1024 * 1024)  # 256 MB
    dst = torch.empty_like(src)
    t = _best_time(lambda: dst.copy_(src))
    out["dram_gbps"] = 2 * src.numel() * 4 / t / 1e9
    return out


@lru_cache(maxsize=1)
def measured_cpu() -> DeviceSpec:
    import torch

    model = _cpu_model()
    key = f"{model}|{torch.get_num_threads()}|{torch.__version__}|v2"
    path = _cache_path(key)
    data = None
    if path.is_file():
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            data = None
    if not data or data.get("key") != key:
        m = measure()
        data = {"key": key, "measured_at": time.strftime("%Y-%m-%d %H:%M:%S"), **m}
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(data, indent=1))
        except OSError:
            pass
    peaks = {"fp32": data["fp32"], "bf16": data["bf16"], "fp16": data["bf16"], "fp64": data["fp32"] / 2}
    return DeviceSpec(f"CPU: {model} ({torch.get_num_threads()} threads)", peaks, data["dram_gbps"],
                      f"measured on this machine {data['measured_at']} (best of fp32 GEMM 1024^3/2048^3, bf16 512^3/1024^3, "
                      f"256 MB copy; fp16 assumed = bf16, fp64 = fp32/2)", measured=True)
