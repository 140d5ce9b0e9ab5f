"""On CUDA: the annotated trace of a small compiled Llama (ProfileSession.export_chrome_trace) loads in
HTA's TraceAnalysis, every joined GPU kernel event carries graphmfu's fields, and per-event FLOPs add up
to the report's kernel totals exactly.  The trace is written under $OUT when set (open it in Perfetto).

    pip install --no-deps --no-index .whl/holistictraceanalysis-0.5.0-py3-none-any.whl .whl/plotly-7.1.0-py3-none-any.whl
    python -m pytest -q tests/gpu/test_trace_gpu.py
"""
import json
import os
from pathlib import Path

import pytest
import torch

import graphmfu
from examples.minimal_llama import Llama, LlamaConfig
from graphmfu.render import trace as trace_render

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("mode", [None, "reduce-overhead"])
def test_cuda_trace_annotated_and_loads_in_hta(fresh, tmp_path, mode):
    torch.manual_seed(0)
    model = Llama(LlamaConfig(dim=512, layers=2, heads=8, kv_heads=2, ffn=1376, vocab=4096)).to("cuda", torch.bfloat16)
    tokens = torch.randint(0, 4096, (1, 256), device="cuda")
    cm = torch.compile(model, backend=graphmfu.backend(mode=mode))
    with torch.no_grad():
        for _ in range(3):
            cm(tokens)
        with graphmfu.profile() as p, graphmfu.stage("infer"):
            for _ in range(2):
                cm(tokens)
    rep = p.report()
    out = Path(os.environ.get("OUT", tmp_path))
    path = out / f"trace_gpu_{mode or 'default'}.json.gz"
    summary = p.export_chrome_trace(path)
    print(json.dumps(summary))
    data = trace_render.read(path)
    evs = [e for e in data["traceEvents"] if "kernel_flop" in e.get("args", {})]
    joined = sum(1 for m in p._traces[-1][0] if m.graph is not None)
    assert summary["annotated_kernel_events"] == summary["joined_kernel_events"] == joined == len(evs) > 0
    assert all(e["cat"] in trace_render.DEVICE_CATS for e in evs)  # the GPU kernels, not their launches
    for e in evs:
        missing = [k for k in trace_render.FIELDS if k not in e["args"] and k != "sizes"]
        assert not missing, (e["name"], missing)
    for field in ("flops", "flops_dense", "vector_flops", "bytes"):
        # a field the profiler already sets on an event (a memcpy's "bytes") is ours as graphmfu_<field>
        assert sum(e["args"].get("graphmfu_" + field, e["args"][field]) for e in evs) == \
            sum(k[field] for k in rep.kernels), field
    gemms = [e for e in evs if e["args"]["flops"]]
    assert gemms and all(0 < e["args"]["mfu"] < 1 for e in gemms)
    assert any(e["ph"] == "C" and e["name"] == "graphmfu MFU % infer" for e in data["traceEvents"])

    hta = pytest.importorskip("hta", reason="HTA not installed: pip install the wheels in .whl/ (docs/traces.md)")
    del hta
    from hta.common.trace import Trace
    from hta.trace_analysis import TraceAnalysis

    d = tmp_path / "hta"
    d.mkdir()
    (d / path.name).write_bytes(path.read_bytes())
    ta = TraceAnalysis(trace_dir=str(d))
    assert len(ta.t.get_trace(0)) > 0
    kt = ta.get_gpu_kernel_breakdown(visualize=False)[0]
    assert len(kt) > 0
    t = Trace(trace_dir=str(d), parser_config=trace_render.hta_parser_config())
    t.parse_traces()
    df = t.get_trace(0)
    k = df[df["kernel_flop"] >= 0]
    assert len(k) == len(evs) and int(k["kernel_flop"].sum()) == sum(r["flops"] for r in rep.kernels)
