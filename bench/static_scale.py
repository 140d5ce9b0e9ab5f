"""graphmfu.analyze at scale: a Llama-3-70B-shaped model (80 layers, d 8192, 64 q / 8 kv heads,
ffn 28672, vocab 128256), 1x2048 tokens, forward, bf16, on meta/fake tensors (no weights exist).

Prints dense and effective matrix FLOPs, FlopCounterMode's count on the same meta model, wall time
and peak RSS.  Targets: <= 30 s and <= 2 GB on a 2-core machine; dense == FlopCounterMode.
    python bench/static_scale.py [--layers 80] [--seq 2048]
"""
import argparse
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

import graphmfu  # noqa: E402
from examples.minimal_llama import Llama, LlamaConfig  # noqa: E402


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--layers", type=int, default=80)
    p.add_argument("--seq", type=int, default=2048)
    p.add_argument("--device", default="h100-sxm", help="ceilings for the roofline (a name from the table)")
    a = p.parse_args()
    cfg = LlamaConfig(dim=8192, layers=a.layers, heads=64, kv_heads=8, ffn=28672, vocab=128256, max_seq=a.seq)
    t0 = time.perf_counter()
    with torch.device("meta"):
        model = Llama(cfg).to(torch.bfloat16)
    tokens = torch.zeros(1, a.seq, dtype=torch.long, device="meta")
    t1 = time.perf_counter()
    rep = graphmfu.analyze(model, tokens, device=a.device)
    t2 = time.perf_counter()
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        model(tokens)  # on meta, SDPA runs as its math decomposition: bmm, which FlopCounterMode counts
    t3 = time.perf_counter()
    rss_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2
    tot = rep.totals
    # hand formula: per layer 2*T*d*(d + 2*kv*hd + d) + 2*T*d*3*ffn (GEMMs) + 4*T*T*d (attention, dense)
    T, d, hd, f, V, L = a.seq, 8192, 128, 28672, 128256, a.layers
    gemm = L * (2 * T * d * (d + 2 * 8 * hd + d) + 2 * T * d * 3 * f) + 2 * T * d * V
    attn_dense, attn_causal = L * 4 * T * T * d, L * 4 * (T * (T + 1) // 2) * d
    print(f"static_scale: Llama-3-70B shape, {L} layers, 1x{T} tokens, bf16, forward, meta/fake tensors")
    print(f"  nodes                         {tot['nodes']}")
    print(f"  graphmfu flops_dense          {tot['flops_dense']:,}")
    print(f"  graphmfu flops (causal)       {tot['flops']:,}")
    print(f"  FlopCounterMode               {fc.get_total_flops():,}")
    print(f"  hand formula dense / causal   {gemm + attn_dense:,} / {gemm + attn_causal:,}")
    print(f"  dense == FlopCounterMode      {tot['flops_dense'] == fc.get_total_flops()}")
    print(f"  dense == hand formula         {tot['flops_dense'] == gemm + attn_dense}; "
          f"causal == hand formula {tot['flops'] == gemm + attn_causal}")
    print(f"  2ND (N = params w/o embedding){2 * T * (sum(p.numel() for p in model.parameters()) - V * d):,}")
    print(f"  analyze wall time             {t2 - t1:.1f} s   (model build {t1 - t0:.1f} s, "
          f"FlopCounterMode {t3 - t2:.1f} s)")
    print(f"  peak RSS                      {rss_gb:.2f} GB")
    print(f"  roofline t_min on {rep.data['device']['name']}: {tot['t_min_s'] * 1e3:.1f} ms")
    ok = tot["flops_dense"] == fc.get_total_flops() and t2 - t1 <= 30 and rss_gb <= 2
    print(f"  targets (<=30 s, <=2 GB, dense == FlopCounterMode): {'met' if ok else 'NOT met'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
