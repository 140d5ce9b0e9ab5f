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


# =========================================================================== attention
# Common case: B=2, H=3, T=4, D=Dv=8, bf16.  q/k/v/o [2,3,4,8] = 192 elems = 384 B each.
# Dense pairs 4*4 = 16; causal (Tq = Tk, so top-left = bottom-right) pairs 4*5/2 = 10.
# forward flops = 4*B*H*pairs*D:               dense 4*2*3*16*8 = 3072, causal 4*2*3*10*8 = 1920
# forward vector = 5*B*H*pairs + B*H*Tq*Dv:     dense 5*6*16 + 192 = 672, causal 5*6*10 + 192 = 492
# backward flops = 2x forward:                  dense 6144, causal 3840
# backward vector = 5*B*H*pairs + 2*B*H*Tq*Dv:  dense 480 + 384 = 864, causal 300 + 384 = 684

B, H, TT, D = 2, 3, 4, 8
QKV = T(B, H, TT, D, dtype=BF16)  # 384 B
QKV_BTHD = T(B, TT, H, D, dtype=BF16)  # 384 B
LSE = T(B, H, TT)  # fp32: 24*4 = 96 B
LSE_EFF = T(B, H, 32)  # mem-efficient pads logsumexp to 32: 2*3*32*4 = 768 B
I64S = T(dtype=I64)  # seeds / offsets / rng state (not traffic the rules count)
CUM = T(0, dtype=torch.int32)
DBG = T(0, dtype=BF16)


def _fwd_variants():
    q = k = v = o = QKV
    nine = (o, LSE, CUM, CUM, TT, TT, I64S, I64S, DBG)
    # name -> (call(is_causal), bytes_read, bytes_written)
    return {
        "flash_for_cpu": (lambda c: R(aten._scaled_dot_product_flash_attention_for_cpu.default)(
            q, k, v, 0.0, c, out=(o, LSE)),
            1152, 480),  # read 3*384; write o 384 + lse 96
        "flash": (lambda c: R(aten._scaled_dot_product_flash_attention.default)(
            q, k, v, 0.0, c, False, out=nine),
            1152, 480),  # read 3*384; write o 384 + lse 96
        "efficient": (lambda c: R(aten._scaled_dot_product_efficient_attention.default)(
            q, k, v, None, True, 0.0, c, out=(o, LSE_EFF, I64S, I64S)),
            1152, 1152),  # read 3*384; write o 384 + padded lse 768
        "cudnn": (lambda c: R(aten._scaled_dot_product_cudnn_attention.default)(
            q, k, v, None, True, 0.0, c, False, out=nine),
            1152, 480),  # 3*384; 384 + 96
        "overrideable": (lambda c: R(aten._scaled_dot_product_fused_attention_overrideable.default)(
            q, k, v, None, 0.0, c, False, out=nine),
            1152, 480),  # 3*384; 384 + 96
        "math": (lambda c: R(aten._scaled_dot_product_attention_math.default)(
            q, k, v, None, 0.0, c, None, out=(o, T(B, H, TT, TT, dtype=BF16))),
            1152, 576),  # 3*384; o 384 + attention weights 2*3*4*4*2 = 192
        "scaled_dot_product_attention": (lambda c: R(aten.scaled_dot_product_attention.default)(
            q, k, v, None, 0.0, c, out=o),
            1152, 384),  # 3*384; o 384
        "_flash_attention_forward": (lambda c: R(aten._flash_attention_forward.default)(
            QKV_BTHD, QKV_BTHD, QKV_BTHD, None, None, TT, TT, 0.0, c, False, out=(QKV_BTHD, LSE, I64S, I64S, DBG)),
            1152, 480),  # 3*384; 384 + 96
        "_efficient_attention_forward": (lambda c: R(aten._efficient_attention_forward.default)(
            QKV_BTHD, QKV_BTHD, QKV_BTHD, None, None, None, None, None, 0.0, 1 if c else 0, True,
            out=(QKV_BTHD, LSE_EFF, I64S, I64S, TT, TT)),
            1152, 1152),  # 3*384; 384 + 768
        "_cudnn_attention_forward": (lambda c: R(aten._cudnn_attention_forward.default)(
            q, k, v, None, None, None, TT, TT, True, 0.0, c, False, out=nine),
            1152, 480),  # 3*384; 384 + 96
    }


FWD = _fwd_variants()


@pytest.mark.parametrize("name", sorted(FWD))
@pytest.mark.parametrize("causal", [False, True])
def test_attention_forward_variants(name, causal):
    call, read, written = FWD[name]
    c = call(causal)
    if causal:
        check(c, flops=1920, dense=3072, vector=492, read=read, written=written)  # see the table above
    else:
        check(c, flops=3072, dense=3072, vector=672, read=read, written=written)
    assert [k for k, _ in c.matrix] == ["bf16"]


def _bwd_variants():
    q = k = v = o = go = QKV
    g3 = (QKV, QKV, QKV)  # grads of q, k, v: 3*384 = 1152 B written
    # read: grad_out, q, k, v, o = 5*384 = 1920, + lse 96 = 2016 (mem-efficient: + 768 = 2688)
    return {
        "flash_for_cpu": (lambda c: R(aten._scaled_dot_product_flash_attention_for_cpu_backward.default)(
            go, q, k, v, o, LSE, 0.0, c, out=g3), 2016, 1152),
        "flash": (lambda c: R(aten._scaled_dot_product_flash_attention_backward.default)(
            go, q, k, v, o, LSE, CUM, CUM, TT, TT, 0.0, c, I64S, I64S, out=g3), 2016, 1152),
        "efficient": (lambda c: R(aten._scaled_dot_product_efficient_attention_backward.default)(
            go, q, k, v, None, o, LSE_EFF, I64S, I64S, 0.0, [True, True, True, False], c,
            out=(QKV, QKV, QKV, None)), 2688, 1152),
        "cudnn": (lambda c: R(aten._scaled_dot_product_cudnn_attention_backward.default)(
            go, q, k, v, o, LSE, I64S, I64S, None, CUM, CUM, TT, TT, 0.0, c, out=g3), 2016, 1152),
        "overrideable": (lambda c: R(aten._scaled_dot_product_fused_attention_overrideable_backward.default)(
            go, q, k, v, None, [True, True, True, False], o, LSE, CUM, CUM, TT, TT, 0.0, c, I64S, I64S,
            out=(QKV, QKV, QKV, None)), 2016, 1152),
        "_flash_attention_backward": (lambda c: R(aten._flash_attention_backward.default)(
            QKV_BTHD, QKV_BTHD, QKV_BTHD, QKV_BTHD, QKV_BTHD, LSE, CUM, CUM, TT, TT, 0.0, c, I64S, I64S,
            out=(QKV_BTHD,) * 3), 2016, 1152),
        "_efficient_attention_backward": (lambda c: R(aten._efficient_attention_backward.default)(
            QKV_BTHD, QKV_BTHD, QKV_BTHD, QKV_BTHD, None, QKV_BTHD, None, None, TT, TT, LSE_EFF, 0.0,
            I64S, I64S, 1 if c else 0, False, out=(QKV_BTHD, QKV_BTHD, QKV_BTHD, None)), 2688, 1152),
    }


BWD = _bwd_variants()


@pytest.mark.parametrize("name", sorted(BWD))
@pytest.mark.parametrize("causal", [False, True])
def test_attention_backward_variants(name, causal):
    call, read, written = BWD[name]
    c = call(causal)
    if causal:
        check(c, flops=3840, dense=6144, vector=684, read=read, written=written)  # 2*1920, 2*3072, 300 + 2*192
    else:
        check(c, flops=6144, dense=6144, vector=864, read=read, written=written)  # 2*3072, 480 + 2*192


def test_sdpa_attn_mask_is_read_and_counted_dense():
    mask = T(TT, TT, dtype=BF16)  # 4*4*2 = 32 B; its content is data, not shape: dense
    c = R(aten._scaled_dot_product_flash_attention_for_cpu.default)(QKV, QKV, QKV, 0.0, False, attn_mask=mask,
                                                                    out=(QKV, LSE))
    check(c, flops=3072, vector=672, read=1184, written=480)  # read 1152 + 32
    c = R(aten._scaled_dot_product_attention_math.default)(QKV, QKV, QKV, mask, out=(QKV, T(B, H, TT, TT, dtype=BF16)))
    check(c, flops=3072, vector=672, read=1184, written=576)  # read 1152 + 32; write 384 + 192


def test_attention_gqa_counts_query_heads():
    # q [1,4,6,8], k/v [1,2,6,8] (2 KV heads): every query head computes its own 6*6 = 36 scores
    q, kv = T(1, 4, 6, 8, dtype=BF16), T(1, 2, 6, 8, dtype=BF16)
    c = R(aten._scaled_dot_product_attention_math.default)(q, kv, kv, None, 0.0, False, None, enable_gqa=True,
                                                           out=(q, T(1, 4, 6, 6, dtype=BF16)))
    assert c.flops == 4608  # 4*B*Hq*pairs*D = 4*1*4*36*8 = 4608
    assert c.bytes_read == 768  # (192 + 96 + 96) * 2 = 768
    c = R(aten._scaled_dot_product_flash_attention_for_cpu.default)(q, kv, kv, 0.0, True, out=(q, T(1, 4, 6)))
    check(c, flops=2688,  # causal pairs 6*7/2 = 21: 4*1*4*21*8 = 2688
          dense=4608,  # 4*1*4*36*8
          vector=612,  # 5*(1*4*21) + 1*4*6*8 = 420 + 192 = 612
          read=768,  # (192 + 96 + 96) * 2
          written=480)  # o 192*2 = 384 + lse 1*4*6*4 = 96
    # [B,T,H,D]: q [1,6,4,8], k/v [1,6,2,8]
    qb, kvb = T(1, 6, 4, 8, dtype=BF16), T(1, 6, 2, 8, dtype=BF16)
    c = R(aten._flash_attention_forward.default)(qb, kvb, kvb, None, None, 6, 6, 0.0, True, False,
                                                  out=(qb, T(1, 4, 6), I64S, I64S, DBG))
    assert (c.flops, c.flops_dense) == (2688, 4608)  # as above: 21 and 36 pairs, 4 query heads


# Cross attention: B=1, H=2, Tq=3, Tk=5, D=8, Dv=16: per pair 2*D + 2*Dv = 16 + 32 = 48 FLOPs.
# dense pairs 3*5 = 15 -> 1*2*15*48 = 1440; top-left causal 1+2+3 = 6 -> 576;
# bottom-right causal 3+4+5 = 12 -> 1152.


def test_cross_attention_sdpa_top_left():
    q, k, v = T(1, 2, 3, 8, dtype=F16), T(1, 2, 5, 8, dtype=F16), T(1, 2, 5, 16, dtype=F16)
    o = T(1, 2, 3, 16, dtype=F16)
    c = R(aten._scaled_dot_product_attention_math.default)(q, k, v, None, 0.0, False, None,
                                                           out=(o, T(1, 2, 3, 5, dtype=F16)))
    check(c, flops=1440,  # 1*2*15*48
          vector=246,  # 5*(1*2*15) + 1*2*3*16 = 150 + 96 = 246
          read=576,  # q 1*2*3*8 = 48, k 1*2*5*8 = 80, v 1*2*5*16 = 160: 288 elems * 2 B = 576
          written=252)  # o 96*2 = 192 + attention weights 1*2*3*5*2 = 60: 252
    assert c.matrix == (("fp16", 1440),)
    c = R(aten._scaled_dot_product_attention_math.default)(q, k, v, None, 0.0, True, None,
                                                           out=(o, T(1, 2, 3, 5, dtype=F16)))
    assert (c.flops, c.flops_dense) == (576, 1440)  # PyTorch's is_causal is top-left: 1*2*6*48 = 576


@pytest.mark.parametrize("mask_type, flops", [
    (0, 1440),  # no mask: 1*2*15*48
    (1, 576),  # causal from top-left: 1*2*6*48
    (2, 1152),  # causal from bottom-right: 1*2*12*48
])
def test_efficient_attention_forward_mask_types(mask_type, flops):
    q, k, v = T(1, 3, 2, 8, dtype=F16), T(1, 5, 2, 8, dtype=F16), T(1, 5, 2, 16, dtype=F16)  # [B,T,H,D]
    c = R(aten._efficient_attention_forward.default)(q, k, v, None, None, None, None, None, 0.0, mask_type, False,
                                                      out=(T(1, 3, 2, 16, dtype=F16), T(1, 2, 0), I64S, I64S, 3, 5))
    assert c.flops == flops
    assert c.flops_dense == 1440  # 1*2*15*48
    assert c.bytes_read == 576  # (48 + 80 + 160) * 2
    assert c.bytes_written == 192  # o 1*3*2*16 * 2 B; empty lse (compute_log_sumexp=False)


@pytest.mark.parametrize("mask_type, flops", [(0, 2880), (1, 1152), (2, 2304)])  # 2 * (1440, 576, 1152)
def test_efficient_attention_backward_mask_types(mask_type, flops):
    q, k, v = T(1, 3, 2, 8, dtype=F16), T(1, 5, 2, 8, dtype=F16), T(1, 5, 2, 16, dtype=F16)
    o = T(1, 3, 2, 16, dtype=F16)
    c = R(aten._efficient_attention_backward.default)(o, q, k, v, None, o, None, None, 3, 5, T(1, 2, 32), 0.0,
                                                       I64S, I64S, mask_type, False, out=(q, k, v, None))
    assert c.flops == flops
    assert c.flops_dense == 2880  # 2*1440
    assert c.bytes_read == 1216  # grad_out 192 + q 96 + k 160 + v 320 + o 192 + lse 1*2*32*4 = 256: 1216
    assert c.bytes_written == 576  # dq 96 + dk 160 + dv 320 = 576


# Sliding windows.  _flash_attention_forward: [B,T,H,D], B=1, H=2, D=8 -> 4*1*2*pairs*8 = 64*pairs FLOPs.
# Flash-attention aligns both its causal mask and any window to the bottom-right corner:
# query i sees keys [i + Tk - Tq - left, i + Tk - Tq + right] (-1 = unbounded).
@pytest.mark.parametrize("tq, tk, causal, left, right, pairs, comment", [
    (4, 4, True, None, None, 10, "causal: 4*5/2"),
    (4, 4, True, 1, None, 7, "causal, left 1: 1+2+2+2"),
    (4, 4, True, 1, -1, 7, "causal forces right = 0: 1+2+2+2"),
    (4, 4, False, 1, 1, 10, "band |i-j| <= 1: 2+3+3+2"),
    (4, 4, False, -1, -1, 16, "-1/-1 = no window: 4*4"),
    (2, 6, True, None, None, 11, "bottom-right causal: 5+6"),
    (3, 5, True, 1, None, 6, "bottom-right causal, left 1: 2+2+2"),
    (2, 6, False, 1, 0, 4, "window aligned bottom-right: row0 keys 3..4, row1 keys 4..5: 2+2"),
    (2, 6, False, -1, 0, 11, "right-only window: row0 keys 0..4, row1 keys 0..5: 5+6"),
    (2, 6, False, 0, -1, 3, "left-only window: row0 keys 4..5, row1 key 5: 2+1"),
])
def test_flash_attention_windows(tq, tk, causal, left, right, pairs, comment):
    q, kv = T(1, tq, 2, 8, dtype=BF16), T(1, tk, 2, 8, dtype=BF16)
    c = R(aten._flash_attention_forward.default)(q, kv, kv, None, None, tq, tk, 0.0, causal, False,
                                                  window_size_left=left, window_size_right=right,
                                                  out=(q, T(1, 2, tq), I64S, I64S, DBG))
    assert c.flops == 64 * pairs, comment  # 4*1*2*pairs*8
    assert c.flops_dense == 64 * tq * tk  # 4*1*2*(tq*tk)*8
    cb = R(aten._flash_attention_backward.default)(q, q, kv, kv, q, T(1, 2, tq), CUM, CUM, tq, tk, 0.0, causal,
                                                   I64S, I64S, window_size_left=left, window_size_right=right,
                                                   out=(q, kv, kv))
    assert cb.flops == 128 * pairs, comment  # backward = 2x forward


def test_flash_attention_window_golden():
    # Tq = Tk = 4, causal, window_size_left = 1: pairs 1+2+2+2 = 7
    q = T(1, 4, 2, 8, dtype=BF16)  # 64 elems = 128 B
    c = R(aten._flash_attention_forward.default)(q, q, q, None, None, 4, 4, 0.0, True, False, window_size_left=1,
                                                  out=(q, T(1, 2, 4), I64S, I64S, DBG))
    check(c, flops=448,  # 4*1*2*7*8 = 448
          dense=1024,  # 4*1*2*16*8 = 1024
          vector=134,  # 5*(1*2*7) + 1*2*4*8 = 70 + 64 = 134
          read=384,  # 3 * 128
          written=160)  # o 128 + lse 1*2*4*4 = 32


@pytest.mark.parametrize("window, pairs, comment", [
    (None, 10, "no window: causal 4*5/2"),
    (0, 10, "0 = no window: causal 4*5/2"),
    (1, 4, "window 1: the diagonal only, 1+1+1+1"),
    (2, 7, "window 2 (diagonal + 1 before): 1+2+2+2"),
    (4, 10, "window >= T: causal"),
])
def test_efficient_attention_window_size(window, pairs, comment):
    # mem-efficient (xformers) window_size counts the keys a query sees, its own included: keys (i - window, i]
    q = T(1, 4, 2, 8, dtype=F16)
    c = R(aten._efficient_attention_forward.default)(q, q, q, None, None, None, None, None, 0.0, 2, False,
                                                      window_size=window, out=(q, T(1, 2, 0), I64S, I64S, 4, 4))
    assert c.flops == 64 * pairs, comment  # 4*1*2*pairs*8
    cb = R(aten._efficient_attention_backward.default)(q, q, q, q, None, q, None, None, 4, 4, T(1, 2, 32), 0.0,
                                                       I64S, I64S, 2, False, window_size=window, out=(q, q, q, None))
    assert cb.flops == 128 * pairs, comment  # 2x forward


def test_attention_pairs_golden():
    pairs = sys.modules["graphmfu.rules.attention"].attention_pairs
    assert pairs(4, 4) == 16  # 4*4
    assert pairs(4, 4, "top_left") == 10  # 4*5/2
    assert pairs(3, 5, "top_left") == 6  # 1+2+3
    assert pairs(3, 5, "bottom_right") == 12  # 3+4+5
    assert pairs(5, 3, "top_left") == 12  # 1+2+3+3+3
    assert pairs(5, 3, "bottom_right") == 6  # 0+0+1+2+3
    assert pairs(6, 6, "top_left", 2) == 15  # 1+2+3+3+3+3
    assert pairs(6, 6, None, 1, 1) == 16  # 2+3+3+3+3+2
    assert pairs(2, 6, None, 1, 0) == 3  # top-left aligned band: row0 key 0, row1 keys 0..1: 1+2
    assert pairs(2, 6, None, 1, 0, "bottom_right") == 4  # row0 keys 3..4, row1 keys 4..5: 2+2


# =========================================================================== pointwise
# x [4,6] fp32 = 24 elems = 96 B


@pytest.mark.parametrize("op, args, per_elem, read, comment", [
    (aten.add.Tensor, (T(4, 6), T(6)), 1, 120, "add, b [6] broadcast: read (24 + 6)*4 = 120"),
    (aten.sub.Tensor, (T(4, 6), T(4, 6)), 1, 192, "sub: read 2*96 = 192"),
    (aten.mul.Tensor, (T(4, 6), 2.0), 1, 96, "mul by a scalar: read 96"),
    (aten.div.Tensor, (T(4, 6), T(4, 1)), 1, 112, "div, b [4,1]: read (24 + 4)*4 = 112"),
    (aten.exp.default, (T(4, 6),), 1, 96, "exp: a transcendental is 1"),
    (aten.rsqrt.default, (T(4, 6),), 1, 96, "rsqrt: 1"),
    (aten.sigmoid.default, (T(4, 6),), 3, 96, "sigmoid = exp + add + div = 3"),
    (aten.silu.default, (T(4, 6),), 4, 96, "silu = sigmoid + mul = 4"),
    (aten.gelu.default, (T(4, 6),), 5, 96, "gelu (erf) = 5"),
    (aten.relu.default, (T(4, 6),), 1, 96, "relu = 1"),
    (aten.clamp.default, (T(4, 6), 0.0, 1.0), 2, 96, "clamp = min + max = 2"),
    (aten.native_dropout.default, (T(4, 6), 0.1, True), 2, 96, "dropout = compare + mul = 2"),
])
def test_pointwise_table(op, args, per_elem, read, comment):
    c = R(op)(*args, out=T(4, 6))
    check(c, vector=24 * per_elem, read=read, written=96)  # per element x 4*6; write 24*4 = 96
    assert c.vector == (("fp32", 24 * per_elem),), comment


def test_pointwise_golden_values():
    c = R(aten.add.Tensor)(T(4, 6), T(6), out=T(4, 6))
    check(c, vector=24,  # 1 * 4*6
          read=120,  # (24 + 6) * 4
          written=96)  # 24 * 4
    c = R(aten.silu.default)(T(4, 6, dtype=BF16), out=T(4, 6, dtype=BF16))
    check(c, vector=96,  # 4 * 24
          read=48,  # 24 * 2
          written=48)  # 24 * 2
    assert c.vector == (("bf16", 96),)
    c = R(aten.gelu.default)(T(4, 6), out=T(4, 6))
    check(c, vector=120, read=96, written=96)  # 5 * 24; 96; 96


def test_where_counts_first_float_dtype_and_broadcast_bytes():
    # where(cond bool [4,6], a fp32 [4,6], b fp32 [1]) -> fp32 [4,6]
    c = R(aten.where.self)(T(4, 6, dtype=BOOL), T(4, 6), T(1), out=T(4, 6))
    check(c, vector=24,  # 1 * 4*6
          read=124,  # cond 24*1 + a 24*4 + b 1*4 = 24 + 96 + 4 = 124
          written=96)  # 24 * 4
    assert c.vector == (("fp32", 24),)


@pytest.mark.parametrize("op", [aten.eq.Tensor, aten.ne.Tensor, aten.lt.Tensor, aten.le.Tensor,
                                aten.gt.Tensor, aten.ge.Tensor])
def test_comparisons(op):
    # a bf16 [4,6], b bf16 [4,1] -> bool [4,6]
    c = R(op)(T(4, 6, dtype=BF16), T(4, 1, dtype=BF16), out=T(4, 6, dtype=BOOL))
    check(c, vector=24,  # 1 * 4*6
          read=56,  # (24 + 4) * 2 = 56
          written=24)  # 24 * 1 B (bool)
    assert c.vector == (("bf16", 24),)  # the dtype of the first floating input


def test_comparison_of_ints_counts_in_output_dtype():
    c = R(aten.eq.Tensor)(T(3, dtype=I64), T(3, dtype=I64), out=T(3, dtype=BOOL))
    check(c, vector=3,  # 1 * 3
          read=48,  # 2 * 3 * 8
          written=3)  # 3 * 1
    assert c.vector == (("bool", 3),)  # no floating input: the output's dtype


def test_prims_pointwise():
    c = R(prims.mul.default)(T(4, 6), T(4, 6), out=T(4, 6))
    check(c, vector=24, read=192, written=96)  # 24; 2*96; 96


# =========================================================================== reductions, softmax


def test_sum_mean_amax_var():
    x = T(4, 6)  # 24 elems, 96 B; out [4] = 16 B
    check(R(aten.sum.dim_IntList)(x, [1], out=T(4)),
          vector=24, read=96, written=16)  # one add per input element: 24
    check(R(aten.mean.dim)(x, [1], out=T(4)),
          vector=28, read=96, written=16)  # 24 adds + 4 divides = 28
    check(R(aten.amax.default)(x, [1], out=T(4)),
          vector=24, read=96, written=16)  # one max per input element
    check(R(aten.var.correction)(x, [1], correction=1, out=T(4)),
          vector=76, read=96, written=16)  # 3 per input (sub, square, add) + 1 per output: 3*24 + 4 = 76
    check(R(aten.sum.default)(x, out=T()),
          vector=24, read=96, written=4)  # full reduction to a 0-d fp32: 4 B


def test_softmax_and_backward():
    x = T(4, 6)  # 24 elems, 96 B
    check(R(aten._softmax.default)(x, 1, False, out=T(4, 6)),
          vector=120, read=96, written=96)  # 5 per element: 5*24 = 120
    check(R(aten._softmax_backward_data.default)(T(4, 6), T(4, 6), 1, F32, out=T(4, 6)),
          vector=96, read=192, written=96)  # 4 per element: 4*24 = 96; read grad + output 2*96
    check(R(aten._log_softmax_backward_data.default)(T(4, 6), T(4, 6), 1, F32, out=T(4, 6)),
          vector=96, read=192, written=96)  # 4*24


def test_log_softmax_adds_one_log_per_row():
    check(R(aten._log_softmax.default)(T(4, 6), 1, False, out=T(4, 6)),
          vector=124, read=96, written=96)  # 5 per element + 1 log per row: 5*24 + 4 = 124
    check(R(aten._log_softmax.default)(T(2, 3, 5), 1, False, out=T(2, 3, 5)),
          vector=160, read=120, written=120)  # rows along dim 1: 2*5 = 10; 5*30 + 10 = 160
    check(R(aten._log_softmax.default)(T(2, 3, 5), -1, False, out=T(2, 3, 5)),
          vector=156, read=120, written=120)  # rows along dim -1: 2*3 = 6; 5*30 + 6 = 156


# =========================================================================== norms
# x [2,3,8] fp32 = 48 elems = 192 B; per-row stats [2,3,1] = 6 elems = 24 B; weight/bias [8] = 32 B


def test_layer_norm():
    x, w, b = T(2, 3, 8), T(8), T(8)
    out = (T(2, 3, 8), T(2, 3, 1), T(2, 3, 1))
    check(R(aten.native_layer_norm.default)(x, [8], w, b, 1e-5, out=out),
          vector=384,  # 8 per element: 8*48 = 384
          read=256,  # (48 + 8 + 8) * 4 = 256
          written=240)  # (48 + 6 + 6) * 4 = 240
    check(R(aten.native_layer_norm.default)(x, [8], None, None, 1e-5, out=out),
          vector=288,  # without affine 6 per element: 6*48 = 288
          read=192, written=240)  # 48*4; (48+6+6)*4


def test_layer_norm_backward():
    go, x, mean, rstd, w, b = T(2, 3, 8), T(2, 3, 8), T(2, 3, 1), T(2, 3, 1), T(8), T(8)
    c = R(aten.native_layer_norm_backward.default)(go, x, [8], mean, rstd, w, b, [True, True, True],
                                                   out=(T(2, 3, 8), T(8), T(8)))
    check(c, vector=576,  # (9 + 2 + 1) per element: 12*48 = 576
          read=464,  # (48 + 48 + 6 + 6 + 8) * 4 = 116*4 = 464
          written=256)  # (48 + 8 + 8) * 4 = 256
    c = R(aten.native_layer_norm_backward.default)(go, x, [8], mean, rstd, w, b, [True, False, False],
                                                   out=(T(2, 3, 8), None, None))
    check(c, vector=432,  # input grad only: 9*48 = 432
          read=464, written=192)  # 116*4; 48*4


def test_rms_norm_and_backward():
    x, w = T(2, 3, 8), T(8)
    check(R(aten._fused_rms_norm.default)(x, [8], w, 1e-6, out=(T(2, 3, 8), T(2, 3, 1))),
          vector=240,  # 5 per element: 5*48 = 240
          read=224,  # (48 + 8) * 4 = 224
          written=216)  # (48 + 6) * 4 = 216
    check(R(aten._fused_rms_norm.default)(x, [8], None, 1e-6, out=(T(2, 3, 8), T(2, 3, 1))),
          vector=192, read=192, written=216)  # no weight: 4*48 = 192; 48*4; (48+6)*4
    check(R(aten._fused_rms_norm_backward.default)(T(2, 3, 8), x, [8], T(2, 3, 1), w, [True, True],
                                                   out=(T(2, 3, 8), T(8))),
          vector=384,  # (6 + 2) per element: 8*48 = 384
          read=440,  # (48 + 48 + 6 + 8) * 4 = 110*4 = 440
          written=224)  # (48 + 8) * 4 = 224


# batch/group norm: x [2,4,3,3] fp32 = 72 elems = 288 B; per-channel [4] = 16 B


def test_batch_norm_and_backward():
    x, w, b, rm, rv = T(2, 4, 3, 3), T(4), T(4), T(4), T(4)
    check(R(aten.native_batch_norm.default)(x, w, b, rm, rv, True, 0.1, 1e-5, out=(T(2, 4, 3, 3), T(4), T(4))),
          vector=576,  # 8 per element: 8*72 = 576
          read=352,  # (72 + 4 + 4 + 4 + 4) * 4 = 88*4 = 352 (running stats read)
          written=320)  # (72 + 4 + 4) * 4 = 320
    c = R(aten.native_batch_norm_backward.default)(T(2, 4, 3, 3), x, w, rm, rv, T(4), T(4), True, 1e-5,
                                                   [True, True, True], out=(T(2, 4, 3, 3), T(4), T(4)))
    check(c, vector=864,  # 12 per element: 12*72 = 864
          read=624,  # (grad 72 + x 72 + w 4 + save_mean 4 + save_invstd 4) * 4 = 156*4 = 624
          written=320)  # (72 + 4 + 4) * 4


def test_group_norm_and_backward():
    x, w, b = T(2, 4, 3, 3), T(4), T(4)
    check(R(aten.native_group_norm.default)(x, w, b, 2, 4, 9, 2, 1e-5, out=(T(2, 4, 3, 3), T(2, 2), T(2, 2))),
          vector=576,  # 8*72 = 576
          read=320,  # (72 + 4 + 4) * 4 = 320
          written=320)  # (72 + 4 + 4) * 4 = 320
    c = R(aten.native_group_norm_backward.default)(T(2, 4, 3, 3), x, T(2, 2), T(2, 2), w, 2, 4, 9, 2,
                                                   [True, True, True], out=(T(2, 4, 3, 3), T(4), T(4)))
    check(c, vector=864,  # 12*72 = 864
          read=624,  # (72 + 72 + 4 + 4 + 4) * 4 = 624
          written=320)  # (72 + 4 + 4) * 4


# =========================================================================== memory


def test_embedding_and_dense_backward():
    # weight [10,4] fp32, indices [2,3] int64 -> out [2,3,4]
    c = R(aten.embedding.default)(T(10, 4), T(2, 3, dtype=I64), out=T(2, 3, 4))
    check(c, read=144,  # rows picked 24*4 = 96 + indices 6*8 = 48: 144 (not the whole table)
          written=96)  # 24 * 4
    c = R(aten.embedding_dense_backward.default)(T(2, 3, 4), T(2, 3, dtype=I64), 10, -1, False, out=T(10, 4))
    check(c, vector=24,  # one add per gradient element: 2*3*4 = 24
          read=144,  # grad 96 + indices 48
          written=160)  # table 10*4*4 = 160


def test_gather_index_index_select():
    x = T(4, 5)  # 80 B
    check(R(aten.gather.default)(x, 1, T(4, 2, dtype=I64), out=T(4, 2)),
          read=96,  # picked 8*4 = 32 + index 8*8 = 64
          written=32)  # 8 * 4
    check(R(aten.index.Tensor)(x, [T(3, dtype=I64)], out=T(3, 5)),
          read=84,  # picked 15*4 = 60 + index 3*8 = 24
          written=60)  # 15 * 4
    check(R(aten.index_select.default)(x, 0, T(3, dtype=I64), out=T(3, 5)),
          read=84, written=60)  # 60 + 24; 60


def test_scatter_family():
    x, idx, src = T(4, 5), T(4, 2, dtype=I64), T(4, 2)  # idx 64 B, src 32 B
    check(R(aten.scatter.src)(x, 1, idx, src, out=T(4, 5)),
          read=96,  # src 32 + index 64 (untouched destination is not traffic)
          written=32)  # the 8 updated elements: 32
    check(R(aten.scatter.reduce)(x, 1, idx, src, reduce="add", out=T(4, 5)),
          vector=8,  # one add per source element
          read=128,  # src 32 + index 64 + updated elements read 32
          written=32)
    check(R(aten.scatter_add.default)(x, 1, idx, src, out=T(4, 5)),
          vector=8, read=128, written=32)  # 8 adds; 32 + 64 + 32; 32


@pytest.mark.parametrize("accumulate, vector, read", [
    (False, 0, 84),  # values 15*4 = 60 + index 3*8 = 24
    (True, 15, 144),  # one add per value; 60 + 24 + updated elements read 60
])
def test_index_put(accumulate, vector, read):
    c = R(aten.index_put.default)(T(4, 5), [T(3, dtype=I64)], T(3, 5), accumulate, out=T(4, 5))
    check(c, vector=vector, read=read, written=60)  # 15 updated elements * 4 = 60


def test_copies_and_casts():
    check(R(aten.cat.default)([T(2, 3), T(4, 3)], 0, out=T(6, 3)),
          read=72, written=72)  # (6 + 12) * 4 = 72; 18 * 4 = 72
    check(R(aten.clone.default)(T(4, 5), out=T(4, 5)),
          read=80, written=80)  # 20 * 4
    check(R(aten._to_copy.default)(T(4, 5), dtype=BF16, out=T(4, 5, dtype=BF16)),
          read=80, written=40)  # 20 * 4 read, 20 * 2 written
    check(R(prims.convert_element_type.default)(T(4, 5), BF16, out=T(4, 5, dtype=BF16)),
          read=80, written=40)  # 20 * 4, 20 * 2
    check(R(aten.copy_.default)(T(4, 5, dtype=BF16), T(4, 5), out=T(4, 5, dtype=BF16)),
          read=80, written=40)  # source 20*4 only (the destination's old contents are not read); 20*2
    # eager autograd's view backwards: grad read, zero-filled base-sized output written
    check(R(aten.slice_backward.default)(T(2, 6), [4, 6], 0, 0, 2, 1, out=T(4, 6)),
          read=48, written=96)  # grad 12 * 4; out 24 * 4
    check(R(aten.select_backward.default)(T(6), [4, 6], 0, 1, out=T(4, 6)),
          read=24, written=96)  # grad 6 * 4; out 24 * 4


@pytest.mark.parametrize("op, args, out", [
    (aten.view.default, (T(4, 6), [24]), T(24)),
    (aten._unsafe_view.default, (T(4, 6), [2, 12]), T(2, 12)),
    (aten.permute.default, (T(2, 3, 4), [2, 0, 1]), T(4, 2, 3)),
    (aten.expand.default, (T(1, 6), [4, 6]), T(4, 6)),
    (aten.t.default, (T(4, 6),), T(6, 4)),
    (aten.as_strided.default, (T(4, 6), [2, 2], [6, 1]), T(2, 2)),
    (aten.slice.Tensor, (T(4, 6), 0, 0, 2), T(2, 6)),
    (aten.unsqueeze.default, (T(4, 6), 0), T(1, 4, 6)),
])
def test_views_move_nothing(op, args, out):
    c = R(op)(*args, out=out)
    assert c == ZERO
    check(c)  # 0 FLOPs, 0 bytes


# =========================================================================== Cost


def test_cost_is_frozen():
    c = Cost.of({"fp32": 1})
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.bytes_read = 5


def test_cost_add_merges_per_dtype():
    a = Cost.of({"bf16": 10}, vector={"fp32": 3}, read=5, written=7)
    b = Cost.of({"bf16": 5, "fp8": 2}, vector={"fp32": 1, "bf16": 4}, read=1, written=2)
    s = a + b
    assert s.matrix == (("bf16", 15), ("fp8", 2))  # 10 + 5; fp8 from b
    assert s.matrix_dense == (("bf16", 15), ("fp8", 2))
    assert s.vector == (("bf16", 4), ("fp32", 4))  # 3 + 1; bf16 from b
    assert (s.flops, s.vector_flops) == (17, 8)  # 15 + 2; 4 + 4
    assert (s.bytes_read, s.bytes_written, s.bytes) == (6, 9, 15)  # 5+1, 7+2, 6+9
    assert sum([a, b]) == s  # __radd__ with the 0 start
    assert a + ZERO == a


def test_cost_of_dense_and_zero_dropping():
    c = Cost.of({"bf16": 6}, dense={"bf16": 10})
    assert (c.flops, c.flops_dense) == (6, 10)
    c = Cost.of({"bf16": 6})
    assert c.flops_dense == 6  # dense defaults to matrix
    c = Cost.of({"fp32": 0}, vector={"fp32": 0})
    assert c.matrix == () and c.vector == ()  # zero entries are dropped
    s = Cost.of({"bf16": 6}, dense={"bf16": 10}) + Cost.of({"bf16": 4})
    assert (s.flops, s.flops_dense) == (10, 14)  # 6 + 4; 10 + 4


def test_cost_evaluate_sympy():
    s, t = sympy.symbols("s t", positive=True, integer=True)
    c = Cost.of({"fp32": 2 * s * t * 4}, dense={"fp32": s * (s + 1) / 2 * 8}, vector={"fp32": 5 * s},
                read=4 * s * t, written=4 * s)
    assert c.is_symbolic
    e = c.evaluate({s: 3, t: 5})
    assert not e.is_symbolic
    assert e.flops == 120  # 2*3*5*4 = 120
    assert e.flops_dense == 48  # 3*4/2*8 = 48
    assert e.vector_flops == 15  # 5*3
    assert (e.bytes_read, e.bytes_written) == (60, 12)  # 4*3*5, 4*3
    assert all(isinstance(v, int) for _, v in e.matrix + e.matrix_dense + e.vector)
    assert c.as_strings()["flops"] == str(8 * s * t)
    with pytest.raises(GraphMFUError, match="no value for symbols"):
        c.evaluate({s: 3})  # t left free
    assert Cost.of({"fp32": 7}, read=1).evaluate({}) == Cost.of({"fp32": 7}, read=1)


# regression: a bare Symbol xreplace()s to a Python int (no .is_integer before Python 3.12)
def test_cost_evaluate_bare_symbol():
    s = sympy.Symbol("s", positive=True, integer=True)
    # e.g. the vector FLOPs of sum() over a [s] tensor, or the bytes of a bool [s] tensor
    assert Cost.of(vector={"fp32": s}, written=s).evaluate({s: 3}) == Cost.of(vector={"fp32": 3}, written=3)


# =========================================================================== registry


def _dummy(*args, out, **kwargs):
    return ZERO


def test_registry_duplicate_raises_and_override():
    reg = RuleRegistry()
    reg.register(aten.mm, _dummy)
    with pytest.raises(GraphMFUError, match="already registered"):
        reg.register(aten.mm, _dummy)

    def other(*args, out, **kwargs):
        return Cost.of({"fp32": 1})

    reg.register(aten.mm, other, override=True)
    assert reg.lookup(aten.mm.default)(T(1, 1), T(1, 1), out=T(1, 1)).flops == 1
    assert reg.lookup(aten.mm.default).origin.endswith("other")


def test_registry_packet_fallback_and_overload_priority():
    reg = RuleRegistry()
    reg.register(aten.add, _dummy)
    assert aten.add.Tensor in reg and aten.add.Scalar in reg  # overloads fall back to the packet
    assert aten.sub.Tensor not in reg

    def exact(*args, out, **kwargs):
        return Cost.of(read=1)

    reg.register(aten.add.Tensor, exact)  # an overload is its own key: no clash with the packet
    assert reg.lookup(aten.add.Tensor).fn is exact
    assert reg.lookup(aten.add.Scalar).fn is _dummy
    assert set(reg.ops()) == {aten.add, aten.add.Tensor}


@pytest.mark.parametrize("bad", ["aten.mm", len, torch.mm, None])
def test_registry_rejects_non_ops(bad):
    with pytest.raises(GraphMFUError, match="takes ATen ops"):
        RuleRegistry().register(bad, _dummy)


def test_rule_decorator_needs_an_op():
    with pytest.raises(GraphMFUError):
        rule()


def test_global_registry_covers_the_families():
    for op in (aten.mm.default, aten.addmm.default, aten.bmm.default, aten.baddbmm.default, aten._scaled_mm.default,
               aten.convolution.default, aten.convolution_backward.default, aten._softmax.default,
               aten.native_layer_norm.default, aten.embedding.default, aten.index_put.default, aten.view.default,
               prims.convert_element_type.default, *[getattr(aten, n).default for n in (
                   "_scaled_dot_product_flash_attention_for_cpu", "_scaled_dot_product_flash_attention",
                   "_scaled_dot_product_efficient_attention", "_scaled_dot_product_cudnn_attention",
                   "_scaled_dot_product_fused_attention_overrideable", "_scaled_dot_product_attention_math",
                   "_flash_attention_forward", "_efficient_attention_forward",
                   "_scaled_dot_product_flash_attention_for_cpu_backward",
                   "_scaled_dot_product_flash_attention_backward",
                   "_scaled_dot_product_efficient_attention_backward",
                   "_scaled_dot_product_cudnn_attention_backward",
                   "_scaled_dot_product_fused_attention_overrideable_backward",
                   "_flash_attention_backward", "_efficient_attention_backward")]):
        assert op in REGISTRY, op


def test_int_mm_int8():
    # aten._int_mm: int8 x int8 -> int32 (the output is 4 B per element, the inputs 1 B)
    c = R(aten._int_mm.default)(T(32, 16, dtype=torch.int8), T(16, 8, dtype=torch.int8), out=T(32, 8, dtype=torch.int32))
    check(c, flops=8192,  # 2*32*8*16 = 8192
          read=640,  # (32*16 + 16*8) * 1 B = 512 + 128 = 640
          written=1024)  # 32*8 * 4 B (int32) = 256*4 = 1024
    assert c.matrix == (("int8", 8192),)  # costed at the int8 peak


def test_inplace_pointwise_costs_like_out_of_place():
    """add_ on two fp32 [64, 32] tensors: 2048 elements, 1 FLOP each; reads both (2 x 8192 B), writes
    the first (8192 B) — what the eager recorder sees for gradient accumulation and optimizer updates."""
    from graphmfu.cost import REGISTRY, TensorSpec, ensure_builtin_rules

    ensure_builtin_rules()
    a, b = TensorSpec((64, 32), torch.float32), TensorSpec((64, 32), torch.float32)
    c = REGISTRY.lookup(torch.ops.aten.add_.Tensor)(a, b, out=a)
    assert c.vector == (("fp32", 2048),) and c.bytes_read == 2 * 8192 and c.bytes_written == 8192
