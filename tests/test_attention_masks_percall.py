"""Input-dependent attention masks counted per call (issue 10 part 2): a padding mask built in the graph
from an input ``attention_mask`` is data to analyze() (counted dense, flagged, the note names the mask),
and under graphmfu.profile() each call is counted from its real mask (rules/masks.py ``Probes``:
the kept pairs travel with the call as the symbol ``pairs_<mask node>``)."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import graphmfu

pytestmark = pytest.mark.filterwarnings("ignore")

B, T, H, D = 2, 16, 2, 8  # batch, tokens, heads, head dim
PER_PAIR = 2 * D + 2 * D  # Q@K^T 2*D + P@V 2*D matrix FLOPs per kept (query, key) pair and head


class Encoder(nn.Module):
    """One BERT-like self-attention layer: the padding mask (B, T) of 1/0 becomes the additive mask
    ``(1 - m) * finfo.min`` of shape (B, 1, 1, T): every query sees the real keys of its sequence."""

    def __init__(self):
        super().__init__()
        self.qkv = nn.Linear(H * D, 3 * H * D)

    def forward(self, x, attention_mask):
        b, t, _ = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, H, D).permute(2, 0, 3, 1, 4)
        bias = (1.0 - attention_mask[:, None, None, :].to(x.dtype)) * torch.finfo(x.dtype).min
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias).transpose(1, 2).reshape(b, t, H * D)


def padding(lengths):
    m = torch.zeros(B, T, dtype=torch.long)
    for i, n in enumerate(lengths):
        m[i, :n] = 1
    return m


def hand(lengths):
    # every query row (T of them, padded rows included) sees the n real keys of its sequence, per head
    return H * sum(T * n for n in lengths) * PER_PAIR


CALLS = [(16, 10), (7, 3)]  # real tokens of the two sequences, per call
DENSE = H * B * T * T * PER_PAIR  # 2*2*16*16*32 = 32768


def _sdpa(rows):
    return [n for n in rows if "scaled_dot_product" in n["op"]]


def test_analyze_counts_input_mask_dense_and_names_it():
    torch.manual_seed(0)
    model = Encoder().eval()
    x = torch.randn(B, T, H * D)
    rep = graphmfu.analyze(model, x, padding(CALLS[0]), device="cpu")
    node, = _sdpa(rep.nodes)
    assert node["flops"] == node["flops_dense"] == DENSE == 32768
    assert "mask_inputs" in node["flags"]
    assert "counted per call from the real mask" in node["note"] and "symbol pairs_" in node["note"]
    assert rep.coverage()["mask_inputs"] == 1
    # the kept pairs are a symbol of the node's cost; its hint (no values) is dense: 2*2*16*16 = 1024
    graph, = rep.data["graphs"]
    (sym, hint), = graph["hints"].items()
    assert sym.startswith("pairs_") and hint == B * H * T * T == 1024
    assert node["symbolic"]["flops"] == f"{PER_PAIR}*{sym}"


def test_profile_counts_each_call_from_its_real_mask(fresh):
    torch.manual_seed(0)
    model = Encoder().eval()
    cm = torch.compile(model, backend=graphmfu.backend)
    x = torch.randn(B, T, H * D)
    masks = [padding(c) for c in CALLS]
    with torch.no_grad():
        cm(x, masks[0])  # compile outside the profile
        with graphmfu.profile() as p, graphmfu.stage("s"):
            for m in masks:
                cm(x, m)
    rep = p.report()
    # call 1: 2 heads * (16*16 + 16*10) = 832 pairs -> 832*32 = 26624;
    # call 2: 2 heads * (16*7 + 16*3) = 320 pairs -> 320*32 = 10240
    assert [hand(c) for c in CALLS] == [26624, 10240]
    sdpa = [k for k in rep.kernels if k["name"].startswith("torch.ops.aten._scaled_dot_product")]
    assert len(sdpa) == 1 and sdpa[0]["calls"] == 2
    assert sdpa[0]["flops"] == 26624 + 10240 == 36864
    kept = sorted(next(v for k, v in s.items() if k.startswith("pairs_")) for s in sdpa[0]["sizes"])
    assert kept == [320, 832]  # the kept pairs over batch and heads, per call
    linears = 2 * (2 * B * T * (H * D) * (3 * H * D))  # the qkv projection, 2 calls: 2 * 2*32*16*48 = 98304
    assert rep.stages[0]["flops"] == 36864 + linears == 135168
    # every kernel inside the graph calls is joined (the probes' own small ops run just before each call,
    # inside a graphmfu::probe range, outside the graph)
    assert all(u["where"] != "inside graph" for u in rep.coverage()["unattributed_kernels"])
    # static numbers (no call values) stay at the count without values: dense
    assert _sdpa(rep.nodes)[0]["flops"] == DENSE
    assert math.isclose(rep.totals["flops_dense"] - rep.totals["flops"], 0)


class Causal(nn.Module):
    """A causal mask built in the graph from sizes (arange, comparison, where), compiled dynamic."""

    def __init__(self):
        super().__init__()
        self.qkv = nn.Linear(H * D, 3 * H * D)

    def forward(self, x):
        b, t, _ = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, H, D).permute(2, 0, 3, 1, 4)
        i = torch.arange(t)
        mask = torch.where(i[None, :] <= i[:, None], 0.0, float("-inf"))
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask).transpose(1, 2).reshape(b, t, H * D)


def test_dynamic_graph_counts_a_size_mask_at_each_calls_size(fresh):
    torch.manual_seed(0)
    cm = torch.compile(Causal().eval(), backend=graphmfu.backend, dynamic=True)
    xs = [torch.randn(1, t, H * D) for t in (8, 24, 40)]
    with torch.no_grad():
        cm(xs[0])
        with graphmfu.profile() as p:
            for x in xs:
                cm(x)
    rep = p.report()
    sdpa, = [k for k in rep.kernels if k["name"].startswith("torch.ops.aten._scaled_dot_product")]
    # causal: T(T+1)/2 pairs per head: 36 + 300 + 820 = 1156, x 2 heads x 32 FLOPs = 73984
    assert sdpa["calls"] == 3 and sdpa["flops"] == (36 + 300 + 820) * H * PER_PAIR == 73984


# --------------------------------------------------------------------------- varlen (cu_seqlens)


def _rules():
    from graphmfu.cost import ensure_builtin_rules

    ensure_builtin_rules()
    import sys

    return sys.modules["graphmfu.rules.attention"]


def test_varlen_pairs_by_hand():
    att = _rules()
    cu = [0, 3, 8, 12]  # sequences of 3, 5, 4 tokens
    assert att.varlen_pairs(cu, cu) == 9 + 25 + 16 == 50
    assert att.varlen_pairs(cu, cu, causal=True) == 6 + 15 + 10 == 31  # L(L+1)/2 each
    # flash, causal, left window 1: each query sees itself and one key before: 2L - 1 per sequence
    assert att.varlen_pairs(cu, cu, causal=True, window_left=1) == 5 + 9 + 7 == 21
    # decode-like: 1 query per sequence against 3, 5, 4 keys, causal bottom-right: sees every key
    assert att.varlen_pairs([0, 1, 2, 3], cu, causal=True) == 3 + 5 + 4 == 12
    # mem-efficient top-left causal, Lq = 2 < Lk: rows see 1, 2 keys
    assert att.varlen_pairs([0, 2], [0, 5], causal="top_left", flash=False) == 3
    # the same counts from offsets left as tensors (no read-back: the probes' device path)
    t = torch.tensor(cu)
    assert int(att.varlen_pairs(t, t)) == 50 and int(att.varlen_pairs(t, t, causal=True)) == 31
    assert int(att.varlen_pairs(torch.tensor([0, 1, 2, 3]), t, causal=True)) == 12
    assert int(att.varlen_pairs(torch.tensor([0, 2]), torch.tensor([0, 5]), causal="top_left", flash=False)) == 3
    # Lq > Lk: top-left: rows 0..2 see 1, 2, 3 keys, rows 3..4 all 3: 6 + 6 = 12; bottom-right: 3*4/2 = 6
    assert att.varlen_pairs([0, 5], [0, 3], causal="top_left", flash=False) == 12
    assert int(att.varlen_pairs(torch.tensor([0, 5]), torch.tensor([0, 3]), causal="top_left", flash=False)) == 12
    assert att.varlen_pairs([0, 5], [0, 3], causal=True) == int(att.varlen_pairs(torch.tensor([0, 5]),
                                                                                  torch.tensor([0, 3]), causal=True)) == 6


def test_varlen_flash_counts_each_call_from_its_offsets():
    """A graph with aten._flash_attention_forward on packed sequences (traced on fake tensors: no CPU
    kernel is needed): without values it is counted as one packed sequence and flagged; the probe
    counts a call's real cu_seqlens."""
    from torch.fx.experimental.proxy_tensor import make_fx

    from graphmfu.capture import probes_of
    from graphmfu.nodes import records_from_graph

    _rules()
    heads, d, total = 2, 16, 12

    def f(q, k, v, cq, ck):
        return torch.ops.aten._flash_attention_forward(q, k, v, cq, ck, 8, 8, 0.0, True, False)[0]

    q, k, v = (torch.randn(total, heads, d, dtype=torch.float16) for _ in range(3))
    cu = torch.tensor([0, 3, 8, 12], dtype=torch.int32)
    gm = make_fx(f, tracing_mode="fake")(q, k, v, cu, cu.clone())
    rec, = [r for r in records_from_graph(gm, 0, "inference") if "flash" in r.op]
    assert "varlen_lengths" in rec.flags and "symbol pairs_" in rec.note
    # without values: one causal sequence of 12: 78 pairs x 2 heads x (2*16 + 2*16) = 9984
    assert rec.cost.flops == 78 * heads * 64 == 9984
    (name, hint, probe), = probes_of(gm)
    assert hint == 78 * heads
    inputs = [q, k, v, cu, cu.clone()]
    # causal per sequence: 6 + 15 + 10 = 31 pairs, x 2 heads = 62
    assert int(probe(inputs)) == 62
    from graphmfu.cost import cost_from_formulas

    assert cost_from_formulas(rec.sym, {name: 62}).flops == 62 * 64 == 3968
    one = torch.tensor([0, 12], dtype=torch.int32)  # one sequence of 12: the packed count again
    assert int(probe([q, k, v, one, one.clone()])) == 78 * heads


# --------------------------------------------------------------------------- flex_attention block masks


class Meter:
    """The CallTagger's meter interface: the values each graph call carries."""

    def __init__(self):
        self.calls = []

    def call_begin(self, key, values):
        self.calls.append((key, values))
        return len(self.calls)

    def call_end(self, token):
        pass


def test_flex_attention_counts_the_blocks_it_runs(fresh):
    """flex_attention on CPU: without values dense (flagged, noted with the block size); per call the
    probe counts the partial and full blocks of the real BlockMask.  (The CPU flex template shows in the
    profiler as ``graph_0_kernel``, not under its Inductor kernel name, so the check reads the values a
    call carries through the CallTagger's meter interface and costs the kernel with them.)"""
    fa = pytest.importorskip("torch.nn.attention.flex_attention")

    def causal(b, h, q, kv):
        return q >= kv

    t = 256  # two 128-blocks per side
    bm = fa.create_block_mask(causal, 1, H, t, t, device="cpu")
    q, k, v = (torch.randn(1, H, t, D) for _ in range(3))
    f = torch.compile(lambda q, k, v, bm: fa.flex_attention(q, k, v, block_mask=bm), backend=graphmfu.backend)
    registry = graphmfu.registry.DEFAULT
    meter = Meter()
    with torch.no_grad():
        f(q, k, v, bm)
        registry.tagger.attach(meter)
        try:
            f(q, k, v, bm)
        finally:
            registry.tagger.detach(meter)
    rep = graphmfu.report()
    flex, = [n for n in rep.nodes if "flex_attention" in n["op"]]
    assert "flex_attention" in flex["flags"] and "128x128 blocks" in flex["note"]
    assert flex["flops"] == H * t * t * PER_PAIR == 4194304  # no values: dense, 2*256*256*32
    (key, values), = meter.calls
    graph, = registry.graphs
    # causal at 128-blocks: per head, q-block 0 runs 1 partial block, q-block 1 one partial + one full: 3 blocks
    # x 128*128 = 49152 pairs (exact causal: 32896), x 2 heads = 98304
    values = {k: int(v) for k, v in values.items()}  # the meter gets the count as the probe left it (a tensor)
    assert key == graph.key and values == {"pairs_flex_attention": 3 * 128 * 128 * H} == {"pairs_flex_attention": 98304}
    got = sum(kr.cost_at(values).flops for kr in graph.kernels)
    assert got == 98304 * PER_PAIR == 3145728


def test_small_graph_constants_are_read():
    """torch 2.11 lifts ``torch.tensor(-inf)`` into a graph constant (get_attr): an all-equal constant is
    its one value, so a causal mask built with it is counted exactly (16 tokens: 16*17/2 = 136 pairs)."""
    from torch.fx.experimental.proxy_tensor import make_fx

    from graphmfu.nodes import records_from_graph

    _rules()

    def f(q, k, v):
        i = torch.arange(16)
        m = torch.where(i[None, :] <= i[:, None], torch.tensor(0.0), torch.tensor(float("-inf")))
        return F.scaled_dot_product_attention(q, k, v, attn_mask=m)

    q = torch.randn(1, 1, 16, 8)
    gm = make_fx(f, tracing_mode="fake")(q, q, q)
    assert any(n.op == "get_attr" for n in gm.graph.nodes)
    rec, = [r for r in records_from_graph(gm, 0, "inference") if "attention" in r.op]
    assert not rec.flags and rec.cost.flops == 136 * (2 * 8 + 2 * 8) == 4352  # 1 head: 136 pairs x 32
