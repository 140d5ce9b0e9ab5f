"""Every number the prediction rests on that is not counted from the model: each with its value, its status
(``calibrated`` on a device, ``published`` by someone else, ``datasheet``, ``paper`` for what the paper being
compared says of its own run, ``assumed``, or ``given`` by the caller) and its source.

Data, not code: the achieved fractions of peak per device are rows of ``ceilings.csv`` (this folder), the link
fabrics rows of ``graphmfu/hardware/links.csv``; the overlap and precision defaults below each name their
source.  ``Assumptions.for_device(device, **overrides)`` builds the set; ``lines()`` prints it; every
prediction carries the set it used.
"""
from __future__ import annotations

import csv
import dataclasses
from functools import lru_cache
from pathlib import Path
from typing import Any

from graphmfu.errors import GraphMFUError
from graphmfu.hardware import DeviceSpec
from graphmfu.hardware.links import Fabric, fabric, intra_fabric

_CEILINGS = Path(__file__).with_name("ceilings.csv")
DEFAULT_INTERNODE = "ib-ndr-400g"


@dataclasses.dataclass(frozen=True)
class Assumption:
    name: str
    value: Any
    status: str
    source: str

    def line(self) -> str:
        v = self.value
        shown = (f"{v.name} {v.gbps:g} GB/s x {v.busbw_fraction:g} = {v.busbw_gbps:g} GB/s busbw"
                 if isinstance(v, Fabric) else (f"{v:g}" if isinstance(v, float) else str(v)))
        return f"{self.name} = {shown} [{self.status}] {self.source}"


# name -> (default value, status, source): what a device's CSV rows do not give
DEFAULTS = {
    "tp_overlap": (0.0, "assumed", "share of tensor-parallel collectives hidden under compute: none; the Llama 3 "
                   "paper describes no TP overlap (Megatron-LM keeps the forward ones on the critical path unless "
                   "--tp-comm-overlap, and hides part of the backward ones under weight-gradient GEMMs)"),
    "cp_overlap": (0.0, "paper", "all-gather context parallelism: 'the all-gather communication latency is exposed "
                   "in the critical path' (Llama 3 paper, arXiv:2407.21783, section 3.3.2); ring mode instead "
                   "hides each block's send under the previous block's attention (only the excess is exposed)"),
    "ep_overlap": (0.0, "assumed", "share of expert-parallel all-to-alls hidden under compute: none (a plain MoE "
                   "layer waits for its dispatch and combine); DeepSeek-V3's DualPipe overlaps them (set 1)"),
    "dp_exposed_layers": (1, "assumed", "FSDP prefetching overlaps data-parallel all-gathers / reduce-scatters with "
                          "compute except one layer's all-gather before the first forward and one layer's reduce-"
                          "scatter after the last backward of a step; what does not fit under the step's compute "
                          "is exposed too"),
    "pp_async": (True, "paper", "asynchronous point-to-point in pipeline parallelism (Llama 3 paper section 3.3.2): "
                 "steady-state sends overlap compute; the 2(p-1) sends of the warm-up and cool-down chains are "
                 "exposed"),
    "param_bytes": (2, "assumed", "bf16 weights for compute (BF16 training, Llama 3 paper Table 4)"),
    "grad_accum_bytes": (4, "paper", "FP32 gradient accumulation over microbatches (Llama 3 paper section 3.3.2, "
                         "numerical stability), as a separate read-modify-write per microbatch (fp32 read + bf16 "
                         "gradient read + fp32 write: 10 bytes per parameter at the DRAM ceiling)"),
    "grad_reduce_bytes": (4, "paper", "gradients reduce-scattered in FP32 across data-parallel ranks (Llama 3 paper "
                          "section 3.3.2)"),
    "optimizer_bytes": (12, "assumed", "AdamW with fp32 master weights and two fp32 moments: 12 bytes per parameter, "
                        "sharded over the FSDP group (ZeRO, Rajbhandari et al. 2020)"),
}


@lru_cache(maxsize=1)
def _rows() -> dict:
    out: dict = {}
    with open(_CEILINGS, newline="") as f:
        for row in csv.DictReader(f):
            out.setdefault(row["device"], {})[row["quantity"]] = row
    return out


def _ceiling(device: str, quantity: str) -> Assumption | None:
    rows = _rows()
    row = rows.get(device, {}).get(quantity) or rows.get("*", {}).get(quantity)
    if row is None:
        return None
    return Assumption(quantity, float(row["value"]), row["status"], row["source"])


class Assumptions:
    """The stated assumptions of one prediction (an object: nothing module-global is read or changed)."""

    def __init__(self, items: dict[str, Assumption]):
        self.items = dict(items)

    def __getattr__(self, name):
        items = self.__dict__.get("items", {})
        if name in items:
            return items[name].value
        raise AttributeError(name)

    @classmethod
    def for_device(cls, device: DeviceSpec, links=None, **overrides) -> "Assumptions":
        items: dict[str, Assumption] = {}
        for q in ("gemm", "attention", "dram", "hbm_gb", "gpus_per_node"):
            a = _ceiling(device.name, q)
            if a is not None:
                items[q] = a
        nv = intra_fabric(device)
        if nv is not None:
            items["nvlink"] = Assumption("nvlink", nv, "datasheet", nv.source)
        inter = fabric(DEFAULT_INTERNODE)
        items["internode"] = Assumption("internode", inter, "datasheet", inter.source)
        for name, (v, status, src) in DEFAULTS.items():
            items[name] = Assumption(name, v, status, src)
        out = cls(items)
        return out.with_links(links).replace(**overrides)

    def with_links(self, links) -> "Assumptions":
        """``links``: an inter-node fabric name, or {"nvlink": name or GB/s, "internode": name or GB/s}."""
        if links is None:
            return self
        if isinstance(links, str):
            links = {"internode": links}
        if not isinstance(links, dict):
            raise GraphMFUError(f"plan_parallel: links={links!r}; give an inter-node fabric name (e.g. 'roce-400g') "
                                f"or a dict {{'nvlink': ..., 'internode': ...}} of fabric names or GB/s")
        items = dict(self.items)
        for key, v in links.items():
            if key not in ("nvlink", "internode"):
                raise GraphMFUError(f"plan_parallel: links key {key!r}; use 'nvlink' or 'internode'")
            if isinstance(v, Fabric):
                f, status = v, "given"
            elif isinstance(v, (int, float)):
                base = items[key].value if key in items else fabric(DEFAULT_INTERNODE)
                f, status = base.replace(name=f"{v:g} GB/s", gbps=float(v), source=f"given: {v:g} GB/s per GPU per "
                                         f"direction; busbw fraction {base.busbw_fraction:g} as {base.name}"), "given"
            else:
                f, status = fabric(v), "datasheet"
            items[key] = Assumption(key, f, status, f.source)
        return Assumptions(items)

    def replace(self, **overrides) -> "Assumptions":
        links = {k: overrides.pop(k) for k in ("nvlink", "internode") if k in overrides}
        items = dict(self.with_links(links or None).items)
        for k, v in overrides.items():
            if k not in items and k not in DEFAULTS:
                raise GraphMFUError(f"plan_parallel: unknown assumption {k!r}; known: {', '.join(sorted(items))}")
            if isinstance(v, Assumption):
                items[k] = v
            else:
                items[k] = Assumption(k, v, "given", "given by the caller")
        return Assumptions(items)

    def status(self, name: str) -> str:
        return self.items[name].status

    def lines(self) -> list[str]:
        return [a.line() for a in self.items.values()]

    def to_dict(self) -> dict:
        return {k: {"value": (a.value.name if isinstance(a.value, Fabric) else a.value), "status": a.status,
                    "source": a.source} for k, a in self.items.items()}


__all__ = ["Assumption", "Assumptions", "DEFAULTS", "DEFAULT_INTERNODE"]
