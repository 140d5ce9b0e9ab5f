"""Issue 9 (trust): totals that say what they sum, ordinary profiler use, compiles and threads inside a
profile, control flow counted.  Each test reproduces a reported defect."""
import threading
import warnings

import pytest
import torch
import torch.nn as nn
from torch.profiler import profile, schedule
from torch.utils.flop_counter import FlopCounterMode

import graphmfu


class Lin(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(64, 32)

    def forward(self, x):
        return torch.relu(self.a(x))


GEMM = 2 * 16 * 64 * 32  # one [16,64] @ [64,32] product: 65536


@pytest.fixture
def warm(fresh):
    m, x = Lin(), torch.randn(16, 64)
    cm = torch.compile(m, backend=graphmfu.backend)
    with torch.no_grad():
        cm(x)
    return cm, x


def test_recompiles_are_reported_as_alternatives_not_one_cost(fresh, tmp_path):
    m, x = Lin(), torch.randn(16, 64)
    cm = torch.compile(m, backend=graphmfu.backend)
    with torch.no_grad():
        cm(x)
    with torch.inference_mode():
        cm(x)
    cm(x).sum().backward()
    rep = graphmfu.report()
    rows = rep.by_graph()
    assert [g["phase"] for g in rows] == ["inference", "inference", "forward", "backward"]
    assert [g["flops"] for g in rows] == [GEMM, GEMM, GEMM, GEMM]  # backward: dW only (x needs no grad)
    assert rep.totals["flops"] == 4 * GEMM  # the sum is kept, and said to be a sum of alternatives:
    assert any("compilations of the same code" in n and "alternatives" in n for n in rep.data["notes"])
    assert "sum over all 4 graphs" in rep.summary() and "per graph" in rep.save(tmp_path / "r.txt").read_text()


def test_calls_from_worker_threads_are_profiled_and_staged(warm):
    cm, x = warm

    def work():
        with torch.no_grad():
            for _ in range(2):
                cm(x)

    with graphmfu.profile() as p, graphmfu.stage("s"):
        t = threading.Thread(target=work)
        t.start()
        t.join()
    rep = p.report()
    assert rep.stages[0]["name"] == "s" and rep.stages[0]["flops"] == 2 * GEMM
    assert rep.coverage()["time_attributed"] == 1.0


def test_first_compile_inside_the_profile_is_excluded_and_said(fresh):
    m, x = Lin(), torch.randn(16, 64)
    cm = torch.compile(m, backend=graphmfu.backend)
    with torch.no_grad(), graphmfu.profile() as p, graphmfu.stage("s"):
        cm(x)  # compiles here
        cm(x)
    rep = p.report()
    assert rep.coverage()["time_attributed"] == 1.0, rep.coverage()["unattributed_kernels"]
    assert rep.stages[0]["flops"] == 2 * GEMM
    assert any("compile(s) ran inside the profile" in n for n in rep.data["notes"])
    assert rep.stages[0]["span_s"] < 0.05  # the compile (~1 s) is not in the span
    assert all(u["launch_op"] for u in rep.coverage()["unattributed_kernels"])


def test_with_stack_and_record_shapes(warm):
    cm, x = warm
    with torch.no_grad(), graphmfu.profile(with_stack=True, record_shapes=True) as p:
        cm(x)
    assert p.report().coverage()["time_attributed"] == 1.0


def test_schedule_and_on_trace_ready(warm):
    cm, x = warm
    traces = []
    with torch.no_grad(), graphmfu.profile(schedule=schedule(wait=1, warmup=1, active=2, repeat=2),
                                           on_trace_ready=traces.append) as p:
        for _ in range(8):
            with graphmfu.stage("step"):
                cm(x)
            p.step()
    rep = p.report()
    assert len(traces) == 2  # the user's callback still runs, once per cycle
    assert {k["calls"] for k in rep.kernels} == {4}  # 2 active steps x 2 cycles
    assert rep.stages[0]["calls"] == 4 and rep.stages[0]["flops"] == 4 * GEMM


def test_attach_to_the_users_profiler(warm):
    cm, x = warm
    with torch.no_grad(), profile() as prof, graphmfu.attach(prof) as g:
        cm(x)
        cm(x)
    assert len(prof.events()) > 0  # the user's profiler keeps its events
    rep = g.report()
    assert {k["calls"] for k in rep.kernels} == {2} and rep.coverage()["time_attributed"] == 1.0


def test_nested_profilers_give_one_clear_error_and_keep_the_outer_events(warm):
    cm, x = warm
    with torch.no_grad(), profile() as prof:
        with pytest.raises(graphmfu.GraphMFUError, match="already running.*attach"):
            with graphmfu.profile():
                cm(x)
        cm(x)
    assert any(e.name.startswith("aten::") for e in prof.events())
    with torch.no_grad(), graphmfu.profile() as p:
        with profile():
            cm(x)
    with pytest.raises(graphmfu.GraphMFUError, match="another torch.profiler ran inside"):
        p.report()


def test_cond_counts_its_costlier_branch_and_flags_it(fresh):
    def f(x, w):
        return torch.cond(x.sum() > 0, lambda x, w: x @ w, lambda x, w: (x * 2) @ w, (x, w))

    x, w = torch.randn(8, 16), torch.randn(16, 8)
    with FlopCounterMode(display=False) as fc:
        f(x, w)
    torch.compile(f, backend=graphmfu.backend)(x, w)
    rep = graphmfu.report()
    assert rep.totals["flops"] == 2 * 8 * 16 * 8 == fc.get_total_flops()  # 2048 either branch
    cond = next(n for n in rep.nodes if n["op"] == "higher_order.cond")
    assert cond["vector_flops"] == 8 * 16  # the costlier branch: its x * 2
    assert rep.coverage()["data_dependent_branch"] == 1 and rep.coverage()["nodes_unknown"] == 0


def test_every_distinct_rule_failure_warns(fresh):
    from graphmfu.cost import REGISTRY

    ops = (torch.ops.aten.mm.default, torch.ops.aten.relu.default)
    old = {op: REGISTRY.lookup(op) for op in ops}

    def broken(*a, out, **k):
        raise ZeroDivisionError("boom")

    def f(x, w):
        return torch.relu(x @ w)

    try:
        for op in ops:
            REGISTRY.register(op, broken, override=True)
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            torch.compile(f, backend=graphmfu.backend)(torch.randn(4, 4), torch.randn(4, 4))
            REGISTRY.register(ops[0], old[ops[0]].fn, override=True)  # now only relu fails
            torch.compile(lambda x: torch.relu(x) * 2, backend=graphmfu.backend)(torch.randn(4))
        msgs = [str(i.message) for i in w if "graphmfu: analysis" in str(i.message)]
        assert len(msgs) == 2 and "aten.mm" in msgs[0] and "aten.relu" in msgs[1], msgs
    finally:
        for op in ops:
            REGISTRY.register(op, old[op].fn, override=True)


# --------------------------------------------------------------------------- numbers above their ceilings


class Big(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(256, 256)

    def forward(self, x):
        return self.a(x) * 2


@pytest.fixture
def timed_big(fresh):
    m, x = Big(), torch.randn(256, 256)
    cm = torch.compile(m, backend=graphmfu.backend)
    with torch.no_grad():
        cm(x)
        with graphmfu.profile() as p, graphmfu.stage("s"):
            for _ in range(3):
                cm(x)
    return p


def _spec(**kw):
    base = dict(name="tiny", peaks_tflops={"fp32": 1e-6}, dram_gbps=1e-6, source="test")
    return graphmfu.DeviceSpec(**{**base, **kw})


def test_mbu_above_100_is_flagged_never_bare(timed_big, tmp_path):
    # a device whose DRAM bandwidth every kernel beats: with a large cache the operands are cache-resident
    rep = timed_big.report(device=_spec(cache_mb=1024.0))
    assert rep.kernels and all(k["mbu"] > 1 for k in rep.kernels)
    assert all("cache_resident" in k["flags"] for k in rep.kernels)
    assert any("flagged cache_resident" in n and "1024.0 MB" in n for n in rep.data["flagged"])
    # without a cache figure the DRAM roof itself is wrong: said so
    rep2 = timed_big.report(device=_spec())
    assert all("above_dram_roof" in k["flags"] for k in rep2.kernels)
    assert all("above_peak" in k["flags"] for k in rep2.kernels if k["flops"])
    text = rep.save(tmp_path / "r.txt").read_text()
    assert "*" in text and "* above 100%:" in text and "flagged cache_resident" in text
    import re
    bare = [v for v in re.findall(r"(?<![\d.])(\d{3,}\.\d)(?!\*)", rep.kernel_table()) if float(v) > 100]
    assert not bare, bare  # every percentage above 100 carries its '*'


def test_a_measured_cpu_ceiling_beaten_by_a_kernel_is_remeasured_then_raised(timed_big, tmp_path, monkeypatch):
    from graphmfu.hardware import cpu

    monkeypatch.setenv("GRAPHMFU_CACHE_DIR", str(tmp_path))
    low = {"fp32": 1e-5, "bf16": 1e-5, "int8": 1e-5, "dram_gbps": 1e-3}  # a cache written on a busy machine
    monkeypatch.setattr(cpu, "measure", lambda: dict(low))
    monkeypatch.setattr(cpu, "_machine_load", lambda: 0.1)
    cpu.measured_cpu.cache_clear()
    try:
        rep = timed_big.report()  # the measured CPU: every GEMM beats 1e-5 TFLOP/s
        assert rep.device.measured and "raised to the best rate a measured kernel reached" in rep.device.source
        assert all(k["mfu"] is None or k["mfu"] <= 1 + 1e-9 for k in rep.kernels)
        gemm = next(k for k in rep.kernels if k["flops"])
        assert rep.device.peaks_tflops["fp32"] >= gemm["achieved_tflops"] * (1 - 1e-12) > 1e-5  # raised to it
    finally:
        cpu.measured_cpu.cache_clear()


def test_demo_model_no_kernel_above_peak_and_mbu_above_100_only_flagged(fresh):
    from examples.minimal_llama import Llama, LlamaConfig

    torch.manual_seed(0)
    m = Llama(LlamaConfig(dim=128, layers=2, heads=4, kv_heads=2, ffn=256, vocab=256))
    tokens = torch.randint(0, 256, (1, 64))
    cm = torch.compile(m, backend=graphmfu.backend)
    with torch.no_grad():
        cm(tokens)
        with graphmfu.profile() as p, graphmfu.stage("prefill"):
            for _ in range(3):
                cm(tokens)
    rep = p.report()
    assert all(k["mfu"] is None or k["mfu"] <= 1 + 1e-9 for k in rep.kernels), \
        [(k["name"], k["mfu"]) for k in rep.kernels if (k["mfu"] or 0) > 1]
    assert all(k["flags"] for k in rep.kernels if (k["mbu"] or 0) > 1)


# --------------------------------------------------------------------------- per-call costs (issue 10)


def test_dynamic_graph_costs_each_call_at_its_own_sizes(fresh):
    m = nn.Sequential(nn.Linear(16, 32), nn.GELU(), nn.Linear(32, 8))
    cm = torch.compile(m, backend=graphmfu.backend, dynamic=True)
    xs = [torch.randn(t, 16) for t in (8, 24, 40)]  # made outside the profile: eager work is listed, not ours
    with torch.no_grad():
        cm(xs[0])
        with graphmfu.profile() as p, graphmfu.stage("s"):
            for x in xs:
                cm(x)
    rep = p.report()
    # per token: 2*16*32 + 2*32*8 = 1536 matrix FLOPs; tokens 8 + 24 + 40 = 72 -> 110592 (the hint alone: 3*8*1536)
    assert rep.stages[0]["flops"] == 1536 * 72 == 110592
    assert rep.coverage()["time_attributed"] >= 0.99
    assert any("dynamic shapes" in n for n in rep.data["notes"])
    gemm = next(k for k in rep.kernels if k["flops"] and k["module"] == "0")
    assert gemm["calls"] == 3 and gemm["flops"] == 2 * 16 * 32 * 72
    assert sorted(s["s33"] if "s33" in s else next(iter(s.values())) for s in gemm["sizes"]) == [8, 24, 40]


def test_generate_loop_costs_every_step_at_its_cache_length(fresh):
    from examples.minimal_llama import Llama, LlamaConfig, decode_step_flops, generate

    torch.manual_seed(0)
    cfg = LlamaConfig(dim=64, layers=2, heads=4, kv_heads=2, ffn=128, vocab=100, max_seq=64)
    rep, lengths = generate(Llama(cfg), torch.randint(0, 100, (1, 16)), 6)
    assert lengths == [16, 17, 18, 19, 20, 21]
    dec = next(s for s in rep.stages if s["name"] == "decode")
    assert dec["calls"] == 6
    # each step by hand (decode_step_flops writes the formula out), summed over cache lengths 16..21
    assert dec["flops"] == sum(decode_step_flops(cfg, s) for s in lengths) == 1021440
    # every kernel inside the compiled graphs is joined (the loop's own cat/argmax between calls are eager)
    inside = sum(u["time_s"] for u in rep.coverage()["unattributed_kernels"] if u["where"] == "inside graph")
    assert inside == 0 and rep.data["timing"]["attributed_time_s"] > 0
