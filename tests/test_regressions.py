"""Regressions for defects found in review (each test failed before its fix)."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint
from torch.utils.flop_counter import FlopCounterMode

import graphmfu
from graphmfu.hardware import get_device
from graphmfu.nodes import module_path


class Chunked(nn.Module):
    def __init__(self):
        super().__init__()
        self.up, self.dn = nn.Linear(64, 512), nn.Linear(256, 64)

    def forward(self, x):
        a, b = self.up(x).chunk(2, -1)
        return self.dn(F.silu(a) * b)


def test_split_outputs_are_not_read_twice(fresh):
    x = torch.randn(1024, 64)
    with torch.no_grad():
        torch.compile(Chunked(), backend=graphmfu.backend)(x)
    k = next(k for k in graphmfu.report().data["kernel_map"] if "silu" in k["name"])
    # reads the [1024, 512] fp32 GEMM output once (2 MiB), writes [1024, 256] (1 MiB): 3145728
    assert k["bytes"] == 1024 * 512 * 4 + 1024 * 256 * 4
    assert k["bytes"] == k["bytes_inductor"]


def test_dynamic_shapes_keep_fused_kernel_bytes(fresh):
    m = nn.Sequential(nn.Linear(32, 32), nn.ReLU())
    with torch.no_grad():
        torch.compile(m, backend=graphmfu.backend, dynamic=True)(torch.randn(8, 32))
    fused = [k for k in graphmfu.report().data["kernel_map"] if not k["extern"]]
    assert fused and all(k["bytes"] > 0 for k in fused)


def test_checkpoint_recompute_is_not_model_flops():
    class Ck(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(256, 256), nn.Linear(256, 256)

        def forward(self, x):
            return checkpoint(lambda y: self.b(torch.relu(self.a(y))), x, use_reentrant=False)

    m, x = Ck(), torch.randn(64, 256, requires_grad=True)
    rep = graphmfu.analyze(m, x, training=True, device="cpu")
    with FlopCounterMode(display=False) as fc:
        m(x).sum().backward()
    # model FLOPs: 2 forward + 4 backward GEMMs of 2*64*256*256 = 8388608 each -> 50331648
    assert rep.totals["flops"] == 6 * 2 * 64 * 256 * 256
    # backward needs only a(y) again (relu's mask, b's input): one recomputed GEMM = 8388608
    assert rep.totals["flops_recompute"] == 2 * 64 * 256 * 256
    # FlopCounterMode counts what executes, recompute included (HFU work): model + recompute
    assert fc.get_total_flops() == rep.totals["flops"] + rep.totals["flops_recompute"]


def test_partial_peak_override_for_unknown_gpu_needs_fp32(monkeypatch):
    monkeypatch.setenv("GRAPHMFU_PEAK_TFLOPS", "bf16=989")
    monkeypatch.setenv("GRAPHMFU_DRAM_GBPS", "3000")
    with pytest.raises(graphmfu.GraphMFUError, match="no fp32 peak"):
        get_device("NVIDIA Imaginary X1")


def test_module_names_containing_modules_survive():
    assert module_path("L['self'].down_modules[0].conv") == "down_modules.0.conv"
    assert module_path("L['self']._modules['layers']._modules['0'].attn") == "layers.0.attn"
    assert module_path("L['self'].layers[0].attn") == "layers.0.attn"


def test_data_dependent_size_loses_only_its_node(fresh):
    def f(x, w):
        y = x @ w
        return y, x.nonzero()

    with torch.no_grad(), torch._dynamo.config.patch(capture_dynamic_output_shape_ops=True):
        torch.compile(f, backend=graphmfu.backend)(torch.randn(16, 16), torch.randn(16, 16))
    rep = graphmfu.report()
    assert not rep.coverage()["graphs_failed"]
    assert rep.totals["flops"] == 2 * 16 * 16 * 16  # the GEMM is still counted: 8192


def test_decomposed_attention_is_reported():
    """Unmasked decomposed attention is exact (all 16 x 16 pairs kept, a note says so); with a mask that
    is an input, it is counted dense and flagged."""
    def attn(q, k, v):
        return torch.softmax(q @ k.transpose(-1, -2) / 8, dim=-1) @ v

    q = torch.randn(2, 4, 16, 8)
    rep = graphmfu.analyze(attn, q, q, q, device="cpu")
    assert rep.coverage()["decomposed_attention"] == 0
    assert any("decomposed attention: mask read, 256 of 256 pairs kept" in n.get("note", "") for n in rep.nodes)

    def masked(q, k, v, m):
        return torch.softmax(q @ k.transpose(-1, -2) / 8 + m, dim=-1) @ v

    rep = graphmfu.analyze(masked, q, q, q, torch.zeros(16, 16), device="cpu")
    assert rep.coverage()["decomposed_attention"] == 1 and rep.coverage()["mask_inputs"] == 1
    assert any("decomposed form" in n for n in rep.data["notes"])


def test_recursive_stage_ranges_nest(fresh):
    m = nn.Linear(16, 16)
    cm = torch.compile(m, backend=graphmfu.backend)
    x = torch.randn(4, 16)

    @graphmfu.stage("rec")
    def rec(n):
        cm(x)
        if n:
            rec(n - 1)

    with torch.no_grad():
        cm(x)
        with graphmfu.profile() as p:
            rec(2)
    st = {s["name"]: s for s in p.report().stages}
    assert set(st) == {"rec", "rec/rec", "rec/rec/rec"}
    # each level includes the levels below it: 3, 2 and 1 GEMMs of 2*4*16*16 = 2048
    assert [st[n]["flops"] for n in ("rec", "rec/rec", "rec/rec/rec")] == [3 * 2048, 2 * 2048, 2048]


def test_cat_split_across_kernels_is_charged_per_slice():
    """Inductor lowers cat(cache, new) to one kernel per input, each writing its slice of one
    buffer; each kernel is charged its slice, not the whole buffer (decode KV caches)."""
    import torch.fx

    from graphmfu.kernels import _dataflow, boundary_bytes

    g = torch.fx.Graph()
    cache, new = g.placeholder("cache"), g.placeholder("new")
    new2 = g.call_function(torch.ops.aten.mul.Tensor, (new, 2.0))
    cat = g.call_function(torch.ops.aten.cat.default, ([cache, new2], 2))
    g.output(cat)
    for n, shape in ((cache, (1, 8, 512, 128)), (new, (1, 8, 1, 128)), (new2, (1, 8, 1, 128)),
                     (cat, (1, 8, 513, 128))):
        n.meta["val"] = torch.empty(shape, dtype=torch.bfloat16, device="meta")
    gm = torch.fx.GraphModule(torch.nn.Module(), g)
    flow = _dataflow(gm)
    c, m = cat.name, new2.name
    kernels_of = {c: {0, 1}, m: {1}}
    # kernel 0 copies the cache: reads 1*8*512*128*2 = 1048576 B, writes the same slice
    assert boundary_bytes(gm, flow, {c}, kernels_of, me=0) == (1048576, 1048576)
    # kernel 1 computes the new token and writes its slot: reads new 2048 B, writes 2048 B
    assert boundary_bytes(gm, flow, {m, c}, kernels_of, me=1) == (2048, 2048)
    # without the kernel index (one kernel does the whole cat): the whole buffer, 1050624 B
    assert boundary_bytes(gm, flow, {m, c}, {c: {1}, m: {1}}) == (1048576 + 2048, 1050624)


def test_view_feeding_only_outside_is_not_a_read():
    """A view among a fused kernel's origins that only feeds an extern kernel (the layout view of V
    before attention) is not executed by the fused kernel: V is not its read."""
    import torch.fx

    from graphmfu.kernels import _dataflow, boundary_bytes

    g = torch.fx.Graph()
    q, v = g.placeholder("q"), g.placeholder("v")
    q2 = g.call_function(torch.ops.aten.mul.Tensor, (q, 2.0))
    vv = g.call_function(torch.ops.aten.view.default, (v, [4, 64]))
    out = g.call_function(torch.ops.aten.add.Tensor, (q2, vv))  # stands in for the extern consumer
    g.output(out)
    for n in (q, v, q2, vv, out):
        n.meta["val"] = torch.empty((4, 64), dtype=torch.float32, device="meta")
    gm = torch.fx.GraphModule(torch.nn.Module(), g)
    flow = _dataflow(gm)
    # kernel {q2, vv}: reads q (4*64*4 = 1024 B) and writes q2 (1024 B); v is not read
    assert boundary_bytes(gm, flow, {q2.name, vv.name}, {}, views={vv.name}) == (1024, 1024)
