"""A minimal Llama-3-style decoder (RMSNorm, RoPE, GQA attention through SDPA, SwiGLU MLP, KV
cache), compiled with the graphmfu backend and profiled per stage: prints the stage table (MFU,
MBU, memory-bound share), the top kernels on their roofline and the per-module times.

    python examples/minimal_llama.py                       # prefill + decode, CPU (or CUDA when present)
    python examples/minimal_llama.py --decode --compiled   # as in the Nsight seed; BENCHMARK NVTX range
    python examples/minimal_llama.py --device cuda --dim 4096 --ffn 11008 --heads 32 --kv-heads 32 --seq 512
    python examples/minimal_llama.py --compare             # eager against compiled, per stage and module
    graphmfu compare examples/minimal_llama.py -- --decode # the same through the CLI (graphmfu_compare below)
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
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

    def forward(self, x, cos, sin, cache=None):
        """Prefill (cache None): causal over the T new tokens.  Decode: the new token(s) attend to
        the cache plus themselves.  Returns (output, (k, v)) where k, v are this call's new keys/values."""
        b, t, _ = x.shape
        q = self.q(x).view(b, t, self.h, self.hd).transpose(1, 2)
        k = self.k(x).view(b, t, self.kv, self.hd).transpose(1, 2)
        v = self.v(x).view(b, t, self.kv, self.hd).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        new = (k, v)
        if cache is not None:
            k, v = torch.cat((cache[0], k), dim=2), torch.cat((cache[1], v), dim=2)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=cache is None, enable_gqa=self.kv != self.h)
        return self.o(y.transpose(1, 2).reshape(b, t, self.h * self.hd)), new


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

    def forward(self, x, cos, sin, cache=None):
        a, new = self.attn(self.attn_norm(x), cos, sin, cache)
        x = x + a
        return x + self.mlp(self.mlp_norm(x)), new


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

    def forward(self, tokens, caches=None):
        """Logits for ``tokens``.  With ``caches`` (a list of (k, v) per layer, [B, kv, S, hd]) the
        tokens sit after the S cached positions (decode); ``return_cache`` variants: see prefill()."""
        logits, _ = self.step(tokens, caches)
        return logits

    def step(self, tokens, caches=None):
        start = 0 if caches is None else caches[0][0].shape[2]
        t = tokens.shape[1]
        cos, sin = self.rope_cos[start:start + t], self.rope_sin[start:start + t]
        x = self.embed(tokens)
        new = []
        for i, layer in enumerate(self.layers):
            x, kv = layer(x, cos, sin, None if caches is None else caches[i])
            new.append(kv)
        return self.head(self.norm(x)), new


DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--kv-heads", type=int, default=2)
    p.add_argument("--ffn", type=int, default=688)
    p.add_argument("--vocab", type=int, default=1000)
    p.add_argument("--seq", type=int, default=128, help="prefill length = decode cache length")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", choices=sorted(DTYPES), default=None, help="default: bf16 on CUDA, fp32 on CPU")
    p.add_argument("--prefill", action="store_true", help="run prefill (default: prefill and decode)")
    p.add_argument("--decode", action="store_true", help="run one decode step over a --seq cache")
    p.add_argument("--train", action="store_true", help="a training step (forward + backward) instead")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--compiled", dest="compiled", action="store_true", default=True)
    g.add_argument("--eager", dest="compiled", action="store_false")
    p.add_argument("--mode", default=None, help="torch.compile mode, e.g. reduce-overhead (CUDA graphs)")
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--iters", type=int, default=3, help="measured iterations inside the BENCHMARK range")
    p.add_argument("--depth", type=int, default=2, help="module table depth")
    p.add_argument("--top", type=int, default=10)
    p.add_argument("--static", action="store_true", help="also print the static per-module / per-op tables")
    p.add_argument("--json", help="write the report here")
    p.add_argument("--trace", help="write the profiler trace, kernels annotated with FLOPs/bytes/MFU (.json[.gz])")
    p.add_argument("--check", action="store_true", help="also compile with plain Inductor and compare outputs")
    p.add_argument("--compare", action="store_true", help="run graphmfu.compare: eager against compiled")
    p.add_argument("--generate", type=int, default=0, metavar="N",
                   help="generate N tokens after the prefill: the KV cache grows each step (dynamic shapes); "
                        "every step is costed at its own cache length")
    return p.parse_args(argv)


def build(a):
    dtype = DTYPES[a.dtype or ("bf16" if a.device.startswith("cuda") else "fp32")]
    cfg = LlamaConfig(dim=a.dim, layers=a.layers, heads=a.heads, kv_heads=a.kv_heads, ffn=a.ffn, vocab=a.vocab,
                      max_seq=max(a.seq + getattr(a, "generate", 0) + 8, 16))
    torch.manual_seed(0)
    model = Llama(cfg).to(device=a.device, dtype=dtype)
    tokens = torch.randint(0, cfg.vocab, (a.batch, a.seq), device=a.device)
    hd = cfg.dim // cfg.heads
    caches = [(torch.randn(a.batch, cfg.kv_heads, a.seq, hd, device=a.device, dtype=dtype),
               torch.randn(a.batch, cfg.kv_heads, a.seq, hd, device=a.device, dtype=dtype)) for _ in range(cfg.layers)]
    next_tok = torch.randint(0, cfg.vocab, (a.batch, 1), device=a.device)
    return model, tokens, caches, next_tok, dtype


def generate(model, tokens, n: int, mode=None):
    """Prefill ``tokens``, then ``n`` decode steps whose KV cache grows by one token each, compiled with
    dynamic shapes and profiled; returns (report, cache lengths of the decode steps)."""
    import graphmfu

    step = torch.compile(model.step, backend=graphmfu.backend(mode=mode), dynamic=True)

    def run(lengths=None):
        torch.compiler.cudagraph_mark_step_begin()  # CUDA graphs (reduce-overhead): outputs are reused
        with graphmfu.stage("prefill"):
            logits, caches = step(tokens)
        caches = [(k.clone(), v.clone()) for k, v in caches]  # kept across calls
        tok = logits[:, -1:].argmax(-1)
        for _ in range(n):
            if lengths is not None:
                lengths.append(caches[0][0].shape[2])
            torch.compiler.cudagraph_mark_step_begin()
            with graphmfu.stage("decode"):
                logits, new = step(tok, caches)
            caches = [(torch.cat((c[0], k), 2), torch.cat((c[1], v), 2)) for c, (k, v) in zip(caches, new)]
            tok = logits[:, -1:].argmax(-1)

    with torch.no_grad():
        run()  # compile: the prefill graph and one dynamic decode graph
        lengths = []
        with graphmfu.profile() as p:
            run(lengths)
    return p.report(), lengths


def decode_step_flops(cfg, cache_len: int, batch: int = 1) -> int:
    """Matrix FLOPs of one decode step (1 new token over ``cache_len`` cached ones), by hand: per layer the
    q/o projections 2*d*d each, k/v 2*d*kv*hd each, attention QK^T and PV 2*h*(S+1)*hd each (the new
    token sees the cache and itself), the MLP 3 * 2*d*ffn; then the head 2*d*vocab."""
    d, hd = cfg.dim, cfg.dim // cfg.heads
    per_layer = 2 * (2 * d * d) + 2 * (2 * d * cfg.kv_heads * hd) + 2 * (2 * cfg.heads * (cache_len + 1) * hd) \
        + 3 * (2 * d * cfg.ffn)
    return batch * (cfg.layers * per_layer + 2 * d * cfg.vocab)


def _stage_fns(a, tokens, caches, next_tok) -> dict:
    def train(m):
        m(tokens).float().pow(2).mean().backward()

    if a.train:
        return {"train": train}
    fns = {"prefill": (tokens,), "decode": (next_tok, caches)}
    wanted = [s for s in ("prefill", "decode") if getattr(a, s)] or ["prefill", "decode"]
    return {s: fns[s] for s in wanted}


def graphmfu_compare(argv):
    """The ``graphmfu compare`` protocol: the model and its stages for these command-line args."""
    a = parse_args(argv)
    model, tokens, caches, next_tok, _ = build(a)
    return {"model": model, "stages": _stage_fns(a, tokens, caches, next_tok), "warmup": a.warmup,
            "iters": a.iters, "mode": a.mode}


def main(argv=None) -> int:
    import graphmfu

    a = parse_args(argv)
    if a.compare:
        setup = graphmfu_compare(argv)
        cmp = graphmfu.compare(setup["model"], stages=setup["stages"], warmup=a.warmup, iters=a.iters, mode=a.mode)
        print(cmp.table(depth=a.depth, top=a.top))
        if a.json:
            cmp.save(a.json)
            print(f"comparison written to {a.json}")
        return 0
    model, tokens, caches, next_tok, dtype = build(a)
    if a.generate:
        graphmfu.reset()
        rep, lengths = generate(model, tokens, a.generate, a.mode)
        dec = next(s for s in rep.stages if s["name"] == "decode")
        hand = sum(decode_step_flops(model.cfg, s, a.batch) for s in lengths)
        print(f"generate: prefill {a.seq} tokens, then {a.generate} decode steps over caches of {lengths[0]}.."
              f"{lengths[-1]} tokens (one dynamic graph, each call costed at its own length)")
        print(rep.stage_table())
        cov = rep.coverage()
        inside = sum(u["time_s"] for u in cov["unattributed_kernels"] if u["where"] == "inside graph")
        joined = rep.data["timing"]["attributed_time_s"]
        print(f"decode stage matrix FLOPs {dec['flops']:,} = sum of per-step hand counts {hand:,}: "
              f"{'equal' if dec['flops'] == hand else 'DIFFERENT'}; {cov['time_attributed'] * 100:.2f}% of all "
              f"kernel time attributed, {joined / (joined + inside) * 100:.2f}% of the time inside compiled graphs "
              f"(the rest of all: the loop's eager cache concatenation and argmax between calls)")
        return 0
    stages = ["train"] if a.train else [s for s in ("prefill", "decode") if getattr(a, s)] or ["prefill", "decode"]
    graphmfu.reset()
    fn = torch.compile(model, backend=graphmfu.backend(mode=a.mode)) if a.compiled else model
    sync = torch.cuda.synchronize if a.device.startswith("cuda") else (lambda: None)

    def run(stage):
        if stage == "train":
            fn(tokens).float().pow(2).mean().backward()
            return
        with torch.no_grad():
            if stage == "prefill":
                fn(tokens)
            else:  # one decode step: the same --seq cache every iteration (no growth, no recompiles)
                fn(next_tok, caches)

    t0 = time.perf_counter()
    for _ in range(max(a.warmup, 1)):
        for s in stages:
            run(s)
    sync()
    t_warm = time.perf_counter() - t0
    print(f"minimal_llama: dim {a.dim}, {a.layers} layers, {a.heads} q / {a.kv_heads} kv heads, ffn {a.ffn}, "
          f"vocab {a.vocab}, batch {a.batch}, seq {a.seq}, {dtype}, {a.device}, "
          f"{'compiled' + (f' ({a.mode})' if a.mode else '') if a.compiled else 'eager'}; stages {'+'.join(stages)}; "
          f"{a.warmup} warm-up iterations (incl. compile) {t_warm:.1f} s")
    events = {}
    prof = graphmfu.profile() if a.compiled else None
    with (prof or contextlib.nullcontext()):
        with graphmfu.stage("BENCHMARK"):  # NVTX range: the seed's nsys/ncu commands filter on it
            for _ in range(a.iters):
                for s in stages:
                    with graphmfu.stage(s):
                        if a.device.startswith("cuda"):
                            ev = (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
                            ev[0].record()
                            run(s)
                            ev[1].record()
                            events.setdefault(s, []).append(ev)
                        else:
                            t1 = time.perf_counter()
                            run(s)
                            events.setdefault(s, []).append(time.perf_counter() - t1)
    sync()
    for s, evs in events.items():
        ms = [e[0].elapsed_time(e[1]) if isinstance(e, tuple) else e * 1e3 for e in evs]
        print(f"{s}: {sum(ms) / len(ms):.3f} ms per iteration ({'CUDA events' if a.device.startswith('cuda') else 'wall clock'}, "
              f"{len(ms)} iterations{', under the profiler' if prof else ''})")
    if prof is None:
        print("eager run: per-op attribution of eager kernels is in the eager-vs-compiled view: "
              "python examples/minimal_llama.py --compare (or graphmfu compare examples/minimal_llama.py -- ARGS)")
        return 0
    rep = prof.report()
    if a.trace:
        prof.export_chrome_trace(a.trace)
        print(f"annotated trace written to {a.trace} (Perfetto, chrome://tracing, HTA: docs/traces.md)")
    print(rep.summary())
    print("\nstages (inclusive of nested stages; per-iteration numbers are totals / calls):")
    print(rep.stage_table())
    print(f"\ntop {a.top} kernels by measured time:")
    print(rep.kernel_table(top=a.top))
    print(f"\nper module (depth {a.depth}), measured:")
    print(rep.module_time_table(depth=a.depth, top=a.top))
    if a.static:
        print(f"\nstatic, per module (depth {a.depth}):")
        print(rep.table(by="module", depth=a.depth, top=a.top))
        print("\nstatic, per op:")
        print(rep.table(by="op", top=a.top))
    if a.check:
        check(model, fn, tokens)
    if a.json:
        rep.save(a.json)
        print(f"report written to {a.json}")
    return 0


def check(model, compiled, tokens):
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
    print(f"check: eager vs plain torch.compile: {diff(eager, refs[0])} (max |logit| {refs[0].abs().max().item():.3g})")


if __name__ == "__main__":
    sys.exit(main())
