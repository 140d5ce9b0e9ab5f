"""A minimal Llama-3-style decoder (RMSNorm, RoPE, GQA attention through SDPA, SwiGLU MLP),
compiled with the graphmfu backend; prints the per-module and per-op roofline tables.

    python examples/minimal_llama.py                      # CPU (or CUDA when present), small sizes
    python examples/minimal_llama.py --device cuda --dtype bf16 --dim 4096 --ffn 11008 --heads 32 \\
        --kv-heads 8 --layers 2 --seq 512 --inference
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclasses.dataclass
class LlamaConfig:
    dim: int = 256
    layers: int = 2
    heads: int = 8
    kv_heads: int = 2
    ffn: int = 688
    vocab: int = 1000
    max_seq: int = 4096
    rope_theta: float = 500000.0
    norm_eps: float = 1e-5


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).type_as(x) * self.weight


def rope_tables(cfg: LlamaConfig, device=None):
    hd = cfg.dim // cfg.heads
    inv = 1.0 / (cfg.rope_theta ** (torch.arange(0, hd, 2, device=device).float() / hd))
    t = torch.arange(cfg.max_seq, device=device).float()
    freqs = torch.outer(t, inv)
    return freqs.cos(), freqs.sin()


def apply_rope(x, cos, sin):
    # x: [B, H, T, D]; rotate pairs (even, odd) — real arithmetic, compile friendly
    x1, x2 = x[..., 0::2], x[..., 1::2]
    c, s = cos[None, None], sin[None, None]
    return torch.stack((x1 * c - x2 * s, x1 * s + x2 * c), dim=-1).flatten(-2)


class Attention(nn.Module):
    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.h, self.kv, self.hd = cfg.heads, cfg.kv_heads, cfg.dim // cfg.heads
        self.q = nn.Linear(cfg.dim, cfg.heads * self.hd, bias=False)
        self.k = nn.Linear(cfg.dim, cfg.kv_heads * self.hd, bias=False)
        self.v = nn.Linear(cfg.dim, cfg.kv_heads * self.hd, bias=False)
        self.o = nn.Linear(cfg.heads * self.hd, cfg.dim, bias=False)

    def forward(self, x, cos, sin):
        b, t, _ = x.shape
        q = self.q(x).view(b, t, self.h, self.hd).transpose(1, 2)
        k = self.k(x).view(b, t, self.kv, self.hd).transpose(1, 2)
        v = self.v(x).view(b, t, self.kv, self.hd).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=self.kv != self.h)
        return self.o(y.transpose(1, 2).reshape(b, t, self.h * self.hd))


class MLP(nn.Module):
    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.gate = nn.Linear(cfg.dim, cfg.ffn, bias=False)
        self.up = nn.Linear(cfg.dim, cfg.ffn, bias=False)
        self.down = nn.Linear(cfg.ffn, cfg.dim, bias=False)

    def forward(self, x):
        return self.down(F.silu(self.gate(x)) * self.up(x))


class Block(nn.Module):
    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.attn_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.attn = Attention(cfg)
        self.mlp_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, x, cos, sin):
        x = x + self.attn(self.attn_norm(x), cos, sin)
        return x + self.mlp(self.mlp_norm(x))


class Llama(nn.Module):
    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab, cfg.dim)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.layers))
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.head = nn.Linear(cfg.dim, cfg.vocab, bias=False)
        cos, sin = rope_tables(cfg)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)

    def forward(self, tokens):
        t = tokens.shape[1]
        cos, sin = self.rope_cos[:t], self.rope_sin[:t]
        x = self.embed(tokens)
        for layer in self.layers:
            x = layer(x, cos, sin)
        return self.head(self.norm(x))


DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--kv-heads", type=int, default=2)
    p.add_argument("--ffn", type=int, default=688)
    p.add_argument("--vocab", type=int, default=1000)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", choices=sorted(DTYPES), default=None, help="default: bf16 on CUDA, fp32 on CPU")
    p.add_argument("--inference", action="store_true", help="forward only (default: a training step)")
    p.add_argument("--depth", type=int, default=3, help="module table depth")
    p.add_argument("--top", type=int, default=12)
    p.add_argument("--json", help="write the report here")
    p.add_argument("--check", action="store_true", help="also compile with plain Inductor and compare outputs")
    return p.parse_args(argv)


def main(argv=None) -> int:
    import graphmfu

    a = parse_args(argv)
    dtype = DTYPES[a.dtype or ("bf16" if a.device.startswith("cuda") else "fp32")]
    cfg = LlamaConfig(dim=a.dim, layers=a.layers, heads=a.heads, kv_heads=a.kv_heads, ffn=a.ffn, vocab=a.vocab,
                      max_seq=max(a.seq, 16))
    torch.manual_seed(0)
    model = Llama(cfg).to(device=a.device, dtype=dtype)
    tokens = torch.randint(0, cfg.vocab, (a.batch, a.seq), device=a.device)
    graphmfu.reset()
    compiled = torch.compile(model, backend=graphmfu.backend)
    t0 = time.perf_counter()
    if a.inference:
        with torch.no_grad():
            out = compiled(tokens)
    else:
        out = compiled(tokens)
        out.float().pow(2).mean().backward()
    if a.device.startswith("cuda"):
        torch.cuda.synchronize()
    t_first = time.perf_counter() - t0
    rep = graphmfu.report()
    print(f"minimal_llama: dim {a.dim}, {a.layers} layers, {a.heads} q / {a.kv_heads} kv heads, ffn {a.ffn}, "
          f"vocab {a.vocab}, {a.batch}x{a.seq} tokens, {dtype}, {a.device}, "
          f"{'inference' if a.inference else 'training step'}; compile + first call {t_first:.1f} s")
    print(rep.summary())
    print(f"\nper module (depth {a.depth}, top {a.top} by roofline time):")
    print(rep.table(by="module", depth=a.depth, top=a.top))
    print(f"\nper op (top {a.top}):")
    print(rep.table(by="op", top=a.top))
    if a.check:
        # Inductor autotunes some kernels by timing, so two plain compiles can already differ in the
        # last bit: compare the backend against plain compile, and plain compile against itself.
        with torch.no_grad():
            got = compiled(tokens).float()
            refs = []
            for _ in range(2):
                torch._dynamo.reset()
                refs.append(torch.compile(model)(tokens).float())
            eager = model(tokens).float()

        def diff(x, y):
            return f"{int((x != y).sum())} of {x.numel()} logits differ, max |diff| {(x - y).abs().max().item():.3g}"

        print(f"check: graphmfu backend vs plain torch.compile: {diff(got, refs[0])}")
        print(f"check: plain torch.compile vs plain torch.compile (2nd compile): {diff(refs[1], refs[0])}")
        print(f"check: eager vs plain torch.compile: {diff(eager, refs[0])} (max |logit| "
              f"{refs[0].abs().max().item():.3g})")
    if a.json:
        rep.save(a.json)
        print(f"report written to {a.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
