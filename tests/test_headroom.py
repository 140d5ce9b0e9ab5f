"""Headroom, causes and predict (graphmfu/headroom/), on CPU: small models compiled with graphmfu.backend under
graphmfu.profile(), one planted case per cause with a clean negative, and predict() on a synthetic record whose
arithmetic is written out beside the golden values."""
import dataclasses

import pytest
import torch
import torch.nn as nn

import graphmfu
from graphmfu import eager
from graphmfu.cost import Cost
from graphmfu.hardware import DeviceSpec
from graphmfu.headroom.cli import predict_main, show_headroom
from graphmfu.headroom.launch import MIN_IDLE_SHARE
from graphmfu.profile import ProfileSession
from graphmfu.record import GraphRecord, KernelRecord, OpRecord, Record, Timing
from graphmfu.registry import Registry
from graphmfu.report import Report

VOCAB = 32001


class Broken(nn.Module):
    """A hidden projection, a graph break, an LM head whose vocab is not a multiple of 64."""

    def __init__(self):
        super().__init__()
        self.a, self.head = nn.Linear(64, 64), nn.Linear(64, VOCAB)

    def forward(self, x):
        y = torch.relu(self.a(x))
        torch._dynamo.graph_break()
        return self.head(y)


class Clean(nn.Module):
    def __init__(self, d=64):
        super().__init__()
        self.a, self.b = nn.Linear(d, 2 * d), nn.Linear(2 * d, d)

    def forward(self, x):
        return self.b(torch.relu(self.a(x)))


class Norm(nn.Module):
    """RMS-style norm written as separate ops."""

    def __init__(self, d=256):
        super().__init__()
        self.w = nn.Parameter(torch.ones(d))

    def forward(self, x):
        c = x - x.mean(-1, keepdim=True)
        return c * torch.rsqrt((c * c).mean(-1, keepdim=True) + 1e-5) * self.w


def _timed(model, x, stage="step", calls=2, loop=0):
    cm = torch.compile(model, backend=graphmfu.backend)
    with torch.no_grad():
        cm(x)
        with graphmfu.profile() as p:
            with graphmfu.stage(stage):
                for _ in range(calls):
                    cm(x)
            if loop:
                t = torch.ones(4)
                with graphmfu.stage("loop"):
                    for _ in range(loop):  # a Python loop of tiny ops, run eagerly
                        t = t * 1.0001 + 0.5
    return p.report()


@pytest.fixture(scope="module")
def broken():
    torch._dynamo.reset()
    graphmfu.reset()
    rep = _timed(Broken(), torch.randn(32, 64), loop=150)
    yield rep
    graphmfu.reset()
    torch._dynamo.reset()


@pytest.fixture(scope="module")
def clean():
    torch._dynamo.reset()
    graphmfu.reset()
    rep = _timed(Clean(256), torch.randn(512, 256))  # big enough to be compute-bound on an H100's roofline
    yield rep
    graphmfu.reset()
    torch._dynamo.reset()


def _kinds(causes):
    return {c.kind for c in causes}


# --------------------------------------------------------------------------- ranking


def test_headroom_is_measured_minus_t_min_and_ranked(broken):
    h = broken.headroom()
    by_key = {(k["graph"], k["index"], k["stage"]): k for k in broken.kernels}
    assert len(h.kernels) == len(broken.kernels)
    for r in h.kernels:
        k = by_key[(r["graph"], r["index"], r["stage"])]
        assert r["measured_s"] == k["time_s"] and r["t_min_s"] == k["t_min_s"]
        assert r["headroom_s"] == k["time_s"] - k["t_min_s"]  # exactly the report's own numbers
        assert r["share_of_step"] == r["headroom_s"] / h.step_s
    # the step: top-level stage spans, plus what ran outside every stage (ops between the two stages)
    outside = sum(o["time_s"] for o in broken.record.timing.unattributed if not o["stage"])
    outside += sum(k["time_s"] for k in broken.kernels if not k["stage"])
    assert h.step_s == pytest.approx(sum(s["span_s"] for s in broken.stages if s["parent"] is None) + outside)
    for by in ("kernel", "module", "stage"):
        rows = h.rows(by)
        assert [r["headroom_s"] for r in rows] == sorted((r["headroom_s"] for r in rows), reverse=True)
        top = [r for r in rows if by != "stage" or r["parent"] is None]
        assert sum(max(r["share_of_step"], 0) for r in top) <= 1
    # modules hold each kernel once: they sum to the kernels
    assert sum(r["headroom_s"] for r in h.modules) == pytest.approx(sum(r["headroom_s"] for r in h.kernels))
    st = {r["name"]: r for r in h.stages}["step"]
    in_step = [k for k in broken.kernels if k["stage"] == "step"]
    assert st["headroom_s"] == st["measured_s"] - st["t_min_s"]
    assert st["t_min_s"] == pytest.approx(sum(k["t_min_s"] for k in in_step))
    # the LM head's GEMM holds most of the kernel headroom
    assert h.modules[0]["name"] == "head"
    assert "headroom by kernel" in h.table() and "headroom by stage" in str(h)


def test_static_report_has_no_headroom():
    rep = graphmfu.analyze(Clean(), torch.randn(4, 64))
    with pytest.raises(graphmfu.GraphMFUError, match="timed report"):
        rep.headroom()


# --------------------------------------------------------------------------- causes, planted and clean


def test_tile_padding_pads_vocab_to_the_next_multiple_of_64(broken, clean):
    pads = [c for c in broken.causes() if c.kind == "tile_padding"]
    assert len(pads) == 1 and pads[0].where.startswith("head")
    assert f"pad vocab {VOCAB} -> 32064" in pads[0].action  # 32001 -> 501 x 64 = 32064
    assert "[32x64] x [64x32001]" in pads[0].evidence
    head = [k for k in broken.kernels if k["module"] == "head"]
    ref = [k for k in broken.kernels if k["module"] == "a" and k["bound"] == "compute" and k["flops"]]
    t_head = sum(k["time_s"] for k in head)
    if ref:  # the aligned [32x64] x [64x64] GEMM's fraction of its roofline is the reference
        sol = sum(k["t_min_s"] for k in ref) / sum(k["time_s"] for k in ref)
        want = max(sum(max(k["time_s"] - k["t_min_s"] / sol, 0) for k in head), t_head * (1 - 32001 / 32064))
        assert "of the roofline; these" in pads[0].evidence
    else:  # no aligned compute-bound GEMM: the whole headroom, an upper bound
        want = sum(k["time_s"] - k["t_min_s"] for k in head)
        assert "an upper bound" in pads[0].evidence
    assert pads[0].lost_s == pytest.approx(want)
    # with an Nsight Compute table imported, its hardware/model FLOPs ratio is part of the evidence
    ncu = [{"graph": k["graph"], "index": k["index"], "padding": 0.00197} for k in head]
    pad = next(c for c in broken.causes(ncu=ncu) if c.kind == "tile_padding")
    assert "ncu: hardware FLOPs = model x 1.0020" in pad.evidence
    assert "tile_padding" not in _kinds(clean.causes())  # 256 and 512 are multiples of 64


def test_graph_break_quotes_dynamos_reason_and_line(broken, clean):
    import inspect

    line = next(i for i, s in enumerate(inspect.getsource(Broken).splitlines())
                if "graph_break()" in s) + inspect.getsourcelines(Broken)[1]
    gb = [c for c in broken.causes() if c.kind == "graph_break"]
    assert len(gb) == 1
    assert gb[0].where == f"{__file__}:{line}"
    assert f"the graph break at {__file__}:{line}: " in gb[0].action
    assert "graph_break" in gb[0].action.lower()  # Dynamo's reason: a call to graph_break()
    reason = next(n for n in broken.record.notes if n.startswith("Dynamo could not compile"))
    assert gb[0].action.split(": ", 1)[1].split(" — ")[0] in reason  # quoted from the registry's fallbacks
    assert "graph_break" not in _kinds(clean.causes())


def test_python_loop_of_tiny_ops_is_eager_work_and_launch_bound(broken, clean):
    found = broken.causes()
    eager_loop = [c for c in found if c.kind == "eager_work" and c.where == "stage loop"]
    assert eager_loop and "aten::mul x150" in eager_loop[0].evidence and "aten::add x150" in eager_loop[0].evidence
    loop = {s["name"]: s for s in broken.stages}["loop"]
    launch = [c for c in found if c.kind == "launch_bound" and c.where == "stage loop"]
    idle = loop["span_s"] - loop["busy_s"]  # Python between the ops: the CPU runs no op there
    # the 300 eager kernels (150 mul + 150 add) each take the stage's mean gap from the launch gaps
    n = sum(o["count"] for o in broken.record.timing.unattributed if o["stage"] == "loop")
    assert n == 300
    gap = idle / loop["kernel_launches"]
    kernel_t = sum(o["time_s"] for o in broken.record.timing.unattributed if o["stage"] == "loop")
    if idle / loop["span_s"] >= MIN_IDLE_SHARE:  # 34% here; a loaded machine can stretch the ops instead
        assert launch and launch[0].lost_s == pytest.approx(max(idle - n * gap, 0.0))
        assert "reduce-overhead" in launch[0].action and "listed under those causes" in launch[0].evidence
        assert eager_loop[0].lost_s == pytest.approx(kernel_t + n * gap)
    else:
        assert not launch and eager_loop[0].lost_s == pytest.approx(kernel_t)
    assert "eager_work" not in _kinds(clean.causes())  # everything inside the compiled graph


def test_unfused_norm_run_eagerly_is_an_unfused_chain():
    m, x = Norm(), torch.randn(512, 256)
    reg = Registry()
    with torch.no_grad():
        eager.record(m, lambda: m(x), "norm", reg, "cpu")  # one kernel per op, as eager runs it
        with ProfileSession(registry=reg) as p:
            for _ in range(2):
                with graphmfu.stage("norm"):
                    m(x)
    chains = [c for c in p.report().causes() if c.kind == "unfused_chain"]
    assert len(chains) == 1 and "[512, 256] tensor" in chains[0].evidence and "torch.compile" in chains[0].action
    assert chains[0].lost_s > 0


def test_compiled_norm_is_not_an_unfused_chain(fresh):
    rep = _timed(Norm(), torch.randn(512, 256))
    assert "unfused_chain" not in _kinds(rep.causes())


def test_tf32_off_only_for_fp32_matmuls_compiled_without_tf32(clean, fresh):
    """On CPU the condition is the record's: graphs compiled while torch.backends.cuda.matmul.allow_tf32 is
    False (the default) carry tf32=False and fp32 matrix FLOPs; placed on an H100 (TF32 peak 495 > fp32 67
    TFLOP/s) the 512x256x512 products are compute-bound, so TF32 would shorten them."""
    assert not any(g.tf32 for g in clean.record.graphs)
    assert "tf32_off" not in _kinds(clean.causes())  # the CPU has no TF32 peak
    on_h100 = clean.on("h100-sxm")
    tf = [c for c in on_h100.causes() if c.kind == "tf32_off"]
    assert len(tf) == 1 and "torch.backends.cuda.matmul.allow_tf32" in tf[0].action and tf[0].lost_s > 0
    # the same model compiled with TF32 allowed: its matrix FLOPs are tf32, nothing to say
    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = True
    try:
        rep = _timed(Clean(256), torch.randn(512, 256))
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old
    assert all(g.tf32 for g in rep.record.graphs)
    assert "tf32_off" not in _kinds(rep.on("h100-sxm").causes())


def test_causes_are_ranked_and_rendered(broken, tmp_path):
    found = broken.causes()
    assert [c.lost_s for c in found] == sorted((c.lost_s for c in found), reverse=True)
    assert all(c.evidence and c.action for c in found)
    text = broken.save(tmp_path / "r.txt").read_text()
    assert "headroom by stage" in text and "causes (ranked" in text and "pad vocab 32001 -> 32064" in text
    html = broken.save(tmp_path / "r.html").read_text()
    assert 'id="headroom"' in html and 'id="headroom-kernel-table"' in html and "32064" in html
    shown = show_headroom(broken)
    assert "headroom by kernel" in shown and "[tile_padding]" in shown


# --------------------------------------------------------------------------- synthetic records


A = DeviceSpec("test A", {"bf16": 100.0, "fp32": 10.0}, 1000.0, "test")
B = DeviceSpec("test B", {"bf16": 200.0, "fp32": 20.0}, 4000.0, "test")


def _op(gid, i, op, cost, inputs):
    return OpRecord(gid, "inference", i, f"n{i}", op, "m", inputs, [], cost)


def synthetic(extra_kernels=(), exposed=()) -> Record:
    """One graph: a bf16 GEMM (1e12 FLOPs, 1e9 bytes, 20 ms) and a memory-bound kernel (1e9 fp32 vector FLOPs,
    4e9 bytes, 8 ms); 2 ms of eager work outside graphs; stage "step": span 40 ms, busy 30 ms."""
    gemm = Cost.of({"bf16": 1e12}, read=6e8, written=4e8)
    mem = Cost.of(vector={"fp32": 1e9}, read=2e9, written=2e9)
    specs = [("aten.mm.default", gemm, [[[1000, 500000], "bfloat16"], [[500000, 1000], "bfloat16"]], 0.020),
             ("aten.add.Tensor", mem, [[[1000, 1000], "float32"]], 0.008), *extra_kernels]
    nodes = [_op(0, i, op, c, inp) for i, (op, c, inp, _) in enumerate(specs)]
    kernels = [KernelRecord(0, i, f"k{i}", f"k{i}", True, [f"n{i}"], "m", "inference", c)
               for i, (_, c, _, _) in enumerate(specs)]
    launches = [{"graph": 0, "kernel": i, "stage": "step", "calls": 1, "launches": 1, "time_s": t,
                 "gpu_kernels": [f"k{i}"], "joined_by": ["name"]} for i, (*_, t) in enumerate(specs)]
    timing = Timing(cuda=True, launches=launches,
                    stages=[{"name": "step", "calls": 1, "span_s": 0.040, "busy_s": 0.030, "launches": 3}],
                    unattributed=[{"name": "elementwise", "where": "outside graphs", "launch_op": "aten::add",
                                   "stage": "step", "count": 1, "time_s": 0.002}],
                    device_kernel_time_s=0.030, attributed_time_s=0.028, exposed_comm=list(exposed))
    g = GraphRecord(0, "t:0", "inference", None, "cuda", nodes, {}, "backend", kernels)
    return Record(graphs=[g], timing=timing)


def test_predict_per_class_arithmetic_by_hand():
    p = Report(synthetic(), A).predict(B)
    cls = {c["class"]: c for c in p.classes}
    # GEMM: on A t_min = max(1e12 / 100e12, 1e9 / 1000e9) = 10 ms; achieved 10 / 20 = 50%
    #       on B t_min = max(1e12 / 200e12, 1e9 / 4000e9) = 5 ms;  predicted 5 / 0.5 = 10 ms
    assert cls["gemm"]["t_min_s"] == pytest.approx(0.010) and cls["gemm"]["achieved"] == pytest.approx(0.5)
    assert cls["gemm"]["t_min_target_s"] == pytest.approx(0.005) and cls["gemm"]["predicted_s"] == pytest.approx(0.010)
    # memory: on A t_min = max(1e9 / 10e12, 4e9 / 1000e9) = 4 ms; achieved 4 / 8 = 50%
    #         on B t_min = max(1e9 / 20e12, 4e9 / 4000e9) = 1 ms;  predicted 1 / 0.5 = 2 ms
    assert cls["memory"]["achieved"] == pytest.approx(0.5) and cls["memory"]["predicted_s"] == pytest.approx(0.002)
    # uncosted (outside graphs): 2 ms x 1000 / 4000 GB/s = 0.5 ms; idle 40 - 30 = 10 ms, kept
    assert cls["uncosted"]["predicted_s"] == pytest.approx(0.0005)
    assert cls["idle"]["predicted_s"] == pytest.approx(0.010)
    # stage: busy 30 ms x (10 + 2 + 0.5) / (20 + 8 + 2) = 12.5 ms; span = 10 + 12.5 = 22.5 ms = the step
    assert p.stages[0]["predicted_s"] == pytest.approx(0.0225)
    assert p.step_s == pytest.approx(0.040) and p.predicted_step_s == pytest.approx(0.0225)
    # MFU: matrix time 10 ms / 40 ms = 25% measured; 5 ms / 22.5 ms = 22.2% predicted
    assert p.mfu == pytest.approx(0.25) and p.predicted_mfu == pytest.approx(0.005 / 0.0225)
    assert any("unchanged" in a for a in p.assumes) and "assumes" in p.table()


def _with_timeline(launches, span, busy, cuda=True, **flags):
    rec = synthetic()
    stage = {"name": "step", "calls": 1, "span_s": span, "busy_s": busy, "launches": 3}
    occ = {"lead_us": 0.0, "span_us": span * 1e6, "busy_us": busy * 1e6, "stages": ["step"],
           "launches": [[*x, 0] for x in launches], **flags}
    rec.timing = dataclasses.replace(rec.timing, cuda=cuda, stages=[stage], timelines={"step": [occ]})
    return rec


def test_predict_replays_the_launch_timeline_of_a_host_paced_stage():
    """synthetic()'s three kernels (GEMM 20 ms, add 8 ms, eager 2 ms) launched by a slow host: at 0, 25 and 38 ms
    (us below: [launch, start, end, graph, kernel]), the device idle 10 of 40 ms.  On B each kernel runs x0.5,
    x0.25 and x0.25 (test_predict_per_class_arithmetic_by_hand); replayed, each still waits for its launch:
    GEMM 0 -> 10 ms, add 25 -> 27 ms, eager 38 -> 38.5 ms: the step 38.5 ms, idle 26 ms (the additive model said
    22.5 ms).  Launched all at once (device-paced, 30 ms busy of 30) the replay gives the additive 12.5 ms; on A
    both give back the measured span; a CPU record, or an occurrence in which the host waited for the device,
    keeps the gaps (22.5 ms)."""
    host = [[0, 0, 20000, 0, 0], [25000, 25000, 33000, 0, 1], [38000, 38000, 40000, None, None]]
    p = Report(_with_timeline(host, 0.040, 0.030), A).predict(B)
    st = p.stages[0]
    assert st["replayed"] and st["predicted_s"] == pytest.approx(0.0385) and p.predicted_step_s == pytest.approx(0.0385)
    assert st["predicted_idle_s"] == pytest.approx(0.026)
    assert {c["class"]: c["predicted_s"] for c in p.classes}["idle"] == pytest.approx(0.026)
    assert any("replayed" in a for a in p.assumes) and "replayed" in p.table()
    assert Report(_with_timeline(host, 0.040, 0.030), A).predict(A).predicted_step_s == pytest.approx(0.040)
    device = [[0, 0, 20000, 0, 0], [0, 20000, 28000, 0, 1], [0, 28000, 30000, None, None]]
    assert Report(_with_timeline(device, 0.030, 0.030), A).predict(B).predicted_step_s == pytest.approx(0.0125)
    cpu = Report(_with_timeline(host, 0.040, 0.030, cuda=False), A).predict(B)
    assert not cpu.stages[0]["replayed"] and cpu.predicted_step_s == pytest.approx(0.0225)
    assert any("a CPU run" in a for a in cpu.assumes)
    synced = Report(_with_timeline(host, 0.040, 0.030, syncs=1), A).predict(B)
    assert not synced.stages[0]["replayed"] and synced.predicted_step_s == pytest.approx(0.0225)
    assert any("the host waited for the device" in a for a in synced.assumes)


def _m(launch, start, end, g=0, k=0, stage="s"):
    from graphmfu.join import Measured

    return Measured("k", start, end, "op", launch, graph=g, kernel=k, stage=stage)


def test_timeline_occurrence_and_replay_by_hand():
    """Stored relative to the first start, device order, each launch with its innermost stage; more than 2 us of
    overlap (two streams) is flagged and carried additively; a 1 us overlap (a dependent launch starting early)
    is replayed, and a kernel never starts before its launch (+ delta) however early the previous one ends."""
    from graphmfu.timeline import occurrence, replay

    one = lambda g, k, st: 1.0  # noqa: E731
    occ = occurrence([_m(105, 120, 130, 0, 1), _m(100, 110, 119, 0, 0)], 4.0, 24.0, 19.0)
    assert occ["launches"] == [[-10.0, 0.0, 9.0, 0, 0, 0], [-5.0, 10.0, 20.0, 0, 1, 0]] and occ["stages"] == ["s"]
    assert replay(occ, one) == pytest.approx((24.0, 19.0))
    two = occurrence([_m(0, 0, 50), _m(1, 10, 60)], 0.0, 60.0, 60.0)
    assert two["overlapped"] and replay(two, lambda g, k, st: 0.5) == pytest.approx((30.0, 30.0))  # additive
    early = occurrence([_m(0, 0, 50, k=0), _m(40, 49, 60, k=1)], 0.0, 60.0, 60.0)
    assert "overlapped" not in early and replay(early, one)[0] == pytest.approx(60.0)
    # kernel 0 at x0.1 ends at 5; kernel 1 (delta 0) is ready at 40 and lasts 11: the span is 51, not 50
    assert replay(early, lambda g, k, st: 0.1 if k == 0 else 1.0)[0] == pytest.approx(51.0)
    assert replay(occurrence([], 0.0, 0.0, 0.0), one) == (0.0, 0.0)


def test_replay_lets_a_host_far_ahead_go_and_keys_ratios_by_stage():
    """A device-bound stream of 300 kernels of 100 us, launched 1 us apart until 100 are queued, then each only as
    one ends (launch = the end of kernel i - 100: the host blocked on a full queue): at x0.5 the replay must give
    300 x 50 us (+ the 5 us lead), not pin the late launches to their measured, device-paced times.  The ratio is
    taken per (graph, kernel, stage): the same kernel x0.5 in stage a and x2 in stage b."""
    from graphmfu.timeline import occurrence, replay

    ks = [_m(i * 1.0 if i < 100 else (i - 100) * 100.0 + 105.0, i * 100.0 + 5.0, i * 100.0 + 105.0) for i in range(300)]
    occ = occurrence(ks, 5.0, 30005.0, 30000.0)
    assert replay(occ, lambda g, k, st: 1.0)[0] == pytest.approx(30005.0)
    assert replay(occ, lambda g, k, st: 0.5)[0] == pytest.approx(15005.0)
    mixed = occurrence([_m(0, 0, 10, stage="a"), _m(0, 10, 20, stage="b")], 0.0, 20.0, 20.0)
    assert replay(mixed, lambda g, k, st: {"a": 0.5, "b": 2.0}[st]) == pytest.approx((25.0, 25.0))


def test_predict_keeps_a_per_launch_floor_measured_in_the_run():
    """Two latency-bound kernels (a 1e5-byte add: 0.1 us at A's 1000 GB/s, measured 3 and 5 us) set the floor:
    the shortest launch of a kernel under 10% of its roofline, 3 us; it stays on B, the rest scales."""
    tiny = Cost.of(read=5e4, written=5e4)
    extra = [("aten.add.Tensor", tiny, [[[100, 125], "float32"]], 3e-6),
             ("aten.mul.Tensor", tiny, [[[100, 125], "float32"]], 5e-6)]
    p = Report(synthetic(extra), A).predict(B)
    cls = {c["class"]: c for c in p.classes}
    assert any("fixed 3.00 us per launch" in a for a in p.assumes)
    # GEMM: 3 us kept + (20 ms - 3 us) x 5 / 10 = 10.0015 ms
    assert cls["gemm"]["predicted_s"] == pytest.approx(0.003e-3 + (0.020 - 3e-6) * 0.5, rel=1e-12)
    # memory: the 8 ms add: 3 us + (8 ms - 3 us) x 1 / 4; the 3 us add: 3 us; the 5 us mul: 3 + 2 x 0.025 / 0.1
    assert cls["memory"]["predicted_s"] == pytest.approx((3e-6 + (0.008 - 3e-6) * 0.25) + 3e-6 + (3e-6 + 2e-6 * 0.25),
                                                          rel=1e-12)
    # the measured device: every kernel back at its measured time (the floor is kept, the ratio is 1)
    same = Report(synthetic(extra), A).predict(A)
    assert same.predicted_step_s == pytest.approx(same.step_s, rel=1e-12)
    # no latency-bound kernel: no floor (the per-class arithmetic above)
    assert any("no per-launch floor" in a for a in Report(synthetic(), A).predict(B).assumes)


def test_predict_on_the_measured_device_returns_the_measured_times(broken):
    for rep in (Report(synthetic(), A), broken):
        p = rep.predict(rep.device)
        assert p.predicted_step_s == pytest.approx(p.step_s, rel=1e-12)
        for s, m in zip(p.stages, rep.stages):
            assert s["predicted_s"] == pytest.approx(m["span_s"], rel=1e-12)


def test_faster_target_gives_a_shorter_step(broken):
    rep = Report(synthetic(), A)
    assert rep.predict(B).predicted_step_s < rep.predict(A).predicted_step_s
    on = broken.on("a100-80gb")
    assert on.predict("b200").predicted_step_s < on.predict("a100-80gb").predicted_step_s


def test_predict_command_line(tmp_path, capsys):
    path = Report(synthetic(), A).save(tmp_path / "r.json")
    assert predict_main([str(path), "--on", "h100-sxm", "--json", str(tmp_path / "p.json")]) == 0
    out = capsys.readouterr().out
    assert "predicted on NVIDIA H100" in out and "per kernel class" in out
    assert predict_main([str(path), "--on", "no-such-gpu"]) == 2


def test_dense_attention_and_exposed_collectives_from_the_record():
    # attention written as a bmm whose mask keeps 30% of the pairs: 70% of its 10 ms on masked pairs
    att = Cost.of({"bf16": 3e11}, dense={"bf16": 1e12}, read=1e8, written=1e8)
    extra = [("aten.bmm.default", att, [[[8, 1024, 64], "bfloat16"], [[8, 64, 1024], "bfloat16"]], 0.010)]
    rec = synthetic(extra, exposed=[{"stage": "step", "comm_s": 0.006, "exposed_s": 0.004, "compute_s": 0.03}])
    found = {c.kind: c for c in Report(rec, A).causes()}
    assert found["dense_attention"].lost_s == pytest.approx(0.010 * 0.7)
    assert "flex_attention" in found["dense_attention"].action
    assert found["exposed_comm"].lost_s == pytest.approx(0.004) and "overlap" in found["exposed_comm"].action
    clean = {c.kind for c in Report(synthetic(), A).causes()}
    assert "dense_attention" not in clean and "exposed_comm" not in clean


def test_no_launch_gap_when_the_device_is_always_busy():
    rec = synthetic()
    rec.timing = dataclasses.replace(rec.timing, stages=[{"name": "step", "calls": 1, "span_s": 0.030,
                                                          "busy_s": 0.030, "launches": 3}])
    assert "launch_bound" not in {c.kind for c in Report(rec, A).causes()}
    assert "launch_bound" in {c.kind for c in Report(synthetic(), A).causes()}  # 10 of 40 ms idle


def test_launch_gaps_say_when_the_launch_path_is_slow():
    """The stage's host time inside graph calls per kernel launched there (3 launches, 1 of them eager): 1 ms / 2
    = 500 us is far above the launch path's 22-25 us on the H200's host, and the evidence says the launch path paces
    the stage (and where to time it without the profiler); 20 us / 2 = 10 us is not flagged."""
    def with_host(inside):
        rec = synthetic()
        stage = {"name": "step", "calls": 1, "span_s": 0.040, "busy_s": 0.030, "launches": 3, "host_s": 0.04,
                 "host_in_graphs_s": inside}
        rec.timing = dataclasses.replace(rec.timing, stages=[stage])
        return next(c for c in Report(rec, A).causes() if c.kind == "launch_bound")
    slow = with_host(0.001)
    assert "the host spent 500 us per kernel launch (under the profiler" in slow.evidence
    assert "graphmfu.meter()" in slow.evidence and "the launch path paces this stage" in slow.evidence
    assert "per kernel launch" not in with_host(2e-5).evidence


def test_predict_at_other_sizes_costs_each_kernel_there(fresh, tmp_path, capsys):
    """A shape what-if: batch 8 measured with a dynamic batch, batch 32 asked; each kernel costed at 32."""
    m = nn.Sequential(nn.Linear(64, 128, bias=False), nn.ReLU())
    x = torch.randn(8, 64)
    torch._dynamo.mark_dynamic(x, 0)
    cm = torch.compile(m, backend=graphmfu.backend)
    with torch.no_grad():
        cm(x)
        with graphmfu.profile() as p:
            with graphmfu.stage("step"):
                cm(x)
                cm(x)
    rep = p.report()
    (sym,) = rep.record.graphs[0].hints  # the batch's symbol, measured at 8
    assert rep.record.graphs[0].hints[sym] == 8
    toy = DeviceSpec("toy", {"fp32": 1.0}, dram_gbps=1.0)  # 1 TFLOP/s, 1 GB/s: both kernels memory-bound
    pr = rep.predict(toy, sizes={sym: 32})
    cls = {c["class"]: c for c in pr.classes}
    # mm at batch 32: reads 32x64 + 64x128, writes 32x128 fp32 = 4 x (2048 + 8192 + 4096) = 57,344 B -> 57.344 us
    # at 1 GB/s (its 2 x 32 x 64 x 128 = 524,288 FLOPs take 0.52 us at 1 TFLOP/s); two calls
    assert cls["gemm"]["t_min_target_s"] == pytest.approx(2 * 57_344e-9, rel=1e-9)
    # relu: reads and writes 32 x 128 fp32 = 32,768 B -> 32.768 us per call
    assert cls["memory"]["t_min_target_s"] == pytest.approx(2 * 32_768e-9, rel=1e-9)
    assert f"at {sym}=32" in pr.device and any(f"at {sym}=32" in a for a in pr.assumes)
    # at the measured sizes on the measured device: the measured step back
    same = rep.predict(sizes={sym: 8})
    assert same.predicted_step_s == pytest.approx(same.step_s, rel=1e-9)
    with pytest.raises(graphmfu.GraphMFUError, match=r"no measured graph call has symbol\(s\) s999 .*mark_dynamic"):
        rep.predict(sizes={"s999": 32})
    path = tmp_path / "r.json"
    rep.save(path)
    assert predict_main([str(path), "--sizes", f"{sym}=32"]) == 0
    assert f"at {sym}=32" in capsys.readouterr().out
    assert predict_main([str(path), "--sizes", "s0=big"]) == 2
    assert "write symbol=integer pairs" in capsys.readouterr().err


def test_tile_padding_against_aligned_gemms_and_inductors_pad_copy():
    """A misaligned LM head (Inductor padded 32001 -> 32008 with a weight copy per call) beside an aligned GEMM:
    lost = time above the aligned GEMM's fraction of its roofline + the copy (hand numbers on device A)."""
    aligned = Cost.of({"bf16": 1e12}, read=1e9)  # on A: max(1e12 / 100e12, 1e9 / 1000e9) = 10 ms
    head = Cost.of({"bf16": 2e12}, read=1e9)  # on A: 20 ms
    copy = Cost.of(read=6.5e7, written=6.5e7)
    specs = [("aten.mm.default", aligned, [[[1024, 1024], "bfloat16"], [[1024, 1024], "bfloat16"]], [], "mlp", 0.0125),
             ("aten.mm.default", head, [[[1024, 1024], "bfloat16"], [[1024, 32008], "bfloat16"]], [], "head", 0.040),
             ("aten.constant_pad_nd.default", copy, [[[1024, 32001], "bfloat16"]], [[[1024, 32008], "bfloat16"]],
              "head", 0.0005)]
    nodes = [OpRecord(0, "inference", i, f"n{i}", op, mod, inp, out, c) for i, (op, c, inp, out, mod, _) in
             enumerate(specs)]
    kernels = [KernelRecord(0, i, f"k{i}", f"k{i}", True, [f"n{i}"], mod, "inference", c)
               for i, (_, c, _, _, mod, _) in enumerate(specs)]
    launches = [{"graph": 0, "kernel": i, "stage": "step", "calls": 1, "launches": 1, "time_s": t,
                 "gpu_kernels": [f"k{i}"], "joined_by": ["name"]} for i, (*_, t) in enumerate(specs)]
    timing = Timing(cuda=True, launches=launches,
                    stages=[{"name": "step", "calls": 1, "span_s": 0.053, "busy_s": 0.053, "launches": 3}],
                    device_kernel_time_s=0.053, attributed_time_s=0.053)
    rec = Record(graphs=[GraphRecord(0, "t:0", "inference", None, "cuda", nodes, {}, "backend", kernels)],
                 timing=timing)
    (pad,) = [c for c in Report(rec, A).causes() if c.kind == "tile_padding"]
    # the aligned GEMM reaches 10 / 12.5 = 80% of its roofline; at 80% the head would take 20 / 0.8 = 25 ms:
    # 40 - 25 = 15 ms (more than the tiles' padded share, 40 x (1 - 32008 / 32064) = 0.07 ms), plus the copy 0.5 ms
    assert pad.lost_s == pytest.approx(0.0155)
    assert pad.action.startswith("pad vocab 32001 -> 32064") and pad.where == "head (vocab 32001)"
    assert "80.0% of the roofline; these 50.0%" in pad.evidence
    assert "Inductor pads 32001 -> 32008 on every call (1 kernel(s), k2: 130.0 MB per call" in pad.evidence


def test_graph_break_costs_the_hosts_time_outside_graph_calls_where_the_device_waited(broken):
    """The profile measures the host's time in each stage and inside graphmfu's graph calls; a break's estimate
    is the time outside the calls, up to the device's idle time in that stage (by hand from the stage row)."""
    st = {s["name"]: s for s in broken.stages}["step"]
    assert 0 < st["host_in_graphs_s"] < st["host_s"]
    (gb,) = [c for c in broken.causes() if c.kind == "graph_break"]
    idle, outside = st["span_s"] - st["busy_s"], st["host_s"] - st["host_in_graphs_s"]
    assert gb.lost_s == pytest.approx(min(idle, outside))
    assert gb.stages == {"step": pytest.approx(gb.lost_s)}  # what the stage's launch gaps give up, and no other's
    assert "outside graphmfu's graph calls" in gb.evidence
    # a record from before these fields: the resumed calls x the stage's mean gap per kernel
    old = dataclasses.replace(broken.record, timing=dataclasses.replace(
        broken.record.timing, stages=[{k: v for k, v in s.items() if not k.startswith("host")}
                                      for s in broken.record.timing.stages]))
    (gb_old,) = [c for c in Report(old, broken.device).causes() if c.kind == "graph_break"]
    resumed = max(k["calls"] for k in broken.kernels if k["graph"] == 1 and k["stage"] == "step")
    assert gb_old.lost_s == pytest.approx(resumed * idle / st["kernel_launches"])
