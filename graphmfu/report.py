"""The Report: a versioned JSON document (``docs/report-schema.md``) and the views derived from it.

Collection builds the document once (``build``); every view — totals, by module, by op,
coverage, tables, CSV — is computed from the document, so a report loaded from a file shows
exactly what the live one showed.
"""
from __future__ import annotations

import csv
import io
import json
import math
import time
from collections import defaultdict
from pathlib import Path
from typing import Iterable

import torch

from graphmfu.errors import GraphMFUError
from graphmfu.hardware import DeviceSpec
from graphmfu.roofline import place

SCHEMA = "graphmfu.report/1"
_SUMS = ("flops", "flops_dense", "vector_flops", "bytes_read", "bytes_written", "t_min_s",
         "t_compute_s", "t_memory_s")


# --------------------------------------------------------------------------- building


def _node_row(rec, dev: DeviceSpec) -> dict:
    row = {"graph": rec.graph, "phase": rec.phase, "index": rec.index, "name": rec.name, "op": rec.op,
           "module": rec.module, "inputs": rec.inputs, "outputs": rec.outputs, "known": rec.known,
           "output_bytes": rec.output_bytes, "recompute": rec.recompute}
    if rec.cost is not None:
        c = rec.cost
        p = place(c, dev)
        row.update(flops=c.flops, flops_dense=c.flops_dense, vector_flops=c.vector_flops,
                   bytes_read=c.bytes_read, bytes_written=c.bytes_written,
                   flops_by_dtype=dict(c.matrix), vector_flops_by_dtype=dict(c.vector),
                   intensity=None if math.isinf(p.intensity) else p.intensity, ridge=p.ridge, bound=p.bound,
                   t_min_s=p.t_min_s, t_compute_s=p.t_compute_s, t_memory_s=p.t_memory_s)
    else:
        row.update({k: 0 for k in _SUMS}, flops_by_dtype={}, vector_flops_by_dtype={}, intensity=None,
                   ridge=None, bound="unknown")
    if rec.cost_expr:
        row["symbolic"] = rec.cost_expr
    if rec.note:
        row["note"] = rec.note
    return row


def _sum(rows: Iterable[dict]) -> dict:
    tot = {k: 0 for k in _SUMS}
    n = mem = 0
    for r in rows:
        n += 1
        for k in _SUMS:
            tot[k] += r[k]
        if r["bound"] == "memory":
            mem += r["t_min_s"]
    tot["nodes"] = n
    tot["memory_bound_share"] = mem / tot["t_min_s"] if tot["t_min_s"] else 0.0
    nb = tot["bytes_read"] + tot["bytes_written"]
    tot["intensity"] = (tot["flops"] + tot["vector_flops"]) / nb if nb else None
    return tot


def _modules(nodes: list[dict]) -> list[dict]:
    groups: dict[str, list] = defaultdict(list)
    for r in nodes:
        parts = r["module"].split(".") if r["module"] else []
        for d in range(len(parts) + 1):
            groups[".".join(parts[:d])].append(r)
    out = []
    for path in sorted(groups, key=lambda p: (p.split(".") if p else [])):
        out.append({"module": path, "depth": len(path.split(".")) if path else 0, **_sum(groups[path])})
    return out


def build(graphs, dev: DeviceSpec, failures: Iterable[str] = (), notes: Iterable[str] = ()) -> "Report":
    nodes = [_node_row(rec, dev) for g in graphs for rec in g.nodes]
    unknown: dict[str, dict] = {}
    for r in nodes:
        if not r["known"]:
            u = unknown.setdefault(r["op"], {"op": r["op"], "count": 0, "output_bytes": 0})
            u["count"] += 1
            u["output_bytes"] += r["output_bytes"]
    decomposed = sum(1 for r in nodes if "decomposed attention" in r.get("note", ""))
    all_notes = list(notes)
    if decomposed:
        all_notes.append(f"{decomposed} attention(s) survive only in decomposed form (bmm + softmax): counted "
                         f"dense, causal/window masks not visible")
    if any(r["op"].startswith("higher_order.flex_attention") for r in nodes):
        all_notes.append("flex_attention: block masks are data; its effective FLOPs are reported dense")
    data = {
        "schema": SCHEMA,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "torch": torch.__version__,
        "device": dev.to_dict(),
        "totals": _sum(nodes),
        "graphs": [{"id": g.id, "phase": g.phase, "aot_id": g.aot_id, "device": g.device, "source": g.source,
                    "nodes": len(g.nodes), "dynamic": g.dynamic, "hints": g.hints} for g in graphs],
        "nodes": nodes,
        "modules": _modules(nodes),
        "coverage": {"nodes_total": len(nodes), "nodes_unknown": sum(u["count"] for u in unknown.values()),
                     "unknown_ops": sorted(unknown.values(), key=lambda u: -u["count"]),
                     "graphs_failed": list(failures), "decomposed_attention": decomposed},
        "notes": all_notes,
    }
    return Report(data)


# --------------------------------------------------------------------------- the Report


def _fmt(x, unit=""):
    if x is None:
        return "-"
    for div, suf in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= div:
            return f"{x / div:.3g}{suf}{unit}"
    return f"{x:.3g}{unit}"


def _ms(s):
    return f"{s * 1e3:.4g}"


class Report:
    """Totals, by_module(depth), by_op(), nodes, coverage(), table(), save()/load(), CSV."""

    def __init__(self, data: dict):
        if data.get("schema") != SCHEMA:
            raise GraphMFUError(f"not a graphmfu report (schema {data.get('schema')!r}, expected {SCHEMA!r})")
        self.data = data

    # ---------------------------------------------------------------- access
    @property
    def totals(self) -> dict:
        return self.data["totals"]

    @property
    def nodes(self) -> list[dict]:
        return self.data["nodes"]

    @property
    def device(self) -> DeviceSpec:
        return DeviceSpec.from_dict(self.data["device"])

    def coverage(self) -> dict:
        return self.data["coverage"]

    def phase(self, phase: str) -> dict:
        """Totals over the nodes of one phase (forward, backward, inference)."""
        return _sum(r for r in self.nodes if r["phase"] == phase)

    def by_module(self, depth: int | None = None) -> list[dict]:
        """Nodes grouped by module path cut to ``depth`` components (None: full path).  Each node
        counts once, so the rows sum to the totals; "" is the model root."""
        groups: dict[str, list] = defaultdict(list)
        for r in self.nodes:
            parts = r["module"].split(".") if r["module"] else []
            key = ".".join(parts if depth is None else parts[:depth])
            groups[key].append(r)
        rows = [{"module": k, **_sum(v)} for k, v in groups.items()]
        return sorted(rows, key=lambda r: -r["t_min_s"])

    def by_op(self) -> list[dict]:
        groups: dict[str, list] = defaultdict(list)
        for r in self.nodes:
            groups[r["op"]].append(r)
        rows = [{"op": k, "count": len(v), **_sum(v)} for k, v in groups.items()]
        return sorted(rows, key=lambda r: -r["t_min_s"])

    # ---------------------------------------------------------------- text
    def coverage_line(self) -> str:
        c = self.coverage()
        unk = ", ".join(f"{u['op']} x{u['count']} ({_fmt(u['output_bytes'], 'B')} out)" for u in c["unknown_ops"])
        line = (f"coverage: {c['nodes_total'] - c['nodes_unknown']}/{c['nodes_total']} nodes have a rule"
                f"{'; no rule: ' + unk if unk else ''}")
        if c.get("graphs_failed"):
            line += f"; {len(c['graphs_failed'])} graph(s) not analysed (see coverage.graphs_failed)"
        return line

    def table(self, by: str = "module", depth: int | None = 2, top: int | None = 25) -> str:
        """A tabulate table ``by`` module (at ``depth``), op, or node."""
        from tabulate import tabulate

        if by == "module":
            rows, key = self.by_module(depth), "module"
        elif by == "op":
            rows, key = self.by_op(), "op"
        elif by == "node":
            rows = sorted(self.nodes, key=lambda r: -r["t_min_s"])
            key = "name"
        else:
            raise GraphMFUError(f"table(by={by!r}): use 'module', 'op' or 'node'")
        total_t = self.totals["t_min_s"] or 1.0
        out = []
        for r in rows[:top] if top else rows:
            label = r[key] if r[key] else "(root)"
            if by == "node":
                label = f"{r['phase'][:3]}:{r['name']} {r['op']} [{r['module'] or 'root'}]"
            nb = r["bytes_read"] + r["bytes_written"]
            bound = r["bound"] if by == "node" else f"mem {r['memory_bound_share'] * 100:.0f}%"
            out.append([label, _fmt(r["flops"]), _fmt(r["flops_dense"]), _fmt(r["vector_flops"]), _fmt(nb, "B"),
                        "-" if r["intensity"] is None else f"{r['intensity']:.3g}", bound, _ms(r["t_min_s"]),
                        f"{r['t_min_s'] / total_t * 100:.1f}"])
        headers = [key if by != "node" else "node", "flops", "flops_dense", "vector", "bytes", "FLOP/B",
                   "bound", "t_min ms", "% t_min"]
        return tabulate(out, headers=headers, tablefmt="simple", disable_numparse=True)

    def summary(self) -> str:
        t, d = self.totals, self.data["device"]
        lines = [f"graphmfu report — {len(self.data['graphs'])} graph(s), {t['nodes']} nodes, torch "
                 f"{self.data['torch']}",
                 f"device: {d['name']} ({'measured' if d['measured'] else d['source']}); "
                 + ", ".join(f"{k} {v:.4g}" for k, v in d["peaks"].items()) + f" TFLOP/s; DRAM {d['dram_gbps']:.4g} GB/s",
                 f"matrix FLOPs {_fmt(t['flops'])} (dense {_fmt(t['flops_dense'])}), vector FLOPs "
                 f"{_fmt(t['vector_flops'])}, bytes {_fmt(t['bytes_read'] + t['bytes_written'], 'B')}, roofline "
                 f"t_min {_ms(t['t_min_s'])} ms ({t['memory_bound_share'] * 100:.0f}% of it memory-bound)"]
        for ph in ("forward", "backward", "inference"):
            p = self.phase(ph)
            if p["nodes"]:
                lines.append(f"  {ph:9s} matrix {_fmt(p['flops'])} (dense {_fmt(p['flops_dense'])}), "
                             f"t_min {_ms(p['t_min_s'])} ms")
        lines.append(self.coverage_line())
        lines += [f"note: {n}" for n in self.data["notes"]]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()

    # ---------------------------------------------------------------- files
    def to_dict(self) -> dict:
        return self.data

    def to_json(self) -> str:
        return json.dumps(self.data, indent=1, default=str)

    def save(self, path) -> Path:
        """Write JSON (``.json``) or the node table as CSV (``.csv``)."""
        p = Path(path)
        p.write_text(self.to_csv() if p.suffix == ".csv" else self.to_json())
        return p

    CSV_FIELDS = ("graph", "phase", "index", "name", "op", "module", "flops", "flops_dense", "vector_flops",
                  "bytes_read", "bytes_written", "intensity", "ridge", "bound", "t_min_s", "recompute", "known")

    def to_csv(self) -> str:
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=self.CSV_FIELDS, extrasaction="ignore")
        w.writeheader()
        w.writerows(self.nodes)
        return buf.getvalue()

    @classmethod
    def load(cls, path) -> "Report":
        p = Path(path)
        try:
            data = json.loads(p.read_text())
        except (OSError, ValueError) as e:
            raise GraphMFUError(f"cannot read report {path}: {e}; pass a JSON file written by Report.save()") from None
        return cls(data)
