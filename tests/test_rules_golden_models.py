"""Golden values, by hand, for the rules the real-model suite (tests/test_models.py) needed:
transformers' MoE custom ops (``transformers::grouped_mm_fallback`` and its backward: the experts of
Mixtral / Qwen3-MoE / DeepSeek-V3 outside bf16 under torch.compile) and Inductor's
``prims.prepare_softmax_online`` (the online softmax of CUDA/Triton graphs: MoE routers, attention in
decomposed form, cross entropy).  Called as tests/test_rules_golden.py calls rules: positional
arguments with tensors as TensorSpec, the output(s) as ``out=``.  fp32 = 4 B, bf16 = 2 B, int32 = 4 B."""
import os
import sys

import pytest
import torch

from graphmfu.cost import REGISTRY, Cost, TensorSpec, ensure_builtin_rules

prims = torch.ops.prims
F32, BF16, I32 = torch.float32, torch.bfloat16, torch.int32
ensure_builtin_rules()


def T(*shape, dtype=F32):
    return TensorSpec(tuple(shape), dtype)


def check(c, *, flops=0, vector=0, read=0, written=0):
    assert isinstance(c, Cost)
    assert c.flops == c.flops_dense == flops
    assert c.vector_flops == vector
    assert c.bytes_read == read
    assert c.bytes_written == written


@pytest.fixture(scope="module")
def moe_ops():
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    pytest.importorskip("transformers")
    import transformers.integrations.moe  # noqa: F401 - defines the transformers:: custom ops

    # the rules load once; if transformers came after them (another test module loaded them first),
    # register the library rules now, as tests/test_models.py does
    sys.modules["graphmfu.rules.matmul"].register_library_ops()
    ops = torch.ops.transformers
    return ops.grouped_mm_fallback.default, ops.grouped_mm_fallback_backward.default


def test_grouped_mm_fallback(moe_ops):
    fwd, _ = moe_ops
    # S = 6 token-expert rows sorted by expert, K = 4, E = 3 experts of [K, N = 5], offs = group ends
    c = REGISTRY.lookup(fwd)(T(6, 4), T(3, 4, 5), T(3, dtype=I32), out=T(6, 5))
    check(c, flops=240,  # every row meets one expert: 2*S*K*N = 2*6*4*5 = 240
          read=348,  # a 6*4*4 = 96 + b 3*4*5*4 = 240 (all experts) + offs 3*4 = 12 -> 348
          written=120)  # out 6*5*4 = 120
    assert c.matrix == (("fp32", 240),)


def test_grouped_mm_fallback_bf16_dtype_key(moe_ops):
    fwd, _ = moe_ops
    c = REGISTRY.lookup(fwd)(T(6, 4, dtype=BF16), T(3, 4, 5, dtype=BF16), T(3, dtype=I32), out=T(6, 5, dtype=BF16))
    assert c.matrix == (("bf16", 240),)  # 2*6*4*5 = 240
    assert c.bytes_read == 48 + 120 + 12  # a 24*2 + b 60*2 + offs 3*4 = 180
    assert c.bytes_written == 60  # 30 * 2 B


def test_grouped_mm_fallback_backward(moe_ops):
    _, bwd = moe_ops
    c = REGISTRY.lookup(bwd)(T(6, 4), T(3, 4, 5), T(3, dtype=I32), T(6, 5), out=(T(6, 4), T(3, 4, 5)))
    check(c, flops=480,  # grad_a = grad_out @ b[e]^T: 2*6*5*4 = 240; grad_b[e] = a^T @ grad_out: 2*4*6*5 = 240
          read=468,  # a 96 + b 240 + offs 12 + grad_out 6*5*4 = 120 -> 468
          written=336)  # grad_a 96 + grad_b 240 = 336


def test_library_rules_register_once(moe_ops):
    # idempotent: a second call registers nothing (registering twice would be an error)
    assert sys.modules["graphmfu.rules.matmul"].register_library_ops() == []
    assert all(REGISTRY.lookup(op) is not None for op in moe_ops)


def test_prepare_softmax_online():
    op = prims.prepare_softmax_online.default
    x = T(4, 10)
    c = REGISTRY.lookup(op)(x, 1, out=(T(4, 1), T(4, 1)))
    check(c, vector=160,  # 4 per element (compare, subtract, exp, add): 4 * 4*10 = 160
          read=160,  # x 40 * 4 B
          written=32)  # max 4*1 + sum 4*1 = 8 elements * 4 B


def test_prepare_softmax_online_bf16():
    op = prims.prepare_softmax_online.default
    c = REGISTRY.lookup(op)(T(2, 3, 8, dtype=BF16), -1, out=(T(2, 3, 1, dtype=BF16), T(2, 3, 1, dtype=BF16)))
    assert c.vector == (("bf16", 192),)  # 4 * 2*3*8 = 4 * 48 = 192
    assert c.bytes_read == 96  # 48 * 2 B
    assert c.bytes_written == 24  # (6 + 6) * 2 B
