"""Interconnect ceilings: the link a collective's group runs on and its bandwidth.

``devices.csv`` gives each GPU's NVLink (``nvlink_gbps``; blank: none) and PCIe (``pcie_gbps``)
bandwidth in GB/s **per direction per GPU** (datasheets list bidirectional totals; halved, source in
``link_source``).  NCCL-tests' bus bandwidth (bus bytes / time, rules/collectives.py) is comparable
to that figure.  Between hosts the figure is the network's per GPU, which no GPU datasheet gives:
``INTERNODE_GBPS`` (50 GB/s = one 400 Gb/s NIC per GPU, as in DGX H100/H200's eight ConnectX-7) unless
the user says otherwise.

The link of a group: all of its ranks on one host -> ``nvlink`` (``pcie`` when the device has no
NVLink; ``host`` when it has no link figure at all, e.g. CPU ranks over gloo), else ``internode``.  A CPU (gloo) has no datasheet link: ``None`` unless overridden.

Environment overrides (GB/s): ``GRAPHMFU_INTERNODE_GBPS``, ``GRAPHMFU_NVLINK_GBPS``,
``GRAPHMFU_PCIE_GBPS``; or ``links_for(device, internode_gbps=..., nvlink_gbps=...)``.

Fabrics (``links.csv``, for planning on paper, ``graphmfu/parallel``): one row per named fabric, intra-node
(NVLink generations, PCIe) or inter-node (RoCE / InfiniBand per-GPU NICs): nominal GB/s per GPU per direction,
the fraction of it NCCL-tests' bus bandwidth is assumed to reach, the devices whose default intra-node fabric it
is, and the source of each number.  ``fabric(name)``, ``fabrics()``, ``intra_fabric(device)``.
"""
from __future__ import annotations

import csv
import dataclasses
import os
from functools import lru_cache
from pathlib import Path

from graphmfu.errors import GraphMFUError
from graphmfu.hardware import _TABLE, DeviceSpec, parse_bandwidth_override

INTERNODE_GBPS = 50.0  # one 400 Gb/s NIC per GPU (DGX H100/H200 user guides: 8x ConnectX-7 400 Gb/s)
INTERNODE_SOURCE = "default: one 400 Gb/s NIC per GPU (50 GB/s); set GRAPHMFU_INTERNODE_GBPS for your network"


@dataclasses.dataclass(frozen=True)
class LinkSpec:
    """Per-direction GB/s per GPU of each link (None: the device has no such link / no figure)."""
    nvlink_gbps: float | None
    pcie_gbps: float | None
    internode_gbps: float | None
    source: str = ""

    def link(self, same_host: bool) -> str:
        """The link a group uses: ``nvlink`` (``pcie`` without NVLink; ``host``: no figure, e.g. CPU ranks) on
    one host, else ``internode``."""
        if not same_host:
            return "internode"
        return "nvlink" if self.nvlink_gbps else ("pcie" if self.pcie_gbps else "host")

    def gbps(self, link: str) -> float | None:
        return {"nvlink": self.nvlink_gbps, "pcie": self.pcie_gbps, "internode": self.internode_gbps}.get(link)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@lru_cache(maxsize=1)
def _rows() -> dict:
    out = {}
    with open(_TABLE, newline="") as f:
        for row in csv.DictReader(f):
            out[row["name"]] = row
    return out


def _num(text) -> float | None:
    text = (text or "").strip()
    return float(text) if text else None


def _env(name: str, given) -> float | None:
    if given is not None:
        return parse_bandwidth_override(str(given), name.lower().replace("graphmfu_", ""))
    v = os.environ.get(name)
    return parse_bandwidth_override(v, name) if v else None


def links_for(device: DeviceSpec | str | None, *, nvlink_gbps=None, pcie_gbps=None, internode_gbps=None) -> LinkSpec:
    """The link ceilings of ``device`` (a DeviceSpec or device name; CPU/unknown: only overrides)."""
    name = device.name if isinstance(device, DeviceSpec) else (device or "")
    row = _rows().get(name)
    if row is None and name:
        from graphmfu.hardware import lookup

        spec = lookup(name)
        row = _rows().get(spec.name) if spec is not None else None
    nv = _env("GRAPHMFU_NVLINK_GBPS", nvlink_gbps)
    pc = _env("GRAPHMFU_PCIE_GBPS", pcie_gbps)
    inter = _env("GRAPHMFU_INTERNODE_GBPS", internode_gbps)
    src = [row["link_source"]] if row is not None and row.get("link_source") else []
    if inter is None:
        inter = INTERNODE_GBPS if row is not None else None
        if inter is not None:
            src.append(INTERNODE_SOURCE)
    else:
        src.append("internode override")
    if nv is not None or pc is not None:
        src.append("link override")
    return LinkSpec(nv if nv is not None else (_num(row.get("nvlink_gbps")) if row else None),
                    pc if pc is not None else (_num(row.get("pcie_gbps")) if row else None),
                    inter, "; ".join(src))


@dataclasses.dataclass(frozen=True)
class Fabric:
    """One row of ``links.csv``: a named link with its nominal per-GPU, per-direction GB/s, the fraction of it
    NCCL-tests' bus bandwidth reaches (``busbw_gbps`` = the product), and where both numbers come from."""
    name: str
    kind: str  # intra | inter
    gbps: float
    busbw_fraction: float
    source: str
    devices: tuple = ()

    @property
    def busbw_gbps(self) -> float:
        return self.gbps * self.busbw_fraction

    def replace(self, **kw) -> "Fabric":
        return dataclasses.replace(self, **kw)


_FABRICS = Path(__file__).with_name("links.csv")


@lru_cache(maxsize=1)
def fabrics() -> dict:
    """Fabric name -> Fabric, from ``links.csv``."""
    out = {}
    with open(_FABRICS, newline="") as f:
        for row in csv.DictReader(f):
            out[row["name"]] = Fabric(row["name"], row["kind"], float(row["gbps"]), float(row["busbw_fraction"]),
                                      row["source"], tuple(filter(None, row["devices"].split(";"))))
    return out


def fabric(name: str) -> Fabric:
    """The fabric named ``name`` (a row of links.csv); one clear error naming the known ones otherwise."""
    f = fabrics().get(str(name).lower())
    if f is None:
        raise GraphMFUError(f"unknown link fabric {name!r}; known: {', '.join(fabrics())} (graphmfu/hardware/"
                            f"links.csv), or pass a number of GB/s per GPU per direction")
    return f


def intra_fabric(device: DeviceSpec | str) -> Fabric | None:
    """The intra-node fabric links.csv lists for ``device`` (None: no row names it)."""
    name = device.name if isinstance(device, DeviceSpec) else str(device)
    return next((f for f in fabrics().values() if f.kind == "intra" and name in f.devices), None)


def same_host(ranks, hosts: dict | None, local_world_size: int = 1) -> bool:
    """Whether every rank of a group runs on one host: from the gathered ranks' hosts when known,
    else torchrun's placement (ranks ``k*L .. k*L+L-1`` share host ``k`` for ``L`` = local world size)."""
    ranks = list(ranks or [])
    if not ranks:
        return True
    if hosts and all(r in hosts for r in ranks):
        return len({hosts[r] for r in ranks}) == 1
    size = max(int(local_world_size or 1), 1)
    return len({r // size for r in ranks}) == 1


__all__ = ["LinkSpec", "links_for", "same_host", "INTERNODE_GBPS", "Fabric", "fabric", "fabrics", "intra_fabric"]
