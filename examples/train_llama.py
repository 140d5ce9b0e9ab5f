"""Compiled training of the minimal Llama with AdamW, the graphmfu meter logging every step.

    python examples/train_llama.py                                  # CPU, a tiny model
    python examples/train_llama.py --device cuda --preset 8b-2l     # Llama-3-8B layer shapes, 2 layers, bf16
    python examples/train_llama.py --compile-optimizer              # opt.step compiled too: its own stage

Each step prints MFU/HFU/MBU from the FLOPs of the graphs that ran (forward, backward and, compiled,
the optimizer), FLOPs per token beside 6ND, and the share of the step inside compiled graphs (an eager
optimizer is time without FLOPs).  ``--check`` compares every step's matrix FLOPs with the hand count.
"""
from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from examples.minimal_llama import DTYPES, Llama, LlamaConfig  # noqa: E402

PRESETS = {  # name -> LlamaConfig fields
    "tiny": dict(dim=128, layers=2, heads=4, kv_heads=2, ffn=344, vocab=1000),
    "8b-2l": dict(dim=4096, layers=2, heads=32, kv_heads=8, ffn=14336, vocab=128256),
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    p.add_argument("--layers", type=int, default=None, help="override the preset's layer count")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", choices=sorted(DTYPES), default=None, help="default: bf16 on CUDA, fp32 on CPU")
    p.add_argument("--mode", default=None, help="torch.compile mode")
    p.add_argument("--compile-optimizer", action="store_true", help="torch.compile(opt.step) as well")
    p.add_argument("--check", action="store_true", help="assert each step's matrix FLOPs = the hand count")
    return p.parse_args(argv)


def train_flops(cfg: LlamaConfig, batch: int, seq: int) -> int:
    """Matrix FLOPs of one training step (forward + backward) by hand: forward per token and layer the
    q/o projections 2*d*d each, k/v 2*d*kv*hd each, the MLP 3 * 2*d*ffn, the head 2*d*vocab per token;
    causal attention per layer 2 products * 2*hd * heads * T(T+1)/2 pairs; backward = 2 x forward
    (every projection computes the gradients of its weight and of its input)."""
    d, hd = cfg.dim, cfg.dim // cfg.heads
    per_token = cfg.layers * (2 * (2 * d * d) + 2 * (2 * d * cfg.kv_heads * hd) + 3 * (2 * d * cfg.ffn)) \
        + 2 * d * cfg.vocab
    attention = cfg.layers * cfg.heads * (seq * (seq + 1) // 2) * 2 * (2 * hd)
    return 3 * batch * (seq * per_token + attention)


def main(argv=None) -> int:
    import graphmfu

    a = parse_args(argv)
    fields = {**PRESETS[a.preset], **({"layers": a.layers} if a.layers else {})}
    cfg = LlamaConfig(**fields, max_seq=max(a.seq, 16))
    dtype = DTYPES[a.dtype or ("bf16" if a.device.startswith("cuda") else "fp32")]
    torch.manual_seed(0)
    model = Llama(cfg).to(device=a.device, dtype=dtype)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, foreach=True)
    fwd = torch.compile(model, backend=graphmfu.backend(mode=a.mode))
    opt_step = torch.compile(opt.step, backend=graphmfu.backend()) if a.compile_optimizer else opt.step
    meter = graphmfu.meter(model=model, print_every=1, cuda=a.device.startswith("cuda"))
    hand = train_flops(cfg, a.batch, a.seq)
    for _ in range(a.steps):
        x = torch.randint(0, cfg.vocab, (a.batch, a.seq), device=a.device)
        with meter.step(tokens=x.numel()):
            loss = fwd(x).float().logsumexp(-1).mean()
            loss.backward()
            opt_step()
            opt.zero_grad(set_to_none=True)
    print(meter.summary())
    r = meter.records[-1]
    print(f"hand count {hand:,} matrix FLOPs per step; meter {r['flops']:,}; 6ND {r['nd_flops']:,} "
          f"(N = {r['params']:,}: FLOPs are {r['flops_vs_nd']:.3f} x 6ND; attention {r['attention_flops']:,})")
    if a.check:
        bad = [m["step"] for m in meter.records if m["flops"] != hand]
        if bad:
            print(f"steps {bad}: matrix FLOPs differ from the hand count", file=sys.stderr)
            return 1
        print("every step's matrix FLOPs equal the hand count")
    return 0


if __name__ == "__main__":
    sys.exit(main())
