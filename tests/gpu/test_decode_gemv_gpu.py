"""Decode at batch 1 under max-autotune (GPU, issue 21 item 1): coordinate-descent tuning makes Inductor
decompose every M == 1 GEMM into a broadcast mul + sum (a GEMV); each must be counted as the product it is.
Hand count: examples.minimal_llama.decode_step_flops (2*d*d per q/o projection, 2*d*kv*hd per k/v, the
attention's two products over the cache and the new token, 3 * 2*d*ffn, the head 2*d*vocab)."""
import pytest
import torch

import graphmfu
from examples.minimal_llama import Llama, LlamaConfig, decode_step_flops

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("mode", ["max-autotune", "default"])
def test_decode_batch1_counts_every_gemv(fresh, mode):
    torch.manual_seed(0)
    cfg = LlamaConfig(dim=1024, layers=2, heads=8, kv_heads=2, ffn=2816, vocab=32000, max_seq=256)
    model = Llama(cfg).to(device="cuda", dtype=torch.bfloat16).eval()
    cache_len = 128
    hd = cfg.dim // cfg.heads
    caches = [(torch.randn(1, cfg.kv_heads, cache_len, hd, device="cuda", dtype=torch.bfloat16),
               torch.randn(1, cfg.kv_heads, cache_len, hd, device="cuda", dtype=torch.bfloat16))
              for _ in range(cfg.layers)]
    tok = torch.randint(0, cfg.vocab, (1, 1), device="cuda")
    cm = torch.compile(model, backend=graphmfu.backend(mode=mode))
    with torch.no_grad():
        for _ in range(2):
            cm(tok, caches)
        with graphmfu.profile() as p, graphmfu.stage("decode"):
            cm(tok, caches)
    rep = p.report()
    hand = decode_step_flops(cfg, cache_len, 1)
    st = {s["name"]: s for s in rep.stages}["decode"]
    assert rep.totals["flops"] == hand, (rep.totals["flops"], hand)
    assert st["flops"] == hand
    decomposed = rep.coverage()["decomposed_matmul"]
    if mode == "max-autotune":
        assert decomposed > 0, "coordinate descent decomposed no GEMV: the check did not exercise the pass"
    print(f"{mode}: decode FLOPs {st['flops']:,} = hand {hand:,}; {decomposed} node(s) from decomposed GEMVs; "
          f"time attributed {rep.coverage()['time_attributed']:.4f}")
    for u in rep.coverage()["unattributed_kernels"][:8]:
        print("  unattributed:", u)
    if mode == "default":  # max-autotune replays a CUDA graph (joined by order): its attribution is reported above
        assert rep.coverage()["time_attributed"] >= 0.99
