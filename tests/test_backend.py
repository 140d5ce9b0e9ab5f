"""The torch.compile backend: same outputs as plain Inductor, backward works, every graph is
recorded (forward, backward, inference, recompiles, graph breaks), caches don't hide graphs, and a
failing analysis never breaks the model."""
import warnings

import pytest
import torch
import torch.nn as nn

import graphmfu
from graphmfu.cost import REGISTRY, Cost


class MLP(nn.Module):
    def __init__(self, d=32, h=64):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(d, h), nn.Linear(h, d)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))


def test_training_outputs_and_grads_equal_plain_inductor(fresh):
    torch.manual_seed(0)
    m = MLP()
    x = torch.randn(8, 32)
    ref = torch.compile(m)(x)
    ref.sum().backward()
    ref_grad = m.fc1.weight.grad.clone()
    m.zero_grad()
    torch._dynamo.reset()
    out = torch.compile(m, backend=graphmfu.backend)(x)
    out.sum().backward()
    assert torch.equal(out, ref)
    assert torch.allclose(m.fc1.weight.grad, ref_grad, atol=0, rtol=0)
    rep = graphmfu.report()
    assert [g["phase"] for g in rep.data["graphs"]] == ["forward", "backward"]
    # forward: 2 GEMMs  2*8*32*64 + 2*8*64*32 = 65536
    assert rep.phase("forward")["flops"] == 65536
    # backward: fc2 dX + dW, fc1 dW only (x needs no grad): 3 * 32768 = 98304
    assert rep.phase("backward")["flops"] == 98304


def test_inference_graph_and_factory(fresh):
    m = MLP()
    x = torch.randn(4, 32)
    with torch.no_grad():
        out = torch.compile(m, backend=graphmfu.backend(mode="default"))(x)
    assert torch.allclose(out, m(x), atol=1e-6)
    g = graphmfu.report().data["graphs"]
    assert [x["phase"] for x in g] == ["inference"]


def test_recompile_on_new_shape_adds_a_graph(fresh):
    m = MLP()
    cm = torch.compile(m, backend=graphmfu.backend, dynamic=False)
    with torch.no_grad():
        cm(torch.randn(4, 32))
        cm(torch.randn(16, 32))
    rep = graphmfu.report()
    assert len(rep.data["graphs"]) == 2
    # 2*4*32*64*2 = 32768 and 2*16*32*64*2 = 131072
    assert sorted(graphmfu.report().phase("inference")["flops"] for _ in [0]) == [32768 + 131072]


def test_graph_break_records_both_graphs(fresh):
    def f(x, w):
        y = x @ w
        torch._dynamo.graph_break()
        return y @ w

    x, w = torch.randn(4, 8), torch.randn(8, 8)
    out = torch.compile(f, backend=graphmfu.backend)(x, w)
    assert torch.allclose(out, x @ w @ w, atol=1e-5)
    rep = graphmfu.report()
    assert len(rep.data["graphs"]) == 2
    assert rep.totals["flops"] == 2 * (2 * 4 * 8 * 8)  # two 4x8x8 GEMMs: 2*4*8*8 = 512 each


def test_dynamic_shapes_record_symbolic_cost(fresh):
    m = MLP()
    cm = torch.compile(m, backend=graphmfu.backend, dynamic=True)
    with torch.no_grad():
        cm(torch.randn(5, 32))
    rep = graphmfu.report()
    g = rep.data["graphs"][0]
    assert g["dynamic"] and 5 in g["hints"].values()
    mm_rows = [n for n in rep.nodes if n["flops"]]
    assert all("symbolic" in n for n in mm_rows)
    # evaluated with the hint: 2*5*32*64 per GEMM, two GEMMs
    assert rep.totals["flops"] == 2 * (2 * 5 * 32 * 64)


def test_warm_caches_do_not_empty_the_report(fresh, tmp_path, monkeypatch):
    # plain Inductor with caches on, then graphmfu: the second compile must still see the graph
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))
    m = MLP()
    x = torch.randn(4, 32)
    with torch.no_grad():
        torch.compile(m)(x)
        torch._dynamo.reset()
        torch.compile(m, backend=graphmfu.backend)(x)
        torch._dynamo.reset()
        torch.compile(m, backend=graphmfu.backend)(x)
    assert len(graphmfu.report().data["graphs"]) == 2
    assert graphmfu.report().totals["flops"] == 2 * 32768


def test_cpu_recompile_reuses_its_cpp_kernels_and_still_joins_them(fresh, tmp_path, monkeypatch):
    """C++ kernels are compiled profiled (``graph_<id>_<kernel>``) under one graph id: a second compile of the same
    model in the process builds no new kernel library (with Inductor's per-process id in every kernel's source it
    built them all again), and a profile of the second compile's graph still joins its kernels."""
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))
    m = MLP(d=24, h=56)  # sizes no other test compiles: the first compile must build its kernels here
    x = torch.randn(3, 24)
    built = []
    with torch.no_grad():
        for _ in range(2):
            torch._dynamo.reset()
            graphmfu.reset()
            n = len(list(tmp_path.rglob("*.so")))
            cm = torch.compile(m, backend=graphmfu.backend)
            cm(x)
            built.append(len(list(tmp_path.rglob("*.so"))) - n)
        with graphmfu.profile() as p:
            cm(x)
    assert built[0] >= 1 and built[1] == 0, built
    assert p.report().coverage()["time_attributed"] == 1.0


def test_failing_rule_warns_once_and_model_still_runs(fresh):
    op = torch.ops.aten.mm.default
    old = REGISTRY.lookup(op)

    def broken(*a, out, **k):
        raise ZeroDivisionError("boom")

    REGISTRY.register(op, broken, override=True)
    try:
        m = MLP()
        x = torch.randn(4, 32, requires_grad=True)
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            out = torch.compile(m, backend=graphmfu.backend)(x)
            out.sum().backward()
        assert torch.allclose(out, m(x), atol=1e-6)
        assert x.grad is not None
        msgs = [str(i.message) for i in w if "graphmfu: analysis" in str(i.message)]
        assert len(msgs) <= 1
        rep = graphmfu.report()
        failed = rep.coverage()["graphs_failed"]
        assert failed and "aten.mm.default" in failed[0] and "ZeroDivisionError" in failed[0]
    finally:
        REGISTRY.register(op, old.fn, override=True)


def test_report_before_any_compile_is_a_clear_error(fresh):
    with pytest.raises(graphmfu.GraphMFUError, match="no graphs compiled"):
        graphmfu.report()


def test_custom_op_rule_extension(fresh):
    lib = torch.library.Library("gmfutest", "FRAGMENT")
    lib.define("scale2(Tensor x) -> Tensor")
    lib.impl("scale2", lambda x: x * 2, "CompositeExplicitAutograd")
    lib.impl("scale2", lambda x: torch.empty_like(x), "Meta")

    @graphmfu.rule(torch.ops.gmfutest.scale2)
    def scale2(x, *, out):
        return Cost.of(vector={"fp32": x.numel}, read=x.nbytes, written=out.nbytes)

    def f(x):
        return torch.ops.gmfutest.scale2(x) + 1

    with torch.no_grad():
        out = torch.compile(f, backend=graphmfu.backend)(torch.ones(3, 5))
    assert torch.equal(out, torch.full((3, 5), 3.0))
    rows = [n for n in graphmfu.report().nodes if n["op"] == "gmfutest.scale2.default"]
    assert rows and rows[0]["vector_flops"] == 15 and rows[0]["bytes_read"] == 60  # 3*5 elems, 15*4 bytes
    with pytest.raises(graphmfu.GraphMFUError, match="already registered"):
        graphmfu.rule(torch.ops.gmfutest.scale2)(scale2)
