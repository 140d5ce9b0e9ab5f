"""The collected record: what the producers saw, with no device in it.

Every producer fills the same record:

* the compiled capture (``capture.py``): one ``GraphRecord`` per Inductor graph, its ``OpRecord``\\ s
  (ATen nodes of the post-grad graph) and ``KernelRecord``\\ s (the kernels Inductor emitted, in launch
  order, each with its origin ops);
* the eager recorder (``eager.py``): one ``GraphRecord`` per recorded stage call (source ``eager``),
  its ops, and one kernel per op (an eager op is its own launch site);
* the profiler join (``join.py``): ``Timing`` — measured time per (graph, kernel, stage), stage spans,
  what could not be attributed.

A collective op also carries ``comm`` (``Comm``: bus bytes, group size and ranks; rules/collectives.py),
beside its cost and never added into it.  A record names its process: rank, world size, host, pid,
local rank, local world size and local device (``graphmfu.gather`` merges the ranks' records).

Views (MFU, MBU, SOL, bound, t_min ...) are derived from a record and a device by ``derive.py``; the
record itself never holds a number that depends on the device, so a saved record can be placed on
any device's roofline.  Graph ``key``\\ s are unique across registries and processes
(``<registry uid>:<id>``), so records of several processes can be merged.
"""
from __future__ import annotations

import dataclasses
import os
import socket
from typing import Any

from graphmfu.cost import Cost, event_name

RECORD_SCHEMA = "graphmfu.record/1"


@dataclasses.dataclass
class Comm:
    """What a collective op sends over the interconnect (rules/collectives.py), device-free.

    ``size`` is the payload S in bytes as NCCL-tests names it (all_reduce: the buffer; all_gather: the
    gathered output; reduce_scatter: the input before scattering; all_to_all: the send buffer;
    broadcast: the buffer); ``bytes`` are the bus bytes, ``size`` times the algorithm factor of the
    kind for ``group_size`` ranks n (all_reduce 2(n-1)/n; all_gather, reduce_scatter, all_to_all
    (n-1)/n; broadcast, reduce, send/recv 1).  Bus bytes over time is NCCL-tests' busbw, comparable
    to one direction of the link.  ``group_size`` None: the group could not be resolved (``bytes``
    None, flagged).  ``ranks``: the group's global ranks (the link is chosen from where they run)."""
    kind: str
    size: Any
    bytes: Any
    group_size: int | None
    group: str = ""
    ranks: list | None = None


@dataclasses.dataclass
class OpRecord:
    """One ATen op: a node of a compiled graph, or one op of an eager recording."""
    graph: int
    phase: str  # forward | backward | inference
    index: int  # position among the graph's ops
    name: str  # FX node name (compiled) or ``e<position>`` (eager)
    op: str  # aten.mm.default
    module: str  # layers.0.attn.q ("" = the model root)
    inputs: list  # [[shape, dtype], ...] of tensor inputs
    outputs: list
    cost: Cost | None  # evaluated with the compile-time hints; None = no rule
    cost_expr: dict | None = None  # symbolic cost as strings, when shapes are dynamic
    output_bytes: int = 0
    recompute: bool = False  # a forward node recomputed inside a backward graph (HFU, not model FLOPs)
    note: str = ""
    flags: list = dataclasses.field(default_factory=list)  # names of report flags (cost.Flag)
    sym: dict | None = None  # dynamic shapes: the cost as formulas of the size symbols (Cost.to_dict, str values)
    comm: Comm | None = None  # a collective: what it sends over the interconnect (not part of ``cost``)

    @property
    def known(self) -> bool:
        return self.cost is not None

    @property
    def event(self) -> str:
        """The profiler's name of this op (``aten::mm``)."""
        return event_name(self.op)

    def cost_at(self, sizes: dict | None):
        """The op's cost for one call with these symbol values (``cost`` when static or no sizes)."""
        return _cost_at(self.cost, self.sym, sizes)

    def flag(self, flag) -> None:
        if flag.name not in self.flags:
            self.flags.append(flag.name)
            self.note = "; ".join(filter(None, (self.note, flag.note)))


@dataclasses.dataclass
class KernelRecord:
    """One kernel (launch site) of a graph: its origin ops and their cost."""
    graph: int
    index: int  # launch order within the graph
    name: str  # Inductor's kernel name (triton_poi_fused_..., cpp_fused_..., extern_kernels.mm) or the op
    site: str  # the profiler's name of its launch site (kernel name, ``aten::mm`` for extern/eager ops)
    extern: bool
    nodes: list  # origin op names (with a record)
    module: str
    phase: str
    cost: Cost  # FLOPs of the origins (each op counted in one kernel); bytes = external traffic
    bytes_inductor: int | None = None
    bytes_nodes: int = 0  # sum of the origins' per-op bytes (no fusion), for comparison
    sym: dict | None = None  # dynamic shapes: ``cost`` as formulas of the size symbols (str values)

    def cost_at(self, sizes: dict | None):
        """The kernel's cost for one call with these symbol values (``cost`` when static or no sizes)."""
        return _cost_at(self.cost, self.sym, sizes)


@dataclasses.dataclass
class GraphRecord:
    id: int
    key: str  # unique across registries and processes
    phase: str  # forward | backward | inference | eager
    aot_id: Any  # AOTAutograd's id: a forward and its backward share it
    device: str  # cpu | cuda | meta ...
    nodes: list[OpRecord]
    hints: dict  # symbol -> compile-time value, when shapes are dynamic
    source: str  # backend | analyze | eager
    kernels: list[KernelRecord] = dataclasses.field(default_factory=list)  # launch order
    tf32: bool = False  # fp32 matmuls allowed to run as TF32 when it was compiled (their FLOPs say tf32)
    stage: str | None = None  # eager: the stage this recording is a call of
    size_args: list = dataclasses.field(default_factory=list)  # [input index, dim or None, symbol]: where
    # each size symbol of a dynamic graph is read from a call's inputs

    compile_id: str | None = None  # Dynamo's frame/attempt ("0/1")
    frame: str | None = None  # the code Dynamo compiled (``file:function:line``, ``@<id>`` of its module):
    # graphs of one frame are alternatives (recompiles), graphs of two frames (or two modules) are not
    ahead: bool = False  # a backward compiled with its forward (dynamic shapes), before any backward ran

    @property
    def dynamic(self) -> bool:
        return bool(self.hints)

    def renumbered(self, new_id: int) -> "GraphRecord":
        """The same graph under another id (its ops and kernels follow); the key stays."""
        return dataclasses.replace(self, id=new_id, nodes=[dataclasses.replace(n, graph=new_id) for n in self.nodes],
                                   kernels=[dataclasses.replace(k, graph=new_id) for k in self.kernels])


@dataclasses.dataclass
class Timing:
    """What a profile measured, aggregated (device-free: seconds and counts).

    ``launches``: one row per (graph, kernel, stage, sizes — a dynamic graph's size symbols in the
    calls it sums, None when static): calls (distinct graph calls), launches (GPU
    kernels or CPU kernel events), time_s, gpu_kernels (names), joined_by.
    ``stages``: one row per stage name: calls, span_s, busy_s, launches (all kernels launched in it).
    ``unattributed``: per (name, where, launch_op, stage): count, time_s.
    ``exposed_comm``: one row per stage (``overlap.exposed``): comm_s (collective kernel time, union),
    exposed_s (of it, the time no compute kernel of this rank ran), compute_s (compute kernel time, union).
    ``foreign_time_s``: of the kernel time, what ran in graphs graphmfu did not compile."""
    cuda: bool
    launches: list = dataclasses.field(default_factory=list)
    stages: list = dataclasses.field(default_factory=list)
    unattributed: list = dataclasses.field(default_factory=list)
    device_kernel_time_s: float = 0.0
    attributed_time_s: float = 0.0
    notes: list = dataclasses.field(default_factory=list)
    exposed_comm: list = dataclasses.field(default_factory=list)
    foreign_time_s: float = 0.0  # kernel time of graphs graphmfu did not compile (join.FOREIGN), in the total
    foreign_sites: list = dataclasses.field(default_factory=list)  # torch.compile calls with another backend
    # seen in this process (``{"backend", "mode", "caller"}``): where those graphs likely came from
    timelines: dict = dataclasses.field(default_factory=dict)  # stage -> its occurrences' launch timelines
    # (``timeline.occurrence``: each launch's CPU time, device start and end, graph and kernel), for predict()'s
    # replay; {} in records written before them or from profiles of more than timeline.MAX_LAUNCHES launches


@dataclasses.dataclass
class Record:
    """Everything collected for one report."""
    graphs: list[GraphRecord]
    failures: list = dataclasses.field(default_factory=list)
    notes: list = dataclasses.field(default_factory=list)
    timing: Timing | None = None
    torch: str = ""
    created: str = ""
    rank: int = 0
    world_size: int = 1
    host: str = dataclasses.field(default_factory=socket.gethostname)
    pid: int = dataclasses.field(default_factory=os.getpid)
    local_rank: int = dataclasses.field(default_factory=lambda: _env_int("LOCAL_RANK", 0))
    local_world_size: int = dataclasses.field(default_factory=lambda: _env_int("LOCAL_WORLD_SIZE", 1))
    device: str = ""  # the local device this rank ran on ("cuda:1", "cpu"), as the registry saw it

    # ---------------------------------------------------------------- JSON
    def to_dict(self) -> dict:
        return {"schema": RECORD_SCHEMA, **_plain(self)}

    @classmethod
    def from_dict(cls, d: dict) -> "Record":
        graphs = []
        for g in d["graphs"]:
            nodes = [OpRecord(**{**n, "cost": _cost(n["cost"]), "comm": _comm(n.get("comm"))}) for n in g["nodes"]]
            kernels = [KernelRecord(**{**k, "cost": Cost.from_dict(k["cost"])}) for k in g["kernels"]]
            graphs.append(GraphRecord(**{**g, "nodes": nodes, "kernels": kernels}))
        timing = Timing(**d["timing"]) if d.get("timing") else None
        rest = {k: v for k, v in d.items() if k not in ("graphs", "timing", "schema")}
        rest.setdefault("local_rank", 0)  # records written before these fields: not this process's env
        rest.setdefault("local_world_size", 1)
        return cls(graphs=graphs, timing=timing, **rest)


def _cost_at(cost, sym, sizes):
    if not sym or not sizes:
        return cost
    from graphmfu.cost import cost_from_formulas

    return cost_from_formulas(sym, sizes)


def _cost(d):
    return None if d is None else Cost.from_dict(d)


def _comm(d):
    return None if d is None else Comm(**d)


def _env_int(name: str, default: int) -> int:
    try:
        return int(os.environ.get(name, default))
    except ValueError:
        return default


def _plain(obj):
    if isinstance(obj, Cost):
        return obj.to_dict()
    if dataclasses.is_dataclass(obj):
        return {f.name: _plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [_plain(x) for x in obj]
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    return obj


__all__ = ["Comm", "OpRecord", "KernelRecord", "GraphRecord", "Timing", "Record", "RECORD_SCHEMA"]
