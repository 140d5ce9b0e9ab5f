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
from graphmfu.compare import compare
from graphmfu.comparison import Comparison
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
__all__ = ["backend", "Backend", "analyze", "compare", "Comparison", "report", "reset", "stage", "profile", "attach",
           "ProfileSession", "meter", "Meter", "gather", "WorldReport", "rule", "load_rules", "Cost", "TensorSpec", "DeviceSpec", "Report", "Record", "Registry",
           "GraphMFUError", "get_device", "known_devices", "dtype_name"]


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


def analyze(model_or_fn, *args, training: bool = False, device=None, fast: bool = False, **kwargs) -> Report:
    """Analyse ``model_or_fn(*args, **kwargs)`` on fake tensors: nothing real is allocated and no
    GPU is needed.  ``training=True`` also captures the backward (of ones through every output
    that requires grad, i.e. ``out.sum().backward()``).  ``device`` picks the ceilings (default:
    the current GPU, else measured CPU).  A function may close over its model (real weights too):
    the modules and tensors it reaches are fake for the analysis and restored after.

    ``fast=True`` (planning at scale, graphmfu/plan.py): the model runs once on meta tensors under
    a dispatch-level recorder instead of being traced by Dynamo and AOTAutograd: eager ATen ops
    (``aten.mm``, not Inductor's post-grad nodes), the same matrix FLOPs and module tree, costs
    memoized per op signature so repeated layers are nearly free (a 70B model in about
    FlopCounterMode's time)."""
    _ensure_rules()
    dev = get_device(device)
    if fast:
        from graphmfu.plan import plan

        return Report(plan(model_or_fn, args, kwargs, training=training, device=device).record(), dev)
    return Report(_trace(model_or_fn, args, kwargs, training=training, device=device).record(), dev)
