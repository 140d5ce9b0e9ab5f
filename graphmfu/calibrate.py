"""``graphmfu calibrate``: the ceilings this device reaches, measured, kept beside the datasheet's.

A datasheet peak is a promise at boost clock; what a GEMM library reaches on this board, at its power
limit, is lower (an H100 SXM runs bf16 GEMMs near 70-80% of 989 TFLOP/s, and copies near 90% of its
DRAM figure).  SOL against the datasheet says how far from the hardware's limit; SOL against
calibrated ceilings says how far from what can be had.  Reports show either:
``report.on(ceilings="calibrated")`` (or ``graphmfu show r.json --ceilings calibrated``).

On a GPU: large square GEMMs per dtype (bf16, fp16, tf32, fp32 with TF32 off, fp8 through
``_inductor.scaled_mm`` where this torch and GPU have it), best of several timed with CUDA events, and a
device-to-device copy (bytes read + written).  On a CPU the measured ceilings (``hardware/cpu.py``) are
re-measured now.  Results go to a user cache file (``$GRAPHMFU_CACHE_DIR``, default
``~/.cache/graphmfu/calibrated.json``), keyed by the device name, never into the package.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from pathlib import Path

from graphmfu.errors import GraphMFUError
from graphmfu.hardware import DeviceSpec, get_device, lookup

SCHEMA = "graphmfu.calibrated/1"
CHOICES = ("datasheet", "calibrated")
# (dtype, torch dtype, allow tf32): the GEMMs measured on a GPU
_GPU_GEMMS = (("bf16", "bfloat16", False), ("fp16", "float16", False), ("tf32", "float32", True),
              ("fp32", "float32", False))


def cache_path() -> Path:
    base = Path(os.environ.get("GRAPHMFU_CACHE_DIR", Path.home() / ".cache" / "graphmfu"))
    return base / "calibrated.json"


def _read() -> dict:
    try:
        data = json.loads(cache_path().read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or data.get("schema") != SCHEMA or not isinstance(data.get("devices"), dict):
        return {}
    return data["devices"]


def _write(devices: dict) -> Path:
    p = cache_path()
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f"{p.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"schema": SCHEMA, "devices": devices}, indent=1))
    os.replace(tmp, p)
    return p


def entry(name: str) -> dict | None:
    """The calibrated ceilings cached for device ``name`` (None when ``graphmfu calibrate`` never ran on it)."""
    e = _read().get(name)
    if not isinstance(e, dict) or not isinstance(e.get("peaks"), dict):
        return None
    ok = all(isinstance(v, (int, float)) and math.isfinite(v) and v > 0 for v in [*e["peaks"].values(),
                                                                                e.get("dram_gbps", 0)])
    return e if ok else None


# --------------------------------------------------------------------------- measuring


def _best_cuda_s(fn, reps: int, inner: int) -> float:
    """Fastest of ``reps`` timings (CUDA events) of ``inner`` back-to-back calls, per call."""
    import torch

    fn()
    torch.cuda.synchronize()
    best = math.inf
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        for _ in range(inner):
            fn()
        b.record()
        b.synchronize()
        best = min(best, a.elapsed_time(b) * 1e-3 / inner)
    return best


def measure_gpu(index: int = 0, quick: bool = False, progress=None) -> dict:
    """``{dtype: TFLOP/s, ..., "dram_gbps": GB/s}`` measured now on GPU ``index`` (``quick``: smaller sizes,
    fewer repeats).  fp8 is measured where ``_inductor.scaled_mm`` exists and runs on this GPU."""
    import torch

    from graphmfu import _inductor

    dev = torch.device("cuda", index)
    n = 4096 if quick else 8192
    reps, inner = (3, 5) if quick else (10, 20)
    out: dict = {}
    tf32 = torch.backends.cuda.matmul.allow_tf32
    try:
        for key, dtype, allow in _GPU_GEMMS:
            torch.backends.cuda.matmul.allow_tf32 = allow
            a = torch.randn(n, n, device=dev, dtype=getattr(torch, dtype))
            b = torch.randn(n, n, device=dev, dtype=getattr(torch, dtype))
            m = n if key not in ("fp32", "tf32") else n // 2  # the fp32 pipes are slow: a smaller product
            a, b = a[:m, :m].contiguous(), b[:m, :m].contiguous()
            t = _best_cuda_s(lambda: torch.mm(a, b), reps, inner if key != "fp32" else max(inner // 4, 1))
            out[key] = 2 * m ** 3 / t / 1e12
            if progress is not None:
                progress.update(1, f"{key} {out[key]:.4g} TFLOP/s")
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32
    scaled_mm = getattr(_inductor, "scaled_mm", None)
    fp8 = getattr(torch, "float8_e4m3fn", None)
    if scaled_mm is not None and fp8 is not None:
        try:
            a = torch.randn(n, n, device=dev).to(fp8)
            b = torch.randn(n, n, device=dev).to(fp8).t()  # column-major, as the fp8 GEMM wants it
            one = torch.ones((), device=dev, dtype=torch.float32)  # unit scales
            t = _best_cuda_s(lambda: scaled_mm(a, b, one, one, torch.bfloat16), reps, inner)
            out["fp8"] = 2 * n ** 3 / t / 1e12
        except (RuntimeError, NotImplementedError):
            pass  # no fp8 GEMM on this GPU / torch: fp8 stays at the datasheet figure
    if progress is not None:
        progress.update(1, "fp8" + (f" {out['fp8']:.4g} TFLOP/s" if "fp8" in out else " not measured"))
    elems = (256 if quick else 1024) * 1024 * 1024 // 4  # fp32: 256 MB or 1 GB, far past any L2
    src = torch.empty(elems, device=dev, dtype=torch.float32).normal_()
    dst = torch.empty_like(src)
    t = _best_cuda_s(lambda: dst.copy_(src), reps, max(inner // 4, 1))
    out["dram_gbps"] = 2 * src.numel() * 4 / t / 1e9
    if progress is not None:
        progress.update(1, f"DRAM {out['dram_gbps']:.4g} GB/s")
    return out


def _method(quick: bool) -> str:
    n = 4096 if quick else 8192
    return (f"best of CUDA-event timings: bf16/fp16/fp8 GEMM {n}^3, tf32/fp32 {n // 2}^3, "
            f"{'256 MB' if quick else '1 GB'} device copy (read + write)")


def calibrate(device=None, quick: bool = False, progress=None) -> dict:
    """Measure this device's achievable ceilings now and cache them (GPU: ``calibrated.json``; CPU: the
    measured-ceiling cache of ``hardware/cpu.py``).  Returns the entry: ``name``, ``peaks`` (TFLOP/s),
    ``dram_gbps``, ``datasheet`` (the table's figures, GPU), ``measured_at``, ``torch``, ``method``, ``path``."""
    import torch

    if isinstance(device, str) and (device == "cpu" or device.startswith("cpu:")):
        spec = None
        on_gpu = False
    else:
        spec = get_device(device) if device is not None else None
        on_gpu = (spec is None and torch.cuda.is_available()) or (spec is not None and not spec.measured)
    if not on_gpu:
        from graphmfu.hardware.cpu import _cache_path, _cache_key, measured_cpu

        s = measured_cpu(refresh=True)
        return {"name": s.name, "peaks": dict(s.peaks_tflops), "dram_gbps": s.dram_gbps, "datasheet": None,
                "measured_at": time.strftime("%Y-%m-%d %H:%M:%S"), "torch": torch.__version__,
                "method": s.source, "path": str(_cache_path(_cache_key()))}
    if not torch.cuda.is_available():
        raise GraphMFUError(f"calibrate: {spec.name} is a GPU and CUDA is not available here; run "
                            f"graphmfu calibrate on the machine that has it")
    index = torch.cuda.current_device()
    name = torch.cuda.get_device_name(index)
    if spec is not None and spec.name != name and lookup(name) is not spec:
        raise GraphMFUError(f"calibrate: asked for {spec.name} but this machine's GPU is {name}; calibrate runs on "
                            f"the device it measures")
    rates = measure_gpu(index, quick, progress)
    sheet = lookup(name)
    e = {"name": name, "peaks": {k: v for k, v in rates.items() if k != "dram_gbps"}, "dram_gbps": rates["dram_gbps"],
         "datasheet": {"peaks": dict(sheet.peaks_tflops), "dram_gbps": sheet.dram_gbps, "source": sheet.source}
         if sheet else None, "measured_at": time.strftime("%Y-%m-%d %H:%M:%S"), "torch": torch.__version__,
         "method": _method(quick)}
    devices = _read()
    devices[name] = e
    return {**e, "path": str(_write(devices))}


def table(e: dict) -> str:
    """The calibrated ceilings beside the datasheet's, as text."""
    from tabulate import tabulate

    sheet = e.get("datasheet") or {}
    sp = sheet.get("peaks", {})
    rows = [[k, f"{v:.4g} TFLOP/s", f"{sp[k]:.4g}" if sp.get(k) else "-",
             f"{v / sp[k] * 100:.1f}%" if sp.get(k) else "-"] for k, v in sorted(e["peaks"].items())]
    rows.append(["DRAM", f"{e['dram_gbps']:.4g} GB/s", f"{sheet['dram_gbps']:.4g}" if sheet.get("dram_gbps") else "-",
                 f"{e['dram_gbps'] / sheet['dram_gbps'] * 100:.1f}%" if sheet.get("dram_gbps") else "-"])
    head = f"{e['name']}: measured {e['measured_at']} (torch {e['torch']}; {e['method']})"
    return head + "\n" + tabulate(rows, headers=["ceiling", "measured", "datasheet", "of datasheet"],
                                  tablefmt="simple", disable_numparse=True) + f"\nwritten to {e['path']}"


# --------------------------------------------------------------------------- using them


def ceilings_for(dev: DeviceSpec, which: str) -> DeviceSpec:
    """``dev`` against ``which`` ceilings: ``"datasheet"`` (the device table's figures) or ``"calibrated"``
    (what ``graphmfu calibrate`` measured on it; dtypes it did not measure keep the datasheet figure).  A
    measured CPU is its own calibration."""
    if which not in CHOICES:
        raise GraphMFUError(f"ceilings={which!r}: use 'datasheet' or 'calibrated'")
    if dev.measured:
        return dev  # a CPU: its ceilings are measured (graphmfu calibrate re-measures them)
    if which == "datasheet":
        return lookup(dev.name) or dev
    e = entry(dev.name)
    if e is None:
        raise GraphMFUError(f"no calibrated ceilings for {dev.name} in {cache_path()}: run 'graphmfu calibrate' "
                            f"on that device (or use ceilings='datasheet')")
    base = lookup(dev.name) or dev
    peaks = {**base.peaks_tflops, **{k: float(v) for k, v in e["peaks"].items()}}
    return dataclasses.replace(base, peaks_tflops=peaks, dram_gbps=float(e["dram_gbps"]),
                               source=f"calibrated on this machine {e['measured_at']} ({e.get('method', '')}); "
                                      f"unmeasured dtypes: {base.source}")


__all__ = ["calibrate", "ceilings_for", "cache_path", "entry", "measure_gpu", "table", "CHOICES"]
