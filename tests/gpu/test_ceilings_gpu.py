"""On the GPU: no kernel row above its peak; MBU above 100% only with a flag (issue 9)."""
import pytest
import torch

import graphmfu

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("mode", [None, "reduce-overhead"])
def test_no_kernel_above_peak_and_mbu_above_100_only_flagged(fresh, mode):
    from examples.minimal_llama import build, parse_args

    ma = parse_args(["--device", "cuda", "--dtype", "bf16", "--dim", "2048", "--ffn", "5504", "--heads", "16",
                     "--kv-heads", "16", "--layers", "2", "--seq", "512", "--vocab", "32000"])
    model, tokens, caches, next_tok, _ = build(ma)
    cm = torch.compile(model, backend=graphmfu.backend(mode=mode))
    with torch.no_grad():
        for _ in range(3):
            cm(tokens), cm(next_tok, caches)
        with graphmfu.profile() as p:
            for _ in range(3):
                with graphmfu.stage("prefill"):
                    cm(tokens)
                with graphmfu.stage("decode"):
                    cm(next_tok, caches)
    rep = p.report()
    over = [(k["name"], k["stage"], k["mfu"]) for k in rep.kernels if (k["mfu"] or 0) > 1]
    assert not over, over
    bare = [(k["name"], k["stage"], k["mbu"]) for k in rep.kernels if (k["mbu"] or 0) > 1 and not k["flags"]]
    assert not bare, bare
    flagged = [(k["name"][:40], k["stage"], round(k["mbu"], 3), k["flags"]) for k in rep.kernels if k["flags"]]
    print(f"mode {mode}: {len(rep.kernels)} kernel rows, max MFU {max((k['mfu'] or 0) for k in rep.kernels):.3f}, "
          f"max MBU {max((k['mbu'] or 0) for k in rep.kernels):.3f}, flagged {flagged}")
