"""The annotated Chrome trace (ProfileSession.export_chrome_trace) of minimal_llama on CPU: every joined
kernel event carries graphmfu's fields, per-event FLOPs and bytes add up to the report's kernel totals
exactly, the file is a valid Chrome/Perfetto JSON trace, and HTA loads it."""
import gzip
import json
import numbers

import pytest
import torch

import graphmfu
from examples.minimal_llama import build, parse_args
from graphmfu.errors import GraphMFUError
from graphmfu.render import trace as trace_render

ARGS = ["--dim", "64", "--ffn", "128", "--heads", "4", "--kv-heads", "2", "--layers", "1", "--seq", "16",
        "--vocab", "100", "--compiled"]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    torch._dynamo.reset()
    graphmfu.reset()
    model, tokens, caches, next_tok, _ = build(parse_args(ARGS))
    fn = torch.compile(model, backend=graphmfu.backend)
    with torch.no_grad():
        fn(tokens)
        fn(next_tok, caches)  # compile both graphs outside the profile
        with graphmfu.profile() as p, graphmfu.stage("BENCHMARK"):
            for _ in range(2):
                with graphmfu.stage("prefill"):
                    fn(tokens)
                with graphmfu.stage("decode"):
                    fn(next_tok, caches)
    d = tmp_path_factory.mktemp("trace")
    path = d / "minimal_llama.json.gz"
    summary = p.export_chrome_trace(path)
    yield p, p.report(), path, summary
    graphmfu.reset()
    torch._dynamo.reset()


def _kernel_events(data):
    return [e for e in data["traceEvents"] if "kernel_flop" in e.get("args", {})]


def test_every_joined_kernel_event_annotated_and_sums_match(exported):
    p, rep, path, summary = exported
    with gzip.open(path, "rt") as f:  # .json.gz is gzipped
        data = json.load(f)
    evs = _kernel_events(data)
    joined = [m for m in p._traces[-1][0] if m.graph is not None]
    assert len(joined) == summary["joined_kernel_events"] == summary["annotated_kernel_events"] == len(evs) > 0
    for e in evs:
        a = e["args"]
        missing = [k for k in ("kernel_num_gb", *trace_render.FIELDS) if k not in a and k != "sizes"]
        assert not missing, (e["name"], missing)
        assert a["kernel_flop"] == a["flops"] and a["kernel_num_gb"] == a["bytes"] / 1e9
    # per-event sums equal the report's kernel totals, exactly (integers)
    for field in ("flops", "flops_dense", "vector_flops", "bytes"):
        assert sum(e["args"][field] for e in evs) == sum(k[field] for k in rep.kernels), field
    # per stage as well (events of a nested stage roll up into BENCHMARK)
    for st in rep.stages:
        ev = [e for e in evs if e["args"]["stage"] == st["name"] or e["args"]["stage"].startswith(st["name"] + "/")]
        assert sum(e["args"]["flops"] for e in ev) == st["flops"], st["name"]
    # two calls of each graph: each (graph, kernel, call) is one event on CPU
    calls = {(e["args"]["graph"], e["args"]["kernel_index"], e["args"]["call"]) for e in evs}
    assert len(calls) == len(evs) and {c for _, _, c in calls} == {0, 1}
    # device numbers are the report's: an event's MFU over its own time, through roofline.utilisation
    gemm = next(e for e in evs if e["args"]["kernel"] == "extern_kernels.mm" and e["args"]["module"] == "layers.0.attn.q")
    assert gemm["args"]["flops"] == 2 * 16 * 64 * 64  # x[16, 64] @ Wq[64, 64]: 131072
    peak = rep.device.matrix_tflops("fp32") * 1e12
    assert gemm["args"]["mfu"] == pytest.approx(gemm["args"]["flops"] / peak / (gemm["args"]["site_time_us"] * 1e-6),
                                                rel=1e-12)
    assert gemm["args"]["bound"] in ("compute", "memory") and gemm["args"]["graph_key"].endswith(":0")
    assert gemm["args"]["nodes"] and gemm["args"]["stage"] == "BENCHMARK/prefill"


def test_valid_chrome_trace(exported):
    """What Perfetto and chrome://tracing need: a traceEvents list; every event a phase, name and pid;
    complete events ('X') numeric ts and dur; counters ('C') numeric args; strict JSON."""
    _, rep, path, _ = exported
    raw = gzip.open(path, "rt").read()
    data = json.loads(raw, parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}"))
    assert isinstance(data["traceEvents"], list)
    for e in data["traceEvents"]:
        assert "ph" in e and "name" in e, e
        if e["ph"] in ("X", "C", "i", "B", "E"):
            assert isinstance(e["ts"], numbers.Number) and "pid" in e, e
        if e["ph"] == "X":
            assert isinstance(e["dur"], numbers.Number) and e["dur"] >= 0 and "tid" in e, e
        if e["ph"] == "C":
            assert e["args"] and all(isinstance(v, numbers.Number) for v in e["args"].values()), e
    assert data["distributedInfo"] == {"rank": 0, "world_size": 1}
    assert data["graphmfu"]["schema"] == trace_render.SCHEMA and data["traceName"] == str(path)
    # stage track: one slice per occurrence (BENCHMARK once, prefill and decode twice) carrying the
    # report's stage row; counters go up to the stage's MFU and back to 0
    slices = [e for e in data["traceEvents"] if e.get("cat") == "graphmfu_stage"]
    assert sorted(e["name"] for e in slices) == ["stage BENCHMARK", *["stage BENCHMARK/decode"] * 2,
                                                 *["stage BENCHMARK/prefill"] * 2]
    rows = {s["name"]: s for s in rep.stages}
    for e in slices:
        assert e["args"]["mfu"] == rows[e["name"][len("stage "):]]["mfu"]
    mfu = [e for e in data["traceEvents"] if e["ph"] == "C" and e["name"] == "graphmfu MFU % BENCHMARK/prefill"]
    assert [e["args"]["MFU %"] for e in mfu] == [rows["BENCHMARK/prefill"]["mfu"] * 100, 0] * 2


def test_hta_loads_it(exported, tmp_path):
    hta = pytest.importorskip("hta", reason="HTA not installed: pip install HolisticTraceAnalysis==0.5.0")
    del hta
    from hta.common.trace import Trace
    from hta.trace_analysis import TraceAnalysis

    _, rep, path, _ = exported
    (tmp_path / path.name).write_bytes(path.read_bytes())
    ta = TraceAnalysis(trace_dir=str(tmp_path))
    assert len(ta.t.get_trace(0)) > 0  # rank 0, from distributedInfo
    t = Trace(trace_dir=str(tmp_path), parser_config=trace_render.hta_parser_config())
    t.parse_traces()
    df = t.get_trace(0)
    k = df[df["kernel_flop"] >= 0]
    assert len(k) == len(_kernel_events(trace_render.read(path)))
    assert int(k["kernel_flop"].sum()) == sum(r["flops"] for r in rep.kernels)


def test_export_errors(tmp_path):
    p = graphmfu.profile()
    with pytest.raises(GraphMFUError, match="before the profiled block"):
        p.export_chrome_trace(tmp_path / "t.json")
