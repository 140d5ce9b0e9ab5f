"""FLOPs per token of a Llama-3.3-70B-shaped model from the graph, beside 2N — no GPU, no weights.

    python examples/flops_per_token.py                 # 70B shapes, prefill 2048 tokens, decode at 2048
    python examples/flops_per_token.py --preset 8b

The model is built on the meta device and analysed with ``graphmfu.analyze(fast=True)``: a prefill of
``--prompt`` tokens (causal) and one decode token over a cache of ``--prompt`` tokens.  The seed this
project came from (a 4 x H100 serving MFU question) estimated ~296 TFLOP for a 2048-token prefill and
~0.14 TFLOP per decode token; this prints the graph's count, dense and causal, beside 2N.
"""
from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from examples.minimal_llama import Llama, LlamaConfig  # noqa: E402

PRESETS = {
    "70b": dict(dim=8192, layers=80, heads=64, kv_heads=8, ffn=28672, vocab=128256),
    "8b": dict(dim=4096, layers=32, heads=32, kv_heads=8, ffn=14336, vocab=128256),
}
SEED_PREFILL_TFLOP = 296.0  # seed 003: "For a prefill of 2048 tokens I estimate ~296 TFLOP"
SEED_PER_TOKEN_TFLOP = 296.0 / 2048  # its per-token figure, 0.14453125 TFLOP ("~0.14" for decode)


def counts(preset: str = "70b", prompt: int = 2048) -> dict:
    """Matrix FLOPs (effective and dense) of the prefill and of one decode token, and N."""
    import graphmfu
    from graphmfu.params import active_params

    cfg = LlamaConfig(**PRESETS[preset], max_seq=prompt + 8)
    with torch.device("meta"):
        model = Llama(cfg).to(torch.bfloat16)
        tokens = torch.zeros(1, prompt, dtype=torch.long)
        tok = torch.zeros(1, 1, dtype=torch.long)
        hd = cfg.dim // cfg.heads
        caches = [(torch.zeros(1, cfg.kv_heads, prompt, hd, dtype=torch.bfloat16),
                   torch.zeros(1, cfg.kv_heads, prompt, hd, dtype=torch.bfloat16)) for _ in range(cfg.layers)]
    with torch.no_grad():
        pre = graphmfu.analyze(model, tokens, fast=True, device="h100-sxm").totals
        dec = graphmfu.analyze(model, tok, caches, fast=True, device="h100-sxm").totals
    n = active_params(model)
    return {"params": n, "prefill": pre["flops"], "prefill_dense": pre["flops_dense"], "decode": dec["flops"],
            "decode_dense": dec["flops_dense"], "prompt": prompt}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", choices=sorted(PRESETS), default="70b")
    p.add_argument("--prompt", type=int, default=2048)
    a = p.parse_args(argv)
    c = counts(a.preset, a.prompt)
    n, t = c["params"], c["prompt"]
    print(f"Llama {a.preset} shapes: N = {n / 1e9:.3f} B parameters without embeddings (the LM head counted)")
    print(f"prefill {t} tokens: {c['prefill'] / 1e12:.2f} TFLOP causal, {c['prefill_dense'] / 1e12:.2f} TFLOP if "
          f"attention were dense; 2N x {t} = {2 * n * t / 1e12:.2f} TFLOP")
    print(f"  per token {c['prefill'] / t / 1e12:.5f} TFLOP causal, {c['prefill_dense'] / t / 1e12:.5f} dense; "
          f"2N = {2 * n / 1e12:.5f}")
    print(f"decode 1 token over {t} cached: {c['decode'] / 1e12:.5f} TFLOP (2N = {2 * n / 1e12:.5f}, attention "
          f"{(c['decode'] - 2 * n) / 1e9:.2f} GFLOP)")
    if a.preset == "70b" and t == 2048:
        print(f"seed 003: prefill ~{SEED_PREFILL_TFLOP:.0f} TFLOP -> graph dense {c['prefill_dense'] / 1e12:.1f} "
              f"({c['prefill_dense'] / 1e12 / SEED_PREFILL_TFLOP - 1:+.2%}), causal {c['prefill'] / 1e12:.1f} "
              f"({c['prefill'] / 1e12 / SEED_PREFILL_TFLOP - 1:+.2%}: the seed's figure counts attention dense)")
        print(f"seed 003: ~{SEED_PER_TOKEN_TFLOP:.5f} TFLOP/token -> graph decode {c['decode'] / 1e12:.5f} "
              f"({c['decode'] / 1e12 / SEED_PER_TOKEN_TFLOP - 1:+.2%})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
