"""The roofline, in one place.  Units are in the names: ``*_s`` seconds, ``*_tflops`` TFLOP/s,
``*_gbps`` GB/s, intensity in FLOP/byte.

For a cost on a device:
  t_compute_s = sum over dtypes of matrix_flops/matrix_peak + vector_flops/vector_peak
  t_memory_s  = (bytes_read + bytes_written) / DRAM bandwidth
  t_min_s     = max(t_compute_s, t_memory_s)   (the roofline's lower bound on time)
  intensity   = all FLOPs / bytes;  ridge = peak of the dominant unit / bandwidth (FLOP/byte)
  bound       = "compute" if t_compute_s >= t_memory_s else "memory" ("none" when both are 0)
"""
from __future__ import annotations

import dataclasses

from graphmfu.cost import Cost
from graphmfu.hardware import DeviceSpec


@dataclasses.dataclass(frozen=True)
class Placement:
    intensity: float  # FLOP / byte (inf when no bytes move)
    ridge: float  # FLOP / byte where the dominant unit's roof meets the bandwidth roof
    bound: str  # compute | memory | none
    t_compute_s: float
    t_memory_s: float

    @property
    def t_min_s(self) -> float:
        return max(self.t_compute_s, self.t_memory_s)


def matrix_time_s(cost: Cost, dev: DeviceSpec) -> float:
    """Time of the matrix FLOPs at the peak of their dtype (the MFU numerator, in seconds)."""
    return sum(f / (dev.matrix_tflops(dt) * 1e12) for dt, f in cost.matrix)


def compute_time_s(cost: Cost, dev: DeviceSpec) -> float:
    t = matrix_time_s(cost, dev)
    for dt, f in cost.vector:
        t += f / (dev.vector_tflops(dt) * 1e12)
    return t


def place(cost: Cost, dev: DeviceSpec) -> Placement:
    flops = cost.flops + cost.vector_flops
    nbytes = cost.bytes
    t_c = compute_time_s(cost, dev)
    t_m = nbytes / (dev.dram_gbps * 1e9)
    if cost.matrix:
        dt = max(cost.matrix, key=lambda kv: kv[1])[0]
        peak_tflops = dev.matrix_tflops(dt)
    elif cost.vector:
        peak_tflops = dev.vector_tflops(max(cost.vector, key=lambda kv: kv[1])[0])
    else:
        peak_tflops = dev.vector_tflops("fp32")
    ridge = peak_tflops * 1e12 / (dev.dram_gbps * 1e9)
    intensity = flops / nbytes if nbytes else float("inf")
    bound = "none" if t_c == 0 and t_m == 0 else ("compute" if t_c >= t_m else "memory")
    return Placement(intensity, ridge, bound, t_c, t_m)


def rate(num, den):
    """num / den, or None when den is 0 (a utilisation over no time is undefined, not 0)."""
    return num / den if den else None


def utilisation(t_matrix_s: float, nbytes: float, t_min_s: float, time_s: float, dev: DeviceSpec) -> dict:
    """MFU, MBU and SOL over ``time_s`` — the one definition of each:
    MFU = time the matrix FLOPs need at their dtype's peak / time taken;
    MBU = bytes / DRAM bandwidth / time taken;  SOL = roofline t_min / time taken."""
    return {"mfu": rate(t_matrix_s, time_s), "mbu": rate(nbytes / (dev.dram_gbps * 1e9), time_s),
            "sol": rate(t_min_s, time_s)}


def roofs(dev: DeviceSpec, matrix_dtypes=(), vector_dtypes=("fp32",)) -> list[dict]:
    """The compute ceilings a roofline plot draws: one per unit the work runs on (the matrix peak of each
    matrix dtype present, dtypes sharing a peak merged; the vector pipes), each with its ridge point
    (FLOP/byte where it meets the DRAM roof).  Peaks are the ones ``place``/``utilisation`` price work at."""
    bw = dev.dram_gbps * 1e9
    units: dict = {}  # peak TFLOP/s -> names
    for dt in sorted(set(matrix_dtypes)):
        units.setdefault(dev.matrix_tflops(dt), []).append(f"{dt} matmul")
    for dt in sorted({"fp64" if d == "fp64" else "fp32" for d in vector_dtypes}):
        units.setdefault(dev.vector_tflops(dt), []).append(f"{dt} vector")
    return [{"name": " = ".join(names), "tflops": peak, "ridge": peak * 1e12 / bw}
            for peak, names in sorted(units.items(), key=lambda kv: -kv[0])]
