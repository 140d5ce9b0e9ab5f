"""Model presets for planning: published shapes as transformers configs, built with random weights on meta
tensors (nothing is downloaded, nothing allocated).

* ``llama3-8b`` / ``llama3-70b`` / ``llama3-405b``: the Llama 3 paper's Table 3 (arXiv:2407.21783: layers,
  model dimension, FFN dimension, attention / key-value heads, vocabulary 128,256, RoPE theta 500,000);
* ``deepseek-v3``: the DeepSeek-V3 report (arXiv:2412.19437, section 4.2): 61 layers (the first 3 dense, FFN
  18,432), hidden 7,168, 128 heads with MLA (q LoRA rank 1,536, KV LoRA rank 512, head dims 128 + 64 RoPE,
  values 128), 256 routed experts of FFN 2,048 and 1 shared, 8 routed per token, vocabulary 129,280 (671B
  parameters, 37B active; the multi-token-prediction module is not included).  transformers' own
  ``DeepseekV3Config`` defaults are these numbers;
* ``tiny-llama`` / ``tiny-moe``: small shapes of the same families, for tests.
"""
from __future__ import annotations

from graphmfu.errors import GraphMFUError

_LLAMA3 = dict(vocab_size=128256, rope_theta=500000.0, max_position_embeddings=131072, tie_word_embeddings=False,
               hidden_act="silu", rms_norm_eps=1e-5)

PRESETS = {
    "llama3-8b": ("llama", dict(_LLAMA3, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                                num_attention_heads=32, num_key_value_heads=8),
                  "Llama 3 paper (arXiv:2407.21783) Table 3: 8B"),
    "llama3-70b": ("llama", dict(_LLAMA3, hidden_size=8192, intermediate_size=28672, num_hidden_layers=80,
                                 num_attention_heads=64, num_key_value_heads=8),
                   "Llama 3 paper (arXiv:2407.21783) Table 3: 70B"),
    "llama3-405b": ("llama", dict(_LLAMA3, hidden_size=16384, intermediate_size=53248, num_hidden_layers=126,
                                  num_attention_heads=128, num_key_value_heads=8),
                    "Llama 3 paper (arXiv:2407.21783) Table 3: 405B (126 layers, d 16384, FFN 53248, 128/8 heads)"),
    "deepseek-v3": ("deepseek_v3", dict(num_hidden_layers=61, first_k_dense_replace=3, hidden_size=7168,
                                        intermediate_size=18432, moe_intermediate_size=2048, n_routed_experts=256,
                                        n_shared_experts=1, num_experts_per_tok=8, num_attention_heads=128,
                                        num_key_value_heads=128, q_lora_rank=1536, kv_lora_rank=512,
                                        qk_nope_head_dim=128, qk_rope_head_dim=64, v_head_dim=128,
                                        vocab_size=129280, tie_word_embeddings=False),
                    "DeepSeek-V3 report (arXiv:2412.19437) section 4.2; transformers DeepseekV3Config defaults"),
    "tiny-llama": ("llama", dict(vocab_size=1024, hidden_size=256, intermediate_size=704, num_hidden_layers=8,
                                 num_attention_heads=8, num_key_value_heads=2, tie_word_embeddings=False,
                                 max_position_embeddings=4096),
                   "a small Llama for tests"),
    "tiny-moe": ("deepseek_v3", dict(num_hidden_layers=4, first_k_dense_replace=1, hidden_size=256,
                                     intermediate_size=512, moe_intermediate_size=64, n_routed_experts=16,
                                     n_shared_experts=1, num_experts_per_tok=4, n_group=4, topk_group=2,
                                     num_attention_heads=8, num_key_value_heads=8, q_lora_rank=64, kv_lora_rank=32,
                                     qk_nope_head_dim=32, qk_rope_head_dim=16, v_head_dim=32, vocab_size=1024,
                                     tie_word_embeddings=False, max_position_embeddings=4096),
                 "a small DeepSeek-V3-shaped MoE for tests"),
}


def config(name: str, **overrides):
    """The transformers config of preset ``name`` (with ``overrides``)."""
    key = str(name).lower()
    if key not in PRESETS:
        raise GraphMFUError(f"unknown model preset {name!r}; known: {', '.join(PRESETS)} (or pass a transformers "
                            f"config or an nn.Module)")
    family, kw, _ = PRESETS[key]
    try:
        if family == "llama":
            from transformers import LlamaConfig as Config
        else:
            from transformers import DeepseekV3Config as Config
    except ImportError:
        raise GraphMFUError(f"model preset {name!r} needs transformers: pip install transformers") from None
    cfg = Config(**{**kw, **overrides})
    cfg.name_or_path = key
    return cfg


def source(name: str) -> str:
    return PRESETS.get(str(name).lower(), (None, None, ""))[2]


__all__ = ["PRESETS", "config", "source"]
