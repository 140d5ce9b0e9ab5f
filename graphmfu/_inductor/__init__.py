"""Every private torch / Inductor API graphmfu touches, each with a fallback.

This is the one package that changes when torch changes.  Checked on torch 2.13 (CPU) and 2.11 (CUDA).
Each function says what happens when the private API is missing: graphmfu degrades (plain Inductor, no
symbolic hints) rather than breaking the user's model.

One room per torch subsystem; none imports anything of graphmfu outside this package, nor this
``__init__``:

- ``compile``: Inductor with graphmfu's post-grad hook and its kernel provenance hook, plain Inductor, the
  analysis backend, the settings around a compile (caches, recompile limits, modes), backend registration;
- ``calls``: ``CallTagger`` and the tagging call of graphmfu's compiled graphs, per-call values, ``Deferred``;
- ``dynamo``: the frame and compile running now, Dynamo's module names, its marks and fallbacks, its errors;
- ``foreign``: graphs compiled outside graphmfu (``compile_sites``, ``ForeignCalls``, ``route_inductor``)
  and the thread's graph call depth (``_in_graph``, shared with ``calls``);
- ``profiler``: graphmfu's range names, compile ranges and Python frames, kineto's device kernels;
- ``tensors``: fake and meta tensors, swapped model tensors, size symbols and hints;
- ``modules``: eager module tracking (``module_tracker``, ``ModuleTagger``), the running autograd node;
- ``ops``: op kinds, decompositions, the ops this torch has (``int_mm``, ``scaled_mm``, flex attention,
  higher-order ops), ``CpuAttention``, pytree and dispatch-mode helpers, process groups.

Imports among the rooms: ``calls`` -> ``dynamo``, ``foreign``, ``profiler``; ``compile`` -> ``dynamo``,
``profiler``; ``modules`` -> ``ops``.

This ``__init__`` re-exports every name the rest of graphmfu uses as ``_inductor.<name>``.  A name patched
on the package (``monkeypatch.setattr(_inductor, ...)``) is seen by every caller outside it; inside it, only
``call_values`` and ``Deferred`` are looked up on the package at call time (``calls._package``), as the
tagging call's patches need; the rooms otherwise call their own names.
"""
from graphmfu._inductor.calls import (
    CALL_RANGE, CallTagger, Deferred, call_values, counts_from, deferred, parse_call_range, swap_counts)
from graphmfu._inductor.compile import (
    HookUnavailable, UnknownMode, analysis_backend, caches_off, compile_plain, compile_with_inner_hook, fresh_dynamo,
    kernel_hook, kernel_profile_config, mode_config, register_backend)
from graphmfu._inductor.dynamo import (
    RESET_DYNAMO, compile_id, compiling_frame, dynamo_fallbacks, fallback_reason, frame_name, frame_prefix,
    is_dynamo_error, module_path, no_dynamo_marks, uncompiled, uncompiled_name)
from graphmfu._inductor.foreign import (
    ForeignCalls, _caller, compile_sites, graph_call_depth, observe_compiles, route_inductor)
from graphmfu._inductor.modules import (
    ModuleTagger, current_autograd_node, module_tracker, named_module_tracker, own_tensors, tracked_module)
from graphmfu._inductor.ops import (
    CpuAttention, decomposed_from, define_inductor_prims, dispatch_mode_base, flex_attention_ops, higher_order_ops,
    ignores_compile_internals, int_mm, is_op, matmul_allows_tf32, op_kind, process_group, scaled_mm, tree_leaves)
from graphmfu._inductor.profiler import (
    COMPILE_RANGE, PROBE_RANGE, all_threads_config, device_kernels, is_compile_range, is_python_frame,
    profiler_running, profiler_warmup)
from graphmfu._inductor.tensors import (
    fake_mode, is_fake, real_tensors, shape_hints, size_hint, size_symbols, swapped_tensors, sym_value, to_fake,
    to_meta)
