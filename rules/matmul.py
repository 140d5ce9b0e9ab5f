"""Matrix products: mm, addmm, bmm, baddbmm, matmul/linear (where they survive),
_scaled_mm (fp8), _int_mm (int8 x int8 -> int32) and grouped mm.  ``2*m*n*k``
matrix FLOPs; a bias add or ``beta*C`` is vector work (one add per output element)."""
from graphmfu.cost import REGISTRY, Cost, dtype_name, io_bytes, prod, rule
import torch

aten = torch.ops.aten




def _gemm(flops, a, ins, out, bias_elems=0):
    read, written = io_bytes(ins, out)
    vec = {dtype_name(out.dtype): bias_elems} if bias_elems else None
    return Cost.of({dtype_name(a.dtype): flops}, vector=vec, read=read, written=written)


@rule(aten.mm)
def mm(a, b, *, out):
    (m, k), n = a.shape, b.shape[1]
    return _gemm(2 * m * n * k, a, (a, b), out)


@rule(aten.addmm)
def addmm(bias, a, b, beta=1, alpha=1, *, out):
    (m, k), n = a.shape, b.shape[1]
    return _gemm(2 * m * n * k, a, (bias, a, b), out, bias_elems=m * n)


@rule(aten.bmm)
def bmm(a, b, *, out):
    (bs, m, k), n = a.shape, b.shape[2]
    return _gemm(2 * bs * m * n * k, a, (a, b), out)


@rule(aten.baddbmm)
def baddbmm(bias, a, b, beta=1, alpha=1, *, out):
    (bs, m, k), n = a.shape, b.shape[2]
    return _gemm(2 * bs * m * n * k, a, (bias, a, b), out, bias_elems=bs * m * n)


def matmul_flops(a_shape, b_shape):
    """torch.matmul semantics: 1-d operands are promoted, batch dims broadcast."""
    a, b = list(a_shape), list(b_shape)
    if len(a) == 1:
        a = [1] + a
    if len(b) == 1:
        b = b + [1]
    m, k = a[-2], a[-1]
    n = b[-1]
    batch_a, batch_b = a[:-2], b[:-2]
    nb = max(len(batch_a), len(batch_b))
    batch_a = [1] * (nb - len(batch_a)) + batch_a
    batch_b = [1] * (nb - len(batch_b)) + batch_b
    batch = [x if y == 1 else y for x, y in zip(batch_a, batch_b)]
    return 2 * prod(batch) * m * n * k


@rule(aten.matmul)
def matmul(a, b, *, out):
    return _gemm(matmul_flops(a.shape, b.shape), a, (a, b), out)


@rule(aten.linear)
def linear(x, w, bias=None, *, out):
    n, k = (w.shape[0], w.shape[1]) if w.ndim == 2 else (1, w.shape[0])
    rows = prod(x.shape[:-1])
    return _gemm(2 * rows * n * k, x, (x, w, bias), out, bias_elems=rows * n if bias is not None else 0)


@rule(aten._scaled_mm)
def scaled_mm(a, b, scale_a, scale_b, bias=None, scale_result=None, out_dtype=None,
              use_fast_accum=False, *, out):
    (m, k), n = a.shape, b.shape[1]
    # dequantising scales are applied to each output element: one mul per element per scale
    return _gemm(2 * m * n * k, a, (a, b, scale_a, scale_b, bias, scale_result), out,
                 bias_elems=m * n * (2 + (bias is not None)))


if hasattr(aten, "_int_mm"):  # int8 x int8 -> int32; the matrix FLOPs go to the int8 peak (TOPS)
    @rule(aten._int_mm)
    def int_mm(a, b, *, out):
        (m, k), n = a.shape, b.shape[1]
        return _gemm(2 * m * n * k, a, (a, b), out)


def _grouped(a, b, offs):
    # 2d x 3d (MoE: tokens grouped by expert): every row of a meets one expert's [k, n]
    if a.ndim == 2 and b.ndim == 3:
        return 2 * a.shape[0] * a.shape[1] * b.shape[2]
    if a.ndim == 3 and b.ndim == 3:
        return 2 * a.shape[0] * a.shape[1] * a.shape[2] * b.shape[2]
    if a.ndim == 3 and b.ndim == 2:
        return 2 * a.shape[0] * a.shape[1] * a.shape[2] * b.shape[1]
    # 2d x 2d: groups split k; the total is one m x n x k product
    return 2 * a.shape[0] * a.shape[1] * b.shape[1]


@rule(aten._grouped_mm)
def grouped_mm(a, b, offs=None, bias=None, out_dtype=None, *, out):
    return _gemm(_grouped(a, b, offs), a, (a, b, offs, bias), out)


@rule(aten._scaled_grouped_mm)
def scaled_grouped_mm(a, b, scale_a, scale_b, offs=None, bias=None, scale_result=None,
                      out_dtype=None, use_fast_accum=False, *, out):
    return _gemm(_grouped(a, b, offs), a, (a, b, scale_a, scale_b, offs, bias, scale_result), out)


# ----------------------------------------------------------------- library custom ops (opaque to ATen)

def _grouped_fallback(a, b, offs, *, out):
    # transformers' MoE experts outside bf16 under torch.compile: a loop of mm over the expert groups of
    # the rows of a [S, K] (sorted by expert, offs = group ends) against b [E, K, N]: every row meets
    # one expert, 2*S*K*N.  Bytes as _grouped_mm: a, all of b, offs read; out written.
    return _gemm(2 * a.shape[0] * a.shape[1] * b.shape[2], a, (a, b, offs), out)


def _grouped_fallback_backward(a, b, offs, grad_out, *, out):
    # grad_a = grad_out @ b[e]^T (2*S*N*K) and grad_b[e] = a^T @ grad_out (2*K*S*N): 2x forward
    return _gemm(2 * 2 * a.shape[0] * a.shape[1] * b.shape[2], a, (a, b, offs, grad_out), out)


LIBRARY_OPS = {  # "namespace::op" -> rule; registered once the library has defined the op
    "transformers::grouped_mm_fallback": _grouped_fallback,
    "transformers::grouped_mm_fallback_backward": _grouped_fallback_backward,
}


def register_library_ops() -> list:
    """Register the rules of LIBRARY_OPS whose op exists now (a library defines its custom ops when it
    is imported: transformers' MoE ops with transformers.integrations.moe).  Idempotent; returns the
    names registered by this call.  Runs when the rules load; call it again if the library was
    imported after graphmfu loaded its rules."""
    return REGISTRY.register_library(LIBRARY_OPS)


register_library_ops()
