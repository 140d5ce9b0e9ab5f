"""Planning a parallel layout on paper: ``plan_parallel(model, inputs, world=..., tp=, pp=, dp=, cp=, ep=, fsdp=,
microbatches=, device=, links=)`` predicts, for each layout, per-rank FLOPs and bytes, every collective with its
NCCL-tests bus bytes, per-rank memory, the pipeline bubble, the step time, tokens/s and MFU; ``search=True``
ranks candidate layouts of the same world and global batch.  ``graphmfu plan`` is the command line.

How (each room one idea):

* ``model.py``: the model's shape and a *probe*: one transformer layer per kind (Llama: one; a DeepSeek-V3-
  shaped MoE: one dense, one MoE) plus embedding, head and loss, random weights on meta tensors (presets in
  ``presets.py`` are transformers configs: nothing downloaded);
* ``costs.py``: ``analyze(fast=True)``'s per-op record of one training microbatch of the probe (graphmfu/plan.py,
  the same rules as every graphmfu report), sorted per layer kind and pipeline end, and the activation bytes
  autograd saves per layer.  Per-layer costs are identical across layers of a kind, so they are scaled by the
  layer counts: the 405B shape is analysed in a fraction of a second, not 126 layers;
* ``layout.py``: the layout and its validation (one clear line per problem);
* ``collectives.py``: every collective a layout implies (TP, CP, EP, PP, DP/FSDP/HSDP) with its bus bytes and link;
* ``memory.py``: parameters, gradients, optimizer states, activations with and without recompute;
* ``pipeline.py``: stages, 1F1B and interleaved bubbles, activations in flight;
* ``assumptions.py`` (+ ``ceilings.csv``, ``hardware/links.csv``): every number not counted from the model,
  with its status and source;
* ``predict.py``: step time per rank (compute at the achieved ceilings + exposed communication on the link
  roofs, paced by the pipeline) and MFU;  ``fit.py``: calibrating one assumption on one known run;
* ``table.py``: the ranked result (``ParallelPlan``: ``rows``, ``breakdown``, ``table()``) and the candidates.

Nothing here is module state: the plan, its assumptions and its costs are objects.
"""
from __future__ import annotations

import time

import torch

from graphmfu.errors import GraphMFUError
from graphmfu.hardware import get_device
from graphmfu.parallel.assumptions import Assumptions
from graphmfu.parallel.costs import measure
from graphmfu.parallel.fit import fit
from graphmfu.parallel.layout import Layout
from graphmfu.parallel.model import shape_of
from graphmfu.parallel.pipeline import bubble_fraction, bubble_ratio
from graphmfu.parallel.table import ParallelPlan, candidates

DEFAULT_DEVICE = "h100-sxm"


def _seq_mbs(inputs, seq, microbatch_size, hf: bool) -> tuple[int, int]:
    if inputs is not None:
        t = inputs[0] if isinstance(inputs, (tuple, list)) else inputs
        if not isinstance(t, torch.Tensor) or t.dim() < 2:
            raise GraphMFUError("plan_parallel: inputs must be a [microbatch, seq] tensor (or a tuple starting with "
                                "one): one microbatch of the training step")
        return int(t.shape[1]), int(t.shape[0])
    if not hf:
        raise GraphMFUError("plan_parallel: a plain nn.Module needs inputs (one microbatch, e.g. a [batch, seq] "
                            "tensor); transformers models and presets take seq= instead")
    if seq is None:
        raise GraphMFUError("plan_parallel: give seq= (tokens per sequence) or inputs (a [microbatch, seq] tensor)")
    return int(seq), int(microbatch_size or 1)


def plan_parallel(model, inputs=None, *, world: int, tp: int = 1, pp: int = 1, dp: int | None = None, cp: int = 1,
                  ep: int = 1, fsdp: int | None = None, microbatches: int | None = None, virtual_stages: int = 1,
                  microbatch_size: int | None = None, seq: int | None = None, device=DEFAULT_DEVICE, links=None,
                  search: bool = False, global_batch: int | None = None, assumptions: dict | None = None,
                  **layout) -> ParallelPlan:
    """Plan ``model`` (a preset name such as ``"llama3-405b"``, a transformers config or model, or an nn.Module
    with ``inputs``) on ``world`` ranks of ``device`` (default H100 SXM) with the given degrees; ``search``
    also ranks candidate layouts of the same world and global batch (``global_batch`` sequences per step,
    default the given layout's).  ``links``: an inter-node fabric name from graphmfu/hardware/links.csv (default
    ib-ndr-400g) or {"nvlink": ..., "internode": ...} of names or GB/s.  ``assumptions``: overrides, e.g.
    {"gemm": 0.7, "tp_overlap": 1.0}.  ``layout``: sequence_parallel, recompute ("none"|"selective"|"full"),
    cp_mode ("allgather"|"ring"), balance_ends, reshard_after_forward, order, gpus_per_node."""
    t0 = time.perf_counter()
    dev = get_device(device)
    shape = shape_of(model)
    seq_, mbs = _seq_mbs(inputs, seq, microbatch_size, shape.hf)
    a = Assumptions.for_device(dev, links, **(assumptions or {}))
    node = int(layout.pop("gpus_per_node", a.gpus_per_node if "gpus_per_node" in a.items else 8))
    base = Layout(world, tp, pp, dp, cp, ep, fsdp, microbatches, virtual_stages, mbs, seq_, gpus_per_node=node,
                  **layout).validate()
    base.check_model(shape)
    costs = measure(shape, seq_, mbs, dev, None if shape.hf else (tuple(inputs) if isinstance(inputs, (tuple, list))
                                                                  else (inputs,)))
    layouts = [base]
    if search:
        seen = {base.label()}
        for lay in candidates(base, shape, global_batch or base.sequences):
            if lay.label() not in seen:
                seen.add(lay.label())
                layouts.append(lay)
    return ParallelPlan(costs, dev, a, layouts, time.perf_counter() - t0)


__all__ = ["plan_parallel", "ParallelPlan", "Layout", "Assumptions", "fit", "bubble_fraction", "bubble_ratio",
           "shape_of", "measure", "candidates"]
