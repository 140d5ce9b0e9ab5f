"""The command line (issue 12): ``graphmfu run`` profiles an unmodified script (plain torch.compile routed to
graphmfu's backend; the whole run, a step schedule, or the script's own sessions), ``python -m graphmfu`` is
the same CLI, ``graphmfu calibrate`` and reports against calibrated ceilings, the ``ncu`` subcommand's
wiring, progress on a terminal only."""
import io
import json
import os
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import pytest
import torch

import graphmfu
from graphmfu.cli import main

ROOT = Path(__file__).resolve().parents[1]
B, IN, OUT = 8, 64, 32
# one Linear without bias on a B x IN input: 2 * B * IN * OUT = 2 * 8 * 64 * 32 = 32,768 matrix FLOPs per call
HAND = 2 * B * IN * OUT

PLAIN = f"""
import sys
import torch

model = torch.nn.Linear({IN}, {OUT}, bias=False)
f = torch.compile(model)  # plain torch.compile: no graphmfu anywhere in the script
x = torch.randn({B}, {IN})
with torch.no_grad():
    for _ in range(int(sys.argv[1])):
        f(x)
print("script done", sys.argv[1:])
"""


def _script(tmp_path, text: str, name: str = "script.py") -> Path:
    p = tmp_path / name
    p.write_text(textwrap.dedent(text))
    return p


@pytest.fixture(scope="module")
def run_out(tmp_path_factory):
    """``python -m graphmfu run script.py -- 3`` in a fresh process: its output folder and its stdout."""
    tmp = tmp_path_factory.mktemp("run")
    script = _script(tmp, PLAIN)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "GRAPHMFU_PROGRESS": "0"}
    r = subprocess.run([sys.executable, "-m", "graphmfu", "run", str(script), "--out", str(tmp / "out"), "--", "3"],
                       capture_output=True, text=True, cwd=tmp, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return tmp / "out", r.stdout


def test_run_profiles_an_unmodified_script(run_out):
    out, stdout = run_out
    assert "script done ['3']" in stdout  # the script ran as __main__ with its own arguments
    doc = json.loads((out / "report.json").read_text())
    graphs = doc["graphs"]
    assert len(graphs) == 1 and graphs[0]["source"] == "backend" and graphs[0]["phase"] == "inference"
    assert doc["totals"]["flops"] == HAND  # the static graph: one call's cost
    kernels = doc["kernels"]
    calls = max(k["calls"] for k in kernels)
    assert 2 <= calls <= 3  # every profiled call (the first one compiles inside the profile)
    assert sum(k["flops"] for k in kernels) == calls * HAND
    html = (out / "report.html").read_text()
    assert "<html" in html and "graphmfu report" in html
    if hasattr(graphmfu.ProfileSession, "export_chrome_trace"):
        assert (out / "trace.json.gz").exists()
    assert "1 compile(s) through graphmfu's backend" in stdout


def test_run_with_a_step_schedule(fresh, tmp_path):
    script = _script(tmp_path, PLAIN)
    # calls 1..6: call 1 compiles (skipped), call 2 is the profiler's warm-up, calls 3-4 are recorded
    assert main(["run", str(script), "--steps", "2", "--out", str(tmp_path / "o"), "--quiet", "--", "6"]) == 0
    doc = json.loads((tmp_path / "o" / "report.json").read_text())
    assert [k["calls"] for k in doc["kernels"]] == [2]
    assert doc["kernels"][0]["flops"] == 2 * HAND
    assert torch.compile.__module__.startswith("torch")  # torch.compile restored after the run


def test_script_with_its_own_profile_is_reported_from_its_session(fresh, tmp_path, capsys):
    script = _script(tmp_path, f"""
        import torch
        import graphmfu

        f = torch.compile(torch.nn.Linear({IN}, {OUT}, bias=False), backend=graphmfu.backend)
        x = torch.randn({B}, {IN})
        with torch.no_grad():
            f(x)
            with graphmfu.profile() as p, graphmfu.stage("mine"):
                f(x)
                f(x)
        print("own stages", [s["name"] for s in p.report().stages])
        """)
    assert main(["run", str(script), "--out", str(tmp_path / "o")]) == 0
    out = capsys.readouterr().out
    assert "own stages ['mine']" in out and "the script's own graphmfu.profile() session" in out
    doc = json.loads((tmp_path / "o" / "report.json").read_text())
    assert [s["name"] for s in doc["stages"]] == ["mine"]
    assert doc["stages"][0]["flops"] == 2 * HAND


def test_failing_script_keeps_its_report_and_exit_code(fresh, tmp_path, capsys):
    script = _script(tmp_path, f"""
        import torch
        f = torch.compile(torch.nn.Linear({IN}, {OUT}, bias=False))
        with torch.no_grad():
            f(torch.randn({B}, {IN}))
            f(torch.randn({B}, {IN}))
        raise ValueError("the script's own bug")
        """)
    assert main(["run", str(script), "--out", str(tmp_path / "o"), "--quiet"]) == 1
    captured = capsys.readouterr()
    assert "ValueError: the script's own bug" in captured.err
    assert "the script failed" in captured.out
    assert json.loads((tmp_path / "o" / "report.json").read_text())["totals"]["flops"] == HAND


def test_run_errors_are_one_line(fresh, tmp_path, capsys):
    assert main(["run", str(tmp_path / "missing.py")]) == 2
    assert "no such script" in capsys.readouterr().err
    nothing = _script(tmp_path, "print('no compile here')\n")
    assert main(["run", str(nothing), "--out", str(tmp_path / "o")]) == 2
    assert "compiled nothing with torch.compile" in capsys.readouterr().err


def test_report_against_calibrated_ceilings(run_out, tmp_path, monkeypatch, capsys):
    from graphmfu.calibrate import SCHEMA, cache_path, ceilings_for
    from graphmfu.errors import GraphMFUError
    from graphmfu.hardware import get_device
    from graphmfu.report import Report

    monkeypatch.setenv("GRAPHMFU_CACHE_DIR", str(tmp_path))
    rep = Report.load(run_out[0] / "report.json").on("h200")
    with pytest.raises(GraphMFUError, match="graphmfu calibrate"):
        rep.on(ceilings="calibrated")
    cal = {"fp32": 50.0, "bf16": 700.0}  # as graphmfu calibrate would write them (TFLOP/s), DRAM 4000 GB/s
    cache_path().write_text(json.dumps({"schema": SCHEMA, "devices": {"NVIDIA H200": {
        "peaks": cal, "dram_gbps": 4000.0, "measured_at": "now", "method": "test"}}}))
    ds, cr = rep.on(ceilings="datasheet"), rep.on(ceilings="calibrated")
    sheet = get_device("h200")
    assert ds.device == sheet
    assert cr.device.matrix_tflops("bf16") == 700.0 and cr.device.dram_gbps == 4000.0
    assert cr.device.matrix_tflops("fp8") == sheet.matrix_tflops("fp8")  # not measured: the datasheet's
    for kd, kc in zip(ds.kernels, cr.kernels):
        # fp32 matmuls without TF32 run on the fp32 vector pipes: 67 TFLOP/s on the datasheet, 50 calibrated
        assert kc["mfu"] == pytest.approx(kd["mfu"] * 67 / 50, rel=1e-12)
        assert kc["mbu"] == pytest.approx(kd["mbu"] * 4800 / 4000, rel=1e-12)
        t_min = max(kc["flops"] / 50e12, kc["bytes"] / 4000e9)
        assert kc["sol"] == pytest.approx(t_min / kc["time_s"], rel=1e-12)
    assert ceilings_for(get_device("cpu"), "calibrated").measured  # a CPU is its own calibration
    path = Report.load(run_out[0] / "report.json").on("h200").save(tmp_path / "r.json")
    assert main(["show", str(path), "--ceilings", "calibrated"]) == 0
    assert "calibrated on this machine" in capsys.readouterr().out


def test_calibrate_on_cpu(tmp_path, monkeypatch, capsys):
    from graphmfu.hardware.cpu import measured_cpu

    monkeypatch.setenv("GRAPHMFU_CACHE_DIR", str(tmp_path))
    try:
        assert main(["calibrate", "--device", "cpu"]) == 0
        out = capsys.readouterr().out
        spec = measured_cpu()
        assert f"{spec.peaks_tflops['fp32']:.4g} TFLOP/s" in out and f"{spec.dram_gbps:.4g} GB/s" in out
        assert str(tmp_path) in out and list(tmp_path.glob("cpu-*.json"))
    finally:
        measured_cpu.cache_clear()  # the other tests' cache directory again


def test_ncu_subcommand_is_wired_lazily(monkeypatch, capsys):
    seen = {}
    fake = types.ModuleType("graphmfu.ncu")
    fake.main = lambda argv: seen.setdefault("argv", argv) and 0
    monkeypatch.setitem(sys.modules, "graphmfu.ncu", fake)
    assert main(["ncu", "report.json", "ncu.csv", "--top", "5"]) == 0
    assert seen["argv"] == ["report.json", "ncu.csv", "--top", "5"]
    monkeypatch.setitem(sys.modules, "graphmfu.ncu", None)  # as if graphmfu/ncu.py were not there
    assert main(["ncu", "report.json", "ncu.csv"]) == 2
    assert "not available" in capsys.readouterr().err


def test_progress_only_on_a_terminal(monkeypatch):
    from graphmfu.progress import Progress

    monkeypatch.delenv("GRAPHMFU_PROGRESS", raising=False)
    quiet = io.StringIO()  # not a terminal
    with Progress(total=3, desc="work", stream=quiet) as bar:
        bar.update(1, "a")
    assert quiet.getvalue() == ""
    monkeypatch.setenv("GRAPHMFU_PROGRESS", "1")  # forced on: plain lines when not a terminal
    forced = io.StringIO()
    with Progress(total=3, desc="work", stream=forced) as bar:
        bar.update(1, "a")
        bar.update(2, "b")
    lines = forced.getvalue().splitlines()
    assert [x.split(" (")[0] for x in lines] == ["work 1/3 a", "work 3/3 b"]
    monkeypatch.setenv("GRAPHMFU_PROGRESS", "0")

    class Tty(io.StringIO):
        def isatty(self):
            return True
    tty = Tty()
    with Progress(total=2, desc="work", stream=tty) as bar:
        bar.update(1)
    assert tty.getvalue() == ""  # GRAPHMFU_PROGRESS=0 silences a terminal too
