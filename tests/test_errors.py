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
