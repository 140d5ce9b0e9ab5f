"""graphmfu.meter(): per-step numbers from call counters and per-call symbolic costs (CPU).

Hand counts: minimal_llama with d=64, hd=16, kv heads 2 (kv*hd = 32), ffn=128, vocab=100, 2 layers.
Per token per layer the projections cost 2*(d*d [q] + d*32 [k] + d*32 [v] + d*d [o]) = 2*12288 and the
MLP 3 * 2*d*ffn = 2*24576: 73728; two layers 147456; the head 2*d*vocab = 12800; 160256 per token.
Causal attention over T tokens: per (batch, head) T(T+1)/2 pairs, 2 products of 2*hd FLOPs each.
Training = forward + backward, backward = 2 x forward for every matmul here (the embedding output
needs its gradient, so every projection computes both gradients) and for attention."""
from __future__ import annotations

import pytest
import torch

import graphmfu
from examples.minimal_llama import Llama, LlamaConfig, decode_step_flops
from graphmfu.errors import GraphMFUError
from graphmfu.meter import Meter, row
from graphmfu.params import active_params
from graphmfu.registry import Registry

CFG = LlamaConfig(dim=64, layers=2, heads=4, kv_heads=2, ffn=128, vocab=100)
PER_TOKEN = 2 * (2 * (64 * 64 + 64 * 32) + 3 * 64 * 128) * 2 + 2 * 64 * 100
assert PER_TOKEN == 160256


def _attention(batch, t, layers=2, heads=4, hd=16):
    return layers * batch * heads * (t * (t + 1) // 2) * 2 * (2 * hd)


def _model():
    torch.manual_seed(0)
    return Llama(CFG)


def test_training_loop_each_step_equals_hand_count():
    reg = Registry()
    m = _model()
    opt = torch.optim.AdamW(m.parameters(), lr=1e-3)
    step = torch.compile(m, backend=graphmfu.Backend(registry=reg), dynamic=False)
    meter = graphmfu.meter(registry=reg, model=m, graph_time=1)
    shapes = [(2, 16), (2, 16), (2, 16)]
    for b, t in shapes:
        x = torch.randint(0, CFG.vocab, (b, t))
        with meter.step(tokens=x.numel()):
            step(x).float().pow(2).mean().backward()
            opt.step()  # eager optimizer: time outside graphs, no FLOPs
            opt.zero_grad()
    rows = meter.records
    assert len(rows) == 3
    for r, (b, t) in zip(rows, shapes):
        fwd = b * t * PER_TOKEN + _attention(b, t)
        assert fwd == 2 * 16 * 160256 + 2 * 2 * 4 * 136 * 64  # 5128192 + 139264
        assert r["flops"] == 3 * fwd == 15802368
        dense = 3 * (b * t * PER_TOKEN + 2 * b * 4 * t * t * 2 * 32)
        assert r["flops_dense"] == dense
        assert r["attention_flops"] == 3 * _attention(b, t)
        assert r["flops_recompute"] == 0
        assert r["training"] and r["nd_rule"] == "6ND"
        assert r["params"] == sum(p.numel() for p in m.parameters()) - m.embed.weight.numel() == 80448
        assert r["nd_flops"] == 6 * 80448 * b * t
        assert r["flops_per_token"] == r["flops"] / (b * t)
        assert r["tokens_per_s"] == pytest.approx(b * t / r["step_s"])
        assert set(k for k in r if k.endswith("_s")) >= {"step_s", "forward_s", "backward_s", "graph_s",
                                                         "outside_graphs_s"}
        assert 0 < r["graph_time_share"] < 1 and r["outside_graphs_s"] > 0  # the eager optimizer
        assert r["forward_s"] + r["backward_s"] == pytest.approx(r["graph_s"])
        assert r["graph_calls"] == 2


def test_compiled_optimizer_is_its_own_stage():
    reg = Registry()
    m = _model()
    opt = torch.optim.SGD(m.parameters(), lr=1e-3)
    fwd = torch.compile(m, backend=graphmfu.Backend(registry=reg))
    ostep = torch.compile(opt.step, backend=graphmfu.Backend(registry=reg))
    meter = Meter(registry=reg, graph_time=1)
    x = torch.randint(0, CFG.vocab, (1, 8))
    for _ in range(2):
        with meter.step(tokens=8):
            fwd(x).sum().backward()
            ostep()
            opt.zero_grad()
    r = meter.records[-1]
    assert r["optimizer_s"] > 0 and r["graph_calls"] == 3
    assert r["flops"] == 3 * (8 * PER_TOKEN + _attention(1, 8))  # SGD adds vector FLOPs only
    assert r["vector_flops"] > 0


def test_serving_loop_varying_batch_and_cache_each_step_own_hand_count():
    reg = Registry()
    m = _model().eval()
    step = torch.compile(m.step, backend=graphmfu.Backend(registry=reg), dynamic=True)
    meter = graphmfu.meter(registry=reg)
    hd = CFG.dim // CFG.heads
    plan = [(1, 7), (2, 9), (3, 12), (1, 30), (4, 5)]  # (batch, cache length) per step
    with torch.no_grad():
        for b, s in plan:
            caches = [(torch.randn(b, CFG.kv_heads, s, hd), torch.randn(b, CFG.kv_heads, s, hd))
                      for _ in range(CFG.layers)]
            tok = torch.randint(0, CFG.vocab, (b, 1))
            with meter.step(tokens=b):
                step(tok, caches)
    rows = meter.records
    for r, (b, s) in zip(rows, plan):
        assert r["flops"] == decode_step_flops(CFG, s, b), (b, s)
        assert not r["training"]
        # decode: every new token's key/value rows are read with the cache: k, v of [b, kv, s+1, hd] fp32
        assert r["kv_bytes"] == CFG.layers * 2 * b * CFG.kv_heads * (s + 1) * hd * 4
    assert len({r["flops"] for r in rows}) == len(plan)


def test_history_keeps_the_last_steps_only():
    reg = Registry()
    m = _model().eval()
    step = torch.compile(m.step, backend=graphmfu.Backend(registry=reg), dynamic=True)
    meter = graphmfu.meter(registry=reg, history=2)
    hd = CFG.dim // CFG.heads
    plan = [(1, 7), (2, 9), (3, 12), (1, 30), (4, 5)]
    with torch.no_grad():
        for b, s in plan:
            caches = [(torch.randn(b, CFG.kv_heads, s, hd), torch.randn(b, CFG.kv_heads, s, hd))
                      for _ in range(CFG.layers)]
            with meter.step(tokens=b):
                step(torch.randint(0, CFG.vocab, (b, 1)), caches)
    rows = meter.records
    assert [r["step"] for r in rows] == [3, 4] and len(meter.steps) == 2
    assert [r["flops"] for r in rows] == [decode_step_flops(CFG, 30, 1), decode_step_flops(CFG, 5, 4)]
    with pytest.raises(graphmfu.GraphMFUError, match="at least 1"):
        graphmfu.meter(history=0)


def test_nothing_attached_outside_a_step_and_steps_do_not_nest():
    reg = Registry()
    m = _model()
    f = torch.compile(m, backend=graphmfu.Backend(registry=reg))
    x = torch.randint(0, CFG.vocab, (1, 4))
    f(x)
    meter = Meter(registry=reg)
    compiled = [ref() for ref in reg.tagger._compiled]
    base = {type(c) for c in compiled}
    assert all("_graphmfu_base" not in t.__dict__ for t in base)  # Inductor's own classes
    with meter.step():
        assert all("_graphmfu_base" in type(c).__dict__ for c in compiled)
        with pytest.raises(GraphMFUError, match="do not nest"):
            with meter.step():
                pass
        f(x)
    assert {type(c) for c in compiled} == base
    assert reg.tagger.meters == []
    f(x)  # a call outside any step is not counted
    assert [r["graph_calls"] for r in meter.records] == [1]


def test_callback_printing_goodput_and_another_device():
    reg = Registry()
    m = _model().eval()
    f = torch.compile(m, backend=graphmfu.Backend(registry=reg))
    seen, lines = [], []

    class F:
        def write(self, s):
            lines.append(s)

    meter = graphmfu.meter(registry=reg, on_record=seen.append, print_every=2, file=F())
    x = torch.randint(0, CFG.vocab, (1, 5))
    with torch.no_grad():
        for _ in range(4):
            with meter.step(tokens=3, processed=5):  # speculative: 5 computed, 3 accepted
                f(x)
    assert [r["step"] for r in seen] == [0, 1, 2, 3]
    assert sum("graphmfu meter: step" in s for s in lines) == 2
    r = meter.records[-1]
    assert r["goodput_mfu"] == pytest.approx(r["mfu"] * 3 / 5)
    h = meter.on("h100-sxm")[-1]
    assert h["flops"] == r["flops"] and h["device"] != r["device"]
    # the one MFU definition: matrix FLOPs at the fp32 (tf32-less) peak over the step time
    dev = graphmfu.get_device("h100-sxm")
    assert h["mfu"] == pytest.approx(r["flops"] / (dev.matrix_tflops("fp32") * 1e12) / r["step_s"])
    assert "mean 3" in meter.summary()


def test_active_params_dense_tied_and_moe():
    m = _model()
    assert active_params(m) == 80448
    tied = _model()
    tied.head.weight = tied.embed.weight  # tied LM head: counted once, as the Linear's
    assert active_params(tied) == 80448

    class Experts(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(8, 16, 32))  # 8 experts x 512

    class MoE(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = torch.nn.Embedding(10, 16)
            self.router = torch.nn.Linear(16, 8, bias=False)  # 128
            self.experts = Experts()
            self.shared_expert = torch.nn.Linear(16, 16, bias=False)  # 256

    moe = MoE()
    with pytest.raises(GraphMFUError, match="top_k"):
        active_params(moe)
    assert active_params(moe, top_k=2, num_experts=8) == 128 + 256 + 8 * 512 * 2 // 8


def test_meter_row_is_a_function_of_step_and_device():
    """row() derives everything from the stored step: the same step on two devices differs only in
    the device-dependent fields."""
    reg = Registry()
    m = _model().eval()
    f = torch.compile(m, backend=graphmfu.Backend(registry=reg))
    meter = Meter(registry=reg)
    with torch.no_grad(), meter.step(tokens=4):
        f(torch.randint(0, CFG.vocab, (1, 4)))
    s = meter.records and meter.steps[-1]
    a = row(s, meter.cost, graphmfu.get_device("h100-sxm"))
    b = row(s, meter.cost, graphmfu.get_device("a100-80gb"))
    same = {k for k in a if a[k] == b[k]}
    assert {"flops", "bytes", "step_s", "kv_bytes", "tokens_per_s"} <= same
    assert a["mfu"] < b["mfu"]  # a slower peak: the same time is a larger share of it


def test_llama70b_flops_per_token_by_hand_and_seed_003():
    """examples/flops_per_token.py on meta: Llama-3.3-70B shapes (d=8192, 80 layers, 64 heads of 128, 8 kv
    heads, ffn 28672, vocab 128256).  Matrices per layer: q, o 8192^2 each, k, v 8192*1024 each, MLP
    3 * 8192*28672; the head 8192*128256; norms (2 per layer + 1) are parameters but no matmul."""
    from examples.flops_per_token import SEED_PER_TOKEN_TFLOP, SEED_PREFILL_TFLOP, counts

    c = counts("70b", 2048)
    matmul = 80 * (2 * 8192 ** 2 + 2 * 8192 * 1024 + 3 * 8192 * 28672) + 8192 * 128256
    assert c["params"] == matmul + 80 * 2 * 8192 + 8192 == 69_503_033_344
    attn = 80 * 64 * 2 * (2 * 128)  # per (query, key) pair: two products of 2*hd, all heads and layers
    assert c["prefill"] == 2 * matmul * 2048 + attn * (2048 * 2049 // 2)
    assert c["prefill_dense"] == 2 * matmul * 2048 + attn * 2048 * 2048
    assert c["decode"] == c["decode_dense"] == 2 * matmul + attn * 2049
    # seed 003's ~296 TFLOP prefill counts attention dense: within 1% of the dense count (causal: -2%)
    assert abs(c["prefill_dense"] / 1e12 / SEED_PREFILL_TFLOP - 1) < 0.01
    assert abs(c["decode"] / 1e12 / SEED_PER_TOKEN_TFLOP - 1) < 0.01


def test_input_dependent_mask_counted_per_step_without_waiting(monkeypatch):
    """Key padding from a lengths input: per (batch b, head) T * len_b kept pairs, 2 products of 2*hd
    FLOPs each; q/k/v/o projections 4 * 2*T*d*d per sequence.  The meter reads the mask probe through
    host copies (Deferred), not by waiting at the call."""
    from graphmfu import _inductor

    made = []
    real = _inductor.Deferred

    class Spy(real):
        __slots__ = ()

        def __init__(self, finish):
            made.append(1)
            super().__init__(finish)

    monkeypatch.setattr(_inductor, "Deferred", Spy)

    class Enc(torch.nn.Module):
        def __init__(self, d=32, h=4):
            super().__init__()
            self.h, self.qkv, self.o = h, torch.nn.Linear(d, 3 * d, bias=False), torch.nn.Linear(d, d, bias=False)

        def forward(self, x, lengths):
            b, t, d = x.shape
            keep = (torch.arange(t, device=x.device)[None, :] < lengths[:, None]).view(b, 1, 1, t)
            q, k, v = self.qkv(x).view(b, t, 3, self.h, d // self.h).permute(2, 0, 3, 1, 4)
            y = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=keep)
            return self.o(y.transpose(1, 2).reshape(b, t, d))

    reg = Registry()
    torch.manual_seed(0)
    f = torch.compile(Enc().eval(), backend=graphmfu.Backend(registry=reg))
    meter = Meter(registry=reg)
    x = torch.randn(2, 16, 32)
    plan = [[16, 16], [5, 9], [1, 16], [3, 3]]
    with torch.no_grad():
        for lengths in plan:
            with meter.step():
                f(x, torch.tensor(lengths))
    proj = 2 * 16 * 4 * (2 * 32 * 32)  # batch 2 x T 16 tokens, qkv (3) + o (1) projections of 2*d*d
    for r, lengths in zip(meter.records, plan):
        assert r["flops"] == proj + 4 * sum(16 * n for n in lengths) * 2 * (2 * 8), lengths
    assert len(made) == len(plan)


def test_meter_inside_a_profile_reads_probe_counts_at_the_call():
    """Under profile() and a meter at once, probe values are read at the call (the range name needs
    them) and both see the same per-call count; a deferred count is never read before its copy lands."""
    from graphmfu import _inductor

    calls = []

    class Sink:
        def call_begin(self, key, values):
            calls.append(dict(values or {}))

        def call_end(self, token):
            pass

    class Enc(torch.nn.Module):
        def forward(self, x, lengths):
            b, t, d = x.shape
            keep = (torch.arange(t)[None, :] < lengths[:, None]).view(b, 1, 1, t)
            q = x.view(b, t, 2, d // 2).transpose(1, 2)
            return torch.nn.functional.scaled_dot_product_attention(q, q, q, attn_mask=keep)

    reg = Registry()
    f = torch.compile(Enc(), backend=graphmfu.Backend(registry=reg))
    x = torch.randn(2, 8, 16)
    with torch.no_grad():
        f(x, torch.tensor([8, 8]))
        sink = Sink()
        reg.tagger.attach(sink)
        try:
            with graphmfu.ProfileSession(registry=reg):
                f(x, torch.tensor([3, 5]))
        finally:
            reg.tagger.detach(sink)
    (vals,) = calls
    pairs = [v for k, v in vals.items() if k.startswith("pairs_")]
    assert pairs == [2 * 8 * (3 + 5)]  # 2 heads x 8 queries x kept keys per batch row
    assert not any(_inductor.deferred(v) for v in vals.values())


class _PoolEvent:
    """A stand-in torch.cuda.Event: the meter's event pool checked without a GPU."""
    made = 0
    busy = True  # the device still runs earlier work: query() says not done
    api = None  # a list: the device calls made, by name

    def __init__(self, enable_timing=False):
        _PoolEvent.made += 1

    def record(self, stream=None):
        if _PoolEvent.api is not None:
            _PoolEvent.api.append("record")

    def query(self):
        if _PoolEvent.api is not None:
            _PoolEvent.api.append("query")
        return not _PoolEvent.busy

    def synchronize(self):
        pass

    def elapsed_time(self, other):
        if _PoolEvent.api is not None:
            _PoolEvent.api.append("elapsed")
        return 1.0


def test_a_synchronised_loop_asks_the_device_four_times_per_step(monkeypatch):
    """A serving engine's loop waits for each step's tokens, so each step's end has completed by the next
    step's begin: per step the meter records two events, asks once whether the previous step is done (the
    answer is kept: it lands without asking again) and reads one elapsed time — it does not ask about the
    step it has just ended (6 calls per step before)."""
    monkeypatch.setattr(torch.cuda, "Event", _PoolEvent)
    monkeypatch.setattr(_PoolEvent, "busy", False)
    monkeypatch.setattr(_PoolEvent, "api", [])
    m = graphmfu.meter("h100-sxm", cuda=True)
    st = m.begin(tokens=1)
    m.end(st)
    assert _PoolEvent.api == ["record", "record"]  # the first step: nothing to ask about yet
    for _ in range(5):
        _PoolEvent.api.clear()
        st = m.begin(tokens=1)
        m.end(st)
        assert _PoolEvent.api == ["query", "record", "record", "elapsed"]
    assert len(m.records) == 6 and all(r["step_s"] == 1e-3 for r in m.records)


def test_cuda_event_pool_gives_every_event_back(monkeypatch):
    """Shared starts (the device still busy), a step that raised and a discarded step: once every step has
    landed, each event the meter made is back in its pool, once."""
    monkeypatch.setattr(torch.cuda, "Event", _PoolEvent)
    monkeypatch.setattr(_PoolEvent, "made", 0)
    monkeypatch.setattr(_PoolEvent, "busy", True)
    m = graphmfu.meter("h100-sxm", cuda=True)
    with m.step(tokens=1):
        pass  # its own start event
    with m.step(tokens=1):
        pass  # starts at the previous step's end (the device is busy)
    with pytest.raises(RuntimeError):
        with m.step(tokens=1):  # a shared start, then the body raises
            raise RuntimeError()
    with m.step(tokens=1) as st:
        st.discard = True  # a shared start, discarded
    _PoolEvent.busy = False
    with m.step(tokens=1):
        pass
    assert len(m.records) == 3 and m.raised == 1
    assert len(m._events) == _PoolEvent.made and len({id(e) for e in m._events}) == len(m._events)
