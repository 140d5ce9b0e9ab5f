"""The profiler: graphmfu's range names, which events are torch compiling or Python frames rather than the
model's ops, the GPU kernels a finished session saw (its kineto results, semi-private), whether a session
runs, its first-use costs paid up front, and the option that records every thread.
"""
from __future__ import annotations

from typing import Mapping

import torch


PROBE_RANGE = "graphmfu::probe"  # a profiler range around graphmfu's own per-call work (mask probes)
COMPILE_RANGE = "graphmfu::compile"  # a profiler range around each graph's Inductor compile
# Dynamo's own ranges around a frame's compile (bytecode tracing, AOTAutograd, Inductor), 2.11 and 2.13
_DYNAMO_COMPILE_RANGES = ("dynamo", "entire_frame_compile")


def is_compile_range(name: str) -> bool:
    """A profiler range during which torch compiles (its ATen ops run on fake tensors; GPU kernels in
    it are autotuning benchmarks), not the model running."""
    return name.startswith(COMPILE_RANGE) or name in _DYNAMO_COMPILE_RANGES


def is_python_frame(name: str) -> bool:
    """A Python-function event of a profile taken with ``with_stack=True`` (``file.py(12): fn``,
    ``<built-in method ...>``): not an op, only a frame between ops."""
    return name.startswith("<built-in ") or ".py(" in name


def profiler_running() -> bool:
    """Is a torch.profiler / autograd profiler session active in this process?"""
    try:
        return bool(torch.autograd.profiler._is_profiler_enabled)
    except AttributeError:  # pragma: no cover
        return False


def profiler_warmup() -> None:
    """Pay the profiler's first-use costs on the GPU (CUPTI's first runtime calls and kernel launch after the
    profiler starts) inside graphmfu's probe range, before the user's first stage: on an idle device that
    CPU time would otherwise open the first stage's span (an H200: 2-3 ms before a prefill's first launch,
    absent from CUDA events around the same code).  The join leaves the range's ops and kernels out."""
    with torch.profiler.record_function(PROBE_RANGE):
        ev = torch.cuda.Event()
        ev.record()
        torch.zeros(1, device="cuda").add_(1)
        torch.cuda.synchronize()


def all_threads_config():
    """The profiler's experimental config that records every thread (calls from worker threads), or
    None when this torch has no such option (then only threads the profiler saw start are recorded)."""
    try:
        from torch._C._profiler import _ExperimentalConfig

        return _ExperimentalConfig(profile_all_threads=True)
    except (ImportError, TypeError):
        return None


def device_kernels(prof, op_by_corr: Mapping) -> list[tuple]:
    """GPU activities of a finished torch.profiler session as (name, start_us, end_us, linked
    correlation id), in the time base of ``prof.events()``.  The linked id is that of the CPU op
    enclosing the launch (CUPTI correlation).  Reads the profiler's kineto results (semi-private);
    without them, no GPU kernels (the report then attributes nothing and says so)."""
    try:
        kineto = prof.profiler.kineto_results.events()
        cpu, cuda = torch.autograd.DeviceType.CPU, torch.autograd.DeviceType.CUDA
    except AttributeError:
        return []
    # kineto times are absolute ns; FunctionEvent times are us from the trace start: align on the
    # CPU ops both list (same correlation id and name)
    offs = sorted(k.start_ns() / 1e3 - op_by_corr[k.correlation_id()].time_range.start for k in kineto
                  if k.device_type() == cpu and k.correlation_id() in op_by_corr
                  and op_by_corr[k.correlation_id()].name == k.name())
    offset = offs[len(offs) // 2] if offs else 0.0
    out = []
    for k in kineto:
        if k.device_type() == cuda:
            start = k.start_ns() / 1e3 - offset
            out.append((k.name(), start, start + k.duration_ns() / 1e3, k.linked_correlation_id()))
    return out
