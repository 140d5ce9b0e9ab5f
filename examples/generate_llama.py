"""Generation with a static KV cache, the graphmfu meter recording every step.

    python examples/generate_llama.py                          # CPU, tiny model, 16 tokens
    python examples/generate_llama.py --device cuda --mode reduce-overhead --preset 8b-2l --tokens 64

A prefill of ``--prompt`` tokens, then ``--tokens`` decode steps.  The cache is preallocated
(``--max-seq`` positions, module buffers, so CUDA graphs can capture the decode step) and each decode
step attends over all of it with a mask ``position <= current`` built from the step's position input:
the kernel computes every cached slot, the model work is the slots the mask keeps.  The meter reports
each step's model FLOPs at its own position (the mask's kept pairs counted per call) beside the dense
count, the KV-cache bytes read and MBU — decode is memory-bound: MBU is its number, MFU is small.
"""
from __future__ import annotations

import argparse
import os
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from examples.minimal_llama import DTYPES, Llama, LlamaConfig, apply_rope, decode_step_flops  # noqa: E402
from examples.train_llama import PRESETS  # noqa: E402


class StaticCache(nn.Module):
    """Keys and values of every layer, [B, kv heads, max_seq, head dim], as buffers (static addresses)."""

    def __init__(self, cfg: LlamaConfig, batch: int, max_seq: int, device=None, dtype=None):
        super().__init__()
        hd = cfg.dim // cfg.heads
        for i in range(cfg.layers):
            self.register_buffer(f"k{i}", torch.zeros(batch, cfg.kv_heads, max_seq, hd, device=device, dtype=dtype))
            self.register_buffer(f"v{i}", torch.zeros(batch, cfg.kv_heads, max_seq, hd, device=device, dtype=dtype))


class Generator(nn.Module):
    """The minimal Llama's weights, run against a static cache."""

    def __init__(self, model: Llama, cache: StaticCache):
        super().__init__()
        self.model, self.cache = model, cache

    def forward(self, tokens, pos):
        """``tokens`` [B, T] at positions ``pos`` [T] (int64).  T > 1: a prefill at 0..T-1 (causal over
        the prompt); T == 1: one decode step over the whole cache, masked to positions <= pos."""
        m, cfg = self.model, self.model.cfg
        b, t = tokens.shape
        h, kvh, hd = cfg.heads, cfg.kv_heads, cfg.dim // cfg.heads
        cos, sin = m.rope_cos[pos], m.rope_sin[pos]
        x = m.embed(tokens)
        s_max = self.cache.k0.shape[2]
        mask = None if t > 1 else (torch.arange(s_max, device=tokens.device) <= pos[-1]).view(1, 1, 1, s_max)
        for i, layer in enumerate(m.layers):
            a = layer.attn
            y = layer.attn_norm(x)
            q = a.q(y).view(b, t, h, hd).transpose(1, 2)
            k = a.k(y).view(b, t, kvh, hd).transpose(1, 2)
            v = a.v(y).view(b, t, kvh, hd).transpose(1, 2)
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
            kc, vc = getattr(self.cache, f"k{i}"), getattr(self.cache, f"v{i}")
            kc.index_copy_(2, pos, k)
            vc.index_copy_(2, pos, v)
            if t > 1:
                o = F.scaled_dot_product_attention(q, kc[:, :, :t], vc[:, :, :t], is_causal=True,
                                                   enable_gqa=kvh != h)
            else:
                o = F.scaled_dot_product_attention(q, kc, vc, attn_mask=mask, enable_gqa=kvh != h)
            x = x + a.o(o.transpose(1, 2).reshape(b, t, h * hd))
            x = x + layer.mlp(layer.mlp_norm(x))
        return m.head(m.norm(x[:, -1:]))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    p.add_argument("--layers", type=int, default=None)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--prompt", type=int, default=32)
    p.add_argument("--tokens", type=int, default=16)
    p.add_argument("--max-seq", type=int, default=None, help="cache size (default: prompt + tokens)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", choices=sorted(DTYPES), default=None)
    p.add_argument("--mode", default=None, help="torch.compile mode (reduce-overhead: CUDA graphs)")
    p.add_argument("--check", action="store_true", help="assert each decode step's FLOPs = the hand count")
    return p.parse_args(argv)


def main(argv=None) -> int:
    import graphmfu

    a = parse_args(argv)
    s_max = a.max_seq or a.prompt + a.tokens
    fields = {**PRESETS[a.preset], **({"layers": a.layers} if a.layers else {})}
    cfg = LlamaConfig(**fields, max_seq=s_max)
    dtype = DTYPES[a.dtype or ("bf16" if a.device.startswith("cuda") else "fp32")]
    torch.manual_seed(0)
    model = Llama(cfg).to(device=a.device, dtype=dtype).eval()
    gen = Generator(model, StaticCache(cfg, a.batch, s_max, a.device, dtype))
    step = torch.compile(gen, backend=graphmfu.backend(mode=a.mode))
    meter = graphmfu.meter(model=model, cuda=a.device.startswith("cuda"))
    tokens = torch.randint(0, cfg.vocab, (a.batch, a.prompt), device=a.device)

    def run(record: bool):
        torch.compiler.cudagraph_mark_step_begin()
        ctx = meter.step(tokens=a.batch * a.prompt) if record else torch.no_grad()
        with torch.no_grad(), ctx:
            tok = step(tokens, torch.arange(a.prompt, device=a.device)).argmax(-1)
        for i in range(a.tokens):
            pos = torch.tensor([a.prompt + i], device=a.device)
            torch.compiler.cudagraph_mark_step_begin()
            ctx = meter.step(tokens=a.batch) if record else torch.no_grad()
            with torch.no_grad(), ctx:
                tok = step(tok, pos).argmax(-1)

    run(False)  # compile (prefill and decode graphs) and, with reduce-overhead, record the CUDA graphs
    run(True)
    rows = meter.records
    print(meter.summary(skip=1))
    print(f"{'step':>5} {'position':>8} {'flops':>14} {'dense':>14} {'hand':>14} {'kv_bytes':>12} {'MBU':>7}")
    bad = []
    for r in rows[1:]:
        p = a.prompt + r["step"] - 1
        hand = decode_step_flops(cfg, p, a.batch)
        bad += [r["step"]] if r["flops"] != hand else []
        mbu = f"{r['mbu']:.1%}" if r["mbu"] is not None else "-"
        print(f"{r['step']:>5} {p:>8} {r['flops']:>14,} {r['flops_dense']:>14,} {hand:>14,} {r['kv_bytes']:>12,} "
              f"{mbu:>7}")
    if a.check:
        if bad:
            print(f"decode steps {bad}: FLOPs differ from the hand count (counted dense? see the report's notes)",
                  file=sys.stderr)
            return 1
        print("every decode step's FLOPs equal its hand count")
    return 0


if __name__ == "__main__":
    sys.exit(main())
