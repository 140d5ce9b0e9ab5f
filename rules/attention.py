"""Attention: every SDPA variant (math, flash, efficient, cudnn, CPU flash,
overrideable, the low-level _flash/_efficient/_cudnn forwards) and their
backwards, and flex_attention where present.

Layouts: the ``_scaled_dot_product_*`` ops take ``[B, H, T, D]``; the low-level
``_flash_attention_*`` / ``_efficient_attention_*`` take ``[B, T, H, D]``.
GQA (fewer K/V heads than Q heads, ``enable_gqa``) costs by the query heads:
every query head computes its own scores.  Cross attention: ``Tq != Tk``.

Per head and batch, forward matrix FLOPs are ``2*P*D`` (``Q @ K^T``) plus
``2*P*Dv`` (``P @ V``), ``P`` the number of (query, key) pairs computed:
``flops_dense`` takes ``P = Tq*Tk``; ``flops`` takes the pairs a mask keeps:
causal top-left (PyTorch's ``is_causal``: query i sees keys 0..i), causal
bottom-right (efficient-attention mask type 2), a sliding window its band.
Backward: 4 products of the same size (dV, dP, dQ, dK) = 2x forward; the
recomputation of ``Q @ K^T`` is hardware work (HFU) and not counted.
Vector FLOPs: forward 5 per score (scale, max, subtract, exp, sum) + 1 per
output element (normalise); backward 5 per score (recompute exp: 2; dS: 2;
scale: 1) + 2 per output element (rowsum of dO*O).
flex_attention: the block mask is data, not shape: ``flops`` = dense without values
(flagged); under profile() each call counts the blocks the kernel runs (rules/masks.py)."""
import torch

from graphmfu import _inductor
from graphmfu.cost import REGISTRY, Cost, dtype_name, io_bytes, op_name, rule

aten = torch.ops.aten


def _is_int(*xs):
    return all(isinstance(x, int) for x in xs)


def attention_pairs(tq, tk, causal=None, window_left=None, window_right=None, window_align=None):
    """(query, key) pairs a mask keeps.  causal: None, "top_left", "bottom_right".
    window_left/right: keys at most that far before/after the (aligned) diagonal.
    window_align: where a window's diagonal sits, "top_left" or "bottom_right"
    (flash-attention aligns every window bottom-right); default: as ``causal``."""
    if causal is None and window_left is None and window_right is None:
        return tq * tk
    if causal is not None and window_left is None:
        if _is_int(tq, tk):
            if causal == "top_left":
                return tq * (tq + 1) // 2 if tq <= tk else tk * (tk + 1) // 2 + (tq - tk) * tk
            return tq * (tk - tq) + tq * (tq + 1) // 2 if tk >= tq else tk * (tk + 1) // 2
        import sympy  # symbolic sizes: the closed form for Tq <= Tk (prefill, decode)
        if causal == "top_left":
            return sympy.Min(tq, tk) * (sympy.Min(tq, tk) + 1) / 2 + sympy.Max(tq - tk, 0) * tk
        return tq * (tk - tq) + tq * (tq + 1) / 2
    if not _is_int(tq, tk):
        return tq * tk  # a symbolic banded count is not worth a closed form: dense
    offset = (tk - tq) if (window_align or causal) == "bottom_right" else 0
    unbounded = tq + tk  # farther than any key from any query, whatever the alignment
    if causal is not None:
        right = 0
    else:
        right = window_right if window_right is not None and window_right >= 0 else unbounded
    left = window_left if window_left is not None and window_left >= 0 else unbounded
    total = 0
    for i in range(tq):
        lo, hi = max(i + offset - left, 0), min(i + offset + right, tk - 1)
        if hi >= lo:
            total += hi - lo + 1
    return total


def varlen_pairs(cu_q, cu_k, causal=None, window_left=None, window_right=None, flash=True):
    """(query, key) pairs of varlen attention (packed sequences, ``cu_seqlens`` offsets): the sum over
    sequences of each one's own count; query i of sequence s sees keys of sequence s only.
    ``flash``: flash-attention's conventions (every mask aligned bottom-right, a one-sided window bounded
    at the sequence's key length); else mem-efficient's (``causal``: "top_left" / "bottom_right",
    ``window_left`` = keys before the diagonal)."""
    if isinstance(cu_q, torch.Tensor) and window_left is None and window_right is None:
        return _varlen_pairs_tensor(cu_q, cu_k, causal, flash)
    cu_q, cu_k = [int(x) for x in cu_q], [int(x) for x in cu_k]
    if len(cu_q) != len(cu_k):
        raise ValueError(f"cu_seqlens of different lengths: {len(cu_q)} and {len(cu_k)}")
    total = 0
    for s in range(len(cu_q) - 1):
        lq, lk = cu_q[s + 1] - cu_q[s], cu_k[s + 1] - cu_k[s]
        if lq <= 0 or lk <= 0:
            continue
        if flash:
            c, wl, wr = _window(causal, window_left, window_right, lk)
            total += attention_pairs(lq, lk, c, wl, wr, "bottom_right")
        else:
            total += attention_pairs(lq, lk, causal, window_left, window_right)
    return total


def _varlen_pairs_tensor(cu_q, cu_k, causal, flash):
    """:func:`varlen_pairs` without windows on the offsets' device (a 0-dim int64 tensor: nothing is
    read back, so a GPU call is not synchronised)."""
    if cu_q.shape != cu_k.shape:
        raise ValueError(f"cu_seqlens of different lengths: {tuple(cu_q.shape)} and {tuple(cu_k.shape)}")
    lq = (cu_q[1:] - cu_q[:-1]).to(torch.int64).clamp_min(0)
    lk = (cu_k[1:] - cu_k[:-1]).to(torch.int64).clamp_min(0)
    if flash and causal:
        causal = "bottom_right"
    if not causal:
        per = lq * lk
    elif causal == "bottom_right":  # query i sees keys up to i + Lk - Lq
        per = torch.where(lk >= lq, lq * (lk - lq) + lq * (lq + 1) // 2, lk * (lk + 1) // 2)
    else:  # top-left: query i sees keys 0..i
        per = torch.where(lq <= lk, lq * (lq + 1) // 2, lk * (lk + 1) // 2 + (lq - lk) * lk)
    return per.sum()


VECTOR_PER_SCORE = 5  # scale, max, subtract, exp, sum (forward); recompute exp 2, dS 2, scale 1 (backward)


def _attention(q_bhtd, k_bhtd, v_bhtd, causal, window_left=None, window_right=None, *, backward,
               dtype, read, written, window_align=None):
    b, hq, tq, d = q_bhtd
    tk, dv = k_bhtd[2], v_bhtd[3]
    dense_pairs = tq * tk
    pairs = attention_pairs(tq, tk, causal, window_left, window_right, window_align)
    per_pair = 2 * d + 2 * dv
    mult = 2 if backward else 1
    out_elems = b * hq * tq * dv
    vec = b * hq * (VECTOR_PER_SCORE * pairs) + (2 if backward else 1) * out_elems
    dt = dtype_name(dtype)
    return Cost.of({dt: mult * b * hq * pairs * per_pair},
                   dense={dt: mult * b * hq * dense_pairs * per_pair},
                   vector={dt: vec}, read=read, written=written)




def _bthd(t):
    """[B, T, H, D] -> [B, H, T, D]; varlen [total, H, D] -> [1, H, total, D]."""
    s = t.shape
    return (s[0], s[2], s[1], s[3]) if len(s) == 4 else (1, s[1], s[0], s[2])


def _causal(flag):
    return "top_left" if flag else None


# ----------------------------------------------------------------- forwards, [B, H, T, D]

@rule(aten._scaled_dot_product_flash_attention_for_cpu)
def sdpa_flash_cpu(q, k, v, dropout_p=0.0, is_causal=False, *, attn_mask=None, scale=None, out):
    r, w = io_bytes((q, k, v, attn_mask), out)
    return _attention(q.shape, k.shape, v.shape, _causal(is_causal), backward=False, dtype=q.dtype, read=r, written=w)


@rule(aten._scaled_dot_product_flash_attention.default)
def sdpa_flash(q, k, v, dropout_p=0.0, is_causal=False, return_debug_mask=False, *, scale=None, out):
    r, w = io_bytes((q, k, v), out[:2])
    return _attention(q.shape, k.shape, v.shape, _causal(is_causal), backward=False, dtype=q.dtype, read=r, written=w)


if hasattr(aten._scaled_dot_product_flash_attention, "quantized"):
    @rule(aten._scaled_dot_product_flash_attention.quantized)
    def sdpa_flash_quantized(q, k, v, q_descale, k_descale, v_descale, dropout_p=0.0, is_causal=False,
                             return_debug_mask=False, *, scale=None, out):
        r, w = io_bytes((q, k, v, q_descale, k_descale, v_descale), out[:2])
        return _attention(q.shape, k.shape, v.shape, _causal(is_causal), backward=False, dtype=q.dtype,
                          read=r, written=w)


@rule(aten._scaled_dot_product_efficient_attention)
def sdpa_efficient(q, k, v, attn_bias, compute_log_sumexp, dropout_p=0.0, is_causal=False, *, scale=None, out):
    r, w = io_bytes((q, k, v, attn_bias), out[:2])
    return _attention(q.shape, k.shape, v.shape, _causal(is_causal), backward=False, dtype=q.dtype, read=r, written=w)


@rule(aten._scaled_dot_product_cudnn_attention)
def sdpa_cudnn(q, k, v, attn_bias, compute_log_sumexp, dropout_p=0.0, is_causal=False,
               return_debug_mask=False, *, scale=None, out):
    r, w = io_bytes((q, k, v, attn_bias), out[:2])
    return _attention(q.shape, k.shape, v.shape, _causal(is_causal), backward=False, dtype=q.dtype, read=r, written=w)


@rule(aten._scaled_dot_product_fused_attention_overrideable)
def sdpa_overrideable(q, k, v, attn_bias=None, dropout_p=0.0, is_causal=False, return_debug_mask=False,
                      *, scale=None, out):
    r, w = io_bytes((q, k, v, attn_bias), out[:2])
    return _attention(q.shape, k.shape, v.shape, _causal(is_causal), backward=False, dtype=q.dtype, read=r, written=w)


@rule(aten._scaled_dot_product_attention_math, aten.scaled_dot_product_attention)
def sdpa_math(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, *rest, scale=None, enable_gqa=False,
              dropout_mask=None, out):
    r, w = io_bytes((q, k, v, attn_mask), out)
    return _attention(q.shape, k.shape, v.shape, _causal(is_causal), backward=False, dtype=q.dtype, read=r, written=w)


@rule(aten._cudnn_attention_forward)
def cudnn_attention_forward(q, k, v, attn_bias, cum_seq_q, cum_seq_k, max_q, max_k, compute_log_sumexp,
                            dropout_p=0.0, is_causal=False, return_debug_mask=False, *, scale=None, out):
    r, w = io_bytes((q, k, v, attn_bias), out[:2])
    return _attention(q.shape, k.shape, v.shape, _causal(is_causal), backward=False, dtype=q.dtype, read=r, written=w)


# ----------------------------------------------------------------- forwards, [B, T, H, D]

def _window(causal, left, right, tk):
    # flash: window_size_left/right (-1 = unbounded); causal aligns bottom-right.  Like flash's
    # set_params_fprop, a one-sided window bounds its open side at seqlen_k (matters only for Tq > Tk).
    if left is not None and left < 0:
        left = None
    if right is not None and right < 0:
        right = None
    if causal:
        return "bottom_right", left, 0
    if (left is None) != (right is None):
        left, right = (tk if left is None else left), (tk if right is None else right)
    return None, left, right


@rule(aten._flash_attention_forward)
def flash_attention_forward(q, k, v, cum_seq_q, cum_seq_k, max_q, max_k, dropout_p, is_causal, return_debug_mask,
                            *rest, scale=None, window_size_left=None, window_size_right=None, seqused_k=None,
                            alibi_slopes=None, block_table=None, num_splits=None, out):
    c, wl, wr = _window(is_causal, window_size_left, window_size_right, _bthd(k)[2])
    r, w = io_bytes((q, k, v), out[:2])
    return _attention(_bthd(q), _bthd(k), _bthd(v), c, wl, wr,
                      backward=False, dtype=q.dtype, read=r, written=w, window_align="bottom_right")


_MASK_TYPE = {0: None, 1: "top_left", 2: "bottom_right"}


def _eff_window(window_size):
    # mem-efficient (xformers) window_size counts the keys a query sees, its diagonal included:
    # keys (i - window_size, i]; None or <= 0 = no window
    return window_size - 1 if window_size is not None and window_size > 0 else None


@rule(aten._efficient_attention_forward)
def efficient_attention_forward(q, k, v, bias, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, dropout_p,
                                custom_mask_type, compute_log_sumexp=False, *, scale=None, seqlen_k=None,
                                window_size=None, out):
    r, w = io_bytes((q, k, v, bias), out[:2])
    return _attention(_bthd(q), _bthd(k), _bthd(v), _MASK_TYPE.get(custom_mask_type), _eff_window(window_size),
                      backward=False, dtype=q.dtype, read=r, written=w)


# ----------------------------------------------------------------- backwards

def _bwd(grad_out, q, k, v, causal, ins, out, layout=lambda t: t.shape, wl=None, wr=None, align=None):
    r, w = io_bytes(ins, out)
    return _attention(layout(q), layout(k), layout(v), causal, wl, wr, backward=True, dtype=q.dtype, read=r, written=w,
                      window_align=align)


@rule(aten._scaled_dot_product_flash_attention_for_cpu_backward)
def sdpa_flash_cpu_backward(grad_out, q, k, v, o, lse, dropout_p, is_causal, *, attn_mask=None, scale=None, out):
    return _bwd(grad_out, q, k, v, _causal(is_causal), (grad_out, q, k, v, o, lse, attn_mask), out)


@rule(aten._scaled_dot_product_flash_attention_backward)
def sdpa_flash_backward(grad_out, q, k, v, o, lse, cum_seq_q, cum_seq_k, max_q, max_k, dropout_p, is_causal,
                        philox_seed, philox_offset, *, scale=None, out):
    return _bwd(grad_out, q, k, v, _causal(is_causal), (grad_out, q, k, v, o, lse), out)


@rule(aten._scaled_dot_product_efficient_attention_backward)
def sdpa_efficient_backward(grad_out, q, k, v, attn_bias, o, lse, philox_seed, philox_offset, dropout_p,
                            grad_input_mask, is_causal=False, *, scale=None, out):
    return _bwd(grad_out, q, k, v, _causal(is_causal), (grad_out, q, k, v, attn_bias, o, lse), out)


@rule(aten._scaled_dot_product_cudnn_attention_backward)
def sdpa_cudnn_backward(grad_out, q, k, v, o, lse, philox_seed, philox_offset, attn_bias, cum_seq_q, cum_seq_k,
                        max_q, max_k, dropout_p, is_causal, *, scale=None, out):
    return _bwd(grad_out, q, k, v, _causal(is_causal), (grad_out, q, k, v, o, lse, attn_bias), out)


@rule(aten._scaled_dot_product_fused_attention_overrideable_backward)
def sdpa_overrideable_backward(grad_out, q, k, v, attn_bias, grad_input_mask, o, lse, cum_seq_q, cum_seq_k, max_q,
                               max_k, dropout_p, is_causal, philox_seed, philox_offset, *, scale=None, out):
    return _bwd(grad_out, q, k, v, _causal(is_causal), (grad_out, q, k, v, attn_bias, o, lse), out)


@rule(aten._flash_attention_backward)
def flash_attention_backward(grad_out, q, k, v, o, lse, cum_seq_q, cum_seq_k, max_q, max_k, dropout_p, is_causal,
                             rng_state, unused, *, scale=None, window_size_left=None, window_size_right=None, out):
    c, wl, wr = _window(is_causal, window_size_left, window_size_right, _bthd(k)[2])
    return _bwd(grad_out, q, k, v, c, (grad_out, q, k, v, o, lse), out, _bthd, wl, wr, "bottom_right")


@rule(aten._efficient_attention_backward)
def efficient_attention_backward(grad_out, q, k, v, bias, o, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
                                 lse, dropout_p, philox_seed, philox_offset, custom_mask_type, bias_requires_grad,
                                 *, scale=None, num_splits_key=None, window_size=None, shared_storage_dqdkdv=False,
                                 out):
    return _bwd(grad_out, q, k, v, _MASK_TYPE.get(custom_mask_type), (grad_out, q, k, v, bias, o, lse), out,
                _bthd, _eff_window(window_size))


# ----------------------------------------------------------------- flex_attention (higher-order op)

FLEX = REGISTRY.flag("flex_attention", "flex_attention: block mask is data; counted dense without a profile",
                     "flex_attention: block masks are data; effective FLOPs are dense without a profile, and "
                     "per call at block granularity (the blocks the kernel runs) under profile()")


def _register_flex():
    ops = _inductor.flex_attention_ops()
    if not ops:  # pragma: no cover - torch without flex attention
        return
    fa, fab = ops
    REGISTRY.declare(fa, flag=FLEX.name)
    REGISTRY.declare(fab, flag=FLEX.name)

    @rule(fa)
    def flex_attention(q, k, v, score_mod=None, block_mask=None, *rest, out, **kw):
        r, w = io_bytes((q, k, v), out[:2])
        return _attention(q.shape, k.shape, v.shape, None, backward=False, dtype=q.dtype, read=r, written=w)

    @rule(fab)
    def flex_attention_backward(q, k, v, o, lse, grad_out, *rest, out, **kw):
        r, w = io_bytes((q, k, v, o, lse, grad_out), out[:3])
        return _attention(q.shape, k.shape, v.shape, None, backward=True, dtype=q.dtype, read=r, written=w)


_register_flex()


# ----------------------------------------------------------------- attention in decomposed form

DECOMPOSED = REGISTRY.flag(
    "decomposed_attention", "decomposed attention: softmax between matmuls; counted dense (mask not visible)",
    "{n} attention(s) survive only in decomposed form (bmm + softmax): counted dense, causal/window masks not "
    "visible")
# softmax as one node, or (after Inductor's decompositions, as in every captured graph) its exp
_SOFTMAX = {"aten._softmax.default", "aten._safe_softmax.default", "aten.softmax.int", "aten.exp.default"}
_MATMUL = {"aten.bmm.default", "aten.mm.default", "aten.matmul.default", "aten.baddbmm.default"}
# ops that may sit between a score matmul and its softmax (scaling, masking, casts, layout, and tanh:
# Gemma2's logit softcap, cap * tanh(scores / cap))
_PASS = {"view", "_unsafe_view", "reshape", "expand", "clone", "permute", "transpose", "unsqueeze", "squeeze",
         "mul", "div", "add", "where", "masked_fill", "native_dropout", "_to_copy", "convert_element_type",
         "getitem", "sub", "exp", "sum", "amax", "tanh"}


@REGISTRY.graph_pass
def decomposed_attention(gm, records) -> None:
    """Flag softmax (or its decomposed exp) nodes sitting between two matmuls: attention in
    decomposed form, counted dense (its mask, if any, is data the rules cannot see)."""
    by_name = {r.name: r for r in records}
    for node in gm.graph.nodes:
        if node.op != "call_function" or op_name(node.target) not in _SOFTMAX:
            continue
        rec = by_name.get(node.name)
        if rec is not None and matmul_near(node, up=True) is not None and matmul_near(node, up=False) is not None:
            rec.flag(DECOMPOSED)


def matmul_near(node, up: bool, depth: int = 8):
    """The nearest matmul above (``up``) or below ``node`` within ``depth`` steps through
    shape-only ops (``_PASS``), or None: what makes a softmax the middle of an attention."""
    frontier = [node]
    for _ in range(depth):
        nxt = []
        for n in frontier:
            for m in (n.all_input_nodes if up else list(n.users)):
                if m.op != "call_function":
                    continue
                name = op_name(m.target)
                if name in _MATMUL:
                    return m
                short = name.split(".")[1] if name.startswith(("aten.", "prims.")) else name
                if short in _PASS:
                    nxt.append(m)
        frontier = nxt
    return None
