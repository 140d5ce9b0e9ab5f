"""What is planned: the model's shape (layers and their kinds, widths, heads, experts, parameters) and the
small *probe* model whose per-op record stands for it.

A transformer's layers of one kind cost the same, so the probe keeps one layer of each kind (Llama: one; a
DeepSeek-V3-shaped MoE: one dense and one MoE layer) plus the embedding, final norm, head and loss, and the
plan scales the per-layer record by the layer counts.  The 405B shape is then analysed in well under a second
(one layer of 3.2B parameters on meta tensors) instead of 126 layers.  A plain ``nn.Module`` with no
transformers config is analysed whole (every layer is its own kind), as ``analyze(fast=True)`` would.

Everything runs on meta tensors: weights are never allocated, nothing is downloaded.
"""
from __future__ import annotations

import copy
import dataclasses
import re
from typing import Any

import torch

from graphmfu.errors import GraphMFUError
from graphmfu.parallel import presets

LAYER_RE = re.compile(r"(?:^|\.)(?:layers|h|blocks|layer)\.(\d+)(?:\.|$)")


@dataclasses.dataclass
class ModelShape:
    name: str
    layers: int
    kinds: list  # per layer (in order): its kind
    probe: dict  # kind -> index of the probe model's layer that stands for it
    hidden: int
    heads: int
    kv_heads: int
    qk_head_dim: int
    v_head_dim: int
    vocab: int
    layer_params: dict  # kind -> parameters of one such layer
    expert_params: dict  # kind -> of which routed-expert parameters
    embed_params: int
    head_params: int
    other_params: int  # final norm and the rest outside the layers
    experts: int = 0
    top_k: int = 0
    dtype: torch.dtype = torch.bfloat16
    source: str = ""
    module: Any = None  # the probe (or the whole model), on meta
    hf: bool = True

    @property
    def dtype_bytes(self) -> int:
        return torch.empty((), dtype=self.dtype).element_size()

    def count(self, kind: str) -> int:
        return sum(1 for k in self.kinds if k == kind)

    @property
    def total_params(self) -> int:
        return (sum(self.layer_params[k] for k in self.kinds) + self.embed_params + self.head_params
                + self.other_params)

    @property
    def active_params(self) -> int:
        """Parameters one token uses: routed experts count top_k / experts of theirs."""
        idle = sum(self.expert_params[k] for k in self.kinds) * (1 - self.top_k / self.experts) if self.experts else 0
        return round(self.total_params - idle)

    def describe(self) -> str:
        moe = f", {self.experts} experts top-{self.top_k}" if self.experts else ""
        return (f"{self.name}: {self.layers} layers, d {self.hidden}, {self.heads}/{self.kv_heads} heads, vocab "
                f"{self.vocab}{moe}; {self.total_params / 1e9:.1f}B parameters ({self.active_params / 1e9:.1f}B "
                f"active)")


class PadValues(torch.overrides.TorchFunctionMode):
    """SDPA whose values are narrower than its queries and keys (MLA: q/k 192, v 128) has no fused CPU kernel, so
    on meta it would decompose (every score counted, the score matrix saved).  Here the values are zero-padded to
    the key width and the output sliced back, as transformers' flash-attention path does, so the fused causal
    kernel is what is counted; ``costs.py`` scales those ops' FLOPs by (d_k + d_v) / (2 d_k) back to the exact
    count."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.nn.functional.scaled_dot_product_attention and len(args) >= 3:
            q, k, v = args[:3]
            if v.shape[-1] < k.shape[-1]:
                dv = v.shape[-1]
                pad = torch.nn.functional.pad(v, (0, k.shape[-1] - dv))
                kwargs.setdefault("scale", q.shape[-1] ** -0.5)
                return func(q, k, pad, *args[3:], **kwargs)[..., :dv]
        return func(*args, **kwargs)


class LossOf(torch.nn.Module):
    """A causal LM as a function of (ids, labels) returning its loss: the training step's backward seed."""

    def __init__(self, model, pad_values: bool = False):
        super().__init__()
        self.model = model
        self.pad_values = pad_values

    def forward(self, ids, labels):
        if self.pad_values:
            with PadValues():
                return self.model(input_ids=ids, labels=labels).loss
        return self.model(input_ids=ids, labels=labels).loss


def _get(cfg, *names, default=None):
    for n in names:
        v = getattr(cfg, n, None)
        if v is not None:
            return v
    return default


def _kinds(cfg) -> list:
    layers = cfg.num_hidden_layers
    experts = _get(cfg, "n_routed_experts", "num_local_experts", "num_experts", default=0) or 0
    if not experts:
        return ["dense"] * layers
    k = _get(cfg, "first_k_dense_replace", default=0) or 0
    return ["dense"] * min(k, layers) + ["moe"] * max(layers - k, 0)


def _build(cfg, dtype):
    try:
        from transformers import AutoModelForCausalLM
    except ImportError:
        raise GraphMFUError("planning a transformers config needs transformers: pip install transformers") from None
    cfg._attn_implementation = "sdpa"  # the fused attention the fast analysis counts (masks kept causal)
    if _get(cfg, "n_routed_experts", "num_local_experts", "num_experts"):
        cfg._experts_implementation = "grouped_mm"  # static shapes on meta: one grouped GEMM per projection
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(cfg).to(dtype)


def _params(module) -> tuple[int, int]:
    total = experts = 0
    for name, p in module.named_parameters():
        total += p.numel()
        if ".experts." in f".{name}" and "shared_experts" not in name:
            experts += p.numel()
    return total, experts


def from_config(cfg, name: str | None = None, dtype=torch.bfloat16) -> ModelShape:
    """The shape of a transformers causal-LM config, with a probe of one layer per kind built on meta."""
    kinds = _kinds(cfg)
    probe_cfg = copy.deepcopy(cfg)
    order = list(dict.fromkeys(kinds))  # kinds in first-seen order: dense before moe
    probe_cfg.num_hidden_layers = len(order)
    if "moe" in order and hasattr(probe_cfg, "first_k_dense_replace"):
        probe_cfg.first_k_dense_replace = order.index("moe")
    model = _build(probe_cfg, dtype)
    layers = model.model.layers
    per = {k: _params(layers[i]) for i, k in enumerate(order)}
    inner = model.model
    embed = inner.embed_tokens.weight.numel()
    head = 0 if cfg.tie_word_embeddings else model.lm_head.weight.numel()
    total_probe = sum(p.numel() for p in model.parameters())
    other = total_probe - embed - head - sum(v[0] for v in per.values())
    heads = cfg.num_attention_heads
    qk = _get(cfg, "qk_head_dim") or ((_get(cfg, "qk_nope_head_dim", default=0) + _get(cfg, "qk_rope_head_dim",
                                                                                      default=0)) or None)
    qk = qk or _get(cfg, "head_dim") or cfg.hidden_size // heads
    nm = name or getattr(cfg, "name_or_path", "") or type(cfg).__name__
    return ModelShape(nm, cfg.num_hidden_layers, kinds, {k: i for i, k in enumerate(order)}, cfg.hidden_size, heads,
                      _get(cfg, "num_key_value_heads", default=heads), qk, _get(cfg, "v_head_dim", default=qk),
                      cfg.vocab_size, {k: v[0] for k, v in per.items()}, {k: v[1] for k, v in per.items()}, embed,
                      head, other, _get(cfg, "n_routed_experts", "num_local_experts", "num_experts", default=0) or 0,
                      _get(cfg, "num_experts_per_tok", default=0) or 0, dtype, presets.source(nm),
                      LossOf(model, pad_values=_get(cfg, "v_head_dim", default=qk) < qk))


def from_module(module: torch.nn.Module, dtype=torch.bfloat16) -> ModelShape:
    """A transformers model plans from its config (its weights are not needed); any other module is analysed whole:
    its layers are the children of a ModuleList named layers/h/blocks, each its own kind."""
    cfg = getattr(module, "config", None)
    if cfg is not None and hasattr(cfg, "num_hidden_layers") and hasattr(cfg, "hidden_size"):
        return from_config(copy.deepcopy(cfg), getattr(cfg, "name_or_path", None) or type(module).__name__, dtype)
    stacks = [(n, m) for n, m in module.named_modules() if isinstance(m, torch.nn.ModuleList)
              and LAYER_RE.search(f"{n}.0.")]
    if not stacks:
        raise GraphMFUError(f"plan_parallel: {type(module).__name__} has no ModuleList of layers (named layers, h "
                            f"or blocks); give a transformers model or config, or a preset name")
    stack_name, stack = max(stacks, key=lambda s: len(s[1]))
    dtype = next((p.dtype for p in module.parameters() if p.is_floating_point()), dtype)
    n = len(stack)
    per = {f"layer{i}": _params(stack[i]) for i in range(n)}
    emb = [m for m in module.modules() if isinstance(m, torch.nn.Embedding)]
    hidden = emb[0].embedding_dim if emb else next(iter(stack[0].parameters())).shape[-1]
    vocab = emb[0].num_embeddings if emb else 0
    embed = sum(m.weight.numel() for m in emb[:1])
    total = sum(p.numel() for p in module.parameters())
    heads = next((getattr(m, a) for m in module.modules() for a in ("heads", "num_heads", "n_heads")
                  if isinstance(getattr(m, a, None), int)), 1)
    kv = next((getattr(m, a) for m in module.modules() for a in ("kv_heads", "num_kv_heads", "n_kv_heads")
               if isinstance(getattr(m, a, None), int)), heads)
    return ModelShape(type(module).__name__, n, list(per), {k: i for i, k in enumerate(per)}, hidden, heads, kv,
                      hidden // heads, hidden // heads, vocab, {k: v[0] for k, v in per.items()},
                      {k: v[1] for k, v in per.items()}, embed, 0, total - embed - sum(v[0] for v in per.values()),
                      0, 0, dtype, f"{type(module).__name__} analysed whole ({stack_name}: {n} layers)", module,
                      hf=False)


def shape_of(model, dtype=torch.bfloat16) -> ModelShape:
    """A preset name, a transformers config, a transformers model or any nn.Module with a ModuleList of layers."""
    if isinstance(model, str):
        return from_config(presets.config(model), model.lower(), dtype)
    if isinstance(model, torch.nn.Module):
        return from_module(model, dtype)
    if hasattr(model, "num_hidden_layers") and hasattr(model, "hidden_size"):
        return from_config(copy.deepcopy(model), None, dtype)
    raise GraphMFUError(f"plan_parallel: cannot plan {type(model).__name__}; give a preset name "
                        f"({', '.join(presets.PRESETS)}), a transformers config or model, or an nn.Module")


def layer_index(module_path: str) -> int | None:
    """The layer number in a module path (``model.model.layers.3.mlp`` -> 3), None outside the layers."""
    m = LAYER_RE.search(module_path or "")
    return int(m.group(1)) if m else None


__all__ = ["ModelShape", "shape_of", "from_config", "from_module", "layer_index", "LossOf"]
