"""graphmfu.analyze at frontier scale, on meta tensors (no weights exist), bf16, 1x2048 tokens:

* Llama-3-70B shape (80 layers, d 8192, 64 q / 8 kv heads, ffn 28672, vocab 128256), inference;
* Llama-3.1-405B shape (126 layers, d 16384, 128 q / 8 kv heads, ffn 53248, vocab 128256), training
  (forward + backward).

Each is analysed with ``analyze(..., fast=True)`` (graphmfu/plan.py: one run on meta tensors under
the dispatch-level recorder, costs memoized per op signature) and counted by FlopCounterMode on the
same meta model in the same process.  Times include deriving the report's totals.  Printed: times,
their ratio, peak RSS, dense matrix FLOPs against FlopCounterMode and the hand formula.
Targets: 70B time <= 2x FlopCounterMode's, for fast=True and for the default analyze(); 405B training <= 10 s and <= 2 GB peak RSS; dense
FLOPs == FlopCounterMode == hand formula.  ``--compiled`` also times the compiled analysis
(Dynamo + AOTAutograd, ``analyze(fast=False)``) of the 70B shape (about 20-30 s here).
    python bench/static_scale.py [--seq 2048] [--layers-70b 80] [--layers-405b 126] [--compiled]
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

SHAPES = {"70B": dict(dim=8192, heads=64, kv_heads=8, ffn=28672, vocab=128256),
          "405B": dict(dim=16384, heads=128, kv_heads=8, ffn=53248, vocab=128256)}


def rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2  # Linux: KiB


def build(shape: str, layers: int, seq: int):
    cfg = LlamaConfig(layers=layers, max_seq=seq, **SHAPES[shape])
    with torch.device("meta"):
        model = Llama(cfg).to(torch.bfloat16)
    return cfg, model, torch.zeros(1, seq, dtype=torch.long, device="meta")


def hand_formula(cfg: LlamaConfig, T: int) -> tuple[int, int]:
    """Forward matrix FLOPs (dense, causal): per layer 2*T*d*(d + 2*kv*hd + d) (q, k, v, o) +
    2*T*d*3*ffn (gate, up, down) + attention 4*T*T*d dense (Q@K^T and P@V over all query heads;
    causal: the T*(T+1)/2 lower triangle), plus the head 2*T*d*vocab."""
    d, hd, kv, f, V, L = cfg.dim, cfg.dim // cfg.heads, cfg.kv_heads, cfg.ffn, cfg.vocab, cfg.layers
    gemm = L * (2 * T * d * (d + 2 * kv * hd + d) + 2 * T * d * 3 * f) + 2 * T * d * V
    return gemm + L * 4 * T * T * d, gemm + L * 4 * (T * (T + 1) // 2) * d


def flop_counter(model, tokens, training: bool) -> tuple[int, float]:
    t0 = time.perf_counter()
    with FlopCounterMode(display=False) as fc, torch.set_grad_enabled(training):
        out = model(tokens)  # on meta, SDPA runs as its math decomposition: bmm, which FlopCounterMode counts
        if training:
            out.sum().backward()
    dt = time.perf_counter() - t0
    for p in model.parameters():
        p.grad = None
    return fc.get_total_flops(), dt


def fast(model, tokens, training: bool, device: str):
    t0 = time.perf_counter()
    rep = graphmfu.analyze(model, tokens, training=training, device=device, fast=True)
    tot = rep.totals  # derived on first use: part of the cost of an answer
    return rep, tot, time.perf_counter() - t0


def case(label: str, shape: str, layers: int, seq: int, training: bool, device: str) -> dict:
    t0 = time.perf_counter()
    cfg, model, tokens = build(shape, layers, seq)
    t_build = time.perf_counter() - t0
    fc_flops, t_fc = flop_counter(model, tokens, training)
    rep, tot, t_an = fast(model, tokens, training, device)
    dense, causal = hand_formula(cfg, seq)
    if training:  # backward = 2x forward for every product (every layer's input requires grad)
        dense, causal = 3 * dense, 3 * causal
    rss = rss_gb()
    print(f"{label}: Llama-3 {shape} shape, {layers} layers, 1x{seq} tokens, bf16, "
          f"{'training (fw+bw)' if training else 'inference'}, meta tensors, analyze(fast=True)")
    print(f"  nodes                          {tot['nodes']}")
    print(f"  graphmfu flops_dense           {tot['flops_dense']:,}")
    print(f"  FlopCounterMode                {fc_flops:,}")
    print(f"  hand formula dense / causal    {dense:,} / {causal:,}")
    print(f"  dense == FlopCounterMode       {tot['flops_dense'] == fc_flops}; dense == hand formula "
          f"{tot['flops_dense'] == dense}; causal == hand formula {tot['flops'] == causal}")
    print(f"  analyze time                   {t_an:.2f} s   FlopCounterMode {t_fc:.2f} s   ratio "
          f"{t_an / t_fc:.2f}x   (model build {t_build:.2f} s)")
    print(f"  peak RSS (process, so far)     {rss:.2f} GB")
    print(f"  roofline t_min on {rep.data['device']['name']}: {tot['t_min_s'] * 1e3:.1f} ms")
    return {"t": t_an, "ratio": t_an / t_fc, "rss": rss, "dense": tot["flops_dense"],
            "exact": tot["flops_dense"] == fc_flops == dense and tot["flops"] == causal}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--seq", type=int, default=2048)
    p.add_argument("--layers-70b", type=int, default=80)
    p.add_argument("--layers-405b", type=int, default=126)
    p.add_argument("--device", default="h100-sxm", help="ceilings for the roofline (a name from the table)")
    p.add_argument("--compiled", action="store_true", help="also time the compiled analyze(fast=False) of the 70B shape")
    a = p.parse_args()
    # warm-up of both paths on a 1-layer model (imports, rule loading): not part of either time
    _, m, tok = build("70B", 1, 16)
    flop_counter(m, tok, True)
    fast(m, tok, True, a.device)
    r70 = case("static_scale 70B", "70B", a.layers_70b, a.seq, False, a.device)
    # the default analyze() (no fast= argument) picks the fast path where the compiled graphs would not
    # answer differently (issue 21): the same 70B shape, timed against FlopCounterMode in this run
    _, model, tokens = build("70B", a.layers_70b, a.seq)
    t0 = time.perf_counter()
    rep = graphmfu.analyze(model, tokens, device=a.device)
    tot = rep.totals
    t_default = time.perf_counter() - t0
    _, t_fc = flop_counter(model, tokens, False)
    path = next((n for n in rep.data["notes"] if n.startswith("analysis path")), "?")
    print(f"default analyze() of the 70B shape: {t_default:.2f} s, FlopCounterMode {t_fc:.2f} s, ratio "
          f"{t_default / t_fc:.2f}x; flops_dense == fast: {tot['flops_dense'] == r70['dense']}; {path[:60]}")
    r70["default_ratio"] = t_default / t_fc
    r405 = case("static_scale 405B", "405B", a.layers_405b, a.seq, True, a.device)
    if a.compiled:
        _, model, tokens = build("70B", a.layers_70b, a.seq)
        t0 = time.perf_counter()
        rep = graphmfu.analyze(model, tokens, device=a.device, fast=False)
        tot = rep.totals
        print(f"compiled analyze(fast=False) of the 70B shape: {time.perf_counter() - t0:.1f} s, {tot['nodes']} nodes, "
              f"flops_dense {tot['flops_dense']:,} (== fast: {tot['flops_dense'] == r70['dense']})")
    ok = (r70["exact"] and r405["exact"] and r70["ratio"] <= 2 and r70["default_ratio"] <= 2 and r405["t"] <= 10
          and r405["rss"] <= 2)
    print(f"targets (70B <= 2x FlopCounterMode: fast {r70['ratio']:.2f}x, default {r70['default_ratio']:.2f}x; "
          f"405B training <= 10 s: {r405['t']:.2f} s, "
          f"<= 2 GB: {r405['rss']:.2f} GB; FLOPs exact): {'met' if ok else 'NOT met'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
