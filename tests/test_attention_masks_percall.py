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
    assert rep.coverage()["time_attributed"] >= 0.99
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
