"""Hardware ceilings: a data table of exact device names -> dense peaks and DRAM bandwidth
(``devices.csv``, each row with its datasheet source), overrides by API and environment, and
measured ceilings for the CPU (``cpu.py``).

Units: ``*_tflops`` are dense TFLOP/s (int8: TOPS) of the unit that runs that dtype: tensor
cores for bf16/fp16/tf32/fp8/int8, the vector (CUDA-core) pipes for fp32/fp64.  ``dram_gbps``
is GB/s (1e9 bytes/s).  ``l2_mb`` is the on-chip last-level cache in MB (GPU L2, MI300X Infinity
Cache) from the vendors' architecture whitepapers (A100 40, H100 50, Ada: L4 48, L40S 96, RTX 4090
72; GA102 6/3); the H100 (50 MB) and H200 (60 MB) figures are what ``torch.cuda.get_device_properties
(0).L2_cache_size`` reported on the device machines; blank where no published figure was found.

Environment overrides (also used for a GPU the table lacks):
  GRAPHMFU_PEAK_TFLOPS  one number for every dtype (``989``) or per dtype (``bf16=989,fp32=67``)
  GRAPHMFU_DRAM_GBPS    DRAM bandwidth in GB/s (``3350``)
"""
from __future__ import annotations

import csv
import dataclasses
import math
import os
from functools import lru_cache
from pathlib import Path
from typing import Mapping

from graphmfu.errors import GraphMFUError
from graphmfu.hardware.dtypes import dtypes
from graphmfu.hardware.spec import _FIX, DTYPES, DeviceSpec

_COLUMNS = {n: d.peak_column for n, d in dtypes().items() if d.peak_column}
_TABLE = Path(__file__).with_name("devices.csv")


@lru_cache(maxsize=1)
def table() -> dict[str, DeviceSpec]:
    """Exact device name (and each alias) -> DeviceSpec."""
    out: dict[str, DeviceSpec] = {}
    with open(_TABLE, newline="") as f:
        for row in csv.DictReader(f):
            peaks = {d: float(row[c]) for d, c in _COLUMNS.items() if (row.get(c) or "").strip()}
            l2 = (row.get("l2_mb") or "").strip()
            spec = DeviceSpec(row["name"], peaks, float(row["dram_gbps"]), row["source"],
                              cache_mb=float(l2) if l2 else None)
            out[row["name"]] = spec
            for a in filter(None, (x.strip() for x in row.get("aliases", "").split(";"))):
                out[a.lower()] = spec
    return out


def known_devices() -> list[str]:
    return sorted({s.name for s in table().values()})


def device_aliases() -> dict[str, list[str]]:
    """Exact device name -> the aliases ``lookup`` also accepts for it (devices.csv ``aliases``)."""
    out: dict[str, list[str]] = {s.name: [] for s in table().values()}
    for key, spec in table().items():
        if key != spec.name:
            out[spec.name].append(key)
    return out


def lookup(name: str) -> DeviceSpec | None:
    t = table()
    return t.get(name) or t.get(name.lower())


# --------------------------------------------------------------------------- overrides


# Accepted override ranges, inclusive.  Wide enough for any real device (a small CPU core does a
# few GFLOP/s; the densest accelerator rows are a few PFLOP/s dense FP4; memory runs from a few
# GB/s to tens of TB/s), narrow enough to catch a unit slip (FLOP/s given as TFLOP/s, MB/s as
# GB/s) or a stray nan/inf/1e-300 that would turn every MFU into 0, nan or 1e300 %.
PEAK_TFLOPS_RANGE = (0.001, 1e6)  # TFLOP/s (int8: TOPS)
DRAM_GBPS_RANGE = (0.1, 1e6)  # GB/s


def _in_range(text: str, lo: float, hi: float) -> float:
    """``text`` as a finite float in [lo, hi]; ValueError otherwise (nan and inf included)."""
    v = float(text)
    if not (math.isfinite(v) and lo <= v <= hi):
        raise ValueError(text)
    return v


def parse_peak_override(value: str, source: str = "GRAPHMFU_PEAK_TFLOPS") -> dict[str, float]:
    """``"989"`` -> every dtype 989; ``"bf16=989,fp32=67"`` -> those dtypes.  Each number must be
    finite and within PEAK_TFLOPS_RANGE."""
    value = value.strip()
    lo, hi = PEAK_TFLOPS_RANGE
    try:
        if "=" not in value:
            v = _in_range(value, lo, hi)
            return {d: v for d in DTYPES}
        out = {}
        for part in value.split(","):
            k, v = part.split("=")
            k = k.strip().lower()
            if k not in DTYPES:
                raise ValueError(k)
            out[k] = _in_range(v, lo, hi)
        return out
    except ValueError:
        raise GraphMFUError(f"{source}={value!r} is not a TFLOP/s number in the accepted range {lo:g} to {hi:g} "
                            f"(finite; dense peak of one device) or a dtype=number list of them "
                            f"(e.g. 989 or bf16=989,fp32=67; dtypes: {', '.join(DTYPES)})") from None


def parse_bandwidth_override(value: str, source: str = "GRAPHMFU_DRAM_GBPS") -> float:
    """DRAM bandwidth in GB/s: finite and within DRAM_GBPS_RANGE."""
    lo, hi = DRAM_GBPS_RANGE
    try:
        return _in_range(str(value).strip(), lo, hi)
    except ValueError:
        raise GraphMFUError(f"{source}={value!r} is not a GB/s number in the accepted range {lo:g} to {hi:g} "
                            f"(finite; DRAM bandwidth of one device, e.g. 3350)") from None


def _apply_overrides(spec: DeviceSpec | None, name: str, peak, bw) -> DeviceSpec:
    env_peak, env_bw = os.environ.get("GRAPHMFU_PEAK_TFLOPS"), os.environ.get("GRAPHMFU_DRAM_GBPS")
    peaks = None
    if isinstance(peak, Mapping):
        peaks = parse_peak_override(",".join(f"{k}={v}" for k, v in peak.items()), "peak_tflops")
    elif peak is not None:
        peaks = parse_peak_override(str(peak), "peak_tflops")
    elif env_peak:
        peaks = parse_peak_override(env_peak)
    bwv = parse_bandwidth_override(str(bw), "dram_gbps") if bw is not None else (
        parse_bandwidth_override(env_bw) if env_bw else None)
    if spec is None:
        if peaks is not None and "fp32" not in peaks:
            raise GraphMFUError(f"GRAPHMFU_PEAK_TFLOPS for unknown device {name!r} names no fp32 peak (vector "
                                f"work and fp32 matmuls need it): give one number for all dtypes or add fp32=..., "
                                f"e.g. bf16=989,fp32=67")
        if peaks is None or bwv is None:
            missing = " and ".join(x for x, v in (("GRAPHMFU_PEAK_TFLOPS", peaks), ("GRAPHMFU_DRAM_GBPS", bwv))
                                   if v is None)
            raise GraphMFUError(f"unknown device {name!r} (graphmfu's table has no row for it); set {missing} "
                                f"(e.g. GRAPHMFU_PEAK_TFLOPS=989 GRAPHMFU_DRAM_GBPS=3350), or pass "
                                f"device=graphmfu.DeviceSpec(...); known: {', '.join(known_devices())}")
        return DeviceSpec(name, peaks, bwv, "override (GRAPHMFU_PEAK_TFLOPS/GRAPHMFU_DRAM_GBPS or API)")
    if peaks is None and bwv is None:
        return spec
    merged = dict(spec.peaks_tflops)
    merged.update(peaks or {})
    return dataclasses.replace(spec, peaks_tflops=merged, dram_gbps=bwv or spec.dram_gbps,
                               source=spec.source + " + override")


def get_device(device=None, *, peak_tflops=None, dram_gbps=None) -> DeviceSpec:
    """The ceilings for ``device``: a DeviceSpec, an exact device name or alias, ``"cuda"``/
    ``"cuda:N"`` (the GPU's reported name), ``"cpu"`` (measured), or None (the current GPU if
    there is one, else the CPU)."""
    import torch

    if isinstance(device, DeviceSpec):
        spec = device
        return _apply_overrides(spec, spec.name, peak_tflops, dram_gbps)
    if isinstance(device, torch.device):
        device = str(device)
    if device is not None and not isinstance(device, str):
        raise GraphMFUError(f"device={device!r}: pass a device name (e.g. 'NVIDIA H100 80GB HBM3', 'h100-sxm'), "
                            f"'cuda', 'cpu' or a graphmfu.DeviceSpec")
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu" or device.startswith("cpu:"):
        if peak_tflops is None and dram_gbps is None and not os.environ.get("GRAPHMFU_PEAK_TFLOPS") \
                and not os.environ.get("GRAPHMFU_DRAM_GBPS"):
            from graphmfu.hardware.cpu import measured_cpu

            return measured_cpu()
        from graphmfu.hardware.cpu import measured_cpu

        return _apply_overrides(measured_cpu(), "cpu", peak_tflops, dram_gbps)
    if device == "cuda" or device.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise GraphMFUError(f"device={device!r} but CUDA is not available; pass a GPU name "
                                f"(e.g. 'h100-sxm') to analyse for a GPU you do not have")
        idx = int(device.split(":")[1]) if ":" in device else torch.cuda.current_device()
        device = torch.cuda.get_device_name(idx)
    return _apply_overrides(lookup(device), device, peak_tflops, dram_gbps)


def device_for(graph_devices, device=None) -> DeviceSpec:
    """The ceilings for a report: ``device`` if given, else the GPU when any graph ran on CUDA, else
    the CPU."""
    if device is not None:
        return get_device(device)
    return get_device("cuda" if "cuda" in set(graph_devices) else "cpu")
