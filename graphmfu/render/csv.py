"""CSV of one named table (``save("r.csv", table="kernels")``; default: the document's first table).
A path ending in ``.<table>.csv`` picks that table too (``r.kernels.csv``).  Nested fields are
flattened (``eager.time_s``); lists are joined with ``;``."""
import csv as _csv
import io
from pathlib import PurePath

SUFFIXES = (".csv",)


def flat(row: dict, prefix: str = "", lists: bool = True) -> dict:
    """Nested dicts as dotted keys; lists joined with ``;`` (``lists=False``: kept as lists)."""
    out = {}
    for k, v in row.items():
        if isinstance(v, dict):
            out.update(flat(v, f"{prefix}{k}.", lists))
        elif lists and isinstance(v, (list, tuple)):
            out[prefix + k] = ";".join(map(str, v))
        else:
            out[prefix + k] = v
    return out


def render(doc, table: str | None = None, path=None, **_) -> str:
    if table is None and path is not None:
        parts = PurePath(path).name.split(".")
        table = parts[-2] if len(parts) > 2 else None
    rows = [flat(r) for r in doc.table_rows(table)]
    fields = list(doc.csv_fields(table)) or list(dict.fromkeys(k for r in rows for k in r))
    buf = io.StringIO()
    w = _csv.DictWriter(buf, fieldnames=fields, extrasaction="ignore")
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()
