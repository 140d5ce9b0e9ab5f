"""Measured CPU ceilings: a short GEMM and copy microbenchmark, cached per machine.

There is no datasheet for "this CPU with this torch and this many threads", so graphmfu measures
one: fp32 and bf16 matrix products (1024^3 and 2048^3; 512^3 and 1024^3), int8 x int8 -> int32
products (1024^3 and 2048^3, where this torch has them) and a 256 MB copy (bytes read + written),
the best of 5 of each (a ceiling), a few seconds in all.  The result is cached in
``$GRAPHMFU_CACHE_DIR`` (default ``~/.cache/graphmfu``) keyed by CPU model, thread count and torch
version; the report's device source says "measured".

A cached ceiling is not trusted forever: one measured while the machine was busy reads low, and every
MFU/MBU measured against it later reads high (fp32 MFU 145% was seen).  So the cache records the
machine load it was measured under and is re-measured when that load was high
(:func:`measured_cpu`); ``measured_cpu(refresh=True)`` re-measures on demand; and a kernel that beats
a ceiling triggers one re-measurement, the ceiling rising to the kernel's rate if it still beats it
(:func:`raise_ceiling`)."""
from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import threading
import time
from pathlib import Path
from typing import Mapping

from graphmfu.errors import GraphMFUError
from graphmfu.hardware.spec import DTYPES, DeviceSpec

_VERSION = "v3"  # v3: int8 peak and the machine load in the cache; older caches are re-measured
# Load average (1 min) per CPU above which a cached measurement is suspect: the GEMMs use every core,
# so at a load over half the cores something else held a good share of them while we timed, and the
# best of 5 may never have run on an idle machine.
_BUSY_LOAD = 0.5
_GEMMS = (("fp32", "float32", (1024, 2048)), ("bf16", "bfloat16", (512, 1024)))
_INT8_SIZES = (512, 1024, 2048)
# A size is timed at most 5 times and for about _BUDGET_S (at least twice); a larger size is not tried once
# a product takes _ENOUGH_S: on a CPU that slow the smaller product already keeps every core busy (a CPU
# without bf16 or int8 units: one 2048^3 int8 product took 10 s, the whole measurement over a minute)
_BUDGET_S = 0.3
_ENOUGH_S = 0.1
_COPY_ELEMS = 64 * 1024 * 1024  # fp32: 256 MB
_RATES = (*DTYPES, "dram_gbps")  # the keys a cache (and raise_ceiling's ``observed``) may hold
_METHOD = ("best of up to 5 (about 0.3 s per size; larger sizes skipped once one product takes 0.1 s): fp32 GEMM "
           "1024^3/2048^3, bf16 512^3/1024^3, {int8}, 256 MB copy; fp16 assumed = bf16, fp64 = fp32/2")


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _cache_key() -> str:
    import torch

    return f"{_cpu_model()}|{torch.get_num_threads()}|{torch.__version__}|{_VERSION}"


def _cache_path(key: str) -> Path:
    base = Path(os.environ.get("GRAPHMFU_CACHE_DIR", Path.home() / ".cache" / "graphmfu"))
    return base / f"cpu-{hashlib.sha1(key.encode()).hexdigest()[:12]}.json"


def _machine_load() -> float:
    """1-minute load average per CPU (0.0 where the OS has none)."""
    try:
        return os.getloadavg()[0] / (os.cpu_count() or 1)
    except (OSError, AttributeError):
        return 0.0


def _now() -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S")


def _best_time(fn, reps=5, budget_s: float = _BUDGET_S) -> float:
    """Fastest of up to ``reps`` runs (at least 2, then while under ``budget_s``): a ceiling is what the
    machine can reach, not what it usually does."""
    fn()
    ts: list = []
    while len(ts) < reps and (len(ts) < 2 or sum(ts) < budget_s):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return min(ts)


def measure() -> dict:
    """``{"fp32": TFLOP/s, "bf16": TFLOP/s, "int8": TOPS, "dram_gbps": GB/s}`` measured now (no
    ``int8`` where this torch has no int8 matrix product)."""
    import torch

    from graphmfu import _inductor

    out = {}
    for key, dtype, sizes in _GEMMS:
        for n in sizes:
            a = torch.randn(n, n, dtype=getattr(torch, dtype))
            b = torch.randn(n, n, dtype=getattr(torch, dtype))
            t = _best_time(lambda: torch.mm(a, b))
            out[key] = max(out.get(key, 0.0), 2 * n ** 3 / t / 1e12)
            if t >= _ENOUGH_S:
                break
    try:
        for n in _INT8_SIZES:
            a = torch.randint(-128, 128, (n, n), dtype=torch.int8)
            b = torch.randint(-128, 128, (n, n), dtype=torch.int8)
            t = _best_time(lambda: _inductor.int_mm(a, b))
            out["int8"] = max(out.get("int8", 0.0), 2 * n ** 3 / t / 1e12)
            if t >= _ENOUGH_S:
                break
    except (NotImplementedError, RuntimeError, AttributeError):
        out.pop("int8", None)  # no int8 product here: int8 matmuls fall back to the bf16 peak
    src = torch.randn(_COPY_ELEMS)
    dst = torch.empty_like(src)
    t = _best_time(lambda: dst.copy_(src))
    out["dram_gbps"] = 2 * src.numel() * 4 / t / 1e9
    return out


# --------------------------------------------------------------------------- the cache


def _read(path: Path, key: str) -> dict | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("key") != key:
        return None
    if not all(isinstance(data.get(k), (int, float)) and data[k] > 0 for k in ("fp32", "bf16", "dram_gbps")):
        return None
    return data


def _write(path: Path, data: dict) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data, indent=1))
        os.replace(tmp, path)  # readers never see half a file
    except OSError:
        pass  # an unwritable cache only costs a re-measurement next time


def _fresh(key: str) -> dict:
    load = _machine_load()  # before measuring: our own GEMMs would raise it
    m = measure()
    return {"key": key, "measured_at": _now(), "load": round(load, 3), **m}


def _rates(data: Mapping) -> dict:
    return {k: float(v) for k, v in data.items()
            if k in _RATES and isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0}


def _load_or_measure(force: bool) -> dict:
    key = _cache_key()
    path = _cache_path(key)
    data = None if force else _read(path, key)
    if data is None:
        data = _fresh(key)
        _write(path, data)
    elif data.get("load", 0.0) > _BUSY_LOAD and _machine_load() < data["load"]:
        # Written while the machine was busy (see _BUSY_LOAD) and it is quieter now: measure again.  A
        # ceiling measured under load only errs low, so each rate keeps the higher of the two.  (Not
        # when it is as busy now as then: that measurement could only read as low, and would cost
        # every process a few seconds while the load lasts.)
        old, fresh = data, _fresh(key)
        data = {**fresh, **{k: max(v, fresh.get(k, 0.0)) for k, v in _rates(old).items()},
                "note": f"re-measured at {fresh['measured_at']}: the cache was written under load "
                        f"{old['load']:.2f} per CPU; each rate is the higher of the two measurements"}
        _write(path, data)
    return data


def _spec(data: Mapping) -> DeviceSpec:
    import torch

    r = _rates(data)
    peaks = {"fp32": r["fp32"], "bf16": r["bf16"], "fp16": r.get("fp16", r["bf16"]),
             "fp64": r.get("fp64", r["fp32"] / 2)}
    peaks.update({k: v for k, v in r.items() if k not in peaks and k != "dram_gbps"})
    load = data.get("load")
    method = _METHOD.format(int8="int8 GEMM 1024^3/2048^3" if "int8" in r else "no int8 GEMM in this torch")
    source = (f"measured on this machine {data['measured_at']}"
              f"{f' under load {load:.2f} per CPU' if isinstance(load, (int, float)) else ''} ({method})")
    if data.get("note"):
        source += f"; {data['note']}"
    return DeviceSpec(f"CPU: {_cpu_model()} ({torch.get_num_threads()} threads)", peaks, r["dram_gbps"],
                      source, measured=True, cache_mb=_llc_mb())


def _llc_mb() -> float | None:
    """The largest CPU cache (the last level) from sysfs, in MB; None where sysfs does not say."""
    best = None
    for f in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*/size"):
        try:
            text = f.read_text().strip().upper()
            mb = float(text[:-1]) / 1024 if text.endswith("K") else float(text[:-1]) if text.endswith("M") else None
        except (OSError, ValueError):
            continue
        if mb is not None and (best is None or mb > best):
            best = mb
    return best


# --------------------------------------------------------------------------- public


_memo: dict = {}
_lock = threading.RLock()


def measured_cpu(refresh: bool = False) -> DeviceSpec:
    """The measured ceilings of this CPU, from the cache (measured once per process at most).
    ``refresh=True`` measures again now and rewrites the cache."""
    with _lock:
        if refresh:
            _memo.clear()
        spec = _memo.get("spec")
        if spec is None:
            spec = _memo["spec"] = _spec(_load_or_measure(force=refresh))
        return spec


measured_cpu.cache_clear = _memo.clear  # as with the lru_cache it replaces: forget the memo (not the file)


def raise_ceiling(spec: DeviceSpec, observed: Mapping[str, float]) -> DeviceSpec:
    """A measured CPU ceiling corrected by rates a measured kernel reached on this machine.

    ``observed``: achieved rates, ``{"fp32": TFLOP/s, "bf16": TFLOP/s, "int8": TOPS, "dram_gbps":
    GB/s}`` (any dtype name of ``hardware/dtypes.csv``; missing, None or 0 entries are ignored).  If
    none beats its ceiling in ``spec`` (dtypes: ``spec.matrix_tflops(dtype)``), ``spec`` itself is
    returned.  Otherwise the CPU is measured again once; each rate is the higher of the cached and the
    fresh value, and a rate the kernel still beats is raised to the kernel's.  The new values are
    written to the cache and become what :func:`measured_cpu` returns; the returned spec's ``source``
    says "re-measured at ...: cached ceiling was beaten by a measured kernel" and, where a rate was
    raised, "raised to the best rate a measured kernel reached".  A spec that is not a measurement of
    this CPU (a table device, user numbers, an override) is returned unchanged."""
    if not spec.measured or "override" in spec.source:
        return spec
    bad = sorted(set(observed) - set(_RATES))
    if bad:
        raise GraphMFUError(f"raise_ceiling: unknown rate names {bad}; use dtype names ({', '.join(DTYPES)}) "
                            f"in TFLOP/s and dram_gbps in GB/s")
    rates = {k: float(v) for k, v in observed.items()
             if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0}

    def ceiling(s: DeviceSpec, k: str) -> float:
        return s.dram_gbps if k == "dram_gbps" else s.matrix_tflops(k)

    def unit(k: str) -> str:
        return "GB/s" if k == "dram_gbps" else "TFLOP/s"

    beaten = {k: v for k, v in rates.items() if v > ceiling(spec, k)}
    if not beaten:
        return spec
    with _lock:
        key = _cache_key()
        path = _cache_path(key)
        fresh = _fresh(key)
        old = _rates(_read(path, key) or {})
        old.update({k: v for k, v in spec.peaks_tflops.items() if k in ("fp32", "bf16", "int8") and v})
        old["dram_gbps"] = spec.dram_gbps
        data = {**fresh, **{k: max(v, fresh.get(k, 0.0)) for k, v in old.items()}}
        remeasured = _spec(data)
        raised = {k: v for k, v in rates.items() if v > ceiling(remeasured, k)}
        data.update(raised)
        note = (f"re-measured at {fresh['measured_at']}: cached ceiling was beaten by a measured kernel ("
                + ", ".join(f"{k} {v:.4g} > {ceiling(spec, k):.4g} {unit(k)}" for k, v in sorted(beaten.items())) + ")")
        if raised:
            note += (f"; {', '.join(sorted(raised))} raised to the best rate a measured kernel reached ("
                     + ", ".join(f"{k} {v:.4g} {unit(k)}" for k, v in sorted(raised.items())) + ")")
        data["note"] = note
        _write(path, data)
        new = _memo["spec"] = _spec(data)
        return new
