"""N for 2ND / 6ND, counted from a model: the parameters a token goes through.

* Embedding tables (``nn.Embedding``: token and position embeddings) are lookups, not matmuls:
  excluded.  A weight tied to an embedding and used by a Linear (the LM head) is counted once, as the
  Linear's.
* Mixture of experts: the parameters of routed experts count ``top_k / num_experts`` of their total
  (the *active* parameters); shared experts, routers and everything else count in full.  Routed
  experts are the parameters under modules named ``experts`` (the Hugging Face convention, fused
  3-D expert weights and ModuleLists alike); ``top_k`` and ``num_experts`` come from the arguments or
  the model's ``config`` (``num_experts_per_tok``; ``num_local_experts`` / ``num_experts`` /
  ``n_routed_experts``).
"""
from __future__ import annotations

import torch

from graphmfu.errors import GraphMFUError

_TOP_K = ("num_experts_per_tok", "moe_topk", "top_k")
_EXPERTS = ("num_local_experts", "num_experts", "n_routed_experts", "moe_num_experts")


def _config_value(model, names):
    cfgs = [getattr(model, "config", None)]
    cfgs += [getattr(cfgs[0], "text_config", None)] if cfgs[0] is not None else []
    for cfg in cfgs:
        for n in names:
            v = getattr(cfg, n, None) if cfg is not None else None
            if isinstance(v, int) and v > 0:
                return v
    return None


def active_params(model: torch.nn.Module, top_k: int | None = None, num_experts: int | None = None) -> int:
    """Parameters without embeddings, routed experts at ``top_k / num_experts`` (module docstring)."""
    if not isinstance(model, torch.nn.Module):
        raise GraphMFUError(f"graphmfu.meter(model=...) takes an nn.Module, got {type(model).__name__}; "
                            f"pass params=<number of parameters> instead")
    embedding, used = set(), {}
    expert_ids: set = set()
    for name, mod in model.named_modules():
        own = list(mod.parameters(recurse=False))
        if isinstance(mod, torch.nn.Embedding):
            embedding.update(id(p) for p in own)
            continue
        for p in own:
            used[id(p)] = p
        if name.rsplit(".", 1)[-1] == "experts":
            expert_ids.update(id(p) for p in mod.parameters())
    dense = sum(p.numel() for i, p in used.items() if i not in expert_ids)
    experts = sum(p.numel() for i, p in used.items() if i in expert_ids)
    if not experts:
        return dense
    k = top_k or _config_value(model, _TOP_K)
    e = num_experts or _config_value(model, _EXPERTS)
    if not (k and e):
        raise GraphMFUError("the model has routed experts but no top_k / num_experts in its config: pass "
                            "graphmfu.meter(model=..., top_k=K, num_experts=E)")
    return dense + experts * k // e


__all__ = ["active_params"]
