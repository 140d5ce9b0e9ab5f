"""Matrix products: mm, addmm, bmm, baddbmm, matmul/linear (where they survive),
_scaled_mm (fp8), _int_mm (int8 x int8 -> int32) and grouped mm.  ``2*m*n*k``
matrix FLOPs; a bias add or ``beta*C`` is vector work (one add per output element).

Products Inductor decomposes.  For small or degenerate shapes (CPU: M == 1 with N == 1 or tiny
weights, K == 1 outer products, mv and dot; CUDA with coordinate-descent tuning, which
``mode="max-autotune"`` turns on: every M == 1 or N == 1 GEMM, i.e. each decode GEMV) Inductor rewrites
mm / addmm / bmm / mv / dot as a broadcast ``mul`` and a ``sum`` before graphmfu reads the graph.  The
graph pass ``decomposed_matmul`` counts them as the products they are: the broadcast mul of the two
operands holds ``2 * numel(product)`` = ``2*m*n*k`` matrix FLOPs in the operands' dtype (before the
decomposition's upcast to fp32), the sum that reduces it adds none; bytes stay each node's own; the
node's note names the decomposition (``original_aten``)."""
from graphmfu import _inductor
from graphmfu.cost import REGISTRY, Cost, dtype_name, io_bytes, op_name, prod, rule, symbolic_cost
import torch

aten = torch.ops.aten

# ops (name prefixes) whose output is a matrix, or a batch of them, with the first operand's rows: where
# graphmfu reads a product's rows (a padded step's token rows, graphmfu/padding.py; GEMM shapes and tile
# padding, graphmfu/headroom/); the 2-D ones of them take one operand as a weight
MATRIX_PRODUCTS = ("aten.mm.", "aten.addmm.", "aten.bmm.", "aten.baddbmm.", "aten._scaled_mm.", "aten._int_mm.")
WEIGHT_PRODUCTS = ("aten.mm.", "aten.addmm.", "aten._scaled_mm.", "aten._int_mm.")




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


# ----------------------------------------------------------------- products Inductor decomposed

DECOMPOSED_MATMUL = REGISTRY.flag(
    "decomposed_matmul", "a matrix product Inductor decomposed into mul + sum; counted as the product",
    "{n} node(s) are matrix products Inductor decomposed into a broadcast mul + sum (GEMV, K == 1, tiny "
    "GEMMs): counted as the products they are (2*m*n*k matrix FLOPs)")
# ops whose decompositions multiply the two operands elementwise and (except K == 1) sum the products
PRODUCTS = {"mm", "addmm", "bmm", "baddbmm", "mv", "addmv", "dot", "vdot", "matmul", "linear", "addbmm", "addr",
            "outer", "ger", "inner", "tensordot", "einsum"}
_CASTS_AND_VIEWS = {"convert_element_type", "_to_copy", "permute", "unsqueeze", "squeeze", "expand", "view",
                    "reshape", "_unsafe_view", "t", "transpose", "clone", "select", "slice", "alias"}


def _short(name: str | None) -> str:
    return name.split(".")[1] if name and name.count(".") >= 1 else (name or "")


def _decomposed_product(node) -> str | None:
    """The product op ``node`` is a piece of, when Inductor's decomposition made it (else None)."""
    orig = _inductor.decomposed_from(node)
    return orig if orig is not None and _short(orig) in PRODUCTS else None


def _operand_dtype(node, orig: str):
    """The dtype of an operand before the decomposition's casts and views (pw_cast_for_opmath upcasts
    bf16 operands to fp32 before the mul)."""
    while (node.op == "call_function" and _inductor.decomposed_from(node) == orig and node.args
           and isinstance(node.args[0], torch.fx.Node) and _short(op_name(node.target)) in _CASTS_AND_VIEWS):
        node = node.args[0]
    val = node.meta.get("val")
    return val.dtype if isinstance(val, torch.Tensor) else None


def _is_product(node) -> bool:
    """The broadcast mul of the two operands (not ``alpha * out`` or ``beta * bias``, which take a number)."""
    if node.op != "call_function" or _short(op_name(node.target)) != "mul" or len(node.args) < 2:
        return False
    return all(isinstance(a, torch.fx.Node) and isinstance(a.meta.get("val"), torch.Tensor) and a.meta["val"].dim() > 0
               for a in node.args[:2])


def _as_product(c: Cost, dtype: str) -> Cost:
    # a mul holds one vector FLOP per product element (rules/pointwise.py): the product's mul + add = 2
    return Cost.of({dtype: 2 * c.vector_flops}, read=c.bytes_read, written=c.bytes_written)


def _without_flops(c: Cost) -> Cost:
    return Cost.of(read=c.bytes_read, written=c.bytes_written)


def _recost(rec, fn) -> None:
    rec.cost = fn(rec.cost)
    if rec.sym:
        s = fn(symbolic_cost(rec.sym))
        rec.sym, rec.cost_expr = s.formulas(), s.as_strings()


@REGISTRY.graph_pass
def decomposed_matmul(gm, records) -> None:
    """Count the mul + sum Inductor wrote for a matrix product as that product (module docstring)."""
    by_name = {r.name: r for r in records}
    products = set()
    for node in gm.graph.nodes:
        orig = _decomposed_product(node) if node.op == "call_function" else None
        rec = by_name.get(node.name) if orig else None
        if rec is None or rec.cost is None:
            continue
        what = f"{_short(orig)} decomposed by Inductor"
        if _is_product(node):
            dts = [_operand_dtype(a, orig) for a in node.args[:2]]
            dt = dtype_name(next((d for d in dts if d is not None and d.is_floating_point), dts[0]))
            _recost(rec, lambda c: _as_product(c, dt))
            products.add(node)
            rec.flag(DECOMPOSED_MATMUL)
            rec.note = f"{rec.note} ({what}: the product, 2 FLOPs per element)"
        elif _short(op_name(node.target)) == "sum" and node.args and node.args[0] in products:
            _recost(rec, _without_flops)
            rec.flag(DECOMPOSED_MATMUL)
            rec.note = f"{rec.note} ({what}: the product's sum, counted in its mul)"
