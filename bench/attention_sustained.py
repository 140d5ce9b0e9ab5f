"""Attention's achieved fraction of peak at Llama 3 405B's per-rank shapes (TP 8: 16 query heads, 1 KV head of 128),
causal, forward + backward, per SDPA backend; then one backend (``--sustain``, default flash: FlashAttention-2, the kernel
of the stated 35%) looped for ``--seconds`` per shape at the power limit.

The fraction is graphmfu's convention (rules/attention.py, docs/conventions.md): matrix FLOPs at the pairs the
causal mask keeps, s (s + 1) / 2 per head, forward 4 x head_dim per pair, backward twice the forward; over the
measured time and the bf16 datasheet peak (989.5 TFLOP/s, the H100 and H200 SXM).  The plan's stated attention
ceiling (graphmfu/parallel/ceilings.csv) is FlashAttention-2's 35% from the FlashAttention-3 paper.

``--cp-rank``: also one context-parallel rank of the paper's 128K layout (131,072 tokens over CP 16, the sequence
cut in 32 chunks of 4,096 and rank r given chunks r and 31 - r, all-gathered keys): rank 7's two chunks, 4,096
queries each against 32,768 and 102,400 keys, causal aligned lower right (each query sees the keys up to its
position), timed as a pair; its sustained figure loops that pair.

    python bench/attention_sustained.py [--seqs 8192,32768] [--seconds 20] [--sustain flash] [--cp-rank] [--out DIR]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

PEAK_BF16 = 989.5e12
HEADS, HEAD_DIM = 16, 128  # 128 query heads / TP 8; the 8 KV heads / TP 8 = 1, expanded to 16 for SDPA
BACKENDS = {"flash": SDPBackend.FLASH_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION,
            "efficient": SDPBackend.EFFICIENT_ATTENTION}


CP_RANK = ((4096, 32768), (4096, 102400))  # rank 7 of CP 16 at 131,072 tokens: chunks 7 and 24 of 32


def pairs(lq: int, lk: int) -> float:
    """Kept pairs of causal attention aligned lower right (square: s (s + 1) / 2)."""
    return lq * (lk - lq) + lq * (lq + 1) / 2


def flops(chunks, backward: bool = True) -> float:
    fwd = sum(4 * HEAD_DIM * pairs(lq, lk) * HEADS for lq, lk in chunks)
    return fwd * (3 if backward else 1)


def inputs(chunks):
    out = []
    for lq, lk in chunks:
        q = torch.randn(1, HEADS, lq, HEAD_DIM, device="cuda", dtype=torch.bfloat16, requires_grad=True)
        kv = [torch.randn(1, 1, lk, HEAD_DIM, device="cuda", dtype=torch.bfloat16) for _ in range(2)]
        k, v = (x.expand(1, HEADS, lk, HEAD_DIM).contiguous().requires_grad_(True) for x in kv)
        out.append((q, k, v, torch.randn(1, HEADS, lq, HEAD_DIM, device="cuda", dtype=torch.bfloat16)))
    return out


def step(ins, backward=True):
    from torch.nn.attention.bias import causal_lower_right

    for q, k, v, dy in ins:
        if q.shape[2] == k.shape[2]:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=causal_lower_right(q.shape[2], k.shape[2]))
        if backward:
            torch.autograd.backward(y, dy)
            q.grad = k.grad = v.grad = None


def timed(fn, n) -> float:
    s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    s.record()
    for _ in range(n):
        fn()
    e.record()
    e.synchronize()
    return s.elapsed_time(e) * 1e-3 / n


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seqs", default="8192,32768")
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--sustain", default="flash", choices=sorted(BACKENDS))
    ap.add_argument("--cp-rank", action="store_true")
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    lines = [f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}; causal SDPA, {HEADS} heads of {HEAD_DIM} "
             f"(405B at TP 8), batch 1; fraction = kept-pair matrix FLOPs / time / 989.5 TFLOP/s"]
    res = {}
    shapes = {str(x): ((int(x), int(x)),) for x in a.seqs.split(",")}
    if a.cp_rank:
        shapes["cp16x131072 rank 7"] = CP_RANK
    for label, chunks in shapes.items():
        ins = inputs(chunks)
        for name, be in BACKENDS.items():
            try:
                with sdpa_kernel([be]):
                    for bwd in (False, True):
                        step(ins, bwd)
                        torch.cuda.synchronize()
                        ts = [timed(lambda: step(ins, bwd), 3) for _ in range(5)]
                        res[(label, name, bwd)] = flops(chunks, bwd) / min(ts)
            except RuntimeError as e:
                lines.append(f"{label} {name}: not available ({str(e).splitlines()[0][:120]})")
                continue
            lines.append(f"{label:>18} {name:>9}: forward {res[(label, name, False)] / 1e12:6.1f} TFLOP/s "
                         f"({res[(label, name, False)] / PEAK_BF16:.1%}), forward+backward "
                         f"{res[(label, name, True)] / 1e12:6.1f} ({res[(label, name, True)] / PEAK_BF16:.1%}) best of 5x3",
                         )
            print(lines[-1], flush=True)
        del ins
    windows = {}
    for label, chunks in shapes.items():
        ins = inputs(chunks)
        w, t_end = [], time.perf_counter() + a.seconds
        with sdpa_kernel([BACKENDS[a.sustain]]):
            per = timed(lambda: step(ins), 1)
            n = max(1, int(1.0 / per))
            while time.perf_counter() < t_end:
                w.append(flops(chunks) / timed(lambda: step(ins), n))
        late = w[len(w) // 2:]
        windows[label] = w
        lines.append(f"sustained {label}, {a.sustain}, forward+backward, {len(w)} windows of ~1 s: second half median "
                     f"{statistics.median(late) / 1e12:.1f} TFLOP/s = {statistics.median(late) / PEAK_BF16:.1%} of peak "
                     f"(first window {w[0] / 1e12:.1f})")
        print(lines[-1], flush=True)
        del ins
    text = "\n".join(lines)
    print(text)
    if a.out:
        Path(a.out).mkdir(parents=True, exist_ok=True)
        (Path(a.out) / "attention_sustained.txt").write_text(text + "\n")
        (Path(a.out) / "attention_sustained.json").write_text(json.dumps(
            {"best_of": {f"{s}/{n}/{'fwd+bwd' if b else 'fwd'}": v for (s, n, b), v in res.items()},
             "sustained": windows, "backend": a.sustain}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
