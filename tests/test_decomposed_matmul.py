"""Matrix products Inductor rewrites as mul + sum (issue 21, item 1): counted as the products they are in
every path.  Each hand count is 2*m*n*k (FlopCounterMode's convention), written beside the value; each
case is also checked against FlopCounterMode on the eager call."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

import graphmfu
from graphmfu.registry import Registry


def _flop_counter(fn, *args) -> int:
    with FlopCounterMode(display=False) as m:
        fn(*args)
    return m.get_total_flops()


def _linear16():
    torch.manual_seed(0)
    return nn.Linear(16, 16)


CASES = {  # name: (make fn, make args, hand count)
    "linear_batch1": (_linear16, lambda: (torch.randn(1, 16),), 2 * 1 * 16 * 16),  # 512
    "outer_k1": (lambda: (lambda a, b: a @ b), lambda: (torch.randn(8, 1), torch.randn(1, 4)), 2 * 8 * 4 * 1),  # 64
    "bmm_k1": (lambda: torch.bmm, lambda: (torch.randn(4, 8, 1), torch.randn(4, 1, 16)), 2 * 4 * 8 * 16 * 1),  # 1024
    "einsum_dot": (lambda: (lambda a, b: torch.einsum("ij,ij->", a, b)),
                   lambda: (torch.randn(4, 6), torch.randn(4, 6)), 2 * 24),  # 48
    "vec_at_3d": (lambda: (lambda a, b: a @ b), lambda: (torch.randn(7), torch.randn(5, 7, 3)), 2 * 5 * 3 * 7),  # 210
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_backend_analyze_and_fast_count_the_product(fresh, name):
    make, make_args, hand = CASES[name]
    fn, args = make(), make_args()
    assert _flop_counter(fn, *args) == hand
    torch.compile(fn, backend=graphmfu.backend)(*args)
    rep = graphmfu.report()
    assert rep.totals["flops"] == hand
    torch._dynamo.reset()
    assert graphmfu.analyze(fn, *args).totals["flops"] == hand
    assert graphmfu.analyze(fn, *args, fast=True).totals["flops"] == hand
    decomposed = [n for n in rep.nodes if "decomposed_matmul" in n.get("flags", ())]
    assert decomposed, "the decomposition is named on its nodes"
    assert any("decomposed by Inductor" in n.get("note", "") for n in decomposed)
    assert rep.coverage()["decomposed_matmul"] == len(decomposed)
    assert any(line.startswith(f"{len(decomposed)} node(s) are matrix products Inductor decomposed")
               for line in rep.data["notes"])


def test_linear_node_says_which_decomposition_ran(fresh):
    m = _linear16()
    torch.compile(m, backend=graphmfu.backend)(torch.randn(1, 16))
    rows = {n["name"]: n for n in graphmfu.report().nodes}
    assert rows["mul"]["flops"] == 512 and rows["mul"]["vector_flops"] == 0
    assert "addmm decomposed by Inductor: the product" in rows["mul"]["note"]
    assert rows["sum_1"]["flops"] == 0 and rows["sum_1"]["vector_flops"] == 0  # its adds are in the 2
    assert "the product's sum" in rows["sum_1"]["note"]
    # beta * bias and the add of the bias stay vector work (1 FLOP per element): 16 + 16, alpha * out 16
    assert graphmfu.report().totals["vector_flops"] == 16 + 16 + 16


def test_bf16_product_counted_in_bf16_not_the_decompositions_fp32(fresh):
    m = _linear16().to(torch.bfloat16)
    torch.compile(m, backend=graphmfu.backend)(torch.randn(1, 16, dtype=torch.bfloat16))
    mul = [n for n in graphmfu.report().nodes if "decomposed_matmul" in n.get("flags", ()) and n["flops"]]
    assert len(mul) == 1 and mul[0]["flops_by_dtype"] == {"bf16": 512}
    assert mul[0]["inputs"][0][1] == "float32"  # Inductor's upcast ran before the mul


def test_dynamic_batch_outer_product_per_call(fresh):
    """[B, M, 1] @ [B, 1, N] is a broadcast mul for every B: under profile() each call at its own B."""
    f = torch.compile(torch.bmm, backend=graphmfu.backend, dynamic=True)
    for b in (3, 5):
        f(torch.randn(b, 8, 1), torch.randn(b, 1, 16))
    with graphmfu.profile() as p:
        with graphmfu.stage("calls"):
            for b in (3, 5, 7):
                f(torch.randn(b, 8, 1), torch.randn(b, 1, 16))
    st = {s["name"]: s for s in p.report().stages}["calls"]
    assert st["flops"] == sum(2 * b * 8 * 16 * 1 for b in (3, 5, 7)) == 3840


def test_meter_batch1_loop_counts_the_gemv():
    reg = Registry()
    m = _linear16()
    f = torch.compile(m, backend=graphmfu.Backend(registry=reg))
    meter = graphmfu.meter(registry=reg, model=m)
    with torch.no_grad():
        for _ in range(3):
            with meter.step(tokens=1):
                f(torch.randn(1, 16))
    for r in meter.records:
        assert r["flops"] == 2 * 1 * 16 * 16 == 512
        assert r["mfu"] > 0


def test_training_backward_outer_products_counted(fresh):
    """Batch-1 training: the weight gradient is a K == 1 outer product ([16,1] @ [1,16]); FlopCounterMode
    counts forward 512 + grad-input 512 + grad-weight 512."""
    m = _linear16()
    x = torch.randn(1, 16, requires_grad=True)

    def step(x):
        m(x).sum().backward()

    assert _flop_counter(step, x) == 3 * 512
    torch.compile(m, backend=graphmfu.backend)(x).sum().backward()
    assert graphmfu.report().totals["flops"] == 3 * 512
