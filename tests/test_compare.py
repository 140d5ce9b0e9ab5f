"""graphmfu.compare on CPU: eager and compiled sides of a tiny Llama, prefill + decode (and a
training step of an MLP).  Both sides' FLOPs come from the same rules, so they must agree per
module; fusion may only lower bytes; every measured kernel of both sides is attributed."""
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn as nn

import graphmfu
from graphmfu import GraphMFUError

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))
from minimal_llama import graphmfu_compare  # noqa: E402

TINY = ["--dim", "64", "--layers", "2", "--heads", "4", "--kv-heads", "2", "--ffn", "128", "--vocab", "100",
        "--seq", "16", "--device", "cpu"]


@pytest.fixture(scope="module")
def llama_cmp():
    setup = graphmfu_compare(TINY)
    return graphmfu.compare(setup["model"], stages=setup["stages"], warmup=1, iters=2)


def test_stages_and_calls(llama_cmp):
    assert [s["name"] for s in llama_cmp.stages] == ["prefill", "decode"]
    for s in llama_cmp.stages:
        for side in ("eager", "compiled"):
            assert s[side]["calls"] == 2  # the profiler's warm-up iteration is not counted
            assert s[side]["span_s"] > 0 and s[side]["event_s"] > 0 and s[side]["clean_s"] > 0


def test_flops_equal_per_stage_and_module(llama_cmp):
    # prefill matrix FLOPs by hand, per layer (T=16, d=64, 4 q heads / 2 kv heads of 16, ffn 128):
    #   q, o: 2*16*64*64 = 131072 each; k, v: 2*16*64*32 = 65536 each; gate, up, down: 2*16*64*128 = 262144 each
    #   causal attention (effective): QK^T and PV over the lower triangle incl. diagonal: 2 * 2*4*16*(16*17/2) ...
    #   checked against the rules elsewhere; here: both sides apply the same rules to the same ops
    for s in llama_cmp.stages:
        assert s["flops_match"], s
        assert s["eager"]["flops"] == s["compiled"]["flops"] > 0
        assert s["eager"]["flops_dense"] == s["compiled"]["flops_dense"]
    mods = llama_cmp.modules()
    assert len(mods) > 20
    for m in mods:
        assert m["flops_match"], (m["stage"], m["module"], m["eager"]["flops"], m["compiled"]["flops"])
    q = next(m for m in mods if m["stage"] == "prefill" and m["module"] == "layers.0.attn.q")
    assert q["eager"]["flops"] == 2 * 16 * 64 * 64  # 131072: one [16,64] @ [64,64] GEMM
    mlp = next(m for m in mods if m["stage"] == "prefill" and m["module"] == "layers.1.mlp")
    assert mlp["eager"]["flops"] == 3 * 2 * 16 * 64 * 128  # gate, up, down: 786432


def test_fusion_lowers_bytes_and_kernels(llama_cmp):
    for s in llama_cmp.stages:
        assert s["compiled"]["kernels"] < s["eager"]["kernels"]
        assert s["compiled"]["bytes"] <= s["eager"]["bytes"], s["name"]
        assert s["bytes_saved"] == s["eager"]["bytes"] - s["compiled"]["bytes"]
    fused = [m for m in llama_cmp.modules() if 0 < m["compiled"]["kernels"] < m["eager"]["kernels"]]
    assert fused
    for m in fused:
        assert m["compiled"]["bytes"] <= m["eager"]["bytes"], (m["stage"], m["module"])


def test_every_kernel_attributed(llama_cmp):
    cov = llama_cmp.coverage()
    for side in ("eager", "compiled"):
        assert cov[side]["time_attributed"] == pytest.approx(1.0), cov[side]["unattributed_kernels"]
        assert cov[side]["unattributed_kernels"] == []
        assert cov[side]["unknown_ops"] == []
    assert llama_cmp.data["notes"] == []
    # module times at one depth sum to the attributed kernel time (no double counting)
    for side in ("eager", "compiled"):
        for st in ("prefill", "decode"):
            root = next(m for m in llama_cmp.modules(0, st))[side]["time_s"]
            kids = sum(m[side]["time_s"] for m in llama_cmp.modules(1, st) if m["depth"] == 1)
            direct = sum(k["time_s"] for k in llama_cmp.data["kernels"][side]
                         if k["stage"] == st and k["module"] == "") / 2
            assert kids + direct == pytest.approx(root, rel=1e-9)


def test_eager_ops_have_modules(llama_cmp):
    ek = llama_cmp.data["kernels"]["eager"]
    mods = {k["module"] for k in ek if k["op"] == "aten.mm.default"}
    assert {"layers.0.attn.q", "layers.1.mlp.down", "head"} <= mods
    sdpa = [k for k in ek if "scaled_dot_product" in k["op"]]
    assert sdpa and all(k["module"].endswith(".attn") and k["flops"] > 0 for k in sdpa)


def test_outputs_json_markdown_roundtrip(llama_cmp, tmp_path):
    p = llama_cmp.save(tmp_path / "c.json")
    back = graphmfu.Comparison.load(p)
    assert back.table() == llama_cmp.table()
    md = llama_cmp.save(tmp_path / "c.md").read_text()
    assert "## Stages" in md and "| prefill" in md
    txt = llama_cmp.table(depth=1)
    assert "per module (depth 1)" in txt and "speedup" in txt
    with pytest.raises(GraphMFUError):
        graphmfu.Comparison({"schema": "graphmfu.report/1"})


class TwoLayer(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(32, 64), nn.Linear(64, 8)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))


def test_training_flops_equal():
    torch.manual_seed(0)
    model, x = TwoLayer(), torch.randn(16, 32)
    cmp = graphmfu.compare(model, x, training=True, warmup=1, iters=2)
    s = cmp.stages[0]
    assert s["name"] == "train" and s["flops_match"]
    # forward 2*16*32*64 + 2*16*64*8 = 65536 + 16384; backward: fc2 dX and dW, fc1 dW only (x needs no grad)
    # = 2*16384 + 65536 = 98304; total 180224
    assert s["eager"]["flops"] == 180224 == s["compiled"]["flops"]
    assert cmp.coverage()["eager"]["time_attributed"] == pytest.approx(1.0)
    fc1 = next(m for m in cmp.modules() if m["module"] == "fc1")
    assert fc1["eager"]["flops"] == fc1["compiled"]["flops"] == 65536 * 2  # forward + dW


class FailsCompiled(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        if torch.compiler.is_compiling():
            raise RuntimeError("no compile for me")
        return self.fc(x)


def test_bad_input():
    x = torch.randn(2, 4)
    with pytest.raises(GraphMFUError, match="produced no graph .*fails under torch.compile"):
        graphmfu.compare(FailsCompiled(), x, warmup=1, iters=1)  # Dynamo falls back to eager: no graph
    plain = nn.Linear(4, 4)

    def fwd(m):  # fails on the compiled module only (an error raised by compiled code)
        if m is not plain:
            raise RuntimeError("compiled-only failure")
        return m(x)

    with pytest.raises(GraphMFUError, match="fails under torch.compile in stage 'fwd': RuntimeError: compiled-only"):
        graphmfu.compare(plain, stages={"fwd": fwd}, warmup=1, iters=1)
    m = nn.Linear(4, 4)
    with pytest.raises(GraphMFUError, match="torch.nn.Module"):
        graphmfu.compare(lambda t: t, x)
    with pytest.raises(GraphMFUError, match="give the inputs once"):
        graphmfu.compare(m, x, stages={"a": (x,)})
    with pytest.raises(GraphMFUError, match="non-empty dict"):
        graphmfu.compare(m, stages=["a"])
    with pytest.raises(GraphMFUError, match="args tuple or a callable"):
        graphmfu.compare(m, stages={"a": x})
    with pytest.raises(GraphMFUError, match="without '/'"):
        graphmfu.compare(m, stages={"a/b": (x,)})
    with pytest.raises(GraphMFUError, match="iters"):
        graphmfu.compare(m, x, iters=0)
    with pytest.raises(GraphMFUError, match="fails eagerly in stage 'a'"):
        graphmfu.compare(m, stages={"a": (torch.randn(2, 5),)}, warmup=1, iters=1)


def test_changed_op_sequence_is_reported_not_dropped():
    """An op sequence that differs between the recorded call and the timed ones: the unmatched
    kernels are listed as unattributed and a note says why."""
    class Flaky(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc, self.calls = nn.Linear(8, 8), 0

        def forward(self, x):
            self.calls += 1
            y = self.fc(x)
            return torch.tanh(y) if self.calls % 2 else torch.sigmoid(y)

    from graphmfu import eager
    from graphmfu.join import join
    from graphmfu.registry import Registry
    from graphmfu.stage import stage

    m, x = Flaky(), torch.randn(4, 8)
    with torch.no_grad():
        g = eager.record(m, lambda: m(x), "s", Registry(), "cpu")  # call 1: tanh
        with torch.profiler.profile() as prof:
            with stage("s"):
                m(x)  # call 2: sigmoid
    measured, stages, notes = join(prof, [g], cuda=False)  # the one join, as for compiled graphs
    assert any("not found in the profile" in n for n in notes)
    assert any(mm.graph is None and mm.name == "aten::sigmoid" for mm in measured)
    assert any(mm.graph == g.id and mm.name in ("aten::addmm", "aten::mm") for mm in measured)


def test_cli_compare(tmp_path):
    script = tmp_path / "s.py"
    script.write_text(textwrap.dedent("""
        import torch
        def graphmfu_compare(argv):
            n = int(argv[0]) if argv else 8
            torch.manual_seed(0)
            return {"model": torch.nn.Linear(n, n), "stages": {"fwd": (torch.randn(4, n),)}, "iters": 1,
                    "warmup": 1}
    """))
    out = tmp_path / "o.json"
    r = subprocess.run([sys.executable, "-m", "graphmfu.cli", "compare", str(script), "--json", str(out), "--no-clean",
                        "--", "16"], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "per stage (eager / compiled)" in r.stdout
    d = json.loads(out.read_text())
    assert d["schema"] == "graphmfu.compare/1" and d["stages"][0]["flops_match"]
    assert d["stages"][0]["eager"]["flops"] == 2 * 4 * 16 * 16  # one [4,16] @ [16,16] GEMM: 2048
    r = subprocess.run([sys.executable, "-m", "graphmfu.cli", "show", str(out)], capture_output=True, text=True,
                       cwd=ROOT)
    assert r.returncode == 0 and "fwd" in r.stdout
    bad = tmp_path / "bad.py"
    bad.write_text("x = 1\n")
    r = subprocess.run([sys.executable, "-m", "graphmfu.cli", "compare", str(bad)], capture_output=True, text=True,
                       cwd=ROOT)
    assert r.returncode == 2 and "no graphmfu_compare(argv)" in r.stderr and "Traceback" not in r.stderr
