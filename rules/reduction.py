"""Reductions, softmax, losses and pooling.

A reduction costs one vector FLOP per input element (one add/max/compare);
``mean`` adds one divide per output element, ``var``/``std`` three per input
element (subtract, square, add).  Softmax: 5 per element (max, subtract, exp,
sum, divide); log_softmax: 5 (max, subtract, exp, sum, subtract) + one log per
row; their backwards: 4 per element.  Pooling: one per window element read,
i.e. ``out.numel * prod(kernel)``; adaptive pooling the same with the implied
window.  Bytes: inputs read once, outputs written once."""
import torch

from graphmfu.cost import Cost, io_bytes, dtype_name, prod, rule, table_rule, tensors

aten = torch.ops.aten




def _first(args):
    return tensors(args)[0]


def reduce(per_input, per_output=0):
    def rule_fn(*args, out, **kwargs):
        x = _first(args)
        outs = tensors(out)
        n_out = outs[0].numel if outs else 1
        r, w = io_bytes((args, kwargs), out)
        return Cost.of(vector={dtype_name(x.dtype): per_input * x.numel + per_output * n_out}, read=r, written=w)
    return rule_fn


REDUCTIONS = {
    # (per input element, per output element)
    aten.sum: (1, 0), aten.mean: (1, 1), aten.prod: (1, 0), aten.amax: (1, 0), aten.amin: (1, 0),
    aten.max: (1, 0), aten.min: (1, 0), aten.argmax: (1, 0), aten.argmin: (1, 0), aten.aminmax: (2, 0),
    aten.any: (1, 0), aten.all: (1, 0), aten.logsumexp: (3, 1), aten.linalg_vector_norm: (2, 1),
    aten.norm: (2, 1), aten.var: (3, 1), aten.std: (3, 2), aten.var_mean: (4, 1), aten.std_mean: (4, 2),
    aten.cumsum: (1, 0), aten.cumprod: (1, 0), aten.nansum: (2, 0), aten.count_nonzero: (1, 0),
    aten._softmax: (5, 0), aten._softmax_backward_data: (4, 0),
    aten._log_softmax_backward_data: (4, 0), aten.mse_loss: (3, 0), aten.mse_loss_backward: (3, 0),
    aten.l1_loss: (2, 0), aten.smooth_l1_loss: (4, 0), aten.smooth_l1_loss_backward: (4, 0),
    aten.binary_cross_entropy: (6, 0), aten.binary_cross_entropy_backward: (6, 0),
    aten.binary_cross_entropy_with_logits: (8, 0),
    aten.nll_loss_forward: (0, 1), aten.nll_loss2d_forward: (0, 1),
    aten.topk: (1, 0), aten.sort: (1, 0), aten.cummax: (1, 0), aten.cummin: (1, 0),
    aten.histc: (1, 0), aten.bincount: (1, 0), aten.kthvalue: (1, 0), aten.median: (1, 0),
    aten.mode: (1, 0), aten.nanmedian: (1, 0), aten.unique_consecutive: (1, 0), aten._unique2: (1, 0),
}
table_rule({op: v for op, v in REDUCTIONS.items()}, lambda v: reduce(*v))


@rule(aten._log_softmax)
def log_softmax(x, dim, half_to_float=False, *, out):
    # 5 per element (max, subtract, exp, sum, subtract) + one log per row
    rows = prod(s for i, s in enumerate(x.shape) if i != dim % max(x.ndim, 1))
    r, w = io_bytes((x,), out)
    return Cost.of(vector={dtype_name(x.dtype): 5 * x.numel + rows}, read=r, written=w)


@rule(aten.nll_loss_backward, aten.nll_loss2d_backward)
def nll_loss_backward(grad_output, x, target, weight, reduction, ignore_index, total_weight, *, out):
    # writes the gradient (zeros + one scatter per row)
    r, w = io_bytes((grad_output, target, weight, total_weight), out)
    return Cost.of(vector={dtype_name(x.dtype): target.numel}, read=r, written=w)


# ----------------------------------------------------------------- pooling

def _window(kernel_size, ndim):
    ks = list(kernel_size) if isinstance(kernel_size, (list, tuple)) else [kernel_size]
    if len(ks) == 1:
        ks = ks * ndim
    return prod(ks)


def pool(ndim):
    def rule_fn(x, kernel_size, *args, out, **kwargs):
        o = tensors(out)[0]
        r, w = io_bytes((x,), out)
        return Cost.of(vector={dtype_name(x.dtype): o.numel * _window(kernel_size, ndim)}, read=r, written=w)
    return rule_fn


def pool_backward(ndim):
    def rule_fn(grad_out, x, kernel_size, *args, out, **kwargs):
        r, w = io_bytes((grad_out, x, args, kwargs), out)
        return Cost.of(vector={dtype_name(x.dtype): grad_out.numel * _window(kernel_size, ndim)}, read=r, written=w)
    return rule_fn


table_rule({aten.max_pool1d: 1, aten.max_pool2d_with_indices: 2, aten.max_pool3d_with_indices: 3,
            aten.avg_pool1d: 1, aten.avg_pool2d: 2, aten.avg_pool3d: 3}, pool)
table_rule({aten.avg_pool2d_backward: 2, aten.avg_pool3d_backward: 3}, pool_backward)


@rule(aten.max_pool2d_with_indices_backward, aten.max_pool3d_with_indices_backward)
def max_pool_backward(grad_out, x, kernel_size, stride, padding, dilation, ceil_mode, indices, *, out):
    # one scatter-add per grad-output element
    r, w = io_bytes((grad_out, indices), out)
    return Cost.of(vector={dtype_name(x.dtype): grad_out.numel}, read=r, written=w)


prims = torch.ops.prims  # Inductor's own prims: defined by _inductor.define_inductor_prims()
if hasattr(prims, "_low_memory_max_pool_with_offsets"):
    # Inductor's max_pool2d decomposition: (values, int8 offsets within the window)
    @rule(prims._low_memory_max_pool_with_offsets)
    def low_memory_max_pool(x, kernel_size, *args, out, **kwargs):
        o = tensors(out)[0]
        r, w = io_bytes((x,), out)
        return Cost.of(vector={dtype_name(x.dtype): o.numel * _window(kernel_size, len(kernel_size))},
                       read=r, written=w)

if hasattr(prims, "_low_memory_max_pool_offsets_to_indices"):
    # offsets -> flat indices: a few integer ops per element (row, column, add)
    @rule(prims._low_memory_max_pool_offsets_to_indices)
    def low_memory_offsets_to_indices(offsets, *args, out, **kwargs):
        r, w = io_bytes((offsets,), out)
        return Cost.of(vector={"int": 4 * offsets.numel}, read=r, written=w)


if hasattr(prims, "prepare_softmax_online"):
    # Inductor's post-grad pass (CUDA/XPU with Triton, config.online_softmax) replaces the amax and sum
    # of a softmax by one online pass: (max, sum of exp(x - max)) per row, keepdim.  Per input element:
    # compare, subtract, exp, add = 4 (the subtract and exp it feeds stay separate nodes, counted there).
    @rule(prims.prepare_softmax_online)
    def prepare_softmax_online(x, dim, *, out):
        r, w = io_bytes((x,), out)
        return Cost.of(vector={dtype_name(x.dtype): 4 * x.numel}, read=r, written=w)


def adaptive(*args, out, **kwargs):
    x = tensors(args)[0]
    o = tensors(out)[0]
    r, w = io_bytes(args, out)
    # every input element is summed once (windows may overlap by one; a lower bound) + 1 divide per output
    return Cost.of(vector={dtype_name(x.dtype): x.numel + o.numel}, read=r, written=w)


table_rule({op: None for op in (aten._adaptive_avg_pool2d, aten._adaptive_avg_pool3d, aten.adaptive_max_pool2d,
                                 aten.adaptive_max_pool3d, aten._adaptive_avg_pool2d_backward,
                                 aten._adaptive_avg_pool3d_backward, aten.adaptive_max_pool2d_backward,
                                 aten.adaptive_max_pool3d_backward, aten.adaptive_avg_pool1d)},
           lambda _: adaptive)
