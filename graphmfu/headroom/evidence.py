"""What every cause detector reads and returns: :class:`Cause` and :class:`Context`.

A ``Context`` is a timed report's views gathered once for the detectors (the derived kernel and stage
rows, the record's graphs and ops by name, the timing's unattributed rows, the step time, imported
Nsight Compute rows); it holds nothing a detector could not derive again from (record, device).
"""
from __future__ import annotations

import dataclasses
import re
from functools import cached_property

from graphmfu.render import ms

MATMUL = ("aten.matmul.",)  # beside rules/matmul.py's MATRIX_PRODUCTS: matmul where it survives


@dataclasses.dataclass
class Cause:
    """Where time is lost, how much, the numbers that show it, and one thing to do about it.  ``lost_s`` is
    this cause's own estimate (how it is estimated is in docs/headroom.md); causes can overlap (an eager op
    is also a launch gap), so their ``lost_s`` do not add up to the headroom."""
    kind: str
    where: str
    lost_s: float
    evidence: str
    action: str
    share_of_step: float | None = None
    stages: dict = dataclasses.field(default_factory=dict)  # stage -> its part of lost_s, where a cause splits it

    def line(self) -> str:
        share = "" if self.share_of_step is None else f" ({self.share_of_step * 100:.1f}% of step)"
        return f"[{self.kind}] {self.where}: ~{ms(self.lost_s)} ms{share} — {self.evidence} -> {self.action}"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class Context:
    """A timed report's views, gathered once for the detectors."""
    data: dict
    record: object  # graphmfu.record.Record
    device: object  # graphmfu.hardware.DeviceSpec
    step_s: float
    ncu: dict  # (graph, kernel index) -> an ncu row (graphmfu.ncu.join rows), when imported

    @property
    def kernels(self) -> list[dict]:
        return self.data.get("kernels", [])

    @property
    def stages(self) -> list[dict]:
        return self.data.get("stages", [])

    @cached_property
    def _stage_by_name(self) -> dict:
        return {s["name"]: s for s in self.stages}

    def stage(self, name: str | None) -> dict | None:
        """The stage row named ``name`` (None when there is none)."""
        return self._stage_by_name.get(name)

    def idle(self, s: dict) -> float:
        """A stage row's device idle time inside its span (its launch gaps)."""
        return max(s["span_s"] - s["busy_s"], 0.0)

    def mean_gap(self, name: str | None) -> float:
        """The stage's idle time per kernel launched in it (0 with no such stage or no kernel)."""
        s = self.stage(name)
        return self.idle(s) / s["kernel_launches"] if s and s["kernel_launches"] else 0.0

    @property
    def unattributed(self) -> list[dict]:
        return self.record.timing.unattributed if self.record.timing is not None else []

    @cached_property
    def _graphs(self) -> dict:
        return {g.id: g for g in self.record.graphs}

    @cached_property
    def _ops(self) -> dict:
        return {g.id: {n.name: n for n in g.nodes} for g in self.record.graphs}

    def graph(self, gid: int):
        return self._graphs[gid]

    def ops(self, row: dict) -> list:
        """The OpRecords a kernel row was made from (its origin nodes)."""
        ops = self._ops[row["graph"]]
        return [ops[n] for n in row["nodes"] if n in ops]

    def kernel_record(self, row: dict):
        return self.graph(row["graph"]).kernels[row["index"]]


def is_matmul(op: str) -> bool:
    from graphmfu.rules.matmul import MATRIX_PRODUCTS

    return op.startswith(MATRIX_PRODUCTS + MATMUL)


def gemm_dims(op_rec) -> tuple | None:
    """(M, K, N, dtype) of a matrix product's node: its last two inputs of rank >= 2 are [..., M, K] and
    [..., K, N]; None when the sizes are symbolic or the inputs are not two matrices."""
    mats = [i for i in op_rec.inputs if isinstance(i, (list, tuple)) and len(i) == 2 and isinstance(i[0], (list, tuple))
            and len(i[0]) >= 2]
    if len(mats) < 2:
        return None
    (a, dt), (b, _) = mats[-2], mats[-1]
    dims = (a[-2], a[-1], b[-1])
    if not all(isinstance(d, int) for d in dims):
        return None
    return (*dims, dt)


def frame_site(frame: str | None) -> tuple | None:
    """``(file:line, function)`` of a graph break from a resume frame's name (Dynamo compiles the code after a
    break as ``torch_dynamo_resume_in_<function>_at_<line>``); None for any other frame."""
    if not frame:
        return None
    m = re.match(r"^(.*):torch_dynamo_resume_in_(\w+?)_at_(\d+):", frame.rsplit("@", 1)[0] + ":")
    return (f"{m.group(1)}:{m.group(3)}", m.group(2)) if m else None


def us(s: float) -> str:
    return f"{s * 1e6:.3g} us"


__all__ = ["Cause", "Context", "is_matmul", "gemm_dims", "frame_site", "us"]
