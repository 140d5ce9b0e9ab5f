"""graphmfu: where GPU time goes, per op, module and stage, on a roofline.

Pipeline (docs/architecture.md): producers (the compiled capture ``capture.py``, the eager recorder
``eager.py``) fill one record (``record.py``); the profiler join (``join.py``) adds measured time; views
are derived from (record, device) (``derive.py``, ``roofline.py``) and rendered (``render/``).

    model = torch.compile(model, backend=graphmfu.backend)
    model(x).sum().backward()
    print(graphmfu.report().table())

    graphmfu.analyze(model, x, training=True)   # fake tensors: no GPU, no weights
    print(graphmfu.compare(model, x))           # eager against compiled, per stage and module
"""
from __future__ import annotations

from graphmfu.capture import Backend, backend, trace as _trace
from graphmfu.capture_all import CaptureAll, capture_all
from graphmfu.parallel import plan_parallel
from graphmfu.compare import compare
from graphmfu.comparison import Comparison
from graphmfu import ddp
from graphmfu.cost import Cost, TensorSpec, dtype_name, ensure_builtin_rules as _ensure_rules, load_rules, rule
from graphmfu.errors import GraphMFUError
from graphmfu.gather import gather
from graphmfu.hardware import DeviceSpec, device_for as _device_for, get_device, known_devices
from graphmfu.meter import Meter, meter
from graphmfu.profile import ProfileSession, attach, profile
from graphmfu.record import Record
from graphmfu.registry import DEFAULT as _DEFAULT, Registry
from graphmfu.report import Report
from graphmfu.stage import stage
from graphmfu.world import WorldReport

__version__ = "0.1.0"
__all__ = ["backend", "Backend", "capture_all", "CaptureAll", "plan_parallel", "analyze", "compare", "Comparison", "report", "reset", "stage", "profile", "attach",
           "ProfileSession", "meter", "Meter", "gather", "WorldReport", "rule", "load_rules", "Cost", "TensorSpec", "DeviceSpec", "Report", "Record", "Registry",
           "GraphMFUError", "get_device", "known_devices", "dtype_name", "ddp"]


def report(device=None, registry: Registry | None = None) -> Report:
    """The Report over every graph compiled with ``graphmfu.backend`` so far (or into ``registry``).

    ``device``: the ceilings to place nodes against (a DeviceSpec, a device name or alias,
    'cuda', 'cpu'); default: the device the graphs ran on."""
    reg = registry or _DEFAULT
    if not reg.graphs and not reg.failures:
        fell = reg.fallbacks()
        if fell:
            kind, reason, n = fell[0]
            raise GraphMFUError(f"no graph was compiled with graphmfu.backend: Dynamo compiled nothing and the "
                                f"model ran eagerly ({sum(c for _, _, c in fell)} graph break(s) / eager "
                                f"fallback(s)) — {kind} x{n}: {reason}"
                                + (f" (and {len(fell) - 1} other reason(s): graphmfu.registry.DEFAULT.fallbacks())"
                                   if len(fell) > 1 else ""))
        raise GraphMFUError("no graphs compiled with graphmfu.backend yet: compile with "
                            "torch.compile(model, backend=graphmfu.backend) and run the model first")
    rec = reg.record()
    return Report(rec, _device_for((g.device for g in rec.graphs), device))


def reset() -> None:
    """Forget the graphs compiled so far (their compiled code stays valid, but is no longer profiled)."""
    _DEFAULT.clear()


def analyze(model_or_fn, *args, training: bool = False, device=None, fast: bool | None = None, **kwargs) -> Report:
    """Analyse ``model_or_fn(*args, **kwargs)`` on fake tensors: nothing real is allocated and no
    GPU is needed.  ``training=True`` also captures the backward (of ones through every output
    that requires grad, i.e. ``out.sum().backward()``).  ``device`` picks the ceilings (default:
    the current GPU, else measured CPU).  A function may close over its model (real weights too):
    the modules and tensors it reaches are fake for the analysis and restored after.

    Two paths give the same matrix FLOPs and module tree:

    * ``fast=True`` (planning at scale, graphmfu/plan.py): the model runs once on meta tensors under a
      dispatch-level recorder: eager ATen ops (``aten.mm``, not Inductor's post-grad nodes), costs
      memoized per op signature, a 70B model in about FlopCounterMode's time;
    * ``fast=False``: Dynamo + AOTAutograd with Inductor's decompositions, the graphs Inductor would
      compile (post-grad nodes, masks read from the graph), several times slower on large models.

    By default (``fast=None``) the fast path runs, and the compiled graphs are traced instead only where
    they would answer differently: an attention mask the fast path cannot read (its values are not on meta
    tensors, the graph shows how it is built), attention written as matmul + softmax (its mask is read from
    the graph), flex_attention, or a fast run that failed.  The report's notes say which path ran and why."""
    _ensure_rules()
    dev = get_device(device)
    from graphmfu.plan import plan

    if fast:
        return Report(plan(model_or_fn, args, kwargs, training=training, device=device).record(), dev)
    if fast is None:
        try:
            reg = plan(model_or_fn, args, kwargs, training=training, device=device)
            why = _graphs_answer_differently(reg)
        except GraphMFUError as e:
            reg, why = None, f"the fast run failed ({e})"
        if why is None:
            reg.note("analysis path: fast (eager ATen ops on meta tensors, graphmfu/plan.py; the same matrix FLOPs "
                     "as Inductor's graphs); analyze(..., fast=False) traces the compiled graphs instead")
            return Report(reg.record(), dev)
    else:
        why = "fast=False"
    reg = _trace(model_or_fn, args, kwargs, training=training, device=device)
    reg.note(f"analysis path: compiled graphs (Dynamo + AOTAutograd, Inductor's decompositions): {why}")
    return Report(reg.record(), dev)


_SOFTMAX_LIKE = {"aten._softmax.default", "aten.softmax.int", "aten._safe_softmax.default", "aten.exp.default",
                 "prims.prepare_softmax_online.default"}


def _graphs_answer_differently(reg: Registry) -> str | None:
    """Why the compiled graphs would answer differently than the fast run in ``reg`` (None: they would not)."""
    if reg.failures:
        return f"the fast run could not count everything ({reg.failures[0]})"
    flops = {"forward": 0, "backward": 0}
    for g in reg.graphs:
        for n in g.nodes:
            where = n.module or "the model"
            if "mask_inputs" in n.flags:
                return f"an attention mask ({where}) whose values the fast run cannot see (the graph shows how it is built)"
            if n.op in _SOFTMAX_LIKE:
                return f"a softmax written out ({n.op} in {where}): attention as matmul + softmax, its mask read from the graph"
            if "flex_attention" in n.op:
                return f"flex_attention ({where}): its block mask is read from the compiled graph"
            if g.phase in flops and n.cost is not None:
                flops[g.phase] += int(n.cost.flops)
    if flops["backward"] > 2 * flops["forward"]:  # every product's backward is at most 2 products: recompute
        return ("the backward computes more than twice the forward's matrix FLOPs (activation checkpointing: the "
                "compiled graphs tell recomputation from model work)")
    return None
