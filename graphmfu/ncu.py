"""Nsight Compute import: an ``ncu --csv --page raw`` export joined to a timed report's kernel map.

    graphmfu ncu report.json ncu.csv          # graphmfu.ncu.main
    graphmfu.ncu.join(report, "ncu.csv")      # -> NcuTable (rows, unmatched, notes)

The CSV is what ``ncu --csv --page raw --nvtx --nvtx-include "BENCHMARK/" --metrics ...`` prints
(``bench/ncu_validate.py`` runs it): a header row starting with ``ID``, a units row, one row per
profiled kernel in launch order.  Read per kernel: hardware matrix FLOPs (the tensor-pipe counters
``sm__ops_path_tensor_src_*.sum``, sparsity variants left out), DRAM bytes read and written
(``dram__bytes_read.sum``, ``dram__bytes_write.sum``), stores reaching L2
(``lts__t_sectors_srcunit_tex_op_write.sum`` × 32 B), duration (``gpu__time_duration.sum``).

Each ncu kernel is matched to a (graph, kernel) of the report: with the session's per-event join
(``measured=``, launch order, names checked) or, from a saved report, by aligning the CSV's kernel
sequence to the graphs' kernel sequences (each graph call launches its kernels in the kernel map's
order; the GPU kernel names and launches per call come from the report's timing).  Per kernel the
table shows model FLOPs against hardware FLOPs (``padding`` = hardware/model − 1: tile padding,
e.g. 7.0 for an M=1 decode GEMM padded to 8 rows on an H200), ``hfu`` = hardware FLOPs at the
dtype's peak over ncu's duration (``roofline.utilisation``), and unique bytes against DRAM traffic.
L2 is write-back: an output that fits in L2 is often not in DRAM when the kernel ends, so DRAM
writes can be far below the bytes written; stores reaching L2 are the write side the kernel moved
(docs/validation.md), and ``moved / unique`` = (DRAM read + L2 write) / unique bytes.
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import sys
from pathlib import Path

from graphmfu.cost import Cost
from graphmfu.errors import GraphMFUError
from graphmfu.roofline import matrix_time_s, utilisation

TENSOR_PREFIX = "sm__ops_path_tensor_src_"
NAME, DURATION = "Kernel Name", "gpu__time_duration.sum"
DRAM_READ, DRAM_WRITE, L2_WRITE = "dram__bytes_read.sum", "dram__bytes_write.sum", "lts__t_sectors_srcunit_tex_op_write.sum"
NVTX = "thread Domain:Push/Pop_Range:PL_Type:PL_Value:CLR_Type:Color:Msg_Type:Msg"
SECTOR_BYTES = 32
_UNITS = {"": 1.0, "byte": 1.0, "kbyte": 1e3, "mbyte": 1e6, "gbyte": 1e9, "nsecond": 1e-9, "ns": 1e-9,
          "usecond": 1e-6, "us": 1e-6, "msecond": 1e-3, "ms": 1e-3, "second": 1.0, "s": 1.0, "sector": 1.0,
          "inst": 1.0, "(!) n/a": 1.0}


# --------------------------------------------------------------------------- the CSV


def parse(source) -> list[dict]:
    """The kernels of an ``ncu --csv --page raw`` export (a path or the text), in launch order: name,
    tensor_ops, dram_read / dram_write / l2_write (bytes), time_s, nvtx.  A file that is not such an
    export, or lacks the kernel name or duration, is one GraphMFUError."""
    text, where = _text(source)
    rows = list(csv.reader(io.StringIO(text)))
    start = next((i for i, r in enumerate(rows) if r and r[0].strip().strip('"') == "ID"), None)
    if start is None:
        raise GraphMFUError(f"{where} is not an 'ncu --csv --page raw' export: no header row starting with \"ID\" "
                            f"(export with: ncu --csv --page raw --metrics ... > ncu.csv)")
    head = [h.strip() for h in rows[start]]
    missing = [c for c in (NAME, DURATION) if c not in head]
    if missing:
        raise GraphMFUError(f"{where} has no column {', '.join(missing)}: profile with --metrics "
                            f"{DURATION},{DRAM_READ},{DRAM_WRITE},{L2_WRITE},'regex:^{TENSOR_PREFIX}.*\\.sum$'")
    scale = {h: 1.0 for h in head}
    first = start + 1  # index of body[0] in the file's rows
    body = rows[first:]
    if body and len(body[0]) == len(head) and not body[0][0].strip().isdigit():  # the units row
        for h, u in zip(head, body[0]):
            unit = u.strip().lower()
            if h in (DURATION, DRAM_READ, DRAM_WRITE) or h.startswith(TENSOR_PREFIX):
                if unit not in _UNITS:
                    raise GraphMFUError(f"{where}: column {h} is in unit {u!r}, which graphmfu cannot convert; "
                                        f"export with --print-units base")
                scale[h] = _UNITS[unit]
        body = body[1:]
        first += 1
    tcols = [h for h in head if h.startswith(TENSOR_PREFIX) and h.endswith(".sum") and "sparsity" not in h]
    out = []
    for n, r in enumerate(body):
        if not r or not r[0].strip() or r[0].startswith("=="):  # blank lines, ncu's ==PROF== lines
            continue
        if len(r) != len(head) or not r[0].strip().isdigit():
            raise GraphMFUError(f"{where}: line {first + n + 1} has {len(r)} fields for {len(head)} columns (a cut or "
                                f"edited export?)")
        d = dict(zip(head, r))

        def num(k, d=d):
            v = d.get(k, "").replace(",", "").strip()
            if not v or v == "n/a":
                return 0.0
            try:
                return float(v) * scale.get(k, 1.0)
            except ValueError:
                raise GraphMFUError(f"{where}: row {d[head[0]]} column {k} is {v!r}, not a number") from None

        out.append({"id": int(d[head[0]]), "name": d[NAME], "tensor_ops": sum(num(k) for k in tcols),
                    "tensor_cols": [k for k in tcols if num(k)], "dram_read": num(DRAM_READ),
                    "dram_write": num(DRAM_WRITE), "l2_write": num(L2_WRITE) * SECTOR_BYTES,
                    "has_l2": L2_WRITE in head, "time_s": num(DURATION), "nvtx": d.get(NVTX, "")})
    if not out:
        raise GraphMFUError(f"{where} lists no kernels: was the NVTX filter (--nvtx-include) the profiled range's?")
    return out


def _text(source) -> tuple[str, str]:
    if isinstance(source, (str, Path)) and "\n" not in str(source):
        p = Path(source)
        if not p.is_file():
            raise GraphMFUError(f"no ncu export at {p}")
        return p.read_text(errors="replace"), str(p)
    return str(source), "the ncu export"


def norm(name: str) -> str:
    """Kernel names as the profiler and ncu both spell them: no 'void ', no template arguments or
    parameters, no inline namespaces (the two demangle templates differently)."""
    n = name.removeprefix("void ").split("<")[0].split("(")[0]
    return n.replace("::fusion::", "::").strip()


def _copy(name: str) -> bool:
    return name.startswith(("Memset", "Memcpy"))  # not kernels to ncu


# --------------------------------------------------------------------------- matching


@dataclasses.dataclass
class NcuTable:
    """Per (graph, kernel) rows; ``unmatched``: ncu kernels no graph kernel accounts for."""
    rows: list
    unmatched: list
    notes: list
    device: object

    def table(self) -> str:
        from tabulate import tabulate

        def f(x, fmt):
            return "-" if x is None else format(x, fmt)

        body = [[r["kernel"][:40], r["module"] or "(root)", r["stage"] or "-", r["ncu_kernels"], f(r["flops"], ".4g"),
                 f(r["hw_flops"], ".4g"), f(r["padding"], ".4f"), f(r["hfu"] and r["hfu"] * 100, ".1f"),
                 f(r["bytes"] / 1e6, ".2f"), f(r["bytes_read"] / 1e6, ".2f"), f(r["dram_read"] / 1e6, ".2f"),
                 f(r["bytes_written"] / 1e6, ".2f"), f(r["dram_write"] / 1e6, ".2f"),
                 f(r["l2_write"] and r["l2_write"] / 1e6, ".2f"), f(r["dram_ratio"], ".3f"), f(r["moved_ratio"], ".3f"),
                 f(r["ncu_time_s"] * 1e6, ".1f")] for r in self.rows]
        head = ["kernel", "module", "stage", "ncu k", "model FLOPs", "hw FLOPs", "padding", "HFU %", "unique MB",
                "read MB", "DRAM read MB", "write MB", "DRAM write MB", "L2 write MB", "DRAM/unique",
                "moved/unique", "ncu us"]
        lines = [tabulate(body, headers=head, tablefmt="simple", disable_numparse=True)]
        if self.unmatched:
            lines.append(f"{len(self.unmatched)} ncu kernel(s) matched no graph kernel: "
                         f"{sorted({u['name'][:60] for u in self.unmatched})[:8]}")
        lines += self.notes
        lines.append("padding = hardware/model FLOPs - 1 (tile padding); HFU = hardware FLOPs at the dtype's peak "
                     f"({getattr(self.device, 'name', self.device)}) / ncu time; moved = DRAM read + L2 write (L2 is "
                     "write-back: outputs that fit in it are not in DRAM when the kernel ends)")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()


def join(source, csv_path, device=None, measured=None) -> NcuTable:
    """Join an ncu raw-page CSV to a timed report (a Report, a Record or a saved report's path).
    ``measured``: the session's per-event join (``join.join``'s list) to match in launch order."""
    from graphmfu.hardware import device_for, get_device
    from graphmfu.record import Record
    from graphmfu.report import Report

    if isinstance(source, (str, Path)):
        source = Report.load(source)
    if isinstance(source, Report):
        rec, dev = source.record, source.device if device is None else get_device(device)
    elif isinstance(source, Record):
        rec = source
        dev = device_for((g.device for g in rec.graphs), device)
    else:
        raise GraphMFUError(f"graphmfu.ncu.join takes a Report, a Record or a report's path, got "
                            f"{type(source).__name__}")
    if rec.timing is None or not rec.timing.launches:
        raise GraphMFUError("the report has no measured kernels: join ncu to a report from graphmfu.profile() "
                            "(p.report().save('report.json'))")
    ncu = parse(csv_path)
    graphs = {g.id: g for g in rec.graphs}
    notes: list[str] = []
    if measured is not None:
        pairs, unmatched = _by_order(ncu, measured)
    else:
        pairs, unmatched = _by_alignment(ncu, rec, notes)
    if not pairs:
        raise GraphMFUError(f"none of the {len(ncu)} kernels in the ncu export matches the report's kernels "
                            f"(first: {ncu[0]['name'][:60]!r}): profile the same model and range with ncu "
                            f"(--nvtx-include on the profiled stage) and graphmfu")
    sizes = {}
    for r in rec.timing.launches:
        sizes.setdefault((r["graph"], r["kernel"]), set()).add(tuple(sorted((r.get("sizes") or {}).items())))
    agg: dict = {}
    for (gid, ki, call, stage, sz), row in pairs:
        e = agg.setdefault((gid, ki, stage), {"calls": {}, "ncu": []})
        e["calls"][call] = sz
        e["ncu"].append(row)
    rows = []
    for (gid, ki, stage), e in agg.items():
        k = graphs[gid].kernels[ki]
        cost = Cost()
        for call, sz in e["calls"].items():
            if sz is None and k.sym and len(sizes.get((gid, ki), ())) == 1:
                sz = dict(next(iter(sizes[(gid, ki)])))
            elif sz is None and k.sym:
                _note(notes, f"graph {gid} is dynamic and its calls have several sizes: ncu kernels are costed at the "
                             f"compile-time hints (join with measured= for each call's sizes)")
            cost = cost + k.cost_at(sz)
        rows.append(_row(k, stage, cost, e["ncu"], dev))
    return NcuTable(rows=rows, unmatched=unmatched, notes=notes, device=dev)


def _row(k, stage, cost: Cost, ncu: list[dict], dev) -> dict:
    hw = sum(r["tensor_ops"] for r in ncu)
    t = sum(r["time_s"] for r in ncu)
    dread, dwrite = sum(r["dram_read"] for r in ncu), sum(r["dram_write"] for r in ncu)
    l2w = sum(r["l2_write"] for r in ncu) if all(r["has_l2"] for r in ncu) else None
    dt = max(cost.matrix, key=lambda kv: kv[1])[0] if cost.matrix else None  # the peak hardware FLOPs run at
    hw_cost = Cost.of(matrix={dt: hw}) if hw and dt else Cost()
    u = utilisation(matrix_time_s(hw_cost, dev), dread + dwrite, 0.0, t, dev)
    unique = cost.bytes
    return {"graph": k.graph, "index": k.index, "kernel": k.name, "module": k.module, "stage": stage,
            "ncu_kernels": len(ncu), "ncu_names": list(dict.fromkeys(r["name"] for r in ncu)),
            "flops": cost.flops, "hw_flops": hw, "padding": hw / cost.flops - 1 if cost.flops else None,
            "hfu": u["mfu"] if hw and dt else None, "dram_utilisation": u["mbu"],
            "bytes": unique, "bytes_read": cost.bytes_read, "bytes_written": cost.bytes_written,
            "dram_read": dread, "dram_write": dwrite, "l2_write": l2w,
            "dram_ratio": (dread + dwrite) / unique if unique else None,
            "moved_ratio": (dread + l2w) / unique if unique and l2w is not None else None,
            "ncu_time_s": t, "tensor_cols": sorted({c for r in ncu for c in r["tensor_cols"]})}


def _note(notes: list, n: str) -> None:
    if n not in notes:
        notes.append(n)


def _by_order(ncu: list[dict], measured: list) -> tuple[list, list]:
    """The session's measured GPU kernels in launch order against ncu's (names checked): ncu skips
    memsets and copies; a kernel ncu saw and the profiler did not is passed over."""
    ms = sorted((m for m in measured if not _copy(m.name)), key=lambda m: m.start_us)
    pairs, unmatched, j = [], [], 0
    for m in ms:
        while j < len(ncu) and norm(ncu[j]["name"]) != norm(m.name):
            unmatched.append(ncu[j])
            j += 1
        if j == len(ncu):
            break
        if m.graph is None:
            unmatched.append(ncu[j])
        else:
            pairs.append(((m.graph, m.kernel, m.call, m.stage, m.sizes), ncu[j]))
        j += 1
    unmatched += ncu[j:]
    return pairs, unmatched


def _by_alignment(ncu: list[dict], rec, notes: list) -> tuple[list, list]:
    """Align ncu's kernel sequence to graph calls: at each ncu kernel try every graph whose kernel
    sequence (GPU names and launches per call from the report's timing) matches from there, and take
    the one that accounts for the most ncu kernels; a kernel no graph call starts with is unmatched."""
    expect: dict[int, list] = {}  # graph -> [(kernel index, stage, {names}, launches per call)]
    per: dict = {}
    for r in rec.timing.launches:
        e = per.setdefault((r["graph"], r["kernel"]), {"names": set(), "launches": 0, "calls": 0, "stage": r["stage"]})
        e["names"].update(norm(n) for n in r["gpu_kernels"] if not _copy(n))
        copies = sum(1 for n in r["gpu_kernels"] if _copy(n))
        e["launches"] += r["launches"] - copies * r["calls"]
        e["calls"] += r["calls"]
    for (gid, ki), e in sorted(per.items()):
        n = round(e["launches"] / e["calls"]) if e["calls"] else 0
        if e["names"] and n > 0:
            expect.setdefault(gid, []).append((ki, e["stage"], e["names"], n))
    names = [norm(r["name"]) for r in ncu]
    pairs, unmatched, calls = [], [], {}
    i = 0
    while i < len(ncu):
        best = None
        for gid, seq in expect.items():
            j, got = i, []
            for ki, stage, ok, n in seq:
                if j + n > len(ncu) or any(names[x] not in ok for x in range(j, j + n)):
                    break
                got += [(ki, stage, x) for x in range(j, j + n)]
                j += n
            else:
                if best is None or j - i > best[1] - i:
                    best = (gid, j, got)
        if best is None:
            unmatched.append(ncu[i])
            i += 1
            continue
        gid, j, got = best
        call = calls[gid] = calls.get(gid, -1) + 1
        pairs += [((gid, ki, call, stage, None), ncu[x]) for ki, stage, x in got]
        i = j
    if any(len({s for _, s, _, _ in seq}) > 1 for seq in expect.values()):
        _note(notes, "a graph ran in several stages: ncu kernels are listed under its first stage (the CSV does not "
                     "say which call is which)")
    return pairs, unmatched


# --------------------------------------------------------------------------- command line


def main(argv=None) -> int:
    """``graphmfu ncu report.json ncu.csv [--device D] [--json out.json]``: print the per-kernel table."""
    ap = argparse.ArgumentParser(prog="graphmfu ncu", description="join an 'ncu --csv --page raw' export to a "
                                 "timed graphmfu report: hardware vs model FLOPs, DRAM vs unique bytes")
    ap.add_argument("report", help="a report saved from graphmfu.profile() (report.json)")
    ap.add_argument("csv", help="ncu --csv --page raw output (NVTX-filtered on the profiled range)")
    ap.add_argument("--device", default=None, help="place on this device's roofline (default: the report's)")
    ap.add_argument("--json", default=None, help="also write the rows as JSON")
    a = ap.parse_args(argv)
    try:
        t = join(a.report, a.csv, device=a.device)
    except GraphMFUError as e:
        print(f"graphmfu ncu: error: {e}", file=sys.stderr)
        return 1
    print(t.table())
    if a.json:
        import json

        Path(a.json).write_text(json.dumps({"rows": t.rows, "unmatched": t.unmatched, "notes": t.notes}, indent=1))
    return 0


__all__ = ["parse", "join", "main", "norm", "NcuTable"]
