"""Convolutions (1d/2d/3d, strided, padded, dilated, grouped/depthwise,
transposed) and their backward.

Forward matrix FLOPs = ``2 * N * prod(weight.shape) * prod(spatial)`` where
``spatial`` is the output's spatial size for a plain convolution and the
input's for a transposed one (each input element is scattered through the
kernel): the weight holds ``Cout * Cin/groups * prod(kernel)`` MACs per
position either way.  Bias: one vector add per output element.
Backward: grad-input and grad-weight each cost the forward's matrix FLOPs,
counted only where ``output_mask`` asks for them; grad-bias is a reduction
(one add per grad-output element)."""
from graphmfu.cost import Cost, dtype_name, nbytes, prod, rule
import torch

aten = torch.ops.aten


def conv_flops(x_shape, w_shape, out_shape, transposed):
    n = x_shape[0]
    spatial = x_shape[2:] if transposed else out_shape[2:]
    return 2 * n * prod(w_shape) * prod(spatial)




@rule(aten.convolution, aten._convolution)
def convolution(x, w, bias, stride, padding, dilation, transposed, output_padding, groups, *rest, out):
    f = conv_flops(x.shape, w.shape, out.shape, transposed)
    vec = {dtype_name(out.dtype): out.numel} if bias is not None else None
    return Cost.of({dtype_name(x.dtype): f}, vector=vec, read=nbytes((x, w, bias)), written=out.nbytes)


@rule(aten.convolution_backward)
def convolution_backward(grad_out, x, w, bias_sizes, stride, padding, dilation, transposed,
                         output_padding, groups, output_mask, *, out):
    f = conv_flops(x.shape, w.shape, grad_out.shape, transposed)
    want_in, want_w, want_b = output_mask
    flops = f * (int(bool(want_in)) + int(bool(want_w)))
    vec = {dtype_name(grad_out.dtype): grad_out.numel} if want_b else None
    read = grad_out.nbytes + (w.nbytes if want_in else 0) + (x.nbytes if want_w else 0)
    written = nbytes([o for o, m in zip(out, output_mask) if m and o is not None])
    return Cost.of({dtype_name(x.dtype): flops}, vector=vec, read=read, written=written)
