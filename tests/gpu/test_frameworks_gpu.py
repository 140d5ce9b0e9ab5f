"""Frameworks that compile for you, on the GPU (issue 20): transformers' Trainer with ``torch_compile=True``
(the Trainer compiles the model itself, through accelerate) under ``graphmfu.capture_all()``, and continuous
batching's engine steps.

Trainer: each training step's dense FLOPs = FlopCounterMode on one eager training step of the same batch
(forward + backward, MHA so its SDPA formula applies) less the Q@K^T its SDPA backward recomputes (graphmfu
counts that as recompute, docs/conventions.md); effective FLOPs below dense by the causal pairs (hand).
Continuous batching: the sum of the engine steps' FLOPs = the schedule-free hand count (bench/cb_hf_gpu.py
has the full run with its cost and the profile)."""
import pytest
import torch

import graphmfu

pytestmark = pytest.mark.gpu
transformers = pytest.importorskip("transformers")

D, L, H, FFN, V, T, B = 512, 2, 8, 1408, 8000, 128, 4


def _llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=V, hidden_size=D, intermediate_size=FFN, num_hidden_layers=L, num_attention_heads=H,
                      num_key_value_heads=H, max_position_embeddings=512)
    cfg._attn_implementation = "sdpa"
    torch.manual_seed(0)
    return LlamaForCausalLM(cfg).cuda()


class _Data(torch.utils.data.Dataset):
    def __init__(self, n):
        g = torch.Generator().manual_seed(0)
        self.ids = torch.randint(0, V, (n, T), generator=g)

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


def test_trainer_torch_compile_counts_every_step(fresh, tmp_path):
    from torch.utils.flop_counter import FlopCounterMode
    from transformers import Trainer, TrainingArguments

    from graphmfu.integrations.transformers import GraphMFUCallback

    data = _Data(B * 6)
    ref = _llama()
    batch = {k: torch.stack([data[i][k] for i in range(B)]).cuda() for k in ("input_ids", "labels")}
    with FlopCounterMode(display=False) as fc:
        ref(**batch).loss.backward()
    eager = fc.get_total_flops()
    del ref

    model = _llama()
    cb = GraphMFUCallback(tokens_per_step=B * T)
    args = TrainingArguments(output_dir=str(tmp_path), torch_compile=True, per_device_train_batch_size=B, max_steps=5,
                             logging_steps=1, report_to=[], save_strategy="no", learning_rate=1e-4,
                             dataloader_num_workers=0, disable_tqdm=True)
    with graphmfu.capture_all() as cap:
        Trainer(model=model, args=args, train_dataset=data, callbacks=[cb]).train()
    rows = cb.meter.records
    assert cap.routed, "the Trainer's torch.compile was not routed through graphmfu"
    assert len(rows) == 5
    hd = D // H
    # FlopCounterMode's SDPA backward also counts the recomputed Q@K^T (docs/conventions.md): 2*T*T*hd per head
    recomputed = L * B * H * 2 * T * T * hd
    causal_saved = L * B * H * 3 * 4 * hd * (T * T - T * (T + 1) // 2)  # fw + bw (2x): 3x the forward's products
    for r in rows:
        assert "no_graphs" not in r["flags"] and not r["foreign_calls"], r
        assert r["flops_dense"] == eager - recomputed, (r["flops_dense"], eager, recomputed)
        assert r["flops_dense"] - r["flops"] == causal_saved, (r["flops_dense"] - r["flops"], causal_saved)
    print(f"Trainer(torch_compile=True) under capture_all: {len(rows)} steps, each dense {rows[-1]['flops_dense']:,} "
          f"= FlopCounterMode {eager:,} less its recomputed Q@K^T {recomputed:,}; effective {rows[-1]['flops']:,} (causal pairs: -{causal_saved:,}); MFU "
          f"{rows[-1]['mfu']:.2%}; routed {[(x['what'], x['mode']) for x in cap.routed]}")


def test_continuous_batching_steps_sum_to_the_hand_count(fresh):
    from transformers import GenerationConfig

    from bench.cb_hf_gpu import GPU, build, cb_config, hand, prompts
    from graphmfu.integrations.continuous_batching import EngineSteps

    c = dict(GPU, NEW=8)
    model = build(c, "cuda", torch.bfloat16)
    gc = GenerationConfig(max_new_tokens=c["NEW"], do_sample=False, eos_token_id=-1, pad_token_id=0)
    meter = graphmfu.meter()
    with graphmfu.capture_all(), EngineSteps(meter=meter) as steps, torch.no_grad():
        model.generate_batch(prompts(c), generation_config=gc, continuous_batching_config=cb_config(c, 1))
    rows = meter.records
    h = hand(c, sum(b.num_q_tokens for b in steps.batches))
    total = sum(r["flops"] for r in rows)
    assert abs(total / h["total"] - 1) < 0.005, (total, h)
    assert any(r.get("padded_tokens") for r in rows), "the engine padded nothing: the padding path was not exercised"
    print(f"continuous batching: {len(rows)} engine steps, FLOPs {total:,} vs hand {h['total']:,} "
          f"({total / h['total'] - 1:+.5%})")
