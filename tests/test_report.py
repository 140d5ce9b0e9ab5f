"""Report: schema, totals, module tree, CSV/JSON round trip, tables."""
import csv
import io
import json

import pytest
import torch
import torch.nn as nn

import graphmfu
from graphmfu.report import SCHEMA, Report


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.enc = nn.Sequential(nn.Linear(16, 32), nn.GELU(), nn.Linear(32, 16))
        self.norm = nn.LayerNorm(16)
        self.head = nn.Linear(16, 4)

    def forward(self, x):
        return self.head(self.norm(self.enc(x) + x))


@pytest.fixture(scope="module")
def rep():
    return graphmfu.analyze(Net(), torch.randn(8, 16), training=True, device="h100-sxm")


def test_schema_fields(rep):
    d = rep.to_dict()
    assert d["schema"] == SCHEMA == "graphmfu.report/1"
    assert d["torch"] == torch.__version__
    assert d["device"]["name"] == "NVIDIA H100 80GB HBM3" and d["device"]["peaks"]["bf16"] == 989.5
    for k in ("flops", "flops_dense", "vector_flops", "bytes_read", "bytes_written"):
        assert k in d["totals"]
    for k in ("graph", "phase", "op", "module", "flops", "flops_dense", "vector_flops", "bytes_read",
              "bytes_written", "intensity", "bound", "t_min_s"):
        assert k in d["nodes"][0]
    assert set(d["coverage"]) >= {"nodes_total", "nodes_unknown", "unknown_ops"}
    assert d["modules"][0]["module"] == "" and d["modules"][0]["flops"] == d["totals"]["flops"]


def test_totals_are_node_sums_and_matmul_exact(rep):
    # forward: 2*8*16*32 + 2*8*32*16 + 2*8*16*4 = 8192 + 8192 + 1024 = 17408
    assert rep.phase("forward")["flops"] == 17408
    assert rep.totals["flops"] == sum(n["flops"] for n in rep.nodes)
    assert rep.totals["bytes_read"] == sum(n["bytes_read"] for n in rep.nodes)


def test_module_rows_never_double_count(rep):
    for depth in (None, 0, 1, 2):
        rows = rep.by_module(depth)
        assert sum(r["flops"] for r in rows) == rep.totals["flops"]
        assert abs(sum(r["t_min_s"] for r in rows) - rep.totals["t_min_s"]) < 1e-15
    names = {r["module"] for r in rep.by_module(2)}
    assert {"enc.0", "enc.2", "head", "norm"} <= names
    assert {r["module"] for r in rep.by_module(1)} >= {"enc", "head", "norm"}


def test_backward_nodes_attributed_to_forward_modules(rep):
    bwd = {n["module"] for n in rep.nodes if n["phase"] == "backward" and n["flops"]}
    assert {"enc.0", "enc.2", "head"} <= bwd


def test_roofline_fields(rep):
    mm = next(n for n in rep.nodes if n["op"] == "aten.addmm.default" or n["op"] == "aten.mm.default")
    peak = 67e12  # fp32 on H100 SXM vector pipes (tf32 off by default)
    bw = 3350e9
    t_c = mm["flops"] / peak + mm["vector_flops"] / peak
    t_m = (mm["bytes_read"] + mm["bytes_written"]) / bw
    assert mm["t_min_s"] == pytest.approx(max(t_c, t_m), rel=1e-12)
    assert mm["bound"] == ("compute" if t_c >= t_m else "memory")
    assert mm["ridge"] == pytest.approx(67e12 / 3350e9)


def test_json_round_trip_and_views(rep, tmp_path):
    p = rep.save(tmp_path / "r.json")
    back = Report.load(p)
    assert back.totals == json.loads(json.dumps(rep.totals))
    assert back.table(by="op") == rep.table(by="op")
    assert back.by_module(1) == rep.by_module(1)


def test_csv(rep, tmp_path):
    p = rep.save(tmp_path / "r.csv")
    rows = list(csv.DictReader(io.StringIO(p.read_text())))
    assert len(rows) == len(rep.nodes)
    assert sum(int(r["flops"]) for r in rows) == rep.totals["flops"]


def test_tables_render(rep):
    t = rep.table(by="module", depth=1)
    assert "enc" in t and "t_min ms" in t
    assert "aten." in rep.table(by="op")
    assert "coverage:" in rep.summary()
    with pytest.raises(graphmfu.GraphMFUError):
        rep.table(by="color")
