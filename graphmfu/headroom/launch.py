"""Causes of time where the device does no costed work: launch gaps, and eager work outside graphs.

* ``launch_gaps``: per innermost stage, device idle time inside its span (``span_s - busy_s``): the host did
  not launch the next kernel in time (a CPU-bound loop, Python and dispatcher overhead, host syncs).
* ``eager_work``: kernel time of ops outside every compiled graph (``coverage.unattributed_kernels`` where
  ``outside graphs``), per top-level stage: code torch.compile never saw, or that Dynamo ran eagerly.
"""
from __future__ import annotations

from collections import defaultdict

from graphmfu.headroom.evidence import Cause, Context, us
from graphmfu.registry import FALLBACK_HEAD
from graphmfu.render import ms

MIN_IDLE_SHARE = 0.1  # a stage whose device is idle less than this share of its span is not launch-bound
LAUNCH_BOUND_KERNEL_S = 20e-6  # kernels shorter than this on average: the launch path, not the work, sets the pace
# host time per kernel launch inside graph calls above which the launch path itself is worth saying: on the H200's
# host Inductor's wrapper and launcher took 22-25 us per launch without the profiler and at most ~3 us more under
# it (bench/probe/profiler_launch_cost.py, docs/validation.md 2026-12-04 fifth session); the plants' 35-47 us runs
# were that host on slower days, not the profiler
SLOW_LAUNCH_S = 20e-6


def _leaves(stages: list[dict]) -> list[dict]:
    parents = {s["parent"] for s in stages if s["parent"]}
    return [s for s in stages if s["name"] not in parents]


def launch_gaps(ctx: Context) -> list[Cause]:
    out = []
    cuda = bool(ctx.record.timing.cuda)
    for s in _leaves(ctx.stages):
        idle, span, n = ctx.idle(s), s["span_s"], s["kernel_launches"]
        if span <= 0 or idle <= 0 or idle / span < MIN_IDLE_SHARE or not n:
            continue
        kernel, gap = s["busy_s"] / n, idle / n
        evidence = (f"device idle {ms(idle)} ms of its {ms(span)} ms span ({idle / span:.0%}) over {s['calls']} "
                    f"call(s) and {n} kernels: mean kernel {us(kernel)}, mean gap {us(gap)}")
        if kernel < LAUNCH_BOUND_KERNEL_S or gap > kernel:
            action = ("launch-bound (the host cannot keep the device fed): use torch.compile(mode='reduce-overhead') "
                      "(CUDA graphs replay the stage's kernels in one launch), and turn Python loops of small ops "
                      "into batched tensor ops")
        else:
            action = ("the device waits on the host between kernels: remove host syncs (.item(), .cpu(), printing "
                      "tensors), prefetch inputs with non_blocking copies, or use CUDA graphs (mode='reduce-overhead')")
        if not cuda:
            action += " (CPU run: the gaps are Python and dispatcher time between ops; CUDA graphs apply on a GPU)"
        inside = s.get("host_in_graphs_s")
        graph_launches = n - eager_launches(ctx, s["name"])
        if cuda and inside and graph_launches > 0 and inside / graph_launches > SLOW_LAUNCH_S:
            evidence += (f"; inside the graph calls the host spent {us(inside / graph_launches)} per kernel launch "
                         f"(under the profiler: Inductor's wrapper and launcher, which the profiler slows by a few us "
                         f"per launch; graphmfu.meter() times steps without it): the launch path paces this stage")
        out.append(Cause("launch_bound", f"stage {s['name']}", idle, evidence, action))
    return out


def _top_stage(stage):
    return stage.split("/", 1)[0] if stage else None


def eager_launches(ctx: Context, stage: str) -> int:
    """Kernels launched by ops outside every graph in ``stage`` (its nested stages included)."""
    from graphmfu.derive import in_stage

    return sum(o["count"] for o in ctx.unattributed if o["where"] == "outside graphs" and o["stage"]
               and in_stage(o["stage"], stage))


def eager_work(ctx: Context) -> list[Cause]:
    groups: dict = defaultdict(list)
    for o in ctx.unattributed:
        if o["where"] == "outside graphs":
            groups[_top_stage(o["stage"])].append(o)
    out = []
    for stage, rows in groups.items():
        t = sum(o["time_s"] for o in rows)
        if t <= 0:
            continue
        ops: dict = defaultdict(lambda: [0, 0.0])
        for o in rows:
            e = ops[o["launch_op"] or o["name"]]
            e[0] += o["count"]
            e[1] += o["time_s"]
        top = sorted(ops.items(), key=lambda kv: -kv[1][1])
        n = sum(c for c, _ in ops.values())
        evidence = (f"{n} op call(s) of {len(ops)} kind(s) ran eagerly, outside every compiled graph, for "
                    f"{ms(t)} ms (their FLOPs are not counted): "
                    + ", ".join(f"{name} x{c} {ms(s)} ms" for name, (c, s) in top[:4]))
        breaks = [c for c in ctx.data.get("notes", []) if c.startswith(FALLBACK_HEAD)]
        action = ("compile the code that runs them (torch.compile the step function, the loss or the Python loop "
                  "around the model, not only the model's forward)")
        if breaks:
            action += "; Dynamo also reported graph breaks or eager fallbacks: see the graph_break causes"
        out.append(Cause("eager_work", f"stage {stage}" if stage else "outside stages", t, evidence, action))
    return out


__all__ = ["launch_gaps", "eager_work", "eager_launches", "MIN_IDLE_SHARE"]
