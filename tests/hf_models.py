"""Tiny transformers models built from configs with random weights (no hub downloads), for
tests/test_models.py.

Every builder returns a ``Case``: the model (eval mode, fp32, SDPA attention where the model has
it), its inputs, and what the hand counts need (sequence lengths, heads, experts).  Sizes are
small so the whole suite runs on a 2-core CPU: 2 layers, hidden 64, 4 heads, vocabulary 256,
batch 2, sequences 16-32."""
from __future__ import annotations

import dataclasses
import os
from typing import Callable

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch  # noqa: E402

B, T, V = 2, 32, 256  # batch, sequence, vocabulary
H, NH, KV, FF, L = 64, 4, 2, 128, 2  # hidden, query heads, K/V heads, MLP width, layers


@dataclasses.dataclass
class Case:
    name: str
    model: torch.nn.Module
    inputs: dict
    kind: str  # "decoder", "encoder", "encdec", "vision", "clip", "conv"
    info: dict = dataclasses.field(default_factory=dict)
    trainable: bool = False  # a training step (loss.backward()) is part of the suite


def _ids(b=B, t=T, v=V, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, v, (b, t), generator=g)


def _build(cls, cfg, attn="sdpa"):
    torch.manual_seed(0)
    if attn is not None:
        cfg._attn_implementation = attn
    return cls(cfg).eval()


def _lm(cls, cfg, attn="sdpa"):
    """A causal LM and its inputs: token ids, and the same ids as labels (the loss of a training step)."""
    m = _build(cls, cfg, attn)
    ids = _ids()
    return m, {"input_ids": ids, "labels": ids.clone()}


# --------------------------------------------------------------------------- decoders


def llama():
    from transformers import LlamaConfig, LlamaForCausalLM
    cfg = LlamaConfig(vocab_size=V, hidden_size=H, intermediate_size=FF, num_hidden_layers=L,
                      num_attention_heads=NH, num_key_value_heads=KV, max_position_embeddings=128)
    m, x = _lm(LlamaForCausalLM, cfg)
    return Case("llama", m, x, "decoder", {"mlp": "gated", "ff": FF}, trainable=True)


def mistral():
    from transformers import MistralConfig, MistralForCausalLM
    cfg = MistralConfig(vocab_size=V, hidden_size=H, intermediate_size=FF, num_hidden_layers=L,
                        num_attention_heads=NH, num_key_value_heads=KV, max_position_embeddings=128,
                        sliding_window=8)
    m, x = _lm(MistralForCausalLM, cfg)
    return Case("mistral", m, x, "decoder", {"mlp": "gated", "ff": FF, "window": [8] * L}, trainable=True)


def qwen2():
    from transformers import Qwen2Config, Qwen2ForCausalLM
    cfg = Qwen2Config(vocab_size=V, hidden_size=H, intermediate_size=FF, num_hidden_layers=L,
                      num_attention_heads=NH, num_key_value_heads=KV, max_position_embeddings=128)
    m, x = _lm(Qwen2ForCausalLM, cfg)
    return Case("qwen2", m, x, "decoder", {"mlp": "gated", "ff": FF}, trainable=True)


def qwen3():
    from transformers import Qwen3Config, Qwen3ForCausalLM
    cfg = Qwen3Config(vocab_size=V, hidden_size=H, intermediate_size=FF, num_hidden_layers=L,
                      num_attention_heads=NH, num_key_value_heads=KV, head_dim=16, max_position_embeddings=128)
    m, x = _lm(Qwen3ForCausalLM, cfg)
    return Case("qwen3", m, x, "decoder", {"mlp": "gated", "ff": FF}, trainable=True)


def gemma2():
    from transformers import Gemma2Config, Gemma2ForCausalLM
    cfg = Gemma2Config(vocab_size=V, hidden_size=H, intermediate_size=FF, num_hidden_layers=L,
                       num_attention_heads=NH, num_key_value_heads=KV, head_dim=16, max_position_embeddings=128,
                       sliding_window=8, attn_logit_softcapping=50.0, final_logit_softcapping=30.0,
                       layer_types=["sliding_attention", "full_attention"])
    # transformers: "Gemma2 does not support sdpa" (softcapping): eager attention (matmul + softmax)
    m, x = _lm(Gemma2ForCausalLM, cfg, attn="eager")
    return Case("gemma2", m, x, "decoder", {"mlp": "gated", "ff": FF, "window": [8, None]}, trainable=True)


def gemma3():
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig
    cfg = Gemma3TextConfig(vocab_size=V, hidden_size=H, intermediate_size=FF, num_hidden_layers=L,
                           num_attention_heads=NH, num_key_value_heads=KV, head_dim=16, max_position_embeddings=128,
                           sliding_window=8, final_logit_softcapping=30.0,
                           layer_types=["sliding_attention", "full_attention"])
    m, x = _lm(Gemma3ForCausalLM, cfg)
    return Case("gemma3", m, x, "decoder", {"mlp": "gated", "ff": FF, "window": [8, None]}, trainable=True)


E, TOPK, FF_E = 4, 2, 96  # routed experts, experts per token, expert MLP width


def mixtral():
    from transformers import MixtralConfig, MixtralForCausalLM
    cfg = MixtralConfig(vocab_size=V, hidden_size=H, intermediate_size=FF_E, num_hidden_layers=L,
                        num_attention_heads=NH, num_key_value_heads=KV, max_position_embeddings=128,
                        num_local_experts=E, num_experts_per_tok=TOPK, sliding_window=None)
    m, x = _lm(MixtralForCausalLM, cfg)
    return Case("mixtral", m, x, "decoder", {"mlp": "moe", "experts": E, "topk": TOPK, "ff_expert": FF_E,
                                             "moe_layers": L, "shared_ff": 0}, trainable=True)


def qwen3_moe():
    from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM
    cfg = Qwen3MoeConfig(vocab_size=V, hidden_size=H, intermediate_size=FF, moe_intermediate_size=FF_E,
                         num_hidden_layers=L, num_attention_heads=NH, num_key_value_heads=KV, head_dim=16,
                         max_position_embeddings=128, num_experts=E, num_experts_per_tok=TOPK,
                         decoder_sparse_step=1, mlp_only_layers=[], norm_topk_prob=True)
    m, x = _lm(Qwen3MoeForCausalLM, cfg)
    return Case("qwen3_moe", m, x, "decoder", {"mlp": "moe", "experts": E, "topk": TOPK, "ff_expert": FF_E,
                                               "moe_layers": L, "shared_ff": 0}, trainable=True)


def deepseek_v3():
    from transformers import DeepseekV3Config, DeepseekV3ForCausalLM
    cfg = DeepseekV3Config(vocab_size=V, hidden_size=H, intermediate_size=FF, moe_intermediate_size=FF_E,
                           num_hidden_layers=L, num_attention_heads=NH, num_key_value_heads=NH,
                           max_position_embeddings=128, n_routed_experts=E, num_experts_per_tok=TOPK,
                           n_shared_experts=1, first_k_dense_replace=1, n_group=1, topk_group=1,
                           q_lora_rank=32, kv_lora_rank=32, qk_rope_head_dim=8, qk_nope_head_dim=16, v_head_dim=16,
                           rope_scaling=None)
    m, x = _lm(DeepseekV3ForCausalLM, cfg)
    # layer 0 dense (first_k_dense_replace=1), layer 1 MoE: 2 of 4 routed experts + 1 shared expert
    return Case("deepseek_v3", m, x, "decoder", {"mlp": "moe", "experts": E, "topk": TOPK, "ff_expert": FF_E,
                                                 "moe_layers": L - 1, "dense_layers": 1, "ff": FF,
                                                 "shared_ff": FF_E * 1}, trainable=True)


def gpt2():
    from transformers import GPT2Config, GPT2LMHeadModel
    cfg = GPT2Config(vocab_size=V, n_embd=H, n_layer=L, n_head=NH, n_positions=128, n_inner=FF,
                     bos_token_id=V - 1, eos_token_id=V - 1, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    m, x = _lm(GPT2LMHeadModel, cfg)
    return Case("gpt2", m, x, "decoder", {"mlp": "plain", "ff": FF}, trainable=True)


# --------------------------------------------------------------------------- encoders, enc-dec, audio, vision


PAD_LENGTHS = (T, 20)  # BERT: the second sequence is padded after 20 tokens


def bert():
    from transformers import BertConfig, BertModel
    cfg = BertConfig(vocab_size=V, hidden_size=H, num_hidden_layers=L, num_attention_heads=NH, intermediate_size=FF,
                     max_position_embeddings=128, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    m = _build(BertModel, cfg)
    mask = torch.zeros(B, T, dtype=torch.long)
    for b, n in enumerate(PAD_LENGTHS):
        mask[b, :n] = 1
    return Case("bert", m, {"input_ids": _ids(), "attention_mask": mask}, "encoder",
                {"pad_lengths": PAD_LENGTHS})


T_DEC = 16


def t5():
    from transformers import T5Config, T5ForConditionalGeneration
    cfg = T5Config(vocab_size=V, d_model=H, d_kv=16, d_ff=FF, num_layers=L, num_decoder_layers=L, num_heads=NH,
                   relative_attention_num_buckets=8, dropout_rate=0.0, decoder_start_token_id=0, pad_token_id=0)
    m = _build(T5ForConditionalGeneration, cfg)
    return Case("t5", m, {"input_ids": _ids(), "decoder_input_ids": _ids(t=T_DEC, seed=1)}, "encdec",
                {"t_enc": T, "t_dec": T_DEC})


MEL, FRAMES = 80, 64  # Whisper: 64 mel frames -> 32 encoder positions (stride-2 conv)


def whisper():
    from transformers import WhisperConfig, WhisperForConditionalGeneration
    cfg = WhisperConfig(vocab_size=V, num_mel_bins=MEL, d_model=H, encoder_layers=L, decoder_layers=L,
                        encoder_attention_heads=NH, decoder_attention_heads=NH, encoder_ffn_dim=FF, decoder_ffn_dim=FF,
                        max_source_positions=FRAMES // 2, max_target_positions=64, dropout=0.0,
                        attention_dropout=0.0, activation_dropout=0.0, pad_token_id=0, decoder_start_token_id=1,
                        bos_token_id=1, eos_token_id=2)
    m = _build(WhisperForConditionalGeneration, cfg)
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(B, MEL, FRAMES, generator=g)
    return Case("whisper", m, {"input_features": feats, "decoder_input_ids": _ids(t=T_DEC, seed=1)}, "encdec",
                {"t_enc": FRAMES // 2, "t_dec": T_DEC})


IMG, PATCH = 32, 8


def vit():
    from transformers import ViTConfig, ViTModel
    cfg = ViTConfig(image_size=IMG, patch_size=PATCH, num_channels=3, hidden_size=H, num_hidden_layers=L,
                    num_attention_heads=NH, intermediate_size=FF, hidden_dropout_prob=0.0,
                    attention_probs_dropout_prob=0.0)
    m = _build(ViTModel, cfg)
    g = torch.Generator().manual_seed(0)
    return Case("vit", m, {"pixel_values": torch.randn(B, 3, IMG, IMG, generator=g)}, "vision",
                {"tokens": (IMG // PATCH) ** 2 + 1})


def clip():
    from transformers import CLIPConfig, CLIPModel
    text = dict(vocab_size=V, hidden_size=H, intermediate_size=FF, num_hidden_layers=L, num_attention_heads=NH,
                max_position_embeddings=T, projection_dim=H, bos_token_id=0, eos_token_id=2)
    vision = dict(hidden_size=H, intermediate_size=FF, num_hidden_layers=L, num_attention_heads=NH, image_size=IMG,
                  patch_size=PATCH, projection_dim=H)
    cfg = CLIPConfig(text_config=text, vision_config=vision, projection_dim=H)
    m = _build(CLIPModel, cfg)
    g = torch.Generator().manual_seed(0)
    return Case("clip", m, {"input_ids": _ids(), "pixel_values": torch.randn(B, 3, IMG, IMG, generator=g)}, "clip",
                {"t_text": T, "tokens": (IMG // PATCH) ** 2 + 1})


def convnext():
    from transformers import ConvNextConfig, ConvNextModel
    cfg = ConvNextConfig(num_channels=3, hidden_sizes=[16, 32], depths=[1, 1], num_stages=2, image_size=IMG)
    m = _build(ConvNextModel, cfg, attn=None)
    g = torch.Generator().manual_seed(0)
    return Case("convnext", m, {"pixel_values": torch.randn(B, 3, IMG, IMG, generator=g)}, "conv")


def resnet():
    from transformers import ResNetConfig, ResNetModel
    cfg = ResNetConfig(num_channels=3, embedding_size=16, hidden_sizes=[16, 32], depths=[1, 1], layer_type="basic")
    m = _build(ResNetModel, cfg, attn=None)
    g = torch.Generator().manual_seed(0)
    return Case("resnet", m, {"pixel_values": torch.randn(B, 3, IMG, IMG, generator=g)}, "conv")


MODELS: dict[str, Callable[[], Case]] = {
    f.__name__: f for f in (llama, mistral, qwen2, qwen3, gemma2, gemma3, mixtral, qwen3_moe, deepseek_v3, gpt2,
                            bert, t5, whisper, vit, clip, convnext, resnet)
}


class LossOf(torch.nn.Module):
    """The model's loss as its only output: a training step is ``LossOf(m)(**x).backward()``."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, **kw):
        return self.model(**kw).loss
