"""Issue 21 (trust, round 3): defects found by using graphmfu as a new user would.  Each test reproduces
one reported defect and failed on the code before its fix."""
from __future__ import annotations

import torch

import graphmfu
from tests.test_attention_masks_percall import PER_PAIR, Causal, H, D


def test_dynamic_graph_with_a_probed_mask_attributes_all_kernel_time(fresh):
    """dynamic=True, called at T = 8, 24, 40 in one stage (CPU): the probe's count was read (aten::item)
    outside graphmfu's probe range, so it showed as unattributed model time."""
    torch.manual_seed(0)
    cm = torch.compile(Causal().eval(), backend=graphmfu.backend, dynamic=True)
    xs = [torch.randn(1, t, H * D) for t in (8, 24, 40)]
    with torch.no_grad():
        cm(xs[0])
        with graphmfu.profile() as p, graphmfu.stage("s"):
            for x in xs:
                cm(x)
    rep = p.report()
    assert rep.coverage()["time_attributed"] >= 0.99, rep.coverage()["unattributed_kernels"]
    assert not [u for u in rep.coverage()["unattributed_kernels"] if u["name"] == "aten::item"]
    sdpa, = [k for k in rep.kernels if k["name"].startswith("torch.ops.aten._scaled_dot_product")]
    # causal: T(T+1)/2 pairs per head: 36 + 300 + 820 = 1156, x 2 heads x 32 FLOPs = 73984
    assert sdpa["flops"] == (36 + 300 + 820) * H * PER_PAIR == 73984
