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
from graphmfu.roofline import matrix_time_s, place

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
    tot["flops_recompute"] = 0
    n = mem = 0
    for r in rows:
        n += 1
        for k in _SUMS:
            if r.get("recompute") and k in ("flops", "flops_dense", "vector_flops"):
                continue  # recomputed forward work (checkpointing) is HFU, not model FLOPs
            tot[k] += r[k]
        if r.get("recompute"):
            tot["flops_recompute"] += r["flops"]
        if r["bound"] == "memory":
            mem += r["t_min_s"]
    tot["nodes"] = n
    tot["memory_bound_share"] = mem / tot["t_min_s"] if tot["t_min_s"] else 0.0
    nb = tot["bytes_read"] + tot["bytes_written"]
    tot["intensity"] = (tot["flops"] + tot["vector_flops"]) / nb if nb else None
    return tot


def _module_tree(rows: list[dict], summarise) -> list[dict]:
    """One row per module path prefix (inclusive: a row counts in each of its ancestors)."""
    groups: dict[str, list] = defaultdict(list)
    for r in rows:
        parts = r["module"].split(".") if r["module"] else []
        for d in range(len(parts) + 1):
            groups[".".join(parts[:d])].append(r)
    return [{"module": path, "depth": len(path.split(".")) if path else 0, **summarise(groups[path])}
            for path in sorted(groups, key=lambda p: p.split(".") if p else [])]


def _by_depth(rows: list[dict], depth: int | None) -> dict[str, list]:
    """Rows grouped by module path cut to ``depth`` components (each row once)."""
    groups: dict[str, list] = defaultdict(list)
    for r in rows:
        parts = r["module"].split(".") if r["module"] else []
        groups[".".join(parts if depth is None else parts[:depth])].append(r)
    return groups


def _kernel_sum(rs: list[dict], dram_gbps: float) -> dict:
    """Totals, MFU, MBU, SOL and memory-bound share over measured kernel rows."""
    t = sum(r["time_s"] for r in rs)
    by = sum(r["bytes"] for r in rs)
    t_min = sum(r["t_min_s"] for r in rs)
    return {"time_s": t, "flops": sum(r["flops"] for r in rs), "flops_dense": sum(r["flops_dense"] for r in rs),
            "vector_flops": sum(r["vector_flops"] for r in rs), "bytes": by, "t_min_s": t_min, "kernels": len(rs),
            "mfu": _rate(sum(r["t_matrix_s"] for r in rs), t), "mbu": _rate(by / (dram_gbps * 1e9), t),
            "sol": _rate(t_min, t),
            "memory_bound_share": _rate(sum(r["time_s"] for r in rs if r["bound"] == "memory"), t) or 0.0}


def _kernel_static(k, dev: DeviceSpec) -> dict:
    p = place(k.cost, dev)
    t_matrix = matrix_time_s(k.cost, dev)
    return {"flops": k.cost.flops, "flops_dense": k.cost.flops_dense, "vector_flops": k.cost.vector_flops,
            "bytes": k.cost.bytes, "t_min_s": p.t_min_s, "t_matrix_s": t_matrix, "bound": p.bound,
            "intensity": None if math.isinf(p.intensity) else p.intensity}


def _rate(num, den):
    return num / den if den else None


def stage_sections(kernels: list[dict], measured, stages: list[dict], dev: DeviceSpec) -> list[dict]:
    """One row per stage name (inclusive of nested stages) from joined kernel rows (with ``stage``)
    and the measured kernels (with ``stage``, ``launch_start_us``, device times)."""
    from graphmfu.timing import busy_us

    import bisect

    by_launch = sorted(measured, key=lambda m: m.launch_start_us)
    launches = [m.launch_start_us for m in by_launch]
    prefix_end, cur = [], float("-inf")
    for m in by_launch:
        cur = max(cur, m.end_us)
        prefix_end.append(cur)
    stage_rows = []
    names = sorted({s["name"] for s in stages})
    for name in names:
        inside = [r for r in kernels if r["stage"] and (r["stage"] == name or r["stage"].startswith(name + "/"))]
        ms = [m for m in measured if m.stage and (m.stage == name or m.stage.startswith(name + "/"))]
        # span and busy per occurrence of the stage (a repeated stage interleaved with another must
        # not span the other's time), summed over occurrences
        # A call's span starts when the device could start it: at the stage's CPU start, or when the
        # work launched before it finished, whichever is later (what a CUDA event recorded at the
        # stage start measures); a leading launch gap is idle time of the stage, not outside it.
        span = busy = 0.0
        for occ in (s for s in stages if s["name"] == name):
            spans = [(m.start_us, m.end_us) for m in ms if occ["start_us"] <= m.launch_start_us <= occ["end_us"]]
            if spans:
                first = min(b for b, _ in spans)
                i = bisect.bisect_left(launches, occ["start_us"])  # kernels launched before the stage began
                free = prefix_end[i - 1] if i else first
                start = min(first, max(occ["start_us"], free))
                span += (max(e for _, e in spans) - start) * 1e-6
                busy += busy_us(spans) * 1e-6
        a = _kernel_sum(inside, dev.dram_gbps)
        tm = sum(r["t_matrix_s"] for r in inside)
        stage_rows.append({"name": name, "parent": name.rsplit("/", 1)[0] if "/" in name else None,
                           "calls": sum(1 for s in stages if s["name"] == name), "span_s": span, "busy_s": busy,
                           "idle_share": (1 - busy / span) if span else 0.0, "flops": a["flops"],
                           "flops_dense": a["flops_dense"], "vector_flops": a["vector_flops"], "bytes": a["bytes"],
                           "kernel_time_s": a["time_s"], "kernel_launches": len(ms),
                           "mfu": _rate(tm, span), "mfu_busy": _rate(tm, busy),
                           "mbu": _rate(a["bytes"] / (dev.dram_gbps * 1e9), span),
                           "memory_bound_share": a["memory_bound_share"],
                           "unattributed_s": sum(m.time_s for m in ms if m.graph is None)})
    return stage_rows


def _timing_sections(graphs, dev: DeviceSpec, timing: dict) -> dict:
    """Kernels, module times, stages and time coverage from a joined profile."""
    from graphmfu.timing import stage_of

    gmap = {g.id: g for g in graphs}
    measured, stages = timing["measured"], timing["stages"]
    rows: dict = {}
    other: dict = {}
    total_us = attributed_us = 0.0
    for m in measured:
        m.stage = stage_of(m, stages)
        dur = m.end_us - m.start_us
        total_us += dur
        if m.graph is None:
            o = other.setdefault((m.name, m.where, m.launch_op), {"name": m.name, "where": m.where,
                                                                "launch_op": m.launch_op, "count": 0, "time_s": 0.0})
            o["count"] += 1
            o["time_s"] += dur * 1e-6
            continue
        attributed_us += dur
        r = rows.setdefault((m.graph, m.kernel, m.stage), {"time_us": 0.0, "calls": set(), "gpu": [], "how": set(),
                                                          "spans": [], "launches": 0})
        r["time_us"] += dur
        r["launches"] += 1
        r["calls"].add(m.call)
        r["how"].add(m.how)
        r["spans"].append((m.start_us, m.end_us))
        if m.name not in r["gpu"]:
            r["gpu"].append(m.name)
    kernels = []
    for (gid, idx, st), r in rows.items():
        g = gmap[gid]
        k = g.kernels[idx]
        s = _kernel_static(k, dev)
        n = len(r["calls"])
        t = r["time_us"] * 1e-6
        row = {"name": k.name, "graph": gid, "phase": g.phase, "index": idx, "nodes": k.nodes, "module": k.module,
               "stage": st, "calls": n, "launches": r["launches"], "extern": k.extern, "gpu_kernels": r["gpu"], "joined_by": sorted(r["how"]),
               "flops": s["flops"] * n, "flops_dense": s["flops_dense"] * n, "vector_flops": s["vector_flops"] * n,
               "bytes": s["bytes"] * n, "bytes_inductor": None if k.bytes_inductor is None else k.bytes_inductor * n,
               "bytes_nodes": k.bytes_nodes * n, "time_s": t, "t_min_s": s["t_min_s"] * n,
               "t_matrix_s": s["t_matrix_s"] * n, "bound": s["bound"], "intensity": s["intensity"],
               "achieved_tflops": _rate(s["flops"] * n, t * 1e12), "achieved_gbps": _rate(s["bytes"] * n, t * 1e9),
               "mfu": _rate(s["t_matrix_s"] * n, t), "mbu": _rate(s["bytes"] * n / (dev.dram_gbps * 1e9), t),
               "sol": _rate(s["t_min_s"] * n, t), "_spans": r["spans"]}
        kernels.append(row)
    kernels.sort(key=lambda r: -r["time_s"])

    module_times = _module_tree(kernels, lambda rs: _kernel_sum(rs, dev.dram_gbps))

    stage_rows = stage_sections(kernels, measured, stages, dev)
    for r in kernels:
        r.pop("_spans", None)
    return {"kernels": kernels, "module_times": module_times, "stages": stage_rows,
            "timing": {"device_kernel_time_s": total_us * 1e-6, "attributed_time_s": attributed_us * 1e-6,
                       "cuda": timing["cuda"], "notes": timing["notes"]},
            "time_attributed": (attributed_us / total_us) if total_us else 0.0,
            "unattributed_kernels": sorted(other.values(), key=lambda o: -o["time_s"])}


def build(graphs, dev: DeviceSpec, failures: Iterable[str] = (), notes: Iterable[str] = (),
          timing: dict | None = None) -> "Report":
    graphs = list(graphs)
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
        "modules": _module_tree(nodes, _sum),
        "coverage": {"nodes_total": len(nodes), "nodes_unknown": sum(u["count"] for u in unknown.values()),
                     "unknown_ops": sorted(unknown.values(), key=lambda u: -u["count"]),
                     "graphs_failed": list(failures), "decomposed_attention": decomposed},
        "notes": all_notes,
        "kernel_map": [{"graph": g.id, "index": k.index, "name": k.name, "extern": k.extern, "nodes": k.nodes,
                        "module": k.module, **_kernel_static(k, dev), "bytes_inductor": k.bytes_inductor,
                        "bytes_nodes": k.bytes_nodes} for g in graphs for k in g.kernels],
    }
    if timing is not None:
        t = _timing_sections(graphs, dev, timing)
        data["kernels"], data["module_times"], data["stages"] = t["kernels"], t["module_times"], t["stages"]
        data["timing"] = t["timing"]
        data["coverage"]["time_attributed"] = t["time_attributed"]
        data["coverage"]["unattributed_kernels"] = t["unattributed_kernels"]
        data["notes"] += t["timing"]["notes"]
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


def _pct(x):
    return "-" if x is None else f"{x * 100:.1f}"


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
        rows = [{"module": k, **_sum(v)} for k, v in _by_depth(self.nodes, depth).items()]
        return sorted(rows, key=lambda r: -r["t_min_s"])

    def by_op(self) -> list[dict]:
        groups: dict[str, list] = defaultdict(list)
        for r in self.nodes:
            groups[r["op"]].append(r)
        rows = [{"op": k, "count": len(v), **_sum(v)} for k, v in groups.items()]
        return sorted(rows, key=lambda r: -r["t_min_s"])

    @property
    def kernels(self) -> list[dict]:
        """Measured kernels (after graphmfu.profile()); empty for a static report."""
        return self.data.get("kernels", [])

    @property
    def stages(self) -> list[dict]:
        return self.data.get("stages", [])

    def by_module_time(self, depth: int | None = None) -> list[dict]:
        """Measured kernel time per module cut to ``depth`` (each kernel once: rows sum to the total)."""
        dram_gbps = self.data["device"]["dram_gbps"]
        rows = [{"module": k, **_kernel_sum(v, dram_gbps)} for k, v in _by_depth(self.kernels, depth).items()]
        return sorted(rows, key=lambda r: -r["time_s"])

    def stage_table(self) -> str:
        from tabulate import tabulate

        rows = [[s["name"], s["calls"], _ms(s["span_s"]), _ms(s["busy_s"]), f"{s['idle_share'] * 100:.1f}",
                 _fmt(s["flops"]), _fmt(s["bytes"], "B"), _pct(s["mfu"]), _pct(s["mfu_busy"]), _pct(s["mbu"]),
                 f"{s['memory_bound_share'] * 100:.0f}"] for s in self.stages]
        return tabulate(rows, headers=["stage", "calls", "span ms", "busy ms", "idle %", "flops", "bytes", "MFU %",
                                       "MFU busy %", "MBU %", "mem-bound %"], tablefmt="simple", disable_numparse=True)

    def kernel_table(self, top: int | None = 15) -> str:
        from tabulate import tabulate

        rows = [[(k["name"][:48]), k["graph"], k["stage"] or "-", k["module"] or "(root)", k["calls"],
                 f"{k['time_s'] * 1e3:.4g}", _fmt(k["flops"]), _fmt(k["bytes"], "B"), _pct(k["mfu"]), _pct(k["mbu"]),
                 _pct(k["sol"]), k["bound"]] for k in (self.kernels[:top] if top else self.kernels)]
        return tabulate(rows, headers=["kernel", "graph", "stage", "module", "calls", "time ms", "flops", "bytes",
                                       "MFU %", "MBU %", "SOL %", "bound"], tablefmt="simple", disable_numparse=True)

    def module_time_table(self, depth: int | None = 2, top: int | None = 15) -> str:
        from tabulate import tabulate

        rows = [[r["module"] or "(root)", f"{r['time_s'] * 1e3:.4g}", r["kernels"], _fmt(r["flops"]),
                 _fmt(r["bytes"], "B"), _pct(r["mfu"]), _pct(r["mbu"]), f"{r['memory_bound_share'] * 100:.0f}"]
                for r in self.by_module_time(depth)[:top]]
        return tabulate(rows, headers=["module", "time ms", "kernels", "flops", "bytes", "MFU %", "MBU %",
                                       "mem-bound %"], tablefmt="simple", disable_numparse=True)

    # ---------------------------------------------------------------- text
    def coverage_line(self) -> str:
        c = self.coverage()
        unk = ", ".join(f"{u['op']} x{u['count']} ({_fmt(u['output_bytes'], 'B')} out)" for u in c["unknown_ops"])
        line = (f"coverage: {c['nodes_total'] - c['nodes_unknown']}/{c['nodes_total']} nodes have a rule"
                f"{'; no rule: ' + unk if unk else ''}")
        if "time_attributed" in c:
            line += f"; {c['time_attributed'] * 100:.2f}% of measured kernel time attributed to graph nodes"
            if c["unattributed_kernels"]:
                line += f" ({len(c['unattributed_kernels'])} unattributed kernel name(s), see coverage.unattributed_kernels)"
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
