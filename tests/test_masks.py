"""Attention with an explicit ``attn_mask`` built in the graph (issue 10): rules/masks.py counts the
(query, key) pairs the mask keeps, exactly, without a Tq x Tk tensor; masks it cannot know are
flagged.

Every expected count is written out by hand with its arithmetic, and cross-checked by building the
same mask eagerly (real tensors, small T) and counting its True entries.  Attention FLOPs of one
forward node: pairs x B x H x (2*D + 2*Dv); here B = 1, H = 2, D = Dv = 16: 128 per pair.
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import graphmfu  # noqa: E402
from graphmfu.cost import ensure_builtin_rules  # noqa: E402

ensure_builtin_rules()
masks = sys.modules["graphmfu.rules.masks"]

PER_PAIR = 2 * (2 * 16 + 2 * 16)  # H = 2 heads x (2*D + 2*Dv), D = Dv = 16
NEG = float("-inf")


class MaskedAttention(nn.Module):
    """One attention layer whose mask ``fn(qi, kj)`` is built in the graph from index tensors:
    ``qi`` [Tq, 1] the query positions (offset by Tk - Tq, as a KV cache places them), ``kj``
    [1, Tk] the key positions.  ``form`` turns the bool mask into what SDPA gets."""

    def __init__(self, fn, form="bool", tq=None, batch_expand=False):
        super().__init__()
        self.fn, self.form, self.tq, self.batch_expand = fn, form, tq, batch_expand
        self.q = nn.Linear(32, 32)
        self.kv = nn.Linear(32, 64)

    def mask(self, tq, tk, device):
        qi = (torch.arange(tq, device=device) + (tk - tq))[:, None]
        kj = torch.arange(tk, device=device)[None, :]
        m = self.fn(qi, kj)
        if self.batch_expand:  # HF: [B, 1, Tq, Tk] expanded from [1, 1, Tq, Tk]
            m = m[None, None].expand(2, -1, tq, tk)
        if self.form == "bool":
            return m
        if self.form == "where":  # what SDPA itself and HF's sdpa path do with a bool mask
            return torch.where(m, 0.0, NEG)
        if self.form == "masked_fill":
            return torch.zeros(m.shape, device=device).masked_fill(~m, torch.finfo(torch.float32).min)
        if self.form == "legacy":  # old HF: (1 - mask) * -10000
            return (1.0 - m.float()) * -10000.0
        raise ValueError(self.form)

    def forward(self, x):
        b, tk, _ = x.shape
        tq = self.tq or tk
        q = self.q(x[:, tk - tq:]).view(b, tq, 2, 16).transpose(1, 2)
        k, v = self.kv(x).view(b, tk, 2, 2, 16).permute(2, 0, 3, 1, 4)
        if self.batch_expand:
            q, k, v = (t.expand(2, -1, -1, -1) for t in (q, k, v))
        return F.scaled_dot_product_attention(q, k, v, attn_mask=self.mask(tq, tk, x.device))


def sdpa_nodes(report, phase=None):
    return [n for g in report.record.graphs for n in g.nodes
            if "scaled_dot_product" in n.op and (phase is None or g.phase == phase)]


def eager_pairs(fn, tq, tk):
    qi = (torch.arange(tq) + (tk - tq))[:, None]
    kj = torch.arange(tk)[None, :]
    return int(fn(qi, kj).expand(tq, tk).sum())


def analyse(model, tk=32, training=False):
    return graphmfu.analyze(model, torch.randn(1, tk, 32, requires_grad=training), training=training)


# name: (mask fn, Tq, Tk, hand count of kept pairs with its arithmetic)
CASES = {
    # 32*33/2
    "causal": (lambda q, k: k <= q, 32, 32, 528),
    # HF sliding_window_causal (window 8): rows 0..7 keep i+1 keys (1+...+8 = 36), rows 8..31 keep 8: 24*8 = 192
    "sliding_window": (lambda q, k: (k <= q) & (k > q - 8), 32, 32, 36 + 192),
    # |i - j| <= 3: 32 rows x 7 = 224, minus what falls off both edges: 2*(3+2+1) = 12
    "band_both_sides": (lambda q, k: (q - k).abs() <= 3, 32, 32, 224 - 12),
    # Gemma3's bidirectional window: |i - j| < 4, the same band
    "band_exclusive": (lambda q, k: (q - k).abs() < 4, 32, 32, 224 - 12),
    # window on the right side only: j in [i, i+3]: 32*4 = 128 minus (1+2+3) at the end
    "window_ahead": (lambda q, k: (k >= q) & (k - q <= 3), 32, 32, 128 - 6),
    # chunked (Llama 4 local, chunk 8) & causal: 4 chunks x 8*9/2 = 4*36
    "chunked": (lambda q, k: (k // 8 == q // 8) & (k <= q), 32, 32, 4 * 36),
    # the same through remainder: keys from the chunk start i - i % 8 up to i
    "chunked_remainder": (lambda q, k: (k >= q - q % 8) & (k <= q), 32, 32, 4 * 36),
    # HF chunked_overlay with a left padding of 3: (j-3)//8 == (i-3)//8 & causal. Chunks of i-3:
    # i in 0..2 -> chunk -1 (rows keep 1,2,3 = 6), then 3 full chunks of 8 (3*36 = 108), i in 27..31 ->
    # chunk 3 (1+...+5 = 15)
    "chunked_left_pad": (lambda q, k: ((k - 3) // 8 == (q - 3) // 8) & (k <= q), 32, 32, 6 + 108 + 15),
    # prefix-LM, prefix 5: causal 528 plus keys j in (i, 4] for rows 0..3: 4+3+2+1 = 10
    "prefix_lm": (lambda q, k: (k <= q) | (k < 5), 32, 32, 528 + 10),
    # everything but the diagonal: 32*32 - 32
    "not_diagonal": (lambda q, k: k != q, 32, 32, 1024 - 32),
    # ~(j > i) is causal: 528
    "negated": (lambda q, k: ~(k > q), 32, 32, 528),
    # causal xor (j < 2): causal 528; rows keep j<2 ones removed (row 0: j=0 -> 1, rows >= 1: 2 -> 1+2*31=63),
    # rows 0 gains j=1 (1): 528 - 63 + 1
    "xor": (lambda q, k: (k <= q) ^ (k < 2), 32, 32, 528 - 63 + 1),
    # decode with a KV cache: 8 queries at positions 24..31 over 32 keys, causal: sum (25..32) = 8*25 + 28
    "decode_causal": (lambda q, k: k <= q, 8, 32, 8 * 25 + 28),
    # the same with window 8: every query keeps 8 keys
    "decode_window": (lambda q, k: (k <= q) & (k > q - 8), 8, 32, 8 * 8),
    # a key-only mask (keys 0..19 visible to every query): 32*20
    "key_prefix_only": (lambda q, k: (k < 20) & (q >= 0), 32, 32, 32 * 20),
    # nothing kept at all
    "empty": (lambda q, k: (k < 0) & (q >= 0), 32, 32, 0),
}


@pytest.mark.parametrize("name", list(CASES))
def test_mask_built_in_graph_counted_exactly(name):
    fn, tq, tk, hand = CASES[name]
    assert eager_pairs(fn, tq, tk) == hand  # the hand count, checked on the materialised mask
    (node,) = sdpa_nodes(analyse(MaskedAttention(fn, tq=tq), tk=tk))
    assert node.cost.flops == hand * PER_PAIR, name
    assert node.cost.flops_dense == tq * tk * PER_PAIR
    assert not node.flags, node.note


@pytest.mark.parametrize("form", ["where", "masked_fill", "legacy"])
def test_additive_masks(form):
    fn, tq, tk, hand = CASES["sliding_window"]
    (node,) = sdpa_nodes(analyse(MaskedAttention(fn, form=form)))
    assert node.cost.flops == 228 * PER_PAIR  # 36 + 192 (sliding_window above)
    assert not node.flags


def test_batch_and_head_broadcast_mask():
    # [2, 1, 32, 32] expanded from [1, 1, 32, 32]; B = 2: per pair 2 * 128
    fn = CASES["causal"][0]
    (node,) = sdpa_nodes(analyse(MaskedAttention(fn, form="where", batch_expand=True)))
    assert node.cost.flops == 528 * 2 * PER_PAIR
    assert node.cost.flops_dense == 1024 * 2 * PER_PAIR


def test_vector_flops_follow_the_kept_pairs():
    # forward vector FLOPs: 5 per kept score per (batch, head) + 1 per output element (1*2*32*16 = 1024)
    (node,) = sdpa_nodes(analyse(MaskedAttention(CASES["causal"][0])))
    assert node.cost.vector_flops == 5 * 2 * 528 + 1024


def test_training_backward_reads_the_mask_saved_by_the_forward():
    # the backward graph gets the mask as a saved forward output: counted from the forward's mask
    rep = analyse(MaskedAttention(CASES["sliding_window"][0], form="where"), training=True)
    (fwd,) = sdpa_nodes(rep, "forward")
    (bwd,) = sdpa_nodes(rep, "backward")
    assert fwd.cost.flops == 228 * PER_PAIR
    assert bwd.cost.flops == 2 * 228 * PER_PAIR  # backward = 2x forward
    assert bwd.cost.flops_dense == 2 * 1024 * PER_PAIR
    assert not fwd.flags and not bwd.flags


def test_compiled_backend_counts_the_same(fresh):
    model = MaskedAttention(CASES["chunked"][0], form="where")
    x = torch.randn(1, 32, 32, requires_grad=True)
    torch.compile(model, backend=graphmfu.backend)(x).sum().backward()
    rep = graphmfu.report()
    (fwd,) = sdpa_nodes(rep, "forward")
    (bwd,) = sdpa_nodes(rep, "backward")
    assert fwd.cost.flops == 144 * PER_PAIR  # chunked: 4 * 36
    assert bwd.cost.flops == 2 * 144 * PER_PAIR
    assert not fwd.flags and not bwd.flags


def test_dynamic_shapes_counted_at_the_compile_time_sizes(fresh):
    model = MaskedAttention(CASES["sliding_window"][0])
    compiled = torch.compile(model, backend=graphmfu.backend)
    with torch.no_grad():
        for t in (32, 40):  # the second size recompiles with a symbolic T
            compiled(torch.randn(1, t, 32))
    rep = graphmfu.report()
    flops = sorted(n.cost.flops for n in sdpa_nodes(rep))
    # T = 32: 228 pairs; T = 40: 36 + (40 - 8) * 8 = 36 + 256 = 292
    assert flops == [228 * PER_PAIR, 292 * PER_PAIR]


# --------------------------------------------------------------------------- what cannot be known


class InputMask(nn.Module):
    """A padding mask from an input (``attention_mask`` [B, Tk] of 0/1), optionally & causal."""

    def __init__(self, causal: bool):
        super().__init__()
        self.causal = causal
        self.q = nn.Linear(32, 32)

    def forward(self, x, attention_mask):
        b, t, _ = x.shape
        q = self.q(x).view(b, t, 2, 16).transpose(1, 2)
        m = attention_mask.bool()[:, None, None, :]
        if self.causal:
            i = torch.arange(t, device=x.device)
            m = m & (i[None, :] <= i[:, None])
        return F.scaled_dot_product_attention(q, q, q, attn_mask=torch.where(m, 0.0, NEG))


def test_padding_mask_from_inputs_is_flagged_and_counted_dense():
    rep = graphmfu.analyze(InputMask(causal=False), torch.randn(1, 32, 32), torch.ones(1, 32, dtype=torch.long))
    (node,) = sdpa_nodes(rep)
    assert node.flags == ["mask_inputs"]
    assert node.cost.flops == node.cost.flops_dense == 1024 * PER_PAIR
    assert "mask depends on inputs: counted dense" in node.note
    cov = rep.data["coverage"]
    assert cov["mask_inputs"] == 1
    assert any("depends on inputs" in n for n in rep.data["notes"])


def test_causal_and_padding_counted_as_the_causal_part_and_flagged():
    rep = graphmfu.analyze(InputMask(causal=True), torch.randn(1, 32, 32), torch.ones(1, 32, dtype=torch.long))
    (node,) = sdpa_nodes(rep)
    assert node.flags == ["mask_upper_bound"]
    assert node.cost.flops == 528 * PER_PAIR  # the causal part, 32*33/2: exact when nothing is padded
    assert node.cost.flops_dense == 1024 * PER_PAIR


def test_mask_passed_as_an_argument_is_flagged():
    def fn(q, mask):
        return F.scaled_dot_product_attention(q, q, q, attn_mask=mask)

    rep = graphmfu.analyze(fn, torch.randn(1, 2, 32, 16), torch.ones(32, 32, dtype=torch.bool))
    (node,) = sdpa_nodes(rep)
    assert node.flags == ["mask_inputs"]
    assert node.cost.flops == node.cost.flops_dense


def test_unreadable_mask_is_flagged_never_silent():
    model = MaskedAttention(lambda q, k: torch.rand(q.shape[0], k.shape[1], device=q.device) > 0.5)
    (node,) = sdpa_nodes(analyse(model))
    assert node.flags == ["mask_unrecognised"]
    assert node.cost.flops == node.cost.flops_dense
    assert "rand" in node.note


def test_a_read_mask_and_an_unread_part_give_a_flagged_upper_bound():
    model = MaskedAttention(lambda q, k: (k <= q) & (torch.rand(q.shape[0], k.shape[1], device=q.device) > 0.5))
    (node,) = sdpa_nodes(analyse(model))
    assert node.flags == ["mask_upper_bound"]
    assert node.cost.flops == 528 * PER_PAIR


# --------------------------------------------------------------------------- the counter itself


def _formula(fn, tq, tk):
    """The formula the pass builds for mask ``fn`` (captured from an analysis)."""
    got = []
    orig = masks.count_kept

    def keep(formula, q, k):
        got.append(formula)
        return orig(formula, q, k)

    masks.count_kept = keep
    try:
        analyse(MaskedAttention(fn, tq=tq), tk=tk)
    finally:
        masks.count_kept = orig
    return got[0]


@pytest.mark.parametrize("name", ["causal", "sliding_window", "chunked_left_pad", "prefix_lm", "band_both_sides"])
@pytest.mark.parametrize("tq,tk", [(1, 1), (1, 17), (7, 7), (5, 23), (23, 23)])
def test_counter_matches_the_materialised_mask(name, tq, tk):
    fn = CASES[name][0]
    formula = _formula(fn, tq, tk)  # built in the graph at these sizes (queries at the end of the keys)
    assert masks.count_kept(formula, tq, tk).pairs == eager_pairs(fn, tq, tk)


def test_counter_at_long_sequences_is_cheap():
    formula = _formula(CASES["prefix_lm"][0], 32, 32)
    t = 131072
    t0 = time.perf_counter()
    got = masks.count_kept(formula, t, t).pairs
    assert time.perf_counter() - t0 < 1.0
    assert got == t * (t + 1) // 2 + 10  # causal + the prefix's 4+3+2+1 keys above the diagonal


def test_pairs_from_tensor():
    m = torch.ones(32, 32, dtype=torch.bool).tril()
    assert masks.pairs_from_tensor(m, 32, 32, rows=5) == 528
    add = torch.where(m, 0.0, NEG)[None, None].expand(2, 3, 32, 32)
    assert masks.pairs_from_tensor(add, 32, 32, rows=7) == 528  # per (batch, head)
    assert masks.pairs_from_tensor(torch.ones(1, 32, dtype=torch.bool), 32, 32) == 1024  # broadcast rows


# --------------------------------------------------------------------------- Hugging Face models

def _hf():
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    return pytest.importorskip("transformers")


COMMON = dict(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=256, attn_implementation="sdpa")
HF_PER_PAIR = 4 * (2 * 16 + 2 * 16)  # 4 query heads (GQA counts query heads) x (2*16 + 2*16), head_dim 64/4


def _hf_attention(model, t=64, **kw):
    model.eval()
    ids = torch.randint(0, 128, (1, t))
    return sdpa_nodes(graphmfu.analyze(model, ids, **kw))


def test_hf_llama_causal():
    tf = _hf()
    torch.manual_seed(0)
    model = tf.LlamaForCausalLM(tf.LlamaConfig(**COMMON))
    # no attention_mask: HF skips the mask and calls SDPA with is_causal (the rule's count)
    nodes = _hf_attention(model)
    # T = 64: 64*65/2 = 2080 pairs per layer
    assert [n.cost.flops for n in nodes] == [2080 * HF_PER_PAIR] * 2
    # an all-ones attention_mask: HF builds causal & padding in the graph; the causal part is counted,
    # the padding part (an input) flagged
    nodes = _hf_attention(model, attention_mask=torch.ones(1, 64, dtype=torch.long))
    assert [n.cost.flops for n in nodes] == [2080 * HF_PER_PAIR] * 2
    assert all(n.flags == ["mask_upper_bound"] for n in nodes)
    assert all(n.cost.flops_dense == 64 * 64 * HF_PER_PAIR for n in nodes)


def test_hf_mistral_sliding_window():
    tf = _hf()
    model = tf.MistralForCausalLM(tf.MistralConfig(sliding_window=16, **COMMON))
    nodes = _hf_attention(model)
    # window 16 (HF: kv > q - 16 & kv <= q): rows 0..15 keep 1..16 keys (16*17/2 = 136), rows 16..63 keep 16
    # (48*16 = 768): 904 pairs per layer
    assert [n.cost.flops for n in nodes] == [904 * HF_PER_PAIR] * 2
    assert all(not n.flags for n in nodes)


def test_hf_gemma3_local_and_global_layers():
    tf = _hf()
    cfg = tf.Gemma3TextConfig(sliding_window=16, head_dim=16, layer_types=["sliding_attention", "full_attention"],
                              **COMMON)
    nodes = _hf_attention(tf.Gemma3ForCausalLM(cfg))
    # local layer: the window above, 904 pairs (a mask in the graph); global layer: causal, 2080 (is_causal)
    assert [n.cost.flops for n in nodes] == [904 * HF_PER_PAIR, 2080 * HF_PER_PAIR]
    assert all(not n.flags for n in nodes)


def test_hf_bert_padding_mask_is_flagged():
    tf = _hf()
    cfg = tf.BertConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                        num_attention_heads=4, attn_implementation="sdpa")
    mask = torch.ones(1, 64, dtype=torch.long)
    (node,) = _hf_attention(tf.BertModel(cfg), attention_mask=mask)
    assert node.flags == ["mask_inputs"]
    assert node.cost.flops == node.cost.flops_dense == 64 * 64 * HF_PER_PAIR


# --------------------------------------------------------------------------- random masks against brute force


def _random_mask(rng):
    """A random mask function of (q, k) from the ops the pass reads."""
    import operator

    def index():
        a, b, c = rng.choice([-2, -1, 0, 1, 1, 2]), rng.choice([-1, 0, 1, 1, 3]), rng.randint(-9, 9)
        kind = rng.choice(["lin", "lin", "floordiv", "remainder", "abs"])
        if kind == "lin":
            return lambda q, k: a * q + b * k + c
        if kind == "floordiv":
            d = rng.randint(1, 7)
            return lambda q, k: (a * q + b * k + c) // d
        if kind == "remainder":
            d = rng.randint(1, 7)
            return lambda q, k: q - (q + c) % d + b * k
        return lambda q, k: (a * q + b * k + c).abs()

    def compare():
        x, y = index(), index()
        op = rng.choice([operator.lt, operator.le, operator.gt, operator.ge, operator.eq, operator.ne])
        return lambda q, k: op(x(q, k), y(q, k))

    def formula(depth):
        if depth == 0 or rng.random() < 0.3:
            return compare()
        f, g = formula(depth - 1), formula(depth - 1)
        how = rng.choice(["and", "or", "xor", "not"])
        if how == "and":
            return lambda q, k: f(q, k) & g(q, k)
        if how == "or":
            return lambda q, k: f(q, k) | g(q, k)
        if how == "xor":
            return lambda q, k: f(q, k) ^ g(q, k)
        return lambda q, k: ~f(q, k)

    return formula(3)


@pytest.mark.parametrize("seed", range(24))
def test_random_masks_match_brute_force(seed):
    import random

    rng = random.Random(seed)
    fn = _random_mask(rng)
    tk = rng.randint(1, 40)
    tq = rng.randint(1, tk)
    (node,) = sdpa_nodes(analyse(MaskedAttention(fn, tq=tq, form=rng.choice(["bool", "where"])), tk=tk))
    truth = eager_pairs(fn, tq, tk) * PER_PAIR
    if node.flags:  # a comparison it cannot solve (several functions of the key): an upper bound, flagged
        assert node.flags in (["mask_unrecognised"], ["mask_upper_bound"])
        assert truth <= node.cost.flops <= node.cost.flops_dense
        assert (node.flags == ["mask_unrecognised"]) == (node.cost.flops == node.cost.flops_dense)
        return
    assert node.cost.flops == truth


def test_eager_recorder_counts_a_real_mask_and_both_compare_sides_agree():
    """The eager side sees the mask's values at dispatch time: its kept pairs are counted (cost.OpInfo.values),
    so compare's eager and compiled FLOPs agree on a masked attention."""
    import torch.nn.functional as F

    class A(nn.Module):
        def __init__(self):
            super().__init__()
            self.q = nn.Linear(32, 32)

        def forward(self, x):
            t = x.shape[1]
            mask = torch.arange(t)[:, None] >= torch.arange(t)[None, :]
            q = self.q(x).view(1, t, 4, 8).transpose(1, 2)
            return F.scaled_dot_product_attention(q, q, q, attn_mask=mask)

    cmp = graphmfu.compare(A(), torch.randn(1, 16, 32), warmup=1, iters=1)
    s = cmp.stages[0]
    # q projection 2*16*32*32 = 32768; causal pairs 16*17/2 = 136 per head, 4 heads, QK^T and PV: 2*2*136*8*4 = 17408
    assert s["eager"]["flops"] == s["compiled"]["flops"] == 32768 + 17408 and s["flops_match"]


def test_mask_read_through_prepare_softmax_online():
    """Inductor on CUDA rewrites softmax into prims.prepare_softmax_online (max, sum of exp): the mask
    reader takes its item 0 as the row maximum.  Causal 16 x 16: 136 of 256 pairs kept; each product
    2 * (2*4) * 16*16*16 dense = 65536, effective 65536 * 136/256 = 34816."""
    P = torch.ops.prims.prepare_softmax_online

    def attn(q, k, v):
        t = q.shape[-2]
        i = torch.arange(t)
        s = q @ k.transpose(-1, -2) * 0.25 + torch.where(i[:, None] >= i[None, :], 0.0, float("-inf"))
        m, z = P(s, -1)
        return ((s - m).exp() / z) @ v

    q = torch.randn(2, 4, 16, 16)
    rep = graphmfu.analyze(attn, q, q, q, device="cpu")
    bmms = [n for n in rep.nodes if "bmm" in n["op"]]
    assert len(bmms) == 2 and all(n["flops"] == 34_816 for n in bmms), [(n["op"], n["flops"]) for n in bmms]
    assert 2 * 8 * 16 * 16 * 16 * 136 // 256 == 34_816
