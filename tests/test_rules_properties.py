"""Property tests: the matmul, convolution and attention rules against brute-force
counts that do not reuse the rules' formulas.

* Matrix products: the real op on tensors of ones (every output element then
  equals the number of multiply-adds that made it, so the sum of the output is
  the MAC count) and ``torch.utils.flop_counter.FlopCounterMode``.
* Convolutions: an explicit loop over every output (or, transposed, input)
  position and every kernel tap.  FlopCounterMode counts every tap, padded ones
  too, and so do the rules: dense MACs = positions * taps * channels.  The
  in-bounds taps are checked against the real op on ones.
* Attention: (query, key) pairs counted on an explicit boolean mask
  (``tril``/``triu`` bands), dense FLOPs against FlopCounterMode on the math
  SDPA.
* Symbolic sizes: sympy symbols as dims, ``Cost.evaluate`` = the integer result.
"""
import itertools
import sys

import sympy
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

from graphmfu.cost import REGISTRY, TensorSpec, ensure_builtin_rules

ensure_builtin_rules()
attention_rules = sys.modules["graphmfu.rules.attention"]
attention_pairs = attention_rules.attention_pairs

aten = torch.ops.aten
F64, BF16 = torch.float64, torch.bfloat16
SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])

small = st.integers(1, 6)


def spec(x):
    """Real tensors (nested) -> TensorSpec; anything else unchanged."""
    if isinstance(x, torch.Tensor):
        return TensorSpec(tuple(int(s) for s in x.shape), x.dtype)
    if isinstance(x, (list, tuple)):
        return type(x)(spec(v) for v in x)
    if isinstance(x, dict):
        return {k: spec(v) for k, v in x.items()}
    return x


class Record(TorchDispatchMode):
    """Every ATen call with its real arguments and outputs."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        self.calls.append((func, args, kwargs, out))
        return out


def run_counted(fn):
    """Run fn under FlopCounterMode and Record; returns (FlopCounterMode total,
    sum of our rules' matrix FLOPs over the recorded calls, the calls)."""
    with FlopCounterMode(display=False) as fc, Record() as rec:
        fn()
    ours = 0
    for func, args, kwargs, out in rec.calls:
        r = REGISTRY.lookup(func)
        if r is not None:
            ours += r(*spec(args), out=spec(out), **spec(kwargs)).flops
    return fc.get_total_flops(), ours, rec.calls


def ones(*shape):
    return torch.ones(shape, dtype=F64)


# =========================================================================== matrix products


@SETTINGS
@given(m=small, n=small, k=small, b=small)
def test_mm_bmm_addmm_baddbmm_vs_ones_and_flop_counter(m, n, k, b):
    out = ones(m, k) @ ones(k, n)
    macs = int(out.sum())  # every output element = k
    c = REGISTRY.lookup(aten.mm.default)(spec(ones(m, k)), spec(ones(k, n)), out=spec(out))
    assert c.flops == 2 * macs

    fc, ours, _ = run_counted(lambda: torch.mm(ones(m, k), ones(k, n)))
    assert ours == fc == 2 * macs

    fc, ours, _ = run_counted(lambda: torch.addmm(ones(n), ones(m, k), ones(k, n)))
    assert ours == fc == 2 * macs  # the bias add is vector work, not matrix FLOPs

    bout = torch.bmm(ones(b, m, k), ones(b, k, n))
    fc, ours, _ = run_counted(lambda: torch.bmm(ones(b, m, k), ones(b, k, n)))
    assert ours == fc == 2 * int(bout.sum())

    fc, ours, _ = run_counted(lambda: torch.baddbmm(ones(b, m, n), ones(b, m, k), ones(b, k, n)))
    assert ours == fc == 2 * int(bout.sum())


def _matmul_shapes():
    def build(draw):
        m, n, k = draw(small), draw(small), draw(small)
        nb_a, nb_b = draw(st.integers(0, 2)), draw(st.integers(0, 2))
        batch = [draw(st.integers(1, 3)) for _ in range(max(nb_a, nb_b))]
        # each operand's batch dims: a suffix of batch, some of them broadcast (1)
        ba = [1 if draw(st.booleans()) else s for s in batch[len(batch) - nb_a:]]
        bb = [1 if draw(st.booleans()) else s for s in batch[len(batch) - nb_b:]]
        a = ba + [m, k] if not (nb_a == 0 and draw(st.booleans())) else [k]
        bsh = bb + [k, n] if not (nb_b == 0 and draw(st.booleans())) else [k]
        return a, bsh
    return st.composite(lambda draw: build(draw))()


@SETTINGS
@given(shapes=_matmul_shapes())
def test_matmul_broadcasting_vs_ones(shapes):
    a, b = shapes
    out = torch.matmul(ones(*a), ones(*b))
    k = a[-1]
    assert torch.all(out == k)  # every output element is k multiply-adds
    c = REGISTRY.lookup(aten.matmul.default)(TensorSpec(tuple(a), F64), TensorSpec(tuple(b), F64), out=spec(out))
    assert c.flops == 2 * int(out.sum())
    assert c.bytes_read == 8 * (ones(*a).numel() + ones(*b).numel())
    assert c.bytes_written == 8 * out.numel()


@SETTINGS
@given(lead=st.lists(st.integers(1, 3), min_size=0, max_size=2), n=small, k=small, bias=st.booleans())
def test_linear_vs_ones(lead, n, k, bias):
    x, w = ones(*lead, k), ones(n, k)
    out = F.linear(x, w)  # no bias: each element is k MACs
    b = ones(n) if bias else None
    c = REGISTRY.lookup(aten.linear.default)(spec(x), spec(w), spec(b), out=spec(out))
    assert c.flops == 2 * int(out.sum())
    assert c.vector_flops == (out.numel() if bias else 0)


# =========================================================================== convolution


@st.composite
def conv_cases(draw, transposed=False):
    nd = draw(st.integers(1, 3))
    groups = draw(st.sampled_from([1, 1, 2, 3]))
    depthwise = draw(st.booleans()) and not transposed
    cin = groups * draw(st.integers(1, 2))
    cout = cin if depthwise else groups * draw(st.integers(1, 2))
    n = draw(st.integers(1, 2))
    max_len = {1: 9, 2: 6, 3: 4}[nd]
    size = [draw(st.integers(1, max_len)) for _ in range(nd)]
    kernel = [draw(st.integers(1, 3)) for _ in range(nd)]
    stride = [draw(st.integers(1, 3)) for _ in range(nd)]
    dilation = [draw(st.integers(1, 2)) for _ in range(nd)]
    padding = [draw(st.integers(0, 2)) for _ in range(nd)]
    if transposed:
        padding = [min(p, d * (kk - 1)) for p, d, kk in zip(padding, dilation, kernel)]
        out_pad = [draw(st.integers(0, max(s, d) - 1)) for s, d in zip(stride, dilation)]
        for L, s, d, kk, p, op in zip(size, stride, dilation, kernel, padding, out_pad):
            assume((L - 1) * s - 2 * p + d * (kk - 1) + op + 1 >= 1)
    else:
        out_pad = [0] * nd
        for L, d, kk, p in zip(size, dilation, kernel, padding):
            assume(L + 2 * p >= d * (kk - 1) + 1)
    return dict(nd=nd, groups=groups, cin=cin, cout=cout, n=n, size=size, kernel=kernel, stride=stride,
                dilation=dilation, padding=padding, out_pad=out_pad)


def _conv_real(case, x, w, b=None, transposed=False):
    fn = {1: (F.conv1d, F.conv_transpose1d), 2: (F.conv2d, F.conv_transpose2d),
          3: (F.conv3d, F.conv_transpose3d)}[case["nd"]][transposed]
    if transposed:
        return fn(x, w, b, stride=case["stride"], padding=case["padding"], output_padding=case["out_pad"],
                  groups=case["groups"], dilation=case["dilation"])
    return fn(x, w, b, stride=case["stride"], padding=case["padding"], dilation=case["dilation"],
              groups=case["groups"])


def _count_taps(case, in_size, out_size, transposed):
    """Brute force over every position and every kernel tap: (all taps, in-bounds taps).

    Plain conv: loop over output positions o; tap t reads input o*s - p + t*d.
    Transposed: loop over input positions i; tap t writes output i*s - p + t*d."""
    positions = out_size if not transposed else in_size
    target = in_size if not transposed else out_size
    total = inside = 0
    for pos in itertools.product(*[range(L) for L in positions]):
        for tap in itertools.product(*[range(k) for k in case["kernel"]]):
            total += 1
            idx = [p * s - pad + t * d for p, s, pad, t, d in
                   zip(pos, case["stride"], case["padding"], tap, case["dilation"])]
            inside += all(0 <= i < L for i, L in zip(idx, target))
    return total, inside


@SETTINGS
@given(case=conv_cases(), bias=st.booleans())
def test_convolution_vs_loops_ones_and_flop_counter(case, bias):
    g, cin, cout = case["groups"], case["cin"], case["cout"]
    x = ones(case["n"], cin, *case["size"])
    w = ones(cout, cin // g, *case["kernel"])
    b = ones(cout) if bias else None
    fc, ours, calls = run_counted(lambda: _conv_real(case, x, w, b))
    out = calls[-1][3]
    taps, inside = _count_taps(case, case["size"], list(out.shape[2:]), transposed=False)
    chans = case["n"] * cout * (cin // g)  # every (batch, output channel) meets cin/groups input channels
    assert ours == fc == 2 * chans * taps  # dense: padded taps count, as in FlopCounterMode
    effective = int(_conv_real(case, x, w).sum())  # ones: each output = its in-bounds taps * cin/g
    assert effective == chans * inside
    assert ours >= 2 * effective
    if not any(case["padding"]):
        assert ours == 2 * effective
    c = REGISTRY.lookup(aten.convolution.default)(
        spec(x), spec(w), spec(b), case["stride"], case["padding"], case["dilation"], False, [0] * case["nd"], g,
        out=spec(out))
    assert c.flops == ours
    assert c.vector_flops == (out.numel() if bias else 0)
    assert c.bytes_read == 8 * (x.numel() + w.numel() + (cout if bias else 0))
    assert c.bytes_written == 8 * out.numel()


@SETTINGS
@given(case=conv_cases(transposed=True))
def test_conv_transpose_vs_loops_ones_and_flop_counter(case):
    g, cin, cout = case["groups"], case["cin"], case["cout"]
    x = ones(case["n"], cin, *case["size"])
    w = ones(cin, cout // g, *case["kernel"])
    fc, ours, calls = run_counted(lambda: _conv_real(case, x, w, transposed=True))
    out = calls[-1][3]
    taps, inside = _count_taps(case, case["size"], list(out.shape[2:]), transposed=True)
    chans = case["n"] * cin * (cout // g)  # every input element scatters to cout/groups channels
    assert ours == fc == 2 * chans * taps
    effective = int(out.sum())  # ones: the taps that land inside the output
    assert effective == chans * inside
    assert ours >= 2 * effective
    if not any(case["padding"]):
        assert ours == 2 * effective


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=conv_cases(), transposed=st.booleans(), want=st.tuples(st.booleans(), st.booleans(), st.booleans()))
def test_convolution_backward_vs_flop_counter(case, transposed, want):
    # FlopCounterMode counts grad-weight without dividing by groups: compare at groups = 1
    case = dict(case, groups=1)
    if transposed:  # keep the transposed output non-empty (output_padding stays 0)
        case["padding"] = [min(p, d * (k - 1) // 2) for p, d, k in zip(case["padding"], case["dilation"],
                                                                       case["kernel"])]
    want_x, want_w, want_b = want
    assume(want_x or want_w or want_b)
    x = ones(case["n"], case["cin"], *case["size"]).requires_grad_(want_x)
    wshape = (case["cin"], case["cout"]) if transposed else (case["cout"], case["cin"])
    w = ones(*wshape, *case["kernel"]).requires_grad_(want_w)
    b = ones(case["cout"]).requires_grad_(want_b)
    y = _conv_real(case, x, w, b, transposed=transposed)
    grads = [t for t, on in ((x, want_x), (w, want_w), (b, want_b)) if on]
    fc, ours, calls = run_counted(lambda: torch.autograd.grad(y, grads, torch.ones_like(y)))
    bwd = [c for c in calls if c[0] is aten.convolution_backward.default]
    assert len(bwd) == 1
    assert ours == fc
    fwd = REGISTRY.lookup(aten.convolution.default)(
        spec(x), spec(w), None, case["stride"], case["padding"], case["dilation"], transposed, case["out_pad"], 1,
        out=spec(y)).flops
    assert ours == fwd * (want_x + want_w)  # grad input and grad weight each cost one forward


# =========================================================================== attention


def mask_pairs(mask):
    return int(mask.sum())


def causal_mask(tq, tk, align):
    m = torch.ones(tq, tk)
    return m.tril() if align == "top_left" else m.tril(tk - tq)


def band_mask(tq, tk, left, right, offset):
    """Query i sees keys [i + offset - left, i + offset + right]; None = unbounded."""
    m = torch.ones(tq, tk)
    if right is not None:
        m = m.tril(offset + right)
    if left is not None:
        m = m.triu(offset - left)
    return m


seq = st.integers(1, 9)


@SETTINGS
@given(tq=seq, tk=seq)
def test_attention_pairs_causal_vs_mask(tq, tk):
    assert attention_pairs(tq, tk) == tq * tk
    assert attention_pairs(tq, tk, "top_left") == mask_pairs(causal_mask(tq, tk, "top_left"))
    assert attention_pairs(tq, tk, "bottom_right") == mask_pairs(causal_mask(tq, tk, "bottom_right"))


@SETTINGS
@given(tq=seq, tk=seq, left=st.one_of(st.none(), st.integers(0, 9)), right=st.one_of(st.none(), st.integers(0, 9)),
       causal=st.sampled_from([None, "top_left", "bottom_right"]),
       align=st.sampled_from([None, "top_left", "bottom_right"]))
def test_attention_pairs_windows_vs_band_mask(tq, tk, left, right, causal, align):
    assume(left is not None or right is not None)
    got = attention_pairs(tq, tk, causal, left, right, align)
    offset = tk - tq if (align or causal) == "bottom_right" else 0
    right_eff = 0 if causal is not None else right
    if causal is not None and left is None:  # causal only: the window's side is the causal diagonal's
        want = mask_pairs(causal_mask(tq, tk, causal))
    else:
        want = mask_pairs(band_mask(tq, tk, left, right_eff, offset))
    assert got == want


def test_pytorch_is_causal_is_the_top_left_mask():
    # the mask convention the rules assume for SDPA's is_causal, checked on the real op
    torch.manual_seed(0)
    q, k, v = torch.randn(1, 2, 3, 4), torch.randn(1, 2, 5, 4), torch.randn(1, 2, 5, 4)
    got = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    want = F.scaled_dot_product_attention(q, k, v, attn_mask=torch.ones(3, 5, dtype=torch.bool).tril())
    torch.testing.assert_close(got, want)


@st.composite
def attn_shapes(draw):
    b, hkv = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    groups = draw(st.integers(1, 3))  # GQA: query heads per KV head
    tq, tk = draw(seq), draw(seq)
    d, dv = draw(st.sampled_from([2, 4, 8])), draw(st.sampled_from([2, 4, 8]))
    return b, hkv * groups, hkv, tq, tk, d, dv


@SETTINGS
@given(shape=attn_shapes(), causal=st.booleans())
def test_sdpa_forward_vs_mask_and_flop_counter(shape, causal):
    b, hq, hkv, tq, tk, d, dv = shape
    q, k, v = torch.randn(b, hq, tq, d), torch.randn(b, hkv, tk, d), torch.randn(b, hkv, tk, dv)
    fc, _, calls = run_counted(
        lambda: aten._scaled_dot_product_attention_math(q, k, v, is_causal=causal, enable_gqa=hq != hkv))
    pairs = mask_pairs(causal_mask(tq, tk, "top_left")) if causal else tq * tk
    o, attn = aten._scaled_dot_product_attention_math(q, k, v, is_causal=causal, enable_gqa=hq != hkv)
    for op, args, kwargs, out in (
        (aten._scaled_dot_product_attention_math.default, (q, k, v, None, 0.0, causal, None),
         {"enable_gqa": hq != hkv}, (o, attn)),
        (aten._scaled_dot_product_flash_attention_for_cpu.default, (q, k, v, 0.0, causal), {},
         (o, torch.empty(b, hq, tq))),
        (aten._scaled_dot_product_efficient_attention.default, (q, k, v, None, True, 0.0, causal), {},
         (o, torch.empty(b, hq, 32))),
    ):
        c = REGISTRY.lookup(op)(*spec(args), out=spec(out), **kwargs)
        assert c.flops == 2 * b * hq * pairs * (d + dv)  # Q@K^T 2*pairs*D + P@V 2*pairs*Dv per head
        if d == dv:
            assert c.flops == 4 * b * hq * pairs * d
        assert c.flops_dense == fc  # FlopCounterMode ignores the mask: dense
        assert c.flops_dense == 2 * b * hq * tq * tk * (d + dv)


@SETTINGS
@given(shape=attn_shapes(), causal=st.booleans(), left=st.one_of(st.none(), st.integers(-1, 9)),
       right=st.one_of(st.none(), st.integers(-1, 9)))
def test_flash_attention_forward_windows_vs_band_mask(shape, causal, left, right):
    b, hq, hkv, tq, tk, d, dv = shape
    q, k, v = TensorSpec((b, tq, hq, d), BF16), TensorSpec((b, tk, hkv, d), BF16), TensorSpec((b, tk, hkv, dv), BF16)
    out = (TensorSpec((b, tq, hq, dv), BF16), TensorSpec((b, hq, tq), torch.float32))
    lo = None if left is None or left < 0 else left  # -1 = unbounded
    hi = None if right is None or right < 0 else right
    # flash aligns the causal mask and every window bottom-right; causal sets the right window to 0;
    # a one-sided window gets seqlen_k on its open side (flash's set_params_fprop)
    if causal:
        hi = 0
    elif (lo is None) != (hi is None):
        lo, hi = (tk if lo is None else lo), (tk if hi is None else hi)
    mask = band_mask(tq, tk, lo, hi, tk - tq)
    pairs = mask_pairs(mask)
    c = REGISTRY.lookup(aten._flash_attention_forward.default)(
        q, k, v, None, None, tq, tk, 0.0, causal, False, window_size_left=left, window_size_right=right, out=out)
    assert c.flops == 2 * b * hq * pairs * (d + dv)
    assert c.flops_dense == 2 * b * hq * tq * tk * (d + dv)
    cb = REGISTRY.lookup(aten._flash_attention_backward.default)(
        out[0], q, k, v, out[0], out[1], None, None, tq, tk, 0.0, causal, None, None,
        window_size_left=left, window_size_right=right, out=(q, k, v))
    assert cb.flops == 2 * c.flops


@SETTINGS
@given(shape=attn_shapes(), mask_type=st.sampled_from([0, 1, 2]), window=st.one_of(st.none(), st.integers(0, 9)))
def test_efficient_attention_forward_vs_mask(shape, mask_type, window):
    b, hq, hkv, tq, tk, d, dv = shape
    q, k, v = TensorSpec((b, tq, hq, d), BF16), TensorSpec((b, tk, hkv, d), BF16), TensorSpec((b, tk, hkv, dv), BF16)
    out = (TensorSpec((b, tq, hq, dv), BF16), TensorSpec((b, hq, 32), torch.float32))
    offset = tk - tq if mask_type == 2 else 0
    right = 0 if mask_type else None
    # xformers' window: keys (i + offset - window, i + offset], i.e. window keys counting the diagonal
    left = window - 1 if window else None
    pairs = mask_pairs(band_mask(tq, tk, left, right, offset))
    c = REGISTRY.lookup(aten._efficient_attention_forward.default)(
        q, k, v, None, None, None, None, None, 0.0, mask_type, True, window_size=window, out=out)
    assert c.flops == 2 * b * hq * pairs * (d + dv)
    cb = REGISTRY.lookup(aten._efficient_attention_backward.default)(
        out[0], q, k, v, None, out[0], None, None, tq, tk, out[1], 0.0, None, None, mask_type, False,
        window_size=window, out=(q, k, v, None))
    assert cb.flops == 2 * c.flops
    assert cb.flops_dense == 2 * c.flops_dense


@SETTINGS
@given(shape=attn_shapes(), causal=st.booleans())
def test_sdpa_backward_is_twice_forward_and_matches_flop_counter(shape, causal):
    b, hq, hkv, tq, tk, d, dv = shape
    q = torch.randn(b, hq, tq, d, requires_grad=True)
    k = torch.randn(b, hkv, tk, d, requires_grad=True)
    v = torch.randn(b, hkv, tk, dv, requires_grad=True)
    o, attn = aten._scaled_dot_product_attention_math(q, k, v, is_causal=causal, enable_gqa=hq != hkv)
    fc, _, _ = run_counted(lambda: torch.autograd.grad(o, (q, k, v), torch.ones_like(o)))
    lse = torch.empty(b, hq, tq)
    c = REGISTRY.lookup(aten._scaled_dot_product_flash_attention_for_cpu_backward.default)(
        *spec((o, q, k, v, o, lse)), 0.0, causal, out=spec((q, k, v)))
    assert c.flops_dense == fc  # 4 dense products: dV, dP, dQ, dK
    pairs = mask_pairs(causal_mask(tq, tk, "top_left")) if causal else tq * tk
    assert c.flops == 4 * b * hq * pairs * (d + dv)


# =========================================================================== symbolic sizes

M, N, K, BB = sympy.symbols("m n k b", positive=True, integer=True)
SB, SH, SQ, SK, SD, SV = sympy.symbols("B H Tq Tk D Dv", positive=True, integer=True)


def _same(sym_cost, hints, int_cost):
    e = sym_cost.evaluate(hints)
    assert not e.is_symbolic
    assert e == int_cost


@SETTINGS
@given(m=st.integers(1, 64), n=st.integers(1, 64), k=st.integers(1, 64), b=st.integers(1, 8))
def test_symbolic_matmul_rules_evaluate_to_int(m, n, k, b):
    hints = {M: m, N: n, K: k, BB: b}
    T = lambda *s: TensorSpec(tuple(s), BF16)  # noqa: E731
    for op, sym_args, int_args, sym_out, int_out in (
        (aten.mm.default, (T(M, K), T(K, N)), (T(m, k), T(k, n)), T(M, N), T(m, n)),
        (aten.addmm.default, (T(N), T(M, K), T(K, N)), (T(n), T(m, k), T(k, n)), T(M, N), T(m, n)),
        (aten.bmm.default, (T(BB, M, K), T(BB, K, N)), (T(b, m, k), T(b, k, n)), T(BB, M, N), T(b, m, n)),
        (aten.matmul.default, (T(BB, M, K), T(K, N)), (T(b, m, k), T(k, n)), T(BB, M, N), T(b, m, n)),
        (aten.linear.default, (T(BB, M, K), T(N, K), T(N)), (T(b, m, k), T(n, k), T(n)), T(BB, M, N), T(b, m, n)),
    ):
        rule_fn = REGISTRY.lookup(op)
        sym = rule_fn(*sym_args, out=sym_out)
        assert sym.is_symbolic
        _same(sym, hints, rule_fn(*int_args, out=int_out))


@SETTINGS
@given(b=st.integers(1, 4), h=st.integers(1, 8), tq=st.integers(1, 64), tk=st.integers(1, 64),
       d=st.sampled_from([16, 64, 128]), dv=st.sampled_from([16, 64, 128]), causal=st.booleans())
def test_symbolic_attention_rules_evaluate_to_int(b, h, tq, tk, d, dv, causal):
    hints = {SB: b, SH: h, SQ: tq, SK: tk, SD: d, SV: dv}
    T = lambda *s: TensorSpec(tuple(s), BF16)  # noqa: E731
    L = lambda *s: TensorSpec(tuple(s), torch.float32)  # noqa: E731
    rule_fn = REGISTRY.lookup(aten._scaled_dot_product_flash_attention_for_cpu.default)
    sym = rule_fn(T(SB, SH, SQ, SD), T(SB, SH, SK, SD), T(SB, SH, SK, SV), 0.0, causal,
                  out=(T(SB, SH, SQ, SV), L(SB, SH, SQ)))
    ints = rule_fn(T(b, h, tq, d), T(b, h, tk, d), T(b, h, tk, dv), 0.0, causal,
                   out=(T(b, h, tq, dv), L(b, h, tq)))
    _same(sym, hints, ints)  # top-left causal has a closed form for any Tq, Tk

    # self attention, one symbol for both lengths
    sym = rule_fn(T(SB, SH, SQ, SD), T(SB, SH, SQ, SD), T(SB, SH, SQ, SD), 0.0, causal,
                  out=(T(SB, SH, SQ, SD), L(SB, SH, SQ)))
    ints = rule_fn(T(b, h, tq, d), T(b, h, tq, d), T(b, h, tq, d), 0.0, causal, out=(T(b, h, tq, d), L(b, h, tq)))
    _same(sym, hints, ints)

    # bottom-right causal (mem-efficient mask type 2): closed form for Tq <= Tk (prefill / decode)
    lo, hi = min(tq, tk), max(tq, tk)
    hints = {SB: b, SH: h, SQ: lo, SK: hi, SD: d, SV: dv}
    eff = REGISTRY.lookup(aten._efficient_attention_forward.default)
    sym = eff(T(SB, SQ, SH, SD), T(SB, SK, SH, SD), T(SB, SK, SH, SV), None, None, None, None, None, 0.0,
              2 if causal else 0, False, out=(T(SB, SQ, SH, SV), L(SB, SH, 0)))
    ints = eff(T(b, lo, h, d), T(b, hi, h, d), T(b, hi, h, dv), None, None, None, None, None, 0.0,
               2 if causal else 0, False, out=(T(b, lo, h, dv), L(b, h, 0)))
    _same(sym, hints, ints)
