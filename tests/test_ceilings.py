"""The measured CPU ceilings (graphmfu/hardware/cpu.py): the cache is not trusted forever.

Every test runs against a fake cache in a tmp GRAPHMFU_CACHE_DIR, with ``measure`` replaced by a
function returning fixed numbers (fast and deterministic) and the machine load fixed.  The numbers
are the case that motivated this: a cache written while the machine was busy (fp32 0.160, bf16
0.507 TFLOP/s, 33.7 GB/s) against a fresh measurement (0.254, 1.035, 89); a kernel reaching 0.232
TFLOP/s fp32 showed MFU 145% under a "measured" label."""
import json

import pytest
import torch

from graphmfu.hardware import DeviceSpec
from graphmfu.hardware import cpu

BUSY = {"fp32": 0.160, "bf16": 0.507, "dram_gbps": 33.7}
FRESH = {"fp32": 0.254, "bf16": 1.035, "int8": 2.0, "dram_gbps": 89.0}


@pytest.fixture
def env(tmp_path, monkeypatch):
    """A tmp cache dir, a fake measure() (its calls counted) and a fixed machine load."""
    monkeypatch.setenv("GRAPHMFU_CACHE_DIR", str(tmp_path))
    calls = []
    state = {"result": dict(FRESH), "load": 0.1}

    def fake_measure():
        calls.append(1)
        return dict(state["result"])

    monkeypatch.setattr(cpu, "measure", fake_measure)
    monkeypatch.setattr(cpu, "_machine_load", lambda: state["load"])
    cpu.measured_cpu.cache_clear()
    state["calls"] = calls
    yield state
    cpu.measured_cpu.cache_clear()


def _write_cache(values, *, load=0.1, key=None):
    path = cpu._cache_path(key or cpu._cache_key())
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"key": key or cpu._cache_key(), "measured_at": "2026-01-01 00:00:00",
                                "load": load, **values}))
    return path


def _cached_values():
    return json.loads(cpu._cache_path(cpu._cache_key()).read_text())


# --------------------------------------------------------------------------- measured_cpu(refresh=...)


def test_cached_ceiling_is_used_and_memoised(env):
    _write_cache(BUSY)
    s = cpu.measured_cpu()
    assert s.peaks_tflops["fp32"] == 0.160 and s.dram_gbps == 33.7 and s.measured
    assert cpu.measured_cpu() is s
    assert env["calls"] == []


def test_refresh_remeasures_and_rewrites_the_cache(env):
    _write_cache(BUSY)
    assert cpu.measured_cpu().peaks_tflops["fp32"] == 0.160
    s = cpu.measured_cpu(refresh=True)
    assert len(env["calls"]) == 1
    assert s.peaks_tflops["fp32"] == 0.254 and s.peaks_tflops["bf16"] == 1.035 and s.dram_gbps == 89.0
    d = _cached_values()
    assert (d["fp32"], d["bf16"], d["dram_gbps"], d["load"]) == (0.254, 1.035, 89.0, 0.1)
    assert cpu.measured_cpu() is s  # memoised again after the refresh
    assert len(env["calls"]) == 1


def test_old_cache_version_is_remeasured_and_has_int8(env):
    old_key = cpu._cache_key().rsplit("|", 1)[0] + "|v2"
    _write_cache(BUSY, key=old_key)
    s = cpu.measured_cpu()
    assert len(env["calls"]) == 1
    assert s.peaks_tflops["int8"] == 2.0
    assert s.matrix_tflops("int8") == 2.0  # no longer the bf16 fallback


def test_cache_written_under_load_is_remeasured(env):
    _write_cache(BUSY, load=0.9)  # written while the machine was busy
    s = cpu.measured_cpu()
    assert len(env["calls"]) == 1
    assert s.peaks_tflops["fp32"] == 0.254
    assert _cached_values()["load"] == 0.1


def test_cache_under_load_kept_while_the_machine_is_as_busy(env):
    _write_cache(BUSY, load=0.9)
    env["load"] = 1.2  # busier now than then: a re-measurement could only read lower
    assert cpu.measured_cpu().peaks_tflops["fp32"] == 0.160
    assert env["calls"] == []


def test_remeasure_under_load_keeps_the_better_of_both(env):
    _write_cache({**BUSY, "fp32": 0.3}, load=0.9)
    s = cpu.measured_cpu()
    assert len(env["calls"]) == 1
    assert s.peaks_tflops["fp32"] == 0.3  # a ceiling measured under load only errs low
    assert s.peaks_tflops["bf16"] == 1.035


def test_quiet_cache_is_not_remeasured(env):
    _write_cache(BUSY, load=0.4)
    cpu.measured_cpu()
    assert env["calls"] == []


# --------------------------------------------------------------------------- raise_ceiling


def test_raise_ceiling_remeasures_when_a_kernel_beats_the_cache(env):
    _write_cache(BUSY)
    spec = cpu.measured_cpu()
    new = cpu.raise_ceiling(spec, {"fp32": 0.232, "bf16": 0.4, "dram_gbps": 30.0})  # 0.232 / 0.160 = 145%
    assert len(env["calls"]) == 1
    assert new.peaks_tflops["fp32"] == 0.254 and new.peaks_tflops["bf16"] == 1.035 and new.dram_gbps == 89.0
    assert new.measured
    assert "re-measured at" in new.source and "cached ceiling was beaten by a measured kernel" in new.source
    assert "raised" not in new.source
    d = _cached_values()
    assert (d["fp32"], d["bf16"], d["dram_gbps"]) == (0.254, 1.035, 89.0)
    assert cpu.measured_cpu() is new  # later reports use the new ceiling


def test_raise_ceiling_raises_to_the_observed_rate_when_still_beaten(env):
    _write_cache(BUSY)
    env["result"] = {"fp32": 0.200, "bf16": 1.035, "int8": 2.0, "dram_gbps": 89.0}
    new = cpu.raise_ceiling(cpu.measured_cpu(), {"fp32": 0.300, "dram_gbps": 95.0})
    assert len(env["calls"]) == 1
    assert new.peaks_tflops["fp32"] == 0.300  # fresh 0.200 is still beaten: raised to 0.300
    assert new.dram_gbps == 95.0  # fresh 89 is still beaten: raised to 95
    assert new.peaks_tflops["bf16"] == 1.035
    assert "re-measured at" in new.source
    assert "raised to the best rate a measured kernel reached" in new.source
    d = _cached_values()
    assert (d["fp32"], d["dram_gbps"]) == (0.300, 95.0)
    # the same observation again: nothing is beaten any more, nothing re-measured
    assert cpu.raise_ceiling(new, {"fp32": 0.300, "dram_gbps": 95.0}) is new
    assert len(env["calls"]) == 1
    # a new process (memo cleared) reads the raised values and says so
    cpu.measured_cpu.cache_clear()
    again = cpu.measured_cpu()
    assert again.peaks_tflops["fp32"] == 0.300 and "raised" in again.source
    assert env["calls"] == [1]


def test_raise_ceiling_keeps_a_ceiling_that_holds(env):
    _write_cache(BUSY)
    spec = cpu.measured_cpu()
    assert cpu.raise_ceiling(spec, {"fp32": 0.150, "bf16": 0.5, "dram_gbps": 30.0, "int8": None}) is spec
    assert env["calls"] == []


def test_raise_ceiling_leaves_a_given_device_alone(env):
    spec = DeviceSpec("my cpu", {"fp32": 0.1}, 10.0, "user")
    assert cpu.raise_ceiling(spec, {"fp32": 1.0}) is spec
    assert env["calls"] == []


# --------------------------------------------------------------------------- int8 in measure()


def test_measure_has_an_int8_peak(monkeypatch):
    monkeypatch.setattr(cpu, "_best_time", lambda fn, reps=5: 1e-3)  # no timing: shapes and keys only
    m = cpu.measure()
    assert set(m) == {"fp32", "bf16", "int8", "dram_gbps"}
    assert m["int8"] == 2 * 2048 ** 3 / 1e-3 / 1e12  # best of 512^3, 1024^3 and 2048^3 at 1 ms each
    # a product that takes 0.1 s or more already keeps the CPU busy: the larger sizes are not tried
    monkeypatch.setattr(cpu, "_best_time", lambda fn, reps=5: 1.0)
    m = cpu.measure()
    assert m["int8"] == 2 * 512 ** 3 / 1e12 and m["fp32"] == 2 * 1024 ** 3 / 1e12 and m["bf16"] == 2 * 512 ** 3 / 1e12


def test_measure_skips_int8_when_unavailable(monkeypatch):
    from graphmfu import _inductor

    def missing(a, b):
        raise NotImplementedError("no int8 matmul in this torch")

    monkeypatch.setattr(cpu, "_best_time", lambda fn, reps=5: (fn(), 1.0)[1])
    monkeypatch.setattr(_inductor, "int_mm", missing)
    monkeypatch.setattr(cpu, "_GEMMS", (("fp32", "float32", (64,)),))
    monkeypatch.setattr(cpu, "_COPY_ELEMS", 1024)
    assert set(cpu.measure()) == {"fp32", "dram_gbps"}


def test_int_mm_helper():
    from graphmfu import _inductor

    a = torch.randint(-128, 128, (32, 16), dtype=torch.int8)
    b = torch.randint(-128, 128, (16, 8), dtype=torch.int8)
    c = _inductor.int_mm(a, b)
    assert c.dtype == torch.int32
    assert torch.equal(c, a.int() @ b.int())
