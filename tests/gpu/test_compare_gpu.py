"""graphmfu.compare on CUDA (run through the device tool): both sides fully attributed, FLOPs equal."""
import pytest
import torch

import graphmfu

pytestmark = pytest.mark.gpu


def test_compare_cuda_small_llama():
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples"))
    from minimal_llama import graphmfu_compare

    setup = graphmfu_compare(["--device", "cuda", "--dim", "256", "--layers", "2", "--seq", "64"])
    cmp = graphmfu.compare(setup["model"], stages=setup["stages"], warmup=3, iters=3)
    cov = cmp.coverage()
    assert cov["eager"]["time_attributed"] > 0.99, cov["eager"]["unattributed_kernels"]
    assert cov["compiled"]["time_attributed"] > 0.99, cov["compiled"]["unattributed_kernels"]
    for s in cmp.stages:
        assert s["flops_match"], s
        assert s["eager"]["kernels"] > s["compiled"]["kernels"]  # fusion
        assert s["compiled"]["bytes"] <= s["eager"]["bytes"]
        for side in ("eager", "compiled"):
            assert abs(s[side]["span_s"] / s[side]["event_s"] - 1) < 0.25, (s["name"], side, s[side])
