"""dtypes as data (``dtypes.csv``): graphmfu's short dtype names, the torch dtypes behind each, the
devices.csv column holding its peak, and the fallback chain used when
a device lists no peak for it.  Adding fp6 or a new integer format is a row here plus a column in
devices.csv; nothing else changes."""
from __future__ import annotations

import csv
import dataclasses
from functools import lru_cache
from pathlib import Path

_TABLE = Path(__file__).with_name("dtypes.csv")


@dataclasses.dataclass(frozen=True)
class DType:
    name: str  # bf16, fp8, ...
    torch_dtypes: tuple  # attribute names in torch (those this torch lacks are skipped)
    peak_column: str  # devices.csv column ("" = no column of its own)
    matrix_fallback: tuple  # dtypes whose peak applies when a device lists none for this one
    source: str


@lru_cache(maxsize=1)
def dtypes() -> dict[str, DType]:
    out = {}
    with open(_TABLE, newline="") as f:
        for row in csv.DictReader(f):
            out[row["name"]] = DType(row["name"], tuple(filter(None, row["torch_dtypes"].split(";"))),
                                     row["peak_column"], tuple(filter(None, row["matrix_fallback"].split(";"))),
                                     row["source"])
    return out


def peak_dtypes() -> tuple:
    """The dtypes with a peak column of their own (the columns of devices.csv, in table order)."""
    return tuple(d.name for d in dtypes().values() if d.peak_column)


@lru_cache(maxsize=1)
def torch_dtype_names() -> dict:
    """torch.dtype -> short name, for the torch dtypes this torch has."""
    import torch

    out = {}
    for d in dtypes().values():
        for attr in d.torch_dtypes:
            t = getattr(torch, attr, None)
            if t is not None:
                out[t] = d.name
    return out


def matrix_chain(name: str) -> tuple:
    """The dtypes whose peak a matrix product of ``name`` operands may run at, best first."""
    d = dtypes().get(name)
    return (name, *(d.matrix_fallback if d else ()))
