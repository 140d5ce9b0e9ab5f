"""Roofline plots (issue 12): the points are the report's own rows (intensity, achieved FLOP/s and MFU/MBU/SOL
from derive / roofline.utilisation), a static report sits on its roofline at t_min, a comparison draws
eager -> compiled per module; PNG, SVG, self-contained HTML and terminal output for each; one clear line
when a plot library is missing; ``graphmfu plot``; ``to_pandas``."""
import math
import sys

import pytest
import torch

import graphmfu
from tests.models import UpDown
from graphmfu.errors import GraphMFUError

pytest.importorskip("matplotlib")
pytest.importorskip("plotly")

M, D, H = 32, 64, 128  # batch rows, model width, hidden width


def Tiny():
    return UpDown(D, H)


# two matmuls of M x D x H: 2*M*D*H FLOPs each = 2 * 2 * 32 * 64 * 128 = 1,048,576
HAND_FLOPS = 2 * (2 * M * D * H)


@pytest.fixture(scope="module")
def timed():
    torch._dynamo.reset()
    graphmfu.reset()
    torch.manual_seed(0)
    m, x = Tiny(), torch.randn(M, D)
    cm = torch.compile(m, backend=graphmfu.backend)
    with torch.no_grad():
        cm(x)
        with graphmfu.profile() as p:
            for name in ("a", "b"):
                with graphmfu.stage(name):
                    cm(x)
    rep = p.report()
    graphmfu.reset()
    torch._dynamo.reset()
    return rep


@pytest.fixture(scope="module")
def static():
    return graphmfu.analyze(Tiny(), torch.randn(M, D), training=True)


@pytest.fixture(scope="module")
def cmp():
    torch.manual_seed(0)
    out = graphmfu.compare(Tiny(), stages={"fwd": (torch.randn(M, D),)}, warmup=1, iters=1, clean=False)
    torch._dynamo.reset()
    return out


def test_kernel_points_are_the_kernel_rows(timed):
    v = timed.roofline_view(by="kernel")
    dev = timed.device
    rows = {(k["name"], k["stage"], k["graph"], k["index"]): k for k in timed.kernels}
    assert v["measured"] and v["by"] == "kernel" and v["color"] == "stage"
    drawn = 0
    for p in v["points"]:
        k = next(r for r in timed.kernels if f"{r['name']} [{r['module'] or 'root'}]" == p["label"]
                 and r["stage"] == p["stage"] and r["time_s"] == p["time_s"])
        flops = k["flops"] + k["vector_flops"]
        assert p["intensity"] == pytest.approx(flops / k["bytes"], rel=1e-12)
        assert p["intensity"] == pytest.approx(k["intensity"], rel=1e-12)  # the row's own (roofline.place)
        assert p["tflops"] == pytest.approx(flops / k["time_s"] / 1e12, rel=1e-12)
        assert (p["mfu"], p["mbu"], p["sol"]) == pytest.approx((k["mfu"], k["mbu"], k["sol"]), rel=1e-12)
        # below the DRAM diagonal by exactly MBU: achieved / (intensity * bandwidth) = bytes/time/bandwidth
        assert p["tflops"] * 1e12 / (p["intensity"] * dev.dram_gbps * 1e9) == pytest.approx(k["mbu"], rel=1e-9)
        drawn += 1
    assert drawn + v["left_out"]["no_flops"]["count"] + v["left_out"]["no_bytes"]["count"] == len(rows)
    mm = [p for p in v["points"] if p["flops"]]
    assert sum(p["flops"] for p in mm) == 2 * HAND_FLOPS  # two profiled calls (stages a and b)
    # the roofs are the device's ceilings: the fp32 matmul peak and the fp32 vector peak, and DRAM
    assert {r["tflops"] for r in v["roofs"]} == {dev.matrix_tflops("fp32"), dev.vector_tflops("fp32")}
    assert v["dram_gbps"] == dev.dram_gbps
    for r in v["roofs"]:
        assert r["ridge"] == pytest.approx(r["tflops"] * 1e12 / (dev.dram_gbps * 1e9), rel=1e-12)
    lost = sorted((p["lost_s"] for p in v["points"]), reverse=True)
    assert [v["points"][i]["lost_s"] for i in v["labelled"]] == lost[:len(v["labelled"])]


def test_stage_filter_and_module_points(timed):
    va = timed.roofline_view(by="kernel", stage="a")
    assert va["points"] and all(p["stage"] == "a" for p in va["points"])
    vm = timed.roofline_view(by="module", depth=1)
    by_mod = {r["module"] or "(root)": r for r in timed.by_module_time(1)}
    for p in vm["points"]:
        r = by_mod[p["label"]]
        assert p["time_s"] == r["time_s"] and p["flops"] == r["flops"]
        assert (p["mfu"], p["mbu"], p["sol"]) == pytest.approx((r["mfu"], r["mbu"], r["sol"]), rel=1e-12)
    assert {p["label"] for p in vm["points"]} >= {"up", "down"}
    with pytest.raises(GraphMFUError, match="no such stage"):
        timed.roofline_view(stage="nope")
    with pytest.raises(GraphMFUError, match="'kernel', 'node' or 'module'"):
        timed.roofline_view(by="op")


def test_static_report_places_nodes_on_the_roofline_at_t_min(static):
    v = static.roofline_view()  # by kernel: a static report has none, so nodes at t_min
    dev = static.device
    assert v["by"] == "node" and not v["measured"]
    assert v["points"]
    bw = dev.dram_gbps * 1e9
    for p in v["points"]:
        assert p["time_s"] == p["t_min_s"] and p["lost_s"] == 0
        assert p["sol"] == pytest.approx(1.0, rel=1e-12)
        # a node's FLOPs run on one unit here (fp32): at t_min it sits exactly on min(peak, I * bandwidth)
        peak = dev.matrix_tflops("fp32") * 1e12 if p["flops"] else dev.vector_tflops("fp32") * 1e12
        assert p["tflops"] * 1e12 == pytest.approx(min(peak, p["intensity"] * bw), rel=1e-9)
    mm = sum(p["flops"] for p in v["points"])
    # forward 2 matmuls + backward: dW of both layers, dX of the second (the input needs no grad) = 5 products
    assert mm == 5 * (2 * M * D * H) == static.totals["flops"]


def test_comparison_draws_eager_to_compiled_per_module(cmp):
    v = cmp.roofline_view(depth=1)
    pts = v["points"]
    assert v["arrows"]
    rows = {(m["stage"], m["module"]): m for m in cmp.modules(1)}
    for a, b in v["arrows"]:
        e, c = pts[a], pts[b]
        assert (e["side"], c["side"]) == ("eager", "compiled")
        assert e["module"] == c["module"] and e["stage"] == c["stage"]
        m = rows[(c["stage"], c["module"])]
        for side, p in (("eager", e), ("compiled", c)):
            r = m[side]
            assert p["time_s"] == r["time_s"] and p["bytes"] == r["bytes"]
            assert p["intensity"] == pytest.approx((r["flops"] + r["vector_flops"]) / r["bytes"], rel=1e-12)
            assert (p["mfu"], p["mbu"]) == (r["mfu"], r["mbu"])
    assert {pts[b]["module"] for _, b in v["arrows"]} == {"up", "down"}
    with pytest.raises(GraphMFUError, match="per module"):
        cmp.roofline_view(by="kernel")


@pytest.mark.parametrize("which", ["timed", "static", "cmp"])
def test_png_svg_html_and_terminal(which, request, tmp_path):
    doc = request.getfixturevalue(which)
    png = doc.plot_roofline(tmp_path / "r.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    svg = doc.plot_roofline(tmp_path / "r.svg").read_text()
    assert "<svg" in svg and "Roofline" in svg
    page = doc.plot_roofline(tmp_path / "r.html").read_text()
    assert "Plotly.newPlot" in page and "<script src=" not in page  # plotly.js inline: works offline
    assert "[up]" in page or "up [" in page  # a point label of the model
    assert "TFLOP" in page and "Roofline" in page
    text = doc.plot_roofline()  # the terminal
    assert "FLOP/byte" in text and ("top offenders" in text or "largest" in text or "offenders" in text)


def test_report_save_png_goes_through_the_renderers(timed, tmp_path):
    p = timed.save(tmp_path / "roof.png", by="module")
    assert p.read_bytes()[:4] == b"\x89PNG"


def test_missing_plot_library_is_one_clear_line(timed, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import fails as if not installed
    with pytest.raises(GraphMFUError, match=r"needs matplotlib: pip install 'graphmfu\[plot\]'"):
        timed.plot_roofline(tmp_path / "r.png")
    monkeypatch.setitem(sys.modules, "plotly", None)
    monkeypatch.setitem(sys.modules, "plotly.graph_objects", None)
    with pytest.raises(GraphMFUError, match=r"needs plotly"):
        timed.plot_roofline(tmp_path / "r.html")
    with pytest.raises(GraphMFUError, match=r"\.png, \.svg"):
        timed.plot_roofline(tmp_path / "r.jpg")


def test_cli_plot_from_a_saved_report(timed, cmp, tmp_path, capsys):
    from graphmfu.cli import main

    r = timed.save(tmp_path / "r.json")
    assert main(["plot", str(r), "-o", str(tmp_path / "roof.svg"), "--by", "module"]) == 0
    assert "<svg" in (tmp_path / "roof.svg").read_text()
    c = cmp.save(tmp_path / "c.json")
    assert main(["plot", str(c), "-o", str(tmp_path / "c.png")]) == 0
    assert (tmp_path / "c.png").read_bytes()[:4] == b"\x89PNG"
    assert main(["plot", str(r), "--stage", "zzz"]) == 2
    assert "no such stage" in capsys.readouterr().err


def test_to_pandas(timed, cmp):
    pd = pytest.importorskip("pandas")
    df = timed.to_pandas("kernels")
    assert isinstance(df, pd.DataFrame) and len(df) == len(timed.kernels)
    assert df["flops"].sum() == sum(k["flops"] for k in timed.kernels)
    assert list(df["mfu"]) == [k["mfu"] for k in timed.kernels]
    nodes = timed.to_pandas()
    assert len(nodes) == len(timed.nodes) and nodes["flops"].sum() == timed.totals["flops"]
    st = cmp.to_pandas("stages")
    assert st.loc[0, "eager.span_s"] == cmp.stages[0]["eager"]["span_s"]
    assert not math.isnan(st.loc[0, "compiled.flops"])
    with pytest.raises(GraphMFUError, match="no table"):
        timed.to_pandas("bogus")
