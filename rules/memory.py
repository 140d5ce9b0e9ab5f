"""Data movement: views, copies, casts, concatenation, padding, indexing,
gather/scatter, embedding, tensor creation.  No FLOPs except where an op adds
(scatter_add, index_add, index_put with accumulate, embedding backward: one
add per element added).

Views (view, reshape, t, permute, expand, as_strided, slice, select, squeeze,
unsqueeze, ...) move 0 bytes: they are metadata.  A copy reads its input and
writes its output.  An index/gather reads the elements it picks (output-sized)
plus the index; a scatter/index_put reads and writes the updated elements
(source-sized) plus the index — the untouched rest of the destination is not
traffic.  Creation (full, zeros, arange ...) writes its output; ``empty``
writes nothing."""
import torch


from graphmfu.cost import REGISTRY, ZERO, Cost, nbytes, dtype_name, rule, table_rule, tensors

aten, prims = torch.ops.aten, torch.ops.prims


VIEWS = [
    "view", "_unsafe_view", "reshape", "permute", "transpose", "t", "expand", "expand_as", "as_strided",
    "squeeze", "unsqueeze", "slice", "select", "alias", "detach", "unbind", "split", "split_with_sizes",
    "chunk", "narrow", "diagonal", "unfold", "view_as_real", "view_as_complex", "view_as", "lift_fresh",
    "_reshape_alias", "movedim", "flatten", "unflatten", "real", "imag", "numpy_T", "mT", "swapaxes",
    "tensor_split", "_conj", "conj", "_neg_view", "resolve_conj", "resolve_neg", "sym_size", "sym_stride",
    "sym_numel", "sym_storage_offset", "_local_scalar_dense", "empty", "empty_strided", "empty_like",
    "new_empty", "new_empty_strided", "_assert_async", "_assert_scalar", "sym_constrain_range",
    "sym_constrain_range_for_size", "_functional_sym_constrain_range", "_functional_assert_async",
    "lift_fresh_copy_", "set_", "resize_", "record_stream", "_make_dep_token", "is_same_size",
]
PRIM_VIEWS = ["view_of", "broadcast_in_dim", "squeeze", "collapse_view", "split_dim", "transpose",
              "as_strided", "slice", "slice_in_dim", "view_of_dtype", "_make_token", "_sink_tokens"]


def zero(_):
    def rule_fn(*args, out, **kwargs):
        return ZERO
    return rule_fn


table_rule({getattr(aten, n): None for n in VIEWS if hasattr(aten, n)}, zero)
table_rule({getattr(prims, n): None for n in PRIM_VIEWS if hasattr(prims, n)}, zero)
for _op in [getattr(aten, n) for n in VIEWS if hasattr(aten, n)] + [getattr(prims, n) for n in PRIM_VIEWS
                                                                      if hasattr(prims, n)]:
    REGISTRY.declare(_op, view=True, no_kernel=True)

# ops that launch no kernel of their own although they are not views: metadata queries, the SDPA backend
# choice, and composite wrappers that return their input or do their work in a child op (in a profile,
# the child is the kernel)
NO_KERNEL = ["to", "type_as", "contiguous", "reshape_as", "_fused_sdp_choice", "_has_compatible_shallow_copy_type"]
for _n in NO_KERNEL:
    if hasattr(aten, _n):
        REGISTRY.declare(getattr(aten, _n), no_kernel=True)


def copy(_):
    """Reads its tensor inputs (the source) and writes its outputs."""
    def rule_fn(*args, out, **kwargs):
        return Cost.of(read=nbytes((args, kwargs)), written=nbytes(out))
    return rule_fn


COPIES = [
    "clone", "_to_copy", "contiguous", "cat", "stack", "hstack", "vstack", "constant_pad_nd", "pad",
    "reflection_pad1d", "reflection_pad2d", "reflection_pad3d", "replication_pad1d", "replication_pad2d",
    "replication_pad3d", "flip", "roll", "repeat", "repeat_interleave", "tile", "tril", "triu",
    "lift_fresh_copy", "alias_copy", "view_copy", "permute_copy", "expand_copy", "transpose_copy",
    "slice_copy", "select_copy", "squeeze_copy", "unsqueeze_copy", "t_copy", "as_strided_copy",
    "split_copy", "split_with_sizes_copy", "unbind_copy", "detach_copy", "diagonal_copy",
    "_reshape_copy", "pixel_shuffle", "pixel_unshuffle", "channel_shuffle", "im2col", "col2im",
    "upsample_nearest1d", "upsample_nearest2d", "upsample_nearest3d", "_upsample_nearest_exact2d",
    "reflection_pad2d_backward", "replication_pad2d_backward", "masked_select", "nonzero", "clone_",
    # eager autograd's view backwards: a zero-filled output of the base's size with the grad copied in
    "slice_backward", "select_backward", "diagonal_backward",
]
PRIM_COPIES = ["convert_element_type", "copy_to", "device_put", "clone", "cat", "copy_strided", "iota_like"]
table_rule({getattr(aten, n): None for n in COPIES if hasattr(aten, n)}, copy)
table_rule({getattr(prims, n): None for n in PRIM_COPIES if hasattr(prims, n)}, copy)


@rule(aten.copy, aten.copy_)
def copy_into(dst, src, non_blocking=False, *, out):
    # the destination's old contents are not read
    return Cost.of(read=src.nbytes, written=nbytes(out))


def create(_):
    """Writes its output; reads nothing (or only a tensor used for its shape/value)."""
    def rule_fn(*args, out, **kwargs):
        return Cost.of(written=nbytes(out))
    return rule_fn


CREATION = [
    "full", "zeros", "ones", "full_like", "zeros_like", "ones_like", "new_full", "new_zeros", "new_ones",
    "arange", "linspace", "logspace", "scalar_tensor", "eye", "fill", "fill_", "zero", "zero_",
    "rand", "randn", "randint", "rand_like", "randn_like", "randint_like", "bernoulli", "normal",
    "uniform", "randperm", "multinomial", "_fused_moving_avg_obs_fq_helper", "exponential",
]
PRIM_CREATION = ["iota", "full", "scalar_tensor", "empty_strided", "inductor_random", "inductor_randint",
                 "inductor_seeds", "inductor_lookup_seed", "philox_rand"]
table_rule({getattr(aten, n): None for n in CREATION if hasattr(aten, n)}, create)
table_rule({getattr(prims, n): None for n in PRIM_CREATION if hasattr(prims, n)}, create)


# ----------------------------------------------------------------- indexing

def _gather(args, out):
    idx = [t for t in tensors(args)[1:] if not t.dtype.is_floating_point]
    return Cost.of(read=nbytes(out) + nbytes(idx), written=nbytes(out))


GATHERS = (aten.index, aten.index_select, aten.gather, aten.take, aten.take_along_dim, aten._unsafe_index,
           aten._unsafe_masked_index)


@rule(*GATHERS)
def index(*args, out, **kwargs):
    return _gather((args, kwargs), out)


# a table read only through these ops costs the gathered elements, not the whole table
for _op in (*GATHERS, aten.embedding):
    REGISTRY.declare(_op, gather=True)


@rule(aten.embedding)
def embedding(weight, indices, padding_idx=-1, scale_grad_by_freq=False, sparse=False, *, out):
    return Cost.of(read=out.nbytes + indices.nbytes, written=out.nbytes)


@rule(aten.embedding_dense_backward)
def embedding_dense_backward(grad_output, indices, num_weights, padding_idx, scale_grad_by_freq, *, out):
    # zero the table, then one add per gradient element into it
    return Cost.of(vector={dtype_name(grad_output.dtype): grad_output.numel},
                   read=grad_output.nbytes + indices.nbytes, written=out.nbytes)


def _scatter(dst, src, idx, accumulate, out):
    n = src.numel if src is not None else 0
    moved = (src.nbytes if src is not None else 0)
    vec = {dtype_name(dst.dtype): n} if accumulate else None
    # the updated elements are read (if accumulating) and written; src and index are read
    return Cost.of(vector=vec, read=moved + nbytes(idx) + (moved if accumulate else 0), written=moved)


@rule(aten.index_put, aten.index_put_, aten._unsafe_index_put, aten._index_put_impl, aten._index_put_impl_)
def index_put(dst, indices, values, accumulate=False, *rest, out):
    return _scatter(dst, values, indices, accumulate, out)


@rule(aten._unsafe_masked_index_put_accumulate)
def masked_index_put_accumulate(dst, mask, indices, values, *, out):
    return _scatter(dst, values, (mask, indices), True, out)


@rule(aten.scatter, aten.scatter_)
def scatter(dst, dim, index, src=None, *rest, out, **kwargs):
    src = src if hasattr(src, "nbytes") else index  # .value overloads scatter a scalar: index-sized
    reduce = kwargs.get("reduce") or (rest[0] if rest else None)
    return _scatter(dst, src, index, reduce is not None, out)


@rule(aten.scatter_add, aten.scatter_add_, aten.index_add, aten.index_add_)
def scatter_add(dst, dim, index, src, *rest, out, **kwargs):
    return _scatter(dst, src, index, True, out)


@rule(aten.scatter_reduce, aten.scatter_reduce_)
def scatter_reduce(dst, dim, index, src, reduce, include_self=True, *, out):
    return _scatter(dst, src, index, True, out)


@rule(aten.index_copy, aten.index_copy_, aten.index_fill, aten.index_fill_, aten.masked_scatter,
      aten.slice_scatter, aten.select_scatter, aten.diagonal_scatter, aten.as_strided_scatter)
def scatter_like(dst, *args, out, **kwargs):
    # functional scatters copy the destination and write the source into it
    return Cost.of(read=nbytes((dst, args, kwargs)), written=nbytes(out))


# ----------------------------------------------------------------- cat lowered to several kernels

def _cat_split(node, kernels_of, me, hint_bytes, inputs):
    """A cat that Inductor lowers to several kernels, each writing its inputs' slice of one buffer
    (e.g. a KV cache plus the new token): (bytes kernel ``me`` writes, bytes of cat inputs it does
    not read although they cross its boundary).  A kernel writes the slices of the inputs it
    computes; inputs computed in none of the cat's kernels are copied by those that compute none.
    ``hint_bytes(fx_node)``: a tensor's bytes; ``kernels_of``: node name -> kernel indices."""
    ks = kernels_of.get(node.name, set())
    ins = [t for t in (node.args[0] if node.args and isinstance(node.args[0], (list, tuple)) else [])
           if hasattr(t, "name") and hasattr(t, "meta")]
    owners = {x.name: kernels_of.get(x.name, set()) & ks for x in ins}
    copiers = {k for k in ks if not any(k in o for o in owners.values())} or set(ks)
    mine = not_read = 0
    for x in ins:
        handled = owners[x.name] or copiers
        if me in handled:
            mine += hint_bytes(x) // len(handled)
        elif x.name in inputs:  # crosses the boundary, but another kernel copies it
            not_read += hint_bytes(x)
    return mine, not_read


REGISTRY.declare(aten.cat, split_bytes=_cat_split)
