"""Mask subgraphs evaluated with NumPy (rules/host_eval.py), the meter's per-call mask counts: each mask
family below is traced to ATen (make_fx, as the graphs the probes cut out of) and evaluated by NumPy and
by torch on the same random inputs: the masks must be equal element by element and the kept counts
equal to a count written out by hand."""
from __future__ import annotations

import sys

import pytest
import torch
from torch.fx.experimental.proxy_tensor import make_fx

import graphmfu  # noqa: F401 - loads the rules
from graphmfu.cost import ensure_builtin_rules

ensure_builtin_rules()
he = sys.modules["graphmfu.rules.host_eval"]
masks = sys.modules["graphmfu.rules.masks"]

S = 64  # key positions


def decode_bias(pos):  # generate_llama's decode mask, as SDPA's float bias: keep positions <= pos[-1]
    keep = torch.arange(S) <= pos[-1]
    return torch.where(keep.view(1, 1, 1, S), torch.tensor(0.0), torch.tensor(float("-inf")))


def sliding(q_pos, kv_len):  # causal within a window of 8, queries at q_pos
    k = torch.arange(S)
    d = q_pos[:, None] - k[None, :]
    return (d >= 0) & (d < 8) & (k[None, :] < kv_len)


def chunked(q_pos):  # Llama-4 style chunks of 16: same chunk and causal (floor division, remainder)
    k = torch.arange(S)
    same = torch.div(q_pos[:, None], 16, rounding_mode="floor") == torch.div(k[None, :], 16, rounding_mode="floor")
    return same & (k[None, :] <= q_pos[:, None]) & ((k[None, :] % 16) >= 0)


def padding(attention_mask):  # BERT: (1 - m) * finfo.min over (B, 1, 1, S), the padding as an index read
    idx = torch.arange(S).unsqueeze(0).expand(attention_mask.shape[0], S)
    m = attention_mask[torch.arange(attention_mask.shape[0])[:, None], idx]
    return (1.0 - m[:, None, None, :].to(torch.float32)) * torch.finfo(torch.float32).min


def document(doc_ids):  # packed documents: same document and causal, via bitwise ops and a cumsum
    same = doc_ids[:, :, None] == doc_ids[:, None, :]
    causal = torch.arange(S)[:, None] >= torch.arange(S)[None, :]
    first = torch.cumsum((doc_ids != 0).to(torch.int64), dim=-1) > 0
    return (same & causal) | ~first[:, :, None].expand(-1, -1, S) & causal


def _check(fn, *inputs):
    gm = make_fx(fn)(*inputs)
    run = he.numpy_fn(gm)
    assert run is not None, gm.code
    want = gm(*inputs)
    got = run(*inputs)
    assert tuple(got.shape) == tuple(want.shape) and str(got.dtype) == str(want.dtype).split(".")[1]
    assert (torch.from_numpy(got.copy()) == want).all()
    return got, want


def test_decode_bias_counts_positions_up_to_pos():
    for p in (0, 5, 63):
        got, want = _check(decode_bias, torch.tensor([p]))
        # kept keys = p + 1 of 64; broadcast to 8 batch x heads entries and 1 query: 8 * (p + 1)
        assert masks.kept_total(got, 8, 1, S) == 8 * (p + 1)
        assert masks.kept_total(got, 8, 1, S) == int(masks.kept_total(want, 8, 1, S))


def test_sliding_window_and_chunks_by_hand():
    q = torch.tensor([0, 3, 20, 63])
    got, _ = _check(sliding, q, torch.tensor(40))
    # window 8 ending at each query, keys < 40: q=0 -> 1, q=3 -> 4, q=20 -> 8 (13..20), q=63 -> keys 56..63 all >= 40 -> 0
    assert masks.kept_total(got, 1, 4, S) == 1 + 4 + 8 + 0
    got, _ = _check(chunked, q)
    # same 16-chunk and causal: q=0 -> 1, q=3 -> 4, q=20 -> 16..20 = 5, q=63 -> 48..63 = 16
    assert masks.kept_total(got, 1, 4, S) == 1 + 4 + 5 + 16


def test_padding_mask_through_an_index_read():
    am = torch.zeros(3, S, dtype=torch.long)
    for i, n in enumerate((64, 10, 1)):
        am[i, :n] = 1
    got, want = _check(padding, am)
    # 2 heads, 64 queries: each query sees its sequence's real keys: 2 * 64 * (64 + 10 + 1)
    assert masks.kept_total(got, 3 * 2, S, S) == 2 * 64 * (64 + 10 + 1)
    assert masks.kept_total(got, 6, S, S) == int(masks.kept_total(want, 6, S, S))


def test_documents_bitwise_and_cumsum():
    torch.manual_seed(0)
    ids = torch.sort(torch.randint(0, 4, (2, S)), dim=-1).values
    got, want = _check(document, ids)
    assert masks.kept_total(got, 2, S, S) == int(masks.kept_total(want, 2, S, S))


def test_unsupported_ops_and_dtypes_fall_back_to_torch():
    gm = make_fx(lambda x: torch.rand(4) < x)(torch.tensor(0.5))  # random: no NumPy evaluation
    assert he.numpy_fn(gm) is None
    gm = make_fx(lambda x: torch.full((8,), 1j, dtype=torch.complex64) == x)(torch.tensor(3, dtype=torch.complex64))
    assert he.numpy_fn(gm) is None  # a dtype not evaluated here


def test_bfloat16_mask_computed_in_float32():
    def bias(pos):  # the H200 decode graph's mask: bf16 0 / -65536 (bf16's large negative) where kept / not
        keep = torch.arange(S) <= pos[-1]
        return torch.where(keep.view(1, 1, 1, S), torch.tensor(0.0, dtype=torch.bfloat16),
                           torch.tensor(-65536.0, dtype=torch.bfloat16))
    gm = make_fx(bias)(torch.tensor([9]))
    run = he.numpy_fn(gm)
    got = run(torch.tensor([9]))
    assert str(got.dtype) == "float32" and (torch.from_numpy(got.copy()) == gm(torch.tensor([9])).float()).all()
    assert masks.kept_total(got, 4, 1, S) == 4 * 10  # 4 entries x keys 0..9


def test_a_disagreeing_numpy_evaluation_is_dropped_for_torch(monkeypatch):
    gm = make_fx(decode_bias)(torch.tensor([5]))
    monkeypatch.setattr(he, "numpy_fn", lambda m: lambda *a: torch.ones(S, dtype=torch.bool).numpy())  # a wrong NumPy mask
    n = masks._host_count(gm, [torch.tensor([5])], 8, 1, S)
    assert n == 8 * 6  # torch's count, 8 entries x keys 0..5
    assert gm._graphmfu_numpy[0] is None  # NumPy is not used again for this subgraph
    monkeypatch.undo()
    gm2 = make_fx(decode_bias)(torch.tensor([5]))
    for p in (5, 6, 7, 8):  # three checked calls, then NumPy alone
        assert masks._host_count(gm2, [torch.tensor([p])], 8, 1, S) == 8 * (p + 1)
    assert gm2._graphmfu_numpy[0] is not None and gm2._graphmfu_numpy[1] <= 0


@pytest.mark.parametrize("p", [0, 31])
def test_constant_subgraph_is_folded(p):
    gm = make_fx(lambda x: torch.arange(S) < 10)(torch.tensor(p))  # no input read: computed once
    run = he.numpy_fn(gm)
    assert run is not None and int(run(torch.tensor(p)).sum()) == 10
