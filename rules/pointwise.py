"""Pointwise ops: a table of vector FLOPs per output element.

Elementary arithmetic, comparisons and selections are 1; a transcendental is 1
(one special-function instruction: exp, log, sin, tanh, erf, sqrt, rsqrt ...);
composites count their parts (sigmoid = exp + add + div = 3, silu = 4, gelu
with erf = 5, with tanh = 8).  Bytes: every tensor input read once, the output
written once (broadcast inputs are read at their own size).  The FLOPs are
counted in the dtype of the first floating input (else the output's)."""
import torch

from graphmfu.cost import Cost, dtype_name, io_bytes, table_rule, tensors

aten, prims = torch.ops.aten, torch.ops.prims

FLOPS_PER_ELEMENT = {
    # arithmetic
    "add": 1, "sub": 1, "mul": 1, "div": 1, "neg": 1, "abs": 1, "reciprocal": 1, "rsub": 1,
    "fmod": 1, "remainder": 1, "floor_divide": 1, "pow": 1, "square": 1, "lerp": 2, "addcmul": 2,
    "addcdiv": 2, "copysign": 1, "sign": 1, "sgn": 1, "floor": 1, "ceil": 1, "round": 1, "trunc": 1,
    "frac": 1, "fma": 2, "xlogy": 2, "hypot": 3,
    # transcendental
    "exp": 1, "exp2": 1, "expm1": 1, "log": 1, "log2": 1, "log10": 1, "log1p": 1, "sqrt": 1,
    "rsqrt": 1, "sin": 1, "cos": 1, "tan": 1, "tanh": 1, "sinh": 1, "cosh": 1, "asin": 1, "acos": 1,
    "atan": 1, "atan2": 1, "erf": 1, "erfc": 1, "erfinv": 1, "lgamma": 1, "digamma": 1,
    # activations
    "relu": 1, "sigmoid": 3, "silu": 4, "gelu": 5, "hardtanh": 1, "hardsigmoid": 3, "hardswish": 4,
    "leaky_relu": 2, "elu": 3, "celu": 3, "selu": 4, "softplus": 4, "mish": 7, "logit": 3,
    "threshold": 1, "relu6": 1, "glu": 4,
    "sigmoid_backward": 3, "tanh_backward": 3, "silu_backward": 7, "gelu_backward": 10,
    "threshold_backward": 1, "hardtanh_backward": 2, "hardswish_backward": 5, "hardsigmoid_backward": 2,
    "leaky_relu_backward": 2, "elu_backward": 3, "softplus_backward": 5, "mish_backward": 12,
    "glu_backward": 6, "logit_backward": 4,
    # comparisons and selection
    "eq": 1, "ne": 1, "lt": 1, "le": 1, "gt": 1, "ge": 1, "maximum": 1, "minimum": 1, "fmax": 1,
    "fmin": 1, "clamp": 2, "clamp_min": 1, "clamp_max": 1, "where": 1, "masked_fill": 1,
    "logical_and": 1, "logical_or": 1, "logical_not": 1, "logical_xor": 1, "bitwise_and": 1,
    "bitwise_or": 1, "bitwise_xor": 1, "bitwise_not": 1, "bitwise_left_shift": 1,
    "bitwise_right_shift": 1, "isnan": 1, "isinf": 1, "isfinite": 1, "nan_to_num": 2,
    "signbit": 1, "heaviside": 1,
    # dropout: one compare against a random number + one multiply
    "native_dropout": 2, "native_dropout_backward": 2,
}

PRIMS_FLOPS_PER_ELEMENT = {"mul": 1, "add": 1, "sub": 1, "div": 1, "exp": 1, "rsqrt": 1, "where": 1,
                           "fma": 2, "neg": 1, "sqrt": 1, "tanh": 1, "erf": 1}


def _first_float(args):
    for t in tensors(args):
        if t.dtype.is_floating_point:
            return t.dtype
    return None


def pointwise(per_element):
    def rule_fn(*args, out, **kwargs):
        outs = [o for o in tensors(out)]
        elems = outs[0].numel if outs else 0
        dt = _first_float((args, kwargs)) or (outs[0].dtype if outs else None)
        read, written = io_bytes((args, kwargs), outs)
        return Cost.of(vector={dtype_name(dt): per_element * elems}, read=read, written=written)
    return rule_fn


table_rule({getattr(aten, n): v for n, v in FLOPS_PER_ELEMENT.items() if hasattr(aten, n)}, pointwise)
table_rule({getattr(prims, n): v for n, v in PRIMS_FLOPS_PER_ELEMENT.items() if hasattr(prims, n)}, pointwise)

# in-place variants (eager recordings: optimizer updates, gradient accumulation, FSDP2's add_): the same
# work, the output is the mutated input (read, then written)
table_rule({getattr(aten, n + "_"): v for n, v in FLOPS_PER_ELEMENT.items() if hasattr(aten, n + "_")}, pointwise)
