"""Ops: what rules register on (op overloads, packets, higher-order operators), the op a node was decomposed
from, the ops this torch has or lacks (Inductor's prims, flex attention, ``_int_mm``, ``_scaled_mm``,
higher-order ops), the fused attention CPU would run (``CpuAttention``), pytree leaves, dispatch modes,
TF32 and the process group a collective names.
"""
from __future__ import annotations

import contextlib

import torch


def is_op(op) -> bool:
    """An ATen/custom op overload, packet, or higher-order operator (what rules register on)."""
    return op_kind(op) is not None


def op_kind(op) -> str | None:
    """"overload" | "packet" | "higher_order" | None."""
    from torch._ops import HigherOrderOperator, OpOverload, OpOverloadPacket

    if isinstance(op, OpOverload):
        return "overload"
    if isinstance(op, OpOverloadPacket):
        return "packet"
    if isinstance(op, HigherOrderOperator):
        return "higher_order"
    return None


def decomposed_from(node) -> str | None:
    """The ATen op a post-grad / AOT graph node was decomposed from (``aten.addmm.default`` for the mul
    and sum Inductor writes for a small or GEMV-shaped addmm), when it is another op than the node's own;
    else None.  Read from the node's ``original_aten`` meta (AOTAutograd keeps it while tracing)."""
    orig = getattr(node, "meta", {}).get("original_aten")
    if orig is None or orig is getattr(node, "target", None):
        return None
    return str(orig)


def define_inductor_prims() -> None:
    """Inductor's own prims (max-pool offsets, random) exist only once this module is imported;
    the rules that cover them check for them at load time."""
    with contextlib.suppress(ImportError):
        import torch._inductor.inductor_prims  # noqa: F401


def higher_order_ops() -> dict:
    """name -> higher-order operator (``cond``, ``invoke_subgraph``, ...) of this torch."""
    try:
        from torch._ops import _higher_order_ops
    except ImportError:  # pragma: no cover
        return {}
    return dict(_higher_order_ops)


def flex_attention_ops() -> tuple:
    """(flex_attention, flex_attention_backward) higher-order ops, or () when this torch has none."""
    try:
        from torch._higher_order_ops.flex_attention import flex_attention, flex_attention_backward
    except ImportError:  # pragma: no cover
        return ()
    return flex_attention, flex_attention_backward


def int_mm(a, b):
    """int8 x int8 -> int32 matrix product (``torch._int_mm``); NotImplementedError when this torch
    has none (the CPU ceiling measurement then skips its int8 peak)."""
    fn = getattr(torch, "_int_mm", None)
    if fn is None:  # pragma: no cover
        raise NotImplementedError("this torch has no torch._int_mm")
    return fn(a, b)


def scaled_mm(a, b, scale_a, scale_b, out_dtype):
    """fp8 x fp8 -> out_dtype product (``torch._scaled_mm``; ``a`` row-major, ``b`` column-major, fp32 scalar
    scales); NotImplementedError when this torch has none."""
    fn = getattr(torch, "_scaled_mm", None)
    if fn is None:
        raise NotImplementedError("this torch has no torch._scaled_mm")
    return fn(a, b, scale_a=scale_a, scale_b=scale_b, out_dtype=out_dtype)


def matmul_allows_tf32() -> bool:
    try:
        return torch.get_float32_matmul_precision() != "highest" or bool(torch.backends.cuda.matmul.allow_tf32)
    except Exception:  # pragma: no cover
        return False


def process_group(name):
    """The ProcessGroup a functional collective names (its ``group_name``; torch 2.13 may pass the group
    itself), None when this process has no such group.  Uses torch's private resolver."""
    if not isinstance(name, str):
        return name
    try:
        from torch.distributed.distributed_c10d import _resolve_process_group
    except ImportError:  # pragma: no cover - resolver moved
        return None
    try:
        return _resolve_process_group(name)
    except Exception:  # noqa: BLE001 - unknown name in this process
        return None


def tree_leaves(obj) -> list:
    """Leaves of nested containers (lists, tuples, dicts, dataclasses and registered pytree nodes)."""
    from torch.utils import _pytree

    return _pytree.tree_leaves(obj)


def dispatch_mode_base():
    """The base class of a Python dispatch mode (sees every ATen op below autograd)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    return TorchDispatchMode


def ignores_compile_internals() -> bool:
    """Does this torch let a dispatch mode say ``ignore_compile_internals()`` (off while Dynamo and
    AOTAutograd trace, on while compiled code runs)?  Without it, a Python dispatch mode on the stack makes
    Dynamo skip every frame: graphmfu then installs none during an analysis."""
    return hasattr(dispatch_mode_base(), "ignore_compile_internals")


# --------------------------------------------------------------------------- attention on meta tensors


class CpuAttention(torch.overrides.TorchFunctionMode):
    """While planning on meta tensors: ``F.scaled_dot_product_attention`` runs the op it would run on
    CPU tensors (the fused ``_scaled_dot_product_flash_attention_for_cpu`` the compiled analysis
    sees; on meta it would take its math decomposition).  Which one CPU picks is asked once per
    argument signature, of SDPA itself on CPU fake tensors.  Fallback: SDPA as meta runs it."""

    def __init__(self):
        super().__init__()
        self.choice: dict = {}
        self.flash = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.nn.functional.scaled_dot_product_attention and self.flash is not None:
            try:
                a = _sdpa_args(*args, **kwargs)
            except TypeError:
                a = None
            if a is not None and all(isinstance(t, torch.Tensor) and t.device.type == "meta" for t in a[:3]) \
                    and self._fused(a):
                q, k, v, mask, dropout_p, is_causal, scale, _ = a
                if mask is not None and mask.dtype == torch.bool:  # as ATen does before the fused kernel
                    mask = torch.where(mask, torch.scalar_tensor(0.0, dtype=q.dtype, device=mask.device),
                                       torch.scalar_tensor(float("-inf"), dtype=q.dtype, device=mask.device))
                return self.flash(q, k, v, dropout_p, is_causal, attn_mask=mask, scale=scale)[0]
        return func(*args, **kwargs)

    def _fused(self, a) -> bool:
        def sig(t):
            return None if t is None else (tuple(t.shape), t.stride(), t.dtype, t.requires_grad)

        key = (sig(a[0]), sig(a[1]), sig(a[2]), sig(a[3]), *a[4:], torch.is_grad_enabled())
        got = self.choice.get(key)
        if got is None:
            try:
                got = self._probe(a)
            except Exception:  # noqa: BLE001 - cannot tell: SDPA as meta runs it
                got = False
            self.choice[key] = got
        return got

    def _probe(self, a) -> bool:
        from torch._subclasses.fake_tensor import FakeTensorMode
        from torch.utils._python_dispatch import TorchDispatchMode, _disable_current_modes

        class Ops(TorchDispatchMode):
            def __init__(self):
                super().__init__()
                self.ops: set = set()

            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                self.ops.add(func)
                return func(*args, **(kwargs or {}))

        with _disable_current_modes():  # the planner's recorder must not see the probe
            fm = FakeTensorMode()
            with fm:
                fake = [None if t is None else torch.empty_strided(t.shape, t.stride(), dtype=t.dtype, device="cpu")
                        .requires_grad_(t.requires_grad) for t in a[:4]]
            with fm, Ops() as seen:
                torch.nn.functional.scaled_dot_product_attention(*fake, dropout_p=a[4], is_causal=a[5], scale=a[6],
                                                                 enable_gqa=a[7])
        return self.flash.default in seen.ops


def _sdpa_args(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
    return query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa
