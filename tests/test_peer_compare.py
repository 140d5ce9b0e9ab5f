"""bench/peer_compare.py on CPU (issue 18, "no peer does this"): a small Llama profiled by --make, then read by
graphmfu, Inductor's profile_analysis and HTA.  The table's graphmfu columns are the report's own numbers for
those kernels; profile_analysis's output is parsed (on CPU: its table is empty, and why; its estimators on the
host ops); HTA's kernel breakdown is empty on a CPU trace and says so."""
import importlib.util
import inspect
from pathlib import Path

import pytest
import torch

import graphmfu

pytest.importorskip("hta", reason="HTA not installed: pip install HolisticTraceAnalysis==0.5.0")
ROOT = Path(__file__).resolve().parents[1]
LLAMA = "--dim 64 --ffn 128 --heads 4 --kv-heads 2 --layers 1 --seq 16 --vocab 100 --prefill"
TOP = 8


@pytest.fixture(scope="module")
def peer(tmp_path_factory):
    spec = importlib.util.spec_from_file_location("graphmfu_bench_peer_compare", ROOT / "bench" / "peer_compare.py")
    pc = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(pc)
    d = tmp_path_factory.mktemp("peer")
    pc.make(d, "cpu", LLAMA, iters=2)
    rep, data, path, meta = pc.load(d)
    pa = pc.run_profile_analysis(pc.strip(data), meta["dtype"])
    hta = pc.run_hta(path)
    yield pc, d, rep, data, pa, hta, pc.compare(rep, data, pa, hta, TOP)
    graphmfu.reset()
    torch._dynamo.reset()


def test_graphmfu_columns_are_the_reports(peer):
    pc, _, rep, data, pa, hta, rows = peer
    assert [r["time_s"] for r in rows] == sorted((k["time_s"] for k in rep.kernels), reverse=True)[:TOP]
    kernels = {(k["graph"], k["index"], k["stage"]): k for k in rep.kernels}
    heads = {(h["graph"], h["index"], h["stage"]): h for h in rep.headroom().rows("kernel")}
    for r in rows:
        k, h = kernels[(r["graph"], r["index"], r["stage"])], heads[(r["graph"], r["index"], r["stage"])]
        for f in ("calls", "time_s", "flops", "flops_dense", "bytes", "t_min_s", "sol", "bound", "module", "stage"):
            assert r[f] == k[f], (r["kernel"], f)
        assert r["headroom_s"] == h["headroom_s"] == k["time_s"] - k["t_min_s"]
        assert r["events"] == r["calls"] == 2 and r["trace_names"]  # one host event per call on CPU
        assert r["stage"] == "BENCHMARK/prefill"
    # a kernel-level cause is one of the report's own causes
    causes = [c.line() for c in rep.causes()]
    assert all(r["cause"].line() in causes for r in rows if r["cause"])
    # the head Linear(64, 100): 100 is not a multiple of 64 (every kernel compared: its time rank is the CPU's)
    head = next(r for r in pc.compare(rep, data, pa, hta, len(rep.kernels)) if r["module"] == "head")
    assert head["cause"] is not None and head["cause"].kind in ("tile_padding", "small_gemm")


def test_profile_analysis_parsed(peer):
    pc, _, _, data, pa, _, rows = peer
    # on CPU its table is empty (no device kernels, no deviceProperties), without an error
    assert pa["error"] is None and pa["devices"] == [] and pa["rows"] == 0 and pa["table"] == ""
    # its estimators on the host ops: aten::mm FLOPs equal graphmfu's, its bytes formula is twice the unique bytes
    mm = [r for r in rows if r["trace_names"] == ["aten::mm"]]
    assert mm and all(r["pa_from"] == "host" for r in mm)
    for r in mm:
        assert r["pa_flops"] == r["flops"] and r["pa_bytes"] == 2 * r["bytes"], r["module"]
    # the CPU SDPA op has no rule in torch.utils.flop_counter: 0, where graphmfu counts the causal pairs
    sdpa = [r for r in rows if "scaled_dot_product" in r["kernel"]]
    assert all(r["pa_flops"] == 0 and 0 < r["flops"] < r["flops_dense"] for r in sdpa)
    # graphmfu's fields are gone from what profile_analysis read, and the indices are kept
    raw = pc.strip(data)
    assert len(raw["traceEvents"]) == len(data["traceEvents"]) and "graphmfu" not in raw
    assert not any(k in e.get("args", {}) for e in raw["traceEvents"] for k in ("graph_key", "kernel_flop", "mfu"))


def test_hta_and_table(peer, capsys):
    pc, d, rep, _, pa, hta, rows = peer
    assert hta["installed"] and hta["error"] is None and hta["kernels"] == {} and hta["total_us"] == 0
    text = pc.render(rows, pa, hta)
    assert pc.NOTES["cpu"] in text and pc.NOTES["nogpu"] in text and pc.NOTES["host"] in text
    assert len(text.splitlines()) >= TOP + 2
    assert pc.main([str(d), "--top", "4"]) == 0
    out = capsys.readouterr().out
    assert "same run: the trace's graphmfu FLOPs sum to the report's kernel FLOPs: yes" in out
    assert "what each tool answers" in out and "Causes with actions" in out
    assert "hta" not in inspect.getsource(pc.make).lower()  # --make runs where HTA is not installed


def test_gpu_shaped_trace(peer, tmp_path):
    """The code path the H200 files will take, on a synthetic GPU-shaped copy of the CPU trace: each annotated
    host op also launches a 'kernel' event (stream 7, its External id) carrying graphmfu's fields, and the
    device is one profile_analysis knows.  Not a measurement: the kernels are the host ops' own timings."""
    pc, d, rep, data, _, _, _ = peer
    data = {**data, "deviceProperties": [{"id": 0, "name": "NVIDIA H100"}], "traceEvents": list(data["traceEvents"])}
    for n, e in enumerate(list(data["traceEvents"])):
        a = e.get("args", {})
        if "graph_key" in a:
            k = {"ph": "X", "cat": "kernel", "name": e["name"], "pid": 0, "tid": 7, "ts": e["ts"], "dur": e["dur"],
                 "args": {"External id": a["External id"], "device": 0, "stream": 7, "correlation": 10 ** 6 + n}}
            a = dict(a)
            k["args"].update({f: a.pop(f) for f in pc.GM_KEYS if f in a})
            data["traceEvents"][n] = {**e, "args": a}
            data["traceEvents"].append(k)
    pc.trace_render.write(data, tmp_path / "trace.json.gz")
    (tmp_path / "report.json").write_bytes((d / "report.json").read_bytes())
    (tmp_path / "meta.json").write_bytes((d / "meta.json").read_bytes())
    _, data, path, meta = pc.load(tmp_path)
    pa = pc.run_profile_analysis(pc.strip(data), meta["dtype"])
    hta = pc.run_hta(path)
    rows = pc.compare(rep, data, pa, hta, TOP)
    assert pa["error"] is None and pa["devices"] == [("NVIDIA H100", True)] and pa["rows"] == 0 and pa["shim"]
    for r in rows:
        assert r["pa_from"] == "kernel" and r["pa_stats"] and r["hta"], r["kernel"]
        if r["trace_names"] == ["aten::mm"]:  # augment_trace: the launching aten::mm's shapes
            assert r["pa_flops"] == r["flops"] and r["pa_stats"][0][1] > 0
    assert {t for r in rows for t, _, _ in r["hta"]} == {"COMPUTATION"}
    text = pc.render(rows, pa, hta)
    assert pc.NOTES["name"] in text and "floors every event" in text and pc.NOTES["cpu"] not in text
