"""Renderers: each file in this package is one output format over a document's derived tables.

A renderer module declares ``SUFFIXES`` (file endings it writes, e.g. ``(".md",)``), ``BINARY``
(optional, bytes instead of text) and ``render(doc, **options)``.  ``doc`` is a ``Report`` or a
``Comparison``: both offer ``sections(**options)`` (titled tables and lines, see ``Section``),
``table_rows(name)`` (a named table as a list of dicts) and ``to_dict()``.  Adding a format is adding
a file here; ``doc.save(path)`` finds it by the path's ending."""
from __future__ import annotations

import dataclasses
import importlib
import pkgutil
from functools import lru_cache
from pathlib import Path

from graphmfu.errors import GraphMFUError


@dataclasses.dataclass
class Section:
    """A titled table (``headers`` + ``rows`` of strings) or plain ``lines``."""
    title: str | None = None
    headers: list = dataclasses.field(default_factory=list)
    rows: list = dataclasses.field(default_factory=list)
    lines: list = dataclasses.field(default_factory=list)


def tabulate(section: Section, fmt: str = "simple") -> str:
    from tabulate import tabulate as tab

    return tab(section.rows, headers=section.headers, tablefmt=fmt, disable_numparse=True)


@lru_cache(maxsize=1)
def renderers() -> dict:
    """File ending -> renderer module, for every renderer file in this package."""
    out = {}
    for info in pkgutil.iter_modules(__path__):
        mod = importlib.import_module(f"{__name__}.{info.name}")
        for suffix in getattr(mod, "SUFFIXES", ()):
            out[suffix] = mod
    return out


def renderer_for(path) -> object:
    name = Path(path).name.lower()
    for suffix in sorted(renderers(), key=len, reverse=True):
        if name.endswith(suffix):
            return renderers()[suffix]
    raise GraphMFUError(f"cannot write {path}: unknown file ending; use one of "
                        f"{', '.join(sorted(renderers()))}")


def write(doc, path, **options) -> Path:
    """Render ``doc`` in the format ``path``'s ending names and write it."""
    p = Path(path)
    mod = renderer_for(p)
    out = mod.render(doc, path=p, **options)
    if getattr(mod, "BINARY", False):
        p.write_bytes(out)
    else:
        p.write_text(out)
    return p


def frame(rows: list[dict]):
    """Rows as a pandas DataFrame (nested dicts flattened to dotted columns, as the CSV does)."""
    try:
        import pandas as pd
    except ImportError:
        raise GraphMFUError("to_pandas() needs pandas: pip install pandas") from None
    from graphmfu.render.csv import flat

    return pd.DataFrame.from_records([flat(r, lists=False) for r in rows])


# --------------------------------------------------------------------------- number formats


def num(x, unit: str = "") -> str:
    """1234567 -> 1.23M (SI prefixes, 3 significant digits); None -> -."""
    if x is None:
        return "-"
    for div, suf in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= div:
            return f"{x / div:.3g}{suf}{unit}"
    return f"{x:.3g}{unit}"


def ms(s) -> str:
    return "-" if s is None else f"{s * 1e3:.4g}"


def pct(x) -> str:
    """A utilisation in %; above 100% it carries a ``*`` (the report's notes say why: never bare)."""
    if x is None:
        return "-"
    return f"{x * 100:.1f}*" if x > 1 else f"{x * 100:.1f}"
