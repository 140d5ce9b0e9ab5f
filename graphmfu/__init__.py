"""graphmfu: where GPU time goes, per op, module and stage, on a roofline.

Pipeline: capture (``capture.py``) -> rules (``cost.py`` + ``rules/``) -> roofline
(``hardware/``, ``roofline.py``) -> report (``report.py``).

    model = torch.compile(model, backend=graphmfu.backend)
    model(x).sum().backward()
    print(graphmfu.report().table())

    graphmfu.analyze(model, x, training=True)   # fake tensors: no GPU, no weights
    print(graphmfu.compare(model, x))           # eager against compiled, per stage and module
"""
from __future__ import annotations

from graphmfu.capture import GRAPHS as _GRAPHS, Backend, backend, trace as _trace
from graphmfu.cost import Cost, TensorSpec, dtype_name, ensure_builtin_rules as _ensure_rules, load_rules, rule
from graphmfu.errors import GraphMFUError
from graphmfu.hardware import DeviceSpec, get_device, known_devices
from graphmfu.report import Report, build as _build
from graphmfu.timing import ProfileSession, profile, stage
from graphmfu.compare import compare
from graphmfu.comparison import Comparison

__version__ = "0.1.0"
__all__ = ["backend", "Backend", "analyze", "compare", "Comparison", "report", "reset", "stage", "profile", "ProfileSession", "rule", "load_rules", "Cost", "TensorSpec",
           "DeviceSpec", "Report", "GraphMFUError", "get_device", "known_devices", "dtype_name"]


def _device_for(graphs, device):
    if device is not None:
        return get_device(device)
    kinds = {g.device for g in graphs}
    return get_device("cuda" if "cuda" in kinds else "cpu")


def report(device=None) -> Report:
    """The Report over every graph compiled with ``graphmfu.backend`` so far.

    ``device``: the ceilings to place nodes against (a DeviceSpec, a device name or alias,
    'cuda', 'cpu'); default: the device the graphs ran on."""
    graphs = list(_GRAPHS.graphs)
    if not graphs and not _GRAPHS.failures:
        raise GraphMFUError("no graphs compiled with graphmfu.backend yet: compile with "
                            "torch.compile(model, backend=graphmfu.backend) and run the model first")
    return _build(graphs, _device_for(graphs, device), _GRAPHS.failures)


def reset() -> None:
    """Forget the graphs compiled so far (their compiled code stays valid)."""
    _GRAPHS.clear()


def analyze(model_or_fn, *args, training: bool = False, device=None, **kwargs) -> Report:
    """Analyse ``model_or_fn(*args, **kwargs)`` on fake tensors: nothing real is allocated and no
    GPU is needed.  ``training=True`` also captures the backward (of ones through every output
    that requires grad, i.e. ``out.sum().backward()``).  ``device`` picks the ceilings (default:
    the current GPU, else measured CPU)."""
    _ensure_rules()
    dev = get_device(device)
    registry = _trace(model_or_fn, args, kwargs, training=training, device=device)
    return _build(registry.graphs, dev, registry.failures)
