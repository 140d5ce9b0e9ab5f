"""Golden values for every rule family, computed by hand.

Each expected number carries its arithmetic beside it.  Shapes are small; rules
are called through the registry exactly as graphmfu.nodes calls them: the op's
arguments positionally (tensors as TensorSpec), kwarg-only arguments by name,
the output(s) as ``out=``.  fp32 = 4 B, bf16/fp16 = 2 B, fp8/bool = 1 B, int64 = 8 B."""
import dataclasses
import sys

import pytest
import sympy
import torch

from graphmfu.cost import REGISTRY, ZERO, Cost, RuleRegistry, TensorSpec, ensure_builtin_rules, rule
from graphmfu.errors import GraphMFUError

aten, prims = torch.ops.aten, torch.ops.prims
ensure_builtin_rules()

F32, BF16, F16, I64, BOOL = torch.float32, torch.bfloat16, torch.float16, torch.int64, torch.bool
FP8 = torch.float8_e4m3fn


def T(*shape, dtype=F32):
    return TensorSpec(tuple(shape), dtype)


def R(op):
    r = REGISTRY.lookup(op)
    assert r is not None, f"no rule for {op}"
    return r


def check(c, *, flops=0, dense=None, vector=0, read=0, written=0):
    assert isinstance(c, Cost)
    assert c.flops == flops
    assert c.flops_dense == (flops if dense is None else dense)
    assert c.vector_flops == vector
    assert c.bytes_read == read
    assert c.bytes_written == written


# =========================================================================== matmul family


def test_mm():
    c = R(aten.mm.default)(T(4, 5), T(5, 6), out=T(4, 6))
    check(c, flops=240,  # 2*4*6*5 = 240
          read=200,  # (4*5 + 5*6) * 4 B = 50*4 = 200
          written=96)  # 4*6 * 4 B = 96
    assert c.matrix == (("fp32", 240),)


def test_mm_bf16_dtype_key():
    c = R(aten.mm.default)(T(4, 5, dtype=BF16), T(5, 6, dtype=BF16), out=T(4, 6, dtype=BF16))
    assert c.matrix == (("bf16", 240),)  # 2*4*6*5 = 240
    assert c.bytes_read == 100  # 50 elems * 2 B
    assert c.bytes_written == 48  # 24 elems * 2 B


def test_addmm_bias_is_vector():
    c = R(aten.addmm.default)(T(6), T(4, 5), T(5, 6), out=T(4, 6))
    check(c, flops=240,  # 2*4*6*5 = 240
          vector=24,  # bias add: one add per output element, 4*6 = 24
          read=224,  # (6 + 20 + 30) * 4 B = 56*4 = 224
          written=96)  # 24 * 4 B
    assert c.vector == (("fp32", 24),)


def test_bmm():
    c = R(aten.bmm.default)(T(3, 4, 5), T(3, 5, 6), out=T(3, 4, 6))
    check(c, flops=720,  # 2*3*4*6*5 = 720
          read=600,  # (3*4*5 + 3*5*6) * 4 = (60+90)*4 = 600
          written=288)  # 3*4*6 * 4 = 72*4 = 288


def test_baddbmm():
    c = R(aten.baddbmm.default)(T(3, 4, 6), T(3, 4, 5), T(3, 5, 6), out=T(3, 4, 6))
    check(c, flops=720,  # 2*3*4*6*5 = 720
          vector=72,  # beta*C add: 3*4*6 = 72
          read=888,  # (72 + 60 + 90) * 4 = 222*4 = 888
          written=288)  # 72 * 4


@pytest.mark.parametrize("a, b, o, flops, comment", [
    ((2, 1, 4, 5), (3, 5, 6), (2, 3, 4, 6), 1440, "batch [2,1] x [3] -> [2,3]: 2*(2*3)*4*6*5 = 1440"),
    ((5,), (5, 6), (6,), 60, "1-d @ 2-d: [1,5]@[5,6]: 2*1*6*5 = 60"),
    ((4, 5), (5,), (4,), 40, "2-d @ 1-d: [4,5]@[5,1]: 2*4*1*5 = 40"),
    ((5,), (5,), (), 10, "dot: 2*1*1*5 = 10"),
    ((3, 4, 5), (5,), (3, 4), 120, "3-d @ 1-d: 2*3*4*1*5 = 120"),
    ((5,), (2, 5, 6), (2, 6), 120, "1-d @ 3-d: 2*2*1*6*5 = 120"),
])
def test_matmul_broadcasting_and_1d(a, b, o, flops, comment):
    c = R(aten.matmul.default)(T(*a), T(*b), out=T(*o))
    assert c.flops == flops, comment
    assert c.vector_flops == 0


def test_matmul_broadcast_bytes():
    c = R(aten.matmul.default)(T(2, 1, 4, 5), T(3, 5, 6), out=T(2, 3, 4, 6))
    check(c, flops=1440,  # 2*(2*3)*4*6*5 = 1440
          read=520,  # (2*1*4*5 + 3*5*6) * 4 = (40+90)*4 = 520: broadcast operands are read at their own size
          written=576)  # 2*3*4*6 * 4 = 144*4 = 576
    c = R(aten.matmul.default)(T(5), T(5, 6), out=T(6))
    check(c, flops=60,  # 2*1*6*5
          read=140,  # (5 + 30) * 4
          written=24)  # 6 * 4


def test_linear_with_bias():
    c = R(aten.linear.default)(T(2, 3, 5), T(6, 5), T(6), out=T(2, 3, 6))
    check(c, flops=360,  # rows = 2*3 = 6; 2*6*6*5 = 360
          vector=36,  # bias add: 6 rows * 6 = 36
          read=264,  # (30 + 30 + 6) * 4 = 264
          written=144)  # 36 * 4


def test_linear_no_bias_and_1d_weight():
    c = R(aten.linear.default)(T(2, 3, 5), T(6, 5), out=T(2, 3, 6))
    check(c, flops=360,  # 2*6*6*5 = 360
          read=240,  # (30 + 30) * 4
          written=144)  # 36 * 4
    c = R(aten.linear.default)(T(2, 5), T(5), out=T(2))
    check(c, flops=20,  # 1-d weight: n = 1, k = 5, rows = 2: 2*2*1*5 = 20
          read=60,  # (2*5 + 5) * 4 = 60
          written=8)  # 2 * 4


def test_scaled_mm_fp8():
    a, b = T(16, 32, dtype=FP8), T(32, 16, dtype=FP8)
    sa, sb = T(dtype=F32), T(dtype=F32)  # per-tensor scales, 0-d
    c = R(aten._scaled_mm.default)(a, b, sa, sb, None, None, BF16, out=T(16, 16, dtype=BF16))
    check(c, flops=16384,  # 2*16*16*32 = 16384
          vector=512,  # two dequantising scales per output element: 16*16*2 = 512
          read=1032,  # 16*32*1 + 32*16*1 + 4 + 4 = 512+512+8 = 1032
          written=512)  # 16*16 * 2 B (bf16 out) = 512
    assert c.matrix == (("fp8", 16384),)
    assert c.vector == (("bf16", 512),)


def test_scaled_mm_fp8_with_bias():
    a, b = T(16, 32, dtype=FP8), T(32, 16, dtype=FP8)
    c = R(aten._scaled_mm.default)(a, b, T(dtype=F32), T(dtype=F32), T(16, dtype=BF16), None, BF16,
                                   out=T(16, 16, dtype=BF16))
    check(c, flops=16384,  # 2*16*16*32
          vector=768,  # 2 scales + bias add: 16*16*3 = 768
          read=1064,  # 1032 + 16*2 (bias) = 1064
          written=512)  # 16*16 * 2


# =========================================================================== convolution

CONV = aten.convolution.default


def test_conv1d_stride_padding_bias():
    # x [2,3,10], w [4,3,3], stride 2, pad 1: L_out = (10 + 2 - 2 - 1)//2 + 1 = 5
    c = R(CONV)(T(2, 3, 10), T(4, 3, 3), T(4), [2], [1], [1], False, [0], 1, out=T(2, 4, 5))
    check(c, flops=720,  # 2*N*prod(w)*L_out = 2*2*(4*3*3)*5 = 2*2*36*5 = 720
          vector=40,  # bias: one add per output element 2*4*5 = 40
          read=400,  # (2*3*10 + 36 + 4) * 4 = 100*4 = 400
          written=160)  # 40 * 4
    assert c.matrix == (("fp32", 720),)


def test_conv2d_dilation():
    # x [1,2,7,7], w [3,2,3,3], dilation 2 (effective 5x5): out [1,3,3,3]
    c = R(CONV)(T(1, 2, 7, 7), T(3, 2, 3, 3), None, [1, 1], [0, 0], [2, 2], False, [0, 0], 1, out=T(1, 3, 3, 3))
    check(c, flops=972,  # 2*1*(3*2*3*3)*(3*3) = 2*54*9 = 972
          read=608,  # (98 + 54) * 4 = 608
          written=108)  # 27 * 4


def test_conv2d_depthwise():
    # x [2,4,6,6], w [4,1,3,3], pad 1, groups 4: out [2,4,6,6]
    c = R(CONV)(T(2, 4, 6, 6), T(4, 1, 3, 3), None, [1, 1], [1, 1], [1, 1], False, [0, 0], 4, out=T(2, 4, 6, 6))
    check(c, flops=5184,  # 2*2*(4*1*3*3)*(6*6) = 2*2*36*36 = 5184
          read=1296,  # (288 + 36) * 4 = 1296
          written=1152)  # 288 * 4


def test_conv2d_groups():
    # x [1,4,5,5], w [6,2,3,3], groups 2: out [1,6,3,3]
    c = R(CONV)(T(1, 4, 5, 5), T(6, 2, 3, 3), None, [1, 1], [0, 0], [1, 1], False, [0, 0], 2, out=T(1, 6, 3, 3))
    check(c, flops=1944,  # 2*1*(6*2*3*3)*(3*3) = 2*108*9 = 1944
          read=832,  # (100 + 108) * 4 = 832
          written=216)  # 54 * 4


def test_conv3d():
    # x [1,2,4,4,4], w [3,2,2,2,2], stride 2: out [1,3,2,2,2]
    c = R(CONV)(T(1, 2, 4, 4, 4), T(3, 2, 2, 2, 2), None, [2, 2, 2], [0, 0, 0], [1, 1, 1], False, [0, 0, 0], 1,
                out=T(1, 3, 2, 2, 2))
    check(c, flops=768,  # 2*1*(3*2*2*2*2)*(2*2*2) = 2*48*8 = 768
          read=704,  # (128 + 48) * 4 = 704
          written=96)  # 24 * 4


def test_conv_transpose2d():
    # x [1,4,3,3], w [Cin=4, Cout=2, 3, 3], stride 2, pad 1, output_padding 1: out [1,2,6,6]
    c = R(CONV)(T(1, 4, 3, 3), T(4, 2, 3, 3), T(2), [2, 2], [1, 1], [1, 1], True, [1, 1], 1, out=T(1, 2, 6, 6))
    check(c, flops=1296,  # transposed: input spatial: 2*1*(4*2*3*3)*(3*3) = 2*72*9 = 1296
          vector=72,  # bias: 1*2*6*6 = 72
          read=440,  # (1*4*3*3 + 4*2*3*3 + 2) * 4 = (36 + 72 + 2) * 4 = 440
          written=288)  # 72 * 4


def test_aten__convolution_same_rule():
    # aten._convolution has 4 extra flags (benchmark, deterministic, cudnn_enabled, allow_tf32)
    c = R(aten._convolution.default)(T(2, 3, 10), T(4, 3, 3), T(4), [2], [1], [1], False, [0], 1,
                                     False, False, True, True, out=T(2, 4, 5))
    check(c, flops=720, vector=40, read=400, written=160)  # as test_conv1d_stride_padding_bias


# conv1d above: x [2,3,10] (240 B), w [4,3,3] (144 B), grad_out [2,4,5] (160 B), grad_bias [4] (16 B);
# forward f = 720; grad input and grad weight cost f each.
@pytest.mark.parametrize("mask, flops, vector, read, written", [
    ((True, True, True), 1440, 40, 544, 400),  # 2*720; bias 2*4*5 = 40; read 160+144+240; write 240+144+16
    ((True, True, False), 1440, 0, 544, 384),  # 2*720; read 160+144+240; write 240+144
    ((True, False, True), 720, 40, 304, 256),  # grad input: read go+w = 160+144; write gi+gb = 240+16
    ((True, False, False), 720, 0, 304, 240),  # read 160+144; write 240
    ((False, True, True), 720, 40, 400, 160),  # grad weight: read go+x = 160+240; write gw+gb = 144+16
    ((False, True, False), 720, 0, 400, 144),  # read 160+240; write 144
    ((False, False, True), 0, 40, 160, 16),  # bias only: reduce 40 grad_out elements; read 160; write 16
    ((False, False, False), 0, 0, 160, 0),  # nothing asked: grad_out still counted as read
])
def test_convolution_backward_output_mask(mask, flops, vector, read, written):
    x, w, go = T(2, 3, 10), T(4, 3, 3), T(2, 4, 5)
    outs = (T(2, 3, 10), T(4, 3, 3), T(4))
    out = tuple(o if m else None for o, m in zip(outs, mask))
    c = R(aten.convolution_backward.default)(go, x, w, [4], [2], [1], [1], False, [0], 1, list(mask), out=out)
    check(c, flops=flops, vector=vector, read=read, written=written)


def test_convolution_backward_transposed_and_depthwise():
    # transposed: x [1,4,3,3], w [4,2,3,3], grad_out [1,2,6,6]; f = 2*1*72*9 = 1296
    c = R(aten.convolution_backward.default)(T(1, 2, 6, 6), T(1, 4, 3, 3), T(4, 2, 3, 3), None, [2, 2], [1, 1],
                                             [1, 1], True, [1, 1], 1, [True, True, False],
                                             out=(T(1, 4, 3, 3), T(4, 2, 3, 3), None))
    check(c, flops=2592,  # grad input + grad weight: 2 * 1296
          read=720,  # (grad_out 1*2*6*6 + w 72 + x 36) * 4 = 180*4 = 720
          written=432)  # (gi 36 + gw 72) * 4 = 432
    # depthwise (test_conv2d_depthwise): f = 5184; grad weight only
    c = R(aten.convolution_backward.default)(T(2, 4, 6, 6), T(2, 4, 6, 6), T(4, 1, 3, 3), None, [1, 1], [1, 1],
                                             [1, 1], False, [0, 0], 4, [False, True, False],
                                             out=(None, T(4, 1, 3, 3), None))
    check(c, flops=5184,  # grad weight = forward: 2*2*36*36
          read=2304,  # (grad_out 288 + x 288) * 4 = 2304
          written=144)  # 36 * 4
