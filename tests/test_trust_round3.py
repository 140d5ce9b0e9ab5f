"""Issue 21 (trust, round 3): defects found by using graphmfu as a new user would.  Each test reproduces
one reported defect and failed on the code before its fix."""
from __future__ import annotations

import torch

import graphmfu
from tests.test_attention_masks_percall import PER_PAIR, Causal, H, D


def test_dynamic_graph_with_a_probed_mask_attributes_all_kernel_time(fresh):
    """dynamic=True, called at T = 8, 24, 40 in one stage (CPU): the probe's count was read (aten::item)
    outside graphmfu's probe range, so it showed as unattributed model time."""
    torch.manual_seed(0)
    cm = torch.compile(Causal().eval(), backend=graphmfu.backend, dynamic=True)
    xs = [torch.randn(1, t, H * D) for t in (8, 24, 40)]
    with torch.no_grad():
        cm(xs[0])
        with graphmfu.profile() as p, graphmfu.stage("s"):
            for x in xs:
                cm(x)
    rep = p.report()
    assert rep.coverage()["time_attributed"] >= 0.99, rep.coverage()["unattributed_kernels"]
    assert not [u for u in rep.coverage()["unattributed_kernels"] if u["name"] == "aten::item"]
    sdpa, = [k for k in rep.kernels if k["name"].startswith("torch.ops.aten._scaled_dot_product")]
    # causal: T(T+1)/2 pairs per head: 36 + 300 + 820 = 1156, x 2 heads x 32 FLOPs = 73984
    assert sdpa["flops"] == (36 + 300 + 820) * H * PER_PAIR == 73984


# --------------------------------------------------------------------------- words (item 5)

import pytest  # noqa: E402
import torch.nn as nn  # noqa: E402

from graphmfu.errors import GraphMFUError  # noqa: E402


class WithLSTM(nn.Module):
    def __init__(self):
        super().__init__()
        self.rnn, self.out = nn.LSTM(16, 32, batch_first=True), nn.Linear(32, 4)

    def forward(self, x):
        return self.out(self.rnn(x)[0])


def test_nothing_compiled_says_why_not_compile_first(fresh):
    """An LSTM: Dynamo skips the frame and the model runs eagerly.  The report must not tell the user to
    compile the model (they did): it says Dynamo compiled nothing and gives Dynamo's reason."""
    torch.compile(WithLSTM(), backend=graphmfu.backend)(torch.randn(2, 5, 16))
    with pytest.raises(GraphMFUError) as e:
        graphmfu.report()
    msg = str(e.value)
    assert "Dynamo compiled nothing and the model ran eagerly" in msg
    assert "RNN, GRU, or LSTM" in msg and "allow_rnn" in msg
    assert "and run the model first" not in msg


class Layer(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(16, 16)

    def forward(self, x):
        return self.lin(x).relu()


class LoopWithBreak(nn.Module):
    def __init__(self, layer=lambda: nn.Linear(16, 16)):
        super().__init__()
        self.layers = nn.ModuleList(layer() for _ in range(3))

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
            torch._dynamo.graph_break()
        return x


def test_graph_break_in_a_loop_over_layers_names_the_loop(fresh):
    torch.compile(LoopWithBreak(), backend=graphmfu.backend)(torch.randn(2, 16))
    with pytest.raises(GraphMFUError, match="graph break in loop") as e:
        graphmfu.report()
    assert "Dynamo compiled nothing" in str(e.value)
    graphmfu.reset()
    torch._dynamo.reset()
    # layers of the user's own class: Dynamo compiles each layer's frame, the loop itself runs eagerly
    torch.compile(LoopWithBreak(Layer), backend=graphmfu.backend)(torch.randn(2, 16))
    notes = graphmfu.report().data["notes"]
    assert any(n.startswith("Dynamo could not compile everything") and "graph break in loop" in n for n in notes)


def test_graphs_with_graph_breaks_say_what_ran_outside_them(fresh):
    class Half(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(16, 16), nn.Linear(16, 16)

        def forward(self, x):
            x = self.a(x)
            torch._dynamo.graph_break()
            return self.b(x)

    torch.compile(Half(), backend=graphmfu.backend)(torch.randn(2, 16))
    notes = graphmfu.report().data["notes"]
    assert any(n.startswith("Dynamo could not compile everything (1 graph break(s)") and "graph_break()" in n
               for n in notes), notes


def test_analysis_graph_breaks_are_not_the_users(fresh):
    """analyze() runs Dynamo too: its graph breaks must not show in the user's report."""
    torch.compile(Layer(), backend=graphmfu.backend)(torch.randn(2, 16))
    graphmfu.analyze(LoopWithBreak(), torch.randn(2, 16), fast=False)
    assert not [n for n in graphmfu.report().data["notes"] if n.startswith("Dynamo could not compile")]


def test_two_modules_are_not_alternatives_of_one_code(fresh):
    """Model A compiled with and without grad (2 compilations of its code), then, after torch._dynamo.reset(),
    model B the same way: B's frame numbers repeat A's ("0/0", "0/1").  Each model's compilations are
    alternatives of its own code; the two models are not one code compiled 4 times."""
    for model, dim in ((Layer(), 16), (WithLinear(), 16)):
        cm = torch.compile(model, backend=graphmfu.backend)
        cm(torch.randn(2, dim))
        with torch.no_grad():
            cm(torch.randn(2, dim))
        torch._dynamo.reset()
    rep = graphmfu.report()
    assert [g.compile_id for g in rep.record.graphs] == ["0/0", "0/1", "0/0", "0/1"]
    notes = [n for n in rep.data["notes"] if "compilations of the same code" in n]
    assert len(notes) == 2, notes
    assert notes[0].startswith("graphs [0, 1] are 2 compilations") and notes[1].startswith("graphs [2, 3] are 2")


class WithLinear(nn.Module):
    def __init__(self):
        super().__init__()
        self.c = nn.Linear(16, 8)

    def forward(self, x):
        return self.c(x) * 2


def test_one_module_recompiled_is_still_alternatives(fresh):
    m = Layer()
    cm = torch.compile(m, backend=graphmfu.backend)
    cm(torch.randn(2, 16))
    with torch.no_grad():
        cm(torch.randn(2, 16))
    notes = graphmfu.report().data["notes"]
    assert any("2 compilations of the same code" in n and "alternatives" in n for n in notes), notes


def test_backward_compiled_ahead_is_named(fresh):
    """dynamic=True compiles the backward with the forward; an inference-only run never calls it."""
    torch.compile(Layer(), backend=graphmfu.backend, dynamic=True)(torch.randn(2, 16))
    rep = graphmfu.report()
    phases = {g.phase: g for g in rep.record.graphs}
    assert phases["backward"].ahead and not phases["forward"].ahead
    assert any(n.startswith(f"graph(s) [{phases['backward'].id}] are backward graphs compiled ahead")
               for n in rep.data["notes"]), rep.data["notes"]


def test_backward_compiled_at_its_first_call_is_not_named(fresh):
    torch.compile(Layer(), backend=graphmfu.backend)(torch.randn(2, 16)).sum().backward()
    rep = graphmfu.report()
    assert not any(g.ahead for g in rep.record.graphs)
    assert not [n for n in rep.data["notes"] if "compiled ahead" in n]


class Attn(nn.Module):
    def __init__(self):
        super().__init__()
        self.q, self.o = nn.Linear(16, 16), nn.Linear(16, 16)

    def forward(self, x):
        h = self.q(x)
        torch._dynamo.graph_break()
        return self.o(h)


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.attn = Attn()

    def forward(self, x):
        return self.attn(x)


class Deep(nn.Module):
    def __init__(self):
        super().__init__()
        self.layers = nn.ModuleList(Block() for _ in range(2))

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        return x


def test_backend_module_paths_are_the_models_across_graph_breaks(fresh):
    """A graph break inside layers.0.attn: Dynamo compiles attn's forward (and its resume function) as
    frames of their own, whose module paths are relative to attn (``q``, ``o``)."""
    with torch.no_grad():
        torch.compile(Deep(), backend=graphmfu.backend)(torch.randn(2, 16))
    mods = {n["module"] for n in graphmfu.report().nodes if n["op"] in ("aten.addmm.default", "aten.mm.default")}
    assert mods == {"layers.0.attn.q", "layers.0.attn.o"}, mods


def test_meter_step_without_graphs_is_flagged_and_left_out_of_the_means():
    """Steps 0 and 2 run the compiled model (2 * 16 * 16 = 512 FLOPs per token at batch 1 x 1 token... of one
    Linear(16, 16) on 4 tokens: 2 * 4 * 16 * 16 = 2048 FLOPs, 512 per token); step 1 runs the plain model:
    no graph, 0 counted.  Its row says so and the means are over the two counted steps: 512 FLOPs/token,
    not (512 + 0 + 512) / 3."""
    from graphmfu.registry import Registry

    reg = Registry()
    m = nn.Linear(16, 16)
    cm = torch.compile(m, backend=graphmfu.Backend(registry=reg))
    meter = graphmfu.meter(registry=reg)
    x = torch.randn(4, 16)
    with torch.no_grad():
        cm(x)
        for fn in (cm, m, cm):
            with meter.step(tokens=4):
                fn(x)
    rows = meter.records
    assert [r["flops"] for r in rows] == [2 * 4 * 16 * 16, 0, 2048]
    assert [r["flags"] for r in rows] == [[], ["no_graphs"], []]
    assert "no compiled graph ran in this step" in rows[1]["note"]
    text = meter.summary(skip=0)
    assert text.startswith("! 1 of 3 step(s) ran no compiled graph (steps 1, marked !)")
    import re

    head, mean = text.splitlines()[2], text.splitlines()[-1]
    cols = dict(zip(re.split(r"\s{2,}", head.strip()), re.split(r"\s{2,}", mean.strip())))
    assert cols["step"] == "mean 2" and cols["FLOP/tok"] == "512"  # over the two counted steps


def test_meter_step_that_raised_is_not_recorded():
    from graphmfu.registry import Registry

    reg = Registry()
    cm = torch.compile(nn.Linear(16, 16), backend=graphmfu.Backend(registry=reg))
    meter = graphmfu.meter(registry=reg)
    x = torch.randn(4, 16)
    with torch.no_grad():
        with meter.step(tokens=4):
            cm(x)
        with pytest.raises(RuntimeError, match="boom"):
            with meter.step(tokens=4):
                cm(x)
                raise RuntimeError("boom")
        with meter.step(tokens=4):
            cm(x)
    assert len(meter.records) == 2 and meter.raised == 1
    assert "1 step(s) raised inside 'with meter.step()' and are not recorded" in meter.summary()


def test_cpu_flex_attention_is_joined_under_profile(fresh):
    """The CPU flex template profiles as ``graph_0_kernel``, not under its Inductor name: nothing was joined
    (the report said the model was compiled without graphmfu).  Now it is joined by order and costed at the
    blocks the call's BlockMask runs."""
    fa = pytest.importorskip("torch.nn.attention.flex_attention")

    def causal(b, h, q, kv):
        return q >= kv

    t = 256  # two 128-blocks per side
    bm = fa.create_block_mask(causal, 1, H, t, t, device="cpu")
    q, k, v = (torch.randn(1, H, t, D) for _ in range(3))
    f = torch.compile(lambda q, k, v, bm: fa.flex_attention(q, k, v, block_mask=bm), backend=graphmfu.backend)
    with torch.no_grad():
        f(q, k, v, bm)
        with graphmfu.profile() as p, graphmfu.stage("attn"):
            f(q, k, v, bm)
    rep = p.report()
    assert rep.coverage()["time_attributed"] == 1.0, rep.coverage()["unattributed_kernels"]
    flex, = rep.kernels
    # causal at 128-blocks: 3 blocks of 128 x 128 per head, 2 heads: 98304 pairs x 32 FLOPs per pair (D = 8)
    assert flex["calls"] == 1 and flex["flops"] == 3 * 128 * 128 * H * PER_PAIR == 3145728


# --------------------------------------------------------------------------- the default analyze path (item 6)


def _llama():
    from examples.minimal_llama import Llama, LlamaConfig

    torch.manual_seed(0)
    return Llama(LlamaConfig(dim=64, layers=2, heads=4, kv_heads=2, ffn=128, vocab=100)).eval()


def test_default_analyze_takes_the_fast_path_when_it_answers_the_same():
    """A Llama with SDPA(is_causal): the fast path's answer is the compiled graphs' (matrix FLOPs, dense and
    causal, per module), so the default runs it and says so.  Hand count: 2 * 8 tokens * 160256 (projections,
    MLP, head per token; tests/test_meter.py) + causal attention 2 layers * 2 batch * 4 heads * 36 pairs * 64
    = 2564096 + 36864 = 2600960."""
    m, x = _llama(), torch.randint(0, 100, (2, 8))
    default = graphmfu.analyze(m, x, device="cpu")
    compiled = graphmfu.analyze(m, x, device="cpu", fast=False)
    assert any(n.startswith("analysis path: fast") for n in default.data["notes"])
    assert any(n.startswith("analysis path: compiled graphs") and "fast=False" in n for n in compiled.data["notes"])
    for key in ("flops", "flops_dense"):
        assert default.totals[key] == compiled.totals[key]
    assert default.totals["flops"] == 2 * 8 * 160256 + 2 * 2 * 4 * 36 * 64 == 2600960
    mods = lambda r: {m["module"]: m["flops"] for m in r.by_module(2)}  # noqa: E731
    assert mods(default) == mods(compiled)


class SoftmaxAttention(nn.Module):
    """Attention written out (matmul, mask, softmax, matmul) with a causal mask built from sizes."""

    def __init__(self):
        super().__init__()
        self.qkv = nn.Linear(H * D, 3 * H * D)

    def forward(self, x):
        b, t, _ = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, H, D).permute(2, 0, 3, 1, 4)
        i = torch.arange(t)
        s = q @ k.transpose(-1, -2) + torch.where(i[:, None] >= i[None, :], 0.0, float("-inf"))
        return (s.softmax(-1) @ v).transpose(1, 2).reshape(b, t, H * D)


def test_default_analyze_traces_the_graphs_where_they_read_a_mask():
    """Written-out attention: the fast run counts the two matmuls dense, the graphs read the causal mask
    (16 tokens: 136 of 256 pairs).  The default takes the graphs and says why."""
    x = torch.randn(1, 16, H * D)
    rep = graphmfu.analyze(SoftmaxAttention(), x, device="cpu")
    note = next(n for n in rep.data["notes"] if n.startswith("analysis path"))
    assert note.startswith("analysis path: compiled graphs") and "softmax" in note
    # qkv 2*16*16*48 = 24576; the two products at 136 pairs x H=2 x 2*D=16 each: 2 * 4352
    assert rep.totals["flops"] == 2 * 16 * (H * D) * (3 * H * D) + 2 * 136 * H * 2 * D == 33280


def test_default_analyze_traces_the_graphs_for_activation_checkpointing():
    from torch.utils.checkpoint import checkpoint

    class Ck(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(64, 64), nn.Linear(64, 64)

        def forward(self, x):
            return checkpoint(lambda y: self.b(torch.relu(self.a(y))), x, use_reentrant=False)

    rep = graphmfu.analyze(Ck(), torch.randn(8, 64, requires_grad=True), training=True, device="cpu")
    assert any(n.startswith("analysis path: compiled graphs") and "checkpointing" in n for n in rep.data["notes"])
    assert rep.totals["flops"] == 6 * 2 * 8 * 64 * 64  # recomputation is not model work


# --------------------------------------------------------------------------- eager attention, padding (item 2)


def _eager_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=128)
    cfg._attn_implementation = "eager"
    torch.manual_seed(0)
    return LlamaForCausalLM(cfg).eval()


# per token: 2 layers x (q, k, v, o: 4 x 64*64; MLP 3 x 64*128) x 2, and the head 2*64*256: 196608
LINEAR_PER_TOKEN = 2 * (4 * 64 * 64 + 3 * 64 * 128) * 2 + 2 * 64 * 256
PER_PAIR_HF = 2 * 16 + 2 * 16  # Q@K^T and P@V per kept pair, head dim 16


def _kept(pads, t=8):
    """Causal with left padding p: query i >= p sees keys p..i: (t-p)(t-p+1)/2 pairs per head."""
    return sum((t - p) * (t - p + 1) // 2 for p in pads)


@pytest.mark.parametrize("pads", [(3,), (6,), (3, 6)])
def test_eager_attention_with_padding_is_counted_per_call(fresh, pads):
    """transformers' eager attention (matmul, + mask, softmax, matmul) with left padding: the padding mask is
    an input, so the graph alone gives the causal bound (36 pairs per head); per call the real mask keeps
    (8-p)(9-p)/2: 15 for p=3, 3 for p=6, in the meter and under profile()."""
    m = _eager_llama()
    b, t = len(pads), 8
    ids = torch.randint(0, 256, (b, t))
    am = torch.ones(b, t, dtype=torch.long)
    for row, p in enumerate(pads):
        am[row, :p] = 0
    attention = 2 * 4 * _kept(pads) * PER_PAIR_HF  # 2 layers x 4 heads
    hand = b * t * LINEAR_PER_TOKEN + attention
    assert _kept((3,)) == 15 and _kept((6,)) == 3
    cm = torch.compile(m, backend=graphmfu.backend)
    meter = graphmfu.meter()
    with torch.no_grad():
        cm(input_ids=ids, attention_mask=am)
        with meter.step(tokens=b * t):
            cm(input_ids=ids, attention_mask=am)
        with graphmfu.profile() as p, graphmfu.stage("forward"):
            cm(input_ids=ids, attention_mask=am)
    row, = meter.records
    assert row["flops"] == hand
    assert row["attention_flops"] == attention  # was 0: eager attention is attention too
    assert row["attention_flops_dense"] == 2 * 4 * b * 64 * PER_PAIR_HF
    st = {s["name"]: s for s in p.report().stages}["forward"]
    assert st["flops"] == hand
    rep = graphmfu.report()
    exp_nodes = [n for n in rep.nodes if "decomposed_attention" in n.get("flags", ())]
    assert exp_nodes and all("counted dense" not in n["note"] and "counted per call" in n["note"] for n in exp_nodes)
