"""Bad input gets one clear line (a GraphMFUError naming the fix), never a deep torch traceback."""
import subprocess
import sys

import pytest
import torch
import torch.nn as nn

import graphmfu
from graphmfu.errors import GraphMFUError
from graphmfu.hardware import get_device


def one_line(excinfo):
    msg = str(excinfo.value)
    assert "\n" not in msg and msg.startswith("graphmfu")
    return msg


def test_analyze_not_a_model():
    with pytest.raises(GraphMFUError) as e:
        graphmfu.analyze(42, torch.randn(2))
    assert "nn.Module or a function" in one_line(e)


def test_analyze_arguments_the_model_rejects():
    with pytest.raises(GraphMFUError) as e:
        graphmfu.analyze(nn.Linear(4, 4), torch.randn(2, 4), torch.randn(2, 4))
    assert "rejects these arguments" in one_line(e)


def test_analyze_shape_mismatch_inside_model():
    with pytest.raises(GraphMFUError) as e:
        graphmfu.analyze(nn.Linear(4, 4), torch.randn(2, 5))
    msg = one_line(e)
    assert "tracing Linear on fake tensors failed" in msg and "runs eagerly" in msg


def test_unknown_gpu_names_the_overrides(monkeypatch):
    monkeypatch.delenv("GRAPHMFU_PEAK_TFLOPS", raising=False)
    monkeypatch.delenv("GRAPHMFU_DRAM_GBPS", raising=False)
    with pytest.raises(GraphMFUError) as e:
        get_device("NVIDIA Imaginary X1")
    msg = one_line(e)
    assert "GRAPHMFU_PEAK_TFLOPS" in msg and "GRAPHMFU_DRAM_GBPS" in msg


def test_unknown_gpu_with_overrides_works(monkeypatch):
    monkeypatch.setenv("GRAPHMFU_PEAK_TFLOPS", "100")
    monkeypatch.setenv("GRAPHMFU_DRAM_GBPS", "1000")
    d = get_device("NVIDIA Imaginary X1")
    assert d.matrix_tflops("bf16") == 100 and d.dram_gbps == 1000


@pytest.mark.parametrize("var,value", [("GRAPHMFU_PEAK_TFLOPS", "fast"), ("GRAPHMFU_PEAK_TFLOPS", "bf16=x"),
                                       ("GRAPHMFU_PEAK_TFLOPS", "bf17=9"), ("GRAPHMFU_DRAM_GBPS", "-3")])
def test_malformed_override(monkeypatch, var, value):
    monkeypatch.setenv(var, value)
    with pytest.raises(GraphMFUError) as e:
        get_device("h100-sxm")
    assert var in one_line(e) and value in str(e.value)


def test_user_rules_file_that_fails_to_import(tmp_path):
    bad = tmp_path / "bad_rules.py"
    bad.write_text("import graphmfu\nraise RuntimeError('typo in my rules')\n")
    with pytest.raises(GraphMFUError) as e:
        graphmfu.load_rules(bad)
    msg = one_line(e)
    assert "bad_rules.py" in msg and "typo in my rules" in msg


def test_user_rules_file_missing(tmp_path):
    with pytest.raises(GraphMFUError) as e:
        graphmfu.load_rules(tmp_path / "nope.py")
    assert "does not exist" in one_line(e)


def test_user_rules_file_loads(tmp_path):
    good = tmp_path / "good_rules.py"
    good.write_text(
        "import torch, graphmfu\n"
        "lib = torch.library.Library('gmfufile', 'FRAGMENT')\n"
        "lib.define('twice(Tensor x) -> Tensor')\n"
        "@graphmfu.rule(torch.ops.gmfufile.twice)\n"
        "def twice(x, *, out):\n"
        "    return graphmfu.Cost.of(vector={'fp32': 2 * x.numel}, read=x.nbytes, written=out.nbytes)\n")
    graphmfu.load_rules(good)
    from graphmfu.cost import REGISTRY

    assert REGISTRY.lookup(torch.ops.gmfufile.twice.default) is not None


def test_rule_on_a_non_op():
    with pytest.raises(GraphMFUError) as e:
        graphmfu.rule("aten.mm")
    assert "ATen ops" in one_line(e)


def test_backend_misuse():
    with pytest.raises(GraphMFUError) as e:
        graphmfu.backend(3)
    assert "keyword options" in one_line(e)
    with pytest.raises(GraphMFUError) as e:
        graphmfu.backend(mode="warp-speed")
    assert "unknown mode" in one_line(e)


def test_cli_error_is_one_line(tmp_path):
    bad = tmp_path / "x.json"
    bad.write_text("{}")
    p = subprocess.run([sys.executable, "-m", "graphmfu.cli", "show", str(bad)], capture_output=True, text=True)
    assert p.returncode == 2
    assert p.stderr.strip().count("\n") == 0 and "not a graphmfu report" in p.stderr


# --------------------------------------------------------------------------- overrides: finite and sane


@pytest.mark.parametrize("var,value", [("GRAPHMFU_PEAK_TFLOPS", "nan"), ("GRAPHMFU_PEAK_TFLOPS", "inf"),
                                       ("GRAPHMFU_PEAK_TFLOPS", "1e-300"), ("GRAPHMFU_PEAK_TFLOPS", "bf16=nan"),
                                       ("GRAPHMFU_PEAK_TFLOPS", "bf16=989,fp32=1e9"),
                                       ("GRAPHMFU_DRAM_GBPS", "nan"), ("GRAPHMFU_DRAM_GBPS", "inf"),
                                       ("GRAPHMFU_DRAM_GBPS", "1e-300"), ("GRAPHMFU_DRAM_GBPS", "1e12")])
def test_override_not_finite_or_absurd(monkeypatch, var, value):
    monkeypatch.delenv("GRAPHMFU_PEAK_TFLOPS", raising=False)
    monkeypatch.delenv("GRAPHMFU_DRAM_GBPS", raising=False)
    monkeypatch.setenv(var, value)
    with pytest.raises(GraphMFUError) as e:
        get_device("h100-sxm")
    msg = one_line(e)
    assert var in msg and value in msg
    assert ("0.001" in msg and "TFLOP/s" in msg) if "PEAK" in var else ("0.1" in msg and "GB/s" in msg)


@pytest.mark.parametrize("kw", [{"peak_tflops": float("nan")}, {"peak_tflops": float("inf")},
                                {"peak_tflops": 1e-300}, {"peak_tflops": {"bf16": float("nan")}},
                                {"dram_gbps": float("nan")}, {"dram_gbps": float("inf")}, {"dram_gbps": 1e-300}])
def test_override_api_not_finite_or_absurd(monkeypatch, kw):
    monkeypatch.delenv("GRAPHMFU_PEAK_TFLOPS", raising=False)
    monkeypatch.delenv("GRAPHMFU_DRAM_GBPS", raising=False)
    with pytest.raises(GraphMFUError) as e:
        get_device("h100-sxm", **kw)
    assert next(iter(kw)) in one_line(e) and "accepted range" in str(e.value)


def test_override_bounds_are_inclusive_and_sane(monkeypatch):
    from graphmfu.hardware import DRAM_GBPS_RANGE, PEAK_TFLOPS_RANGE

    assert PEAK_TFLOPS_RANGE == (0.001, 1e6) and DRAM_GBPS_RANGE == (0.1, 1e6)
    d = get_device("h100-sxm", peak_tflops=0.001, dram_gbps=1e6)
    assert d.matrix_tflops("bf16") == 0.001 and d.dram_gbps == 1e6


# --------------------------------------------------------------------------- graphmfu show on bad documents


def _cli(argv, capsys):
    from graphmfu.cli import main

    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.mark.parametrize("doc", [
    "[1, 2]", '"a string"', "{}", '{"totals": {}}', '{"schema": "graphmfu.report/1"}',
    '{"schema": "graphmfu.report/1", "totals": {}, "rows": []}',
    '{"schema": "graphmfu.report/1", "record": {"schema": "graphmfu.record/1"}}',
    '{"schema": "graphmfu.report/1", "record": {"schema": "graphmfu.record/1", "graphs": []}}',
    '{"schema": "graphmfu.compare/1", "records": {}}',
    '{"schema": "graphmfu.compare/1"}',
    "not json at all",
])
def test_cli_show_malformed_document(tmp_path, capsys, doc):
    f = tmp_path / "x.json"
    f.write_text(doc)
    rc, out, err = _cli(["show", f], capsys)
    assert rc == 2, (out, err)
    assert err.startswith("graphmfu:") and err.strip().count("\n") == 0, err


def test_cli_show_missing_file(tmp_path, capsys):
    rc, _, err = _cli(["show", tmp_path / "nope.json"], capsys)
    assert rc == 2 and err.startswith("graphmfu:") and err.strip().count("\n") == 0


def test_newer_report_schema_cli_and_load(tmp_path, capsys):
    f = tmp_path / "new.json"
    f.write_text('{"schema": "graphmfu.report/2", "record": {}}')
    with pytest.raises(GraphMFUError) as e:
        graphmfu.Report.load(f)
    assert "written by a newer graphmfu" in one_line(e)
    rc, _, err = _cli(["show", f], capsys)
    assert rc == 2 and "written by a newer graphmfu" in err and err.strip().count("\n") == 0


# --------------------------------------------------------------------------- not a Python file


def test_cli_compare_script_not_python(tmp_path, capsys):
    f = tmp_path / "x.json"
    f.write_text("{}")
    rc, _, err = _cli(["compare", f], capsys)
    assert rc == 2 and err.strip().count("\n") == 0
    assert "x.json" in err and "not a Python file" in err and ".py" in err
    g = tmp_path / "script"  # a script without .py
    g.write_text("def graphmfu_compare(argv):\n    return {}\n")
    rc, _, err = _cli(["compare", g], capsys)
    assert rc == 2 and "not a Python file" in err and err.strip().count("\n") == 0


def test_load_rules_not_python(tmp_path):
    f = tmp_path / "x.json"
    f.write_text("{}")
    with pytest.raises(GraphMFUError) as e:
        graphmfu.load_rules(f)
    msg = one_line(e)
    assert "x.json" in msg and ".py" in msg and "@graphmfu.rule" in msg
    with pytest.raises(GraphMFUError):  # still an error the second time, not silently "loaded"
        graphmfu.load_rules(f)


def test_load_rules_failed_file_is_not_marked_loaded(tmp_path):
    f = tmp_path / "flaky_rules.py"
    f.write_text("raise RuntimeError('first try')\n")
    with pytest.raises(GraphMFUError):
        graphmfu.load_rules(f)
    with pytest.raises(GraphMFUError) as e:  # fixed or not, the second call imports it again
        graphmfu.load_rules(f)
    assert "first try" in one_line(e)


# --------------------------------------------------------------------------- negative counts


@pytest.mark.parametrize("argv", [["show", "r.json", "--top", "-2"], ["show", "r.json", "--depth", "-1"],
                                  ["compare", "s.py", "--iters", "0"], ["compare", "s.py", "--iters", "-3"],
                                  ["compare", "s.py", "--warmup", "-1"], ["compare", "s.py", "--top", "-1"],
                                  ["compare", "s.py", "--depth", "-2"]])
def test_cli_negative_counts_rejected(capsys, argv):
    from graphmfu.cli import main

    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and "Traceback" not in err
    flag = argv[2]
    assert f"argument {flag}" in err and (">= 1" if flag == "--iters" else ">= 0") in err


def test_cli_zero_counts_accepted(tmp_path, capsys):
    f = tmp_path / "x.json"
    f.write_text("{}")
    rc, _, err = _cli(["show", f, "--top", "0", "--depth", "0"], capsys)
    assert rc == 2 and "not a graphmfu report" in err  # parsed; the file is what is wrong


# --------------------------------------------------------------------------- graphmfu devices


def test_cli_devices_lists_aliases_and_fp4(capsys):
    rc, out, _ = _cli(["devices"], capsys)
    assert rc == 0
    lines = out.splitlines()
    head = lines[0].split()
    assert "aliases" in head and "fp4" in head
    a100 = next(ln for ln in lines if ln.startswith("NVIDIA A100-SXM4-40GB "))
    assert "a100-sxm-40gb" in a100 and "a100-40gb" in a100
    b200 = next(ln for ln in lines if ln.startswith("NVIDIA B200 "))
    assert "9000" in b200  # the fp4 column
    from graphmfu.hardware import table

    for alias, spec in table().items():  # every alias the lookup accepts is listed on its device's row
        if alias != spec.name:
            assert alias in next(ln for ln in lines if ln.startswith(spec.name + " ")), alias
