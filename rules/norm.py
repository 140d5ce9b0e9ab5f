"""Normalisation: layer, RMS, batch and group norm, forward and backward.

Forward per element: layer norm 8 (mean: 1, subtract: 1, square: 1, sum: 1,
scale by rstd: 1, weight: 1, bias: 1, + the rsqrt per row rounded in),
RMS norm 5 (square, sum, scale, weight, + rsqrt per row), batch/group norm 8
(as layer norm).  Backward per element: 12 for layer/batch/group norm (input
grad 9, weight and bias grads 3), 8 for RMS norm.  Without weight/bias the
affine terms drop.  Bytes: inputs read once, outputs written once."""
import torch

from graphmfu.cost import Cost, dtype_name, io_bytes, rule

aten = torch.ops.aten




def _cost(x, per_elem, args, out):
    r, w = io_bytes(args, out)
    return Cost.of(vector={dtype_name(x.dtype): per_elem * x.numel}, read=r, written=w)


@rule(aten.native_layer_norm)
def layer_norm(x, normalized_shape, weight, bias, eps, *, out):
    return _cost(x, 6 + (weight is not None) + (bias is not None), (x, weight, bias), out)


@rule(aten.native_layer_norm_backward)
def layer_norm_backward(grad_out, x, normalized_shape, mean, rstd, weight, bias, output_mask, *, out):
    per = 9 * bool(output_mask[0]) + 2 * bool(output_mask[1]) + 1 * bool(output_mask[2])
    return _cost(x, per, (grad_out, x, mean, rstd, weight), out)


@rule(aten._fused_rms_norm)
def rms_norm(x, normalized_shape, weight, eps, *, out):
    return _cost(x, 4 + (weight is not None), (x, weight), out)


@rule(aten._fused_rms_norm_backward)
def rms_norm_backward(grad_out, x, normalized_shape, rstd, weight, output_mask, *, out):
    return _cost(x, 6 * bool(output_mask[0]) + 2 * bool(output_mask[1]), (grad_out, x, rstd, weight), out)


if hasattr(aten, "rms_norm"):
    @rule(aten.rms_norm)
    def rms_norm_composite(x, normalized_shape, weight=None, eps=None, *, out):
        return _cost(x, 4 + (weight is not None), (x, weight), out)


@rule(aten.native_batch_norm, aten._native_batch_norm_legit, aten._native_batch_norm_legit_functional,
      aten._native_batch_norm_legit_no_training)
def batch_norm(x, weight, bias, *args, out, **kwargs):
    return _cost(x, 6 + (weight is not None) + (bias is not None), (x, weight, bias, args), out)


@rule(aten.native_batch_norm_backward)
def batch_norm_backward(grad_out, x, weight, running_mean, running_var, save_mean, save_invstd, train, eps,
                        output_mask, *, out):
    per = 9 * bool(output_mask[0]) + 2 * bool(output_mask[1]) + 1 * bool(output_mask[2])
    return _cost(x, per, (grad_out, x, weight, save_mean, save_invstd), out)


@rule(aten.native_group_norm)
def group_norm(x, weight, bias, n, c, hxw, group, eps, *, out):
    return _cost(x, 6 + (weight is not None) + (bias is not None), (x, weight, bias), out)


@rule(aten.native_group_norm_backward)
def group_norm_backward(grad_out, x, mean, rstd, weight, n, c, hxw, group, output_mask, *, out):
    per = 9 * bool(output_mask[0]) + 2 * bool(output_mask[1]) + 1 * bool(output_mask[2])
    return _cost(x, per, (grad_out, x, mean, rstd, weight), out)
