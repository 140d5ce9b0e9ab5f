"""A device's ceilings as data: :class:`DeviceSpec` (dense peak TFLOP/s per dtype, DRAM GB/s, last-level
cache) and the dtypes that have a peak column.  The table of devices and the overrides are in
``hardware/__init__.py``; measured CPU ceilings in ``cpu.py`` (both build DeviceSpecs)."""
from __future__ import annotations

import dataclasses
from typing import Mapping

from graphmfu.errors import GraphMFUError
from graphmfu.hardware.dtypes import matrix_chain, peak_dtypes

DTYPES = peak_dtypes()
_FIX = ("set GRAPHMFU_PEAK_TFLOPS (e.g. 989 or bf16=989,fp32=67) and GRAPHMFU_DRAM_GBPS (e.g. 3350), "
        "or pass device=graphmfu.DeviceSpec(name, peaks_tflops={...}, dram_gbps=...)")


@dataclasses.dataclass(frozen=True)
class DeviceSpec:
    """Dense peak TFLOP/s per dtype and DRAM GB/s of one device."""

    name: str
    peaks_tflops: Mapping[str, float]
    dram_gbps: float
    source: str = "user"
    measured: bool = False
    cache_mb: float | None = None  # on-chip last-level cache (GPU L2, CPU LLC): data that fits may never
    # reach DRAM between a producer kernel and its consumer, so its unique bytes are not DRAM traffic

    def matrix_tflops(self, dtype: str) -> float:
        """Peak of the unit a matrix product of ``dtype`` operands runs on (``dtypes.csv`` gives the
        fallback chain; fp32 products compiled with TF32 allowed are costed as ``tf32``)."""
        p = self.peaks_tflops
        for d in matrix_chain(dtype) + ("fp32",):
            if p.get(d):
                return float(p[d])
        return _first_peak(p)

    def vector_tflops(self, dtype: str) -> float:
        """Peak of the vector pipes: fp64 ops on fp64, everything else at the fp32 rate."""
        p = self.peaks_tflops
        d = "fp64" if dtype == "fp64" else "fp32"
        return float(p.get(d) or _first_peak(p))

    def to_dict(self) -> dict:
        return {"name": self.name, "peaks": {k: v for k, v in self.peaks_tflops.items() if v},
                "dram_gbps": self.dram_gbps, "source": self.source, "measured": self.measured,
                "cache_mb": self.cache_mb}

    @classmethod
    def from_dict(cls, d: Mapping) -> "DeviceSpec":
        return cls(d["name"], dict(d["peaks"]), float(d["dram_gbps"]), d.get("source", ""),
                   bool(d.get("measured", False)), d.get("cache_mb"))


def _first_peak(p: Mapping) -> float:
    vals = [v for v in p.values() if v]
    if not vals:
        raise GraphMFUError(f"device has no peak figures; {_FIX}")
    return float(max(vals))


__all__ = ["DeviceSpec", "DTYPES"]
