"""``graphmfu.gather(report)``: every rank's report, collected on one rank over torch.distributed.

Call it on every rank of the group (it is a collective: ``torch.distributed.gather_object``), after
each rank built its report (``graphmfu.report()`` or ``profile().report()``).  Each rank sends its
device-free ``Record`` as JSON; ``dst`` receives them all and returns one ``WorldReport`` (world.py) on
its own report's device; every other rank gets None.  Works over NCCL (each rank must have set its
CUDA device, as torchrun users do) and gloo, on one host or many: nothing here is node-specific.
"""
from __future__ import annotations

import torch

from graphmfu.errors import GraphMFUError


def gather(report, dst: int = 0, group=None):
    """Gather ``report`` (a ``Report`` or ``Record``) of every rank of ``group`` (default: the world)
    on global rank ``dst``: a ``WorldReport`` there, None elsewhere."""
    from graphmfu.record import Record
    from graphmfu.report import Report
    from graphmfu.world import WorldReport

    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized()):
        raise GraphMFUError("graphmfu.gather needs an initialised process group: call "
                            "torch.distributed.init_process_group (torchrun sets the environment) before it")
    if isinstance(report, Report):
        record, device = report.record, report.device
    elif isinstance(report, Record):
        record, device = report, None
    else:
        raise GraphMFUError(f"graphmfu.gather takes a graphmfu Report or Record, got {type(report).__name__}")
    me = dist.get_rank()
    ranks = dist.get_process_group_ranks(group) if group is not None else list(range(dist.get_world_size()))
    if dst not in ranks:
        raise GraphMFUError(f"graphmfu.gather(dst={dst}): rank {dst} is not in the group (ranks {ranks})")
    payload = {"record": record.to_dict(), "device": device.to_dict() if device is not None else None}
    received = [None] * len(ranks) if me == dst else None
    dist.gather_object(payload, received, dst=dst, group=group)
    if me != dst:
        return None
    from graphmfu.hardware import device_for

    records = [Record.from_dict(p["record"]) for p in received]
    if device is None:
        device = device_for(g.device for r in records for g in r.graphs)
    names = {p["device"]["name"] for p in received if p["device"]}
    notes = [f"ranks reported on different devices ({', '.join(sorted(names))}); all placed on {device.name}"] \
        if len(names) > 1 else []
    return WorldReport(records, device, notes=notes)


__all__ = ["gather"]
