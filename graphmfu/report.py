"""The Report: a collected record placed on a device, and every view of it.

A Report holds a ``Record`` (what was collected, device-free) and a ``DeviceSpec``.  Its tables —
nodes, totals, modules, kernels, stages, coverage — are derived on first use (``derive.views``), so
``Report.load(path).on("b200")`` shows the same record on another device's roofline.  Saving goes
through the renderers (``render/``): ``.json`` (record + device + derived tables), ``.csv`` (one
table), ``.md``, ``.txt``; an unknown ending is one clear error.
"""
from __future__ import annotations

import json
from collections import defaultdict
from functools import cached_property
from pathlib import Path

from graphmfu import render
from graphmfu.derive import SCHEMA, by_depth, kernel_sum, node_sum, roofline_view, views
from graphmfu.errors import GraphMFUError
from graphmfu.hardware import DeviceSpec, get_device
from graphmfu.record import RECORD_SCHEMA, Record
from graphmfu.render import Section, ms, num, pct


class Report:
    """Totals, by_module(depth), by_op(), nodes, kernels, stages, coverage(), tables, save()/load()."""

    title = "graphmfu report"
    CSV_FIELDS = {"nodes": ("graph", "phase", "index", "name", "op", "module", "flops", "flops_dense",
                            "vector_flops", "bytes_read", "bytes_written", "intensity", "ridge", "bound", "t_min_s",
                            "recompute", "known")}

    def __init__(self, record: Record, device: DeviceSpec):
        if not isinstance(record, Record) or not isinstance(device, DeviceSpec):
            raise GraphMFUError("Report(record, device) takes a graphmfu Record and DeviceSpec; use "
                                "graphmfu.report(), profile().report() or Report.load(path)")
        self.record, self.device = record, device

    # ---------------------------------------------------------------- derived
    @cached_property
    def data(self) -> dict:
        """The derived document: every table of this record on this device (docs/report-schema.md)."""
        return views(self.record, self.device)

    def on(self, device=None, ceilings: str | None = None) -> "Report":
        """The same record placed on another device's roofline (a DeviceSpec, name or alias; None: this
        report's device).  ``ceilings="calibrated"``: against the ceilings ``graphmfu calibrate`` measured
        on that device (its user cache), ``"datasheet"``: the table's figures."""
        dev = self.device if device is None else get_device(device)
        if ceilings is not None:
            from graphmfu.calibrate import ceilings_for

            dev = ceilings_for(dev, ceilings)
        return Report(self.record, dev)

    def select(self, *, phase: str | None = None, graphs=None) -> "Report":
        """The report of some of its graphs' nodes: those of ``phase`` and/or graph ids ``graphs``."""
        import dataclasses

        keep = []
        for g in self.record.graphs:
            if graphs is not None and g.id not in set(graphs):
                continue
            nodes = [n for n in g.nodes if phase is None or n.phase == phase]
            keep.append(dataclasses.replace(g, nodes=nodes))
        return Report(dataclasses.replace(self.record, graphs=keep, timing=None), self.device)

    @property
    def totals(self) -> dict:
        return self.data["totals"]

    @property
    def nodes(self) -> list[dict]:
        return self.data["nodes"]

    @property
    def kernels(self) -> list[dict]:
        """Measured kernels (after graphmfu.profile()); empty for a static report."""
        return self.data.get("kernels", [])

    @property
    def stages(self) -> list[dict]:
        return self.data.get("stages", [])

    def coverage(self) -> dict:
        return self.data["coverage"]

    def phase(self, phase: str) -> dict:
        """Totals over the nodes of one phase (forward, backward, inference)."""
        return node_sum(r for r in self.nodes if r["phase"] == phase)

    def by_module(self, depth: int | None = None) -> list[dict]:
        """Nodes grouped by module path cut to ``depth`` components (None: full path).  Each node
        counts once, so the rows sum to the totals; "" is the model root."""
        rows = [{"module": k, **node_sum(v)} for k, v in by_depth(self.nodes, depth).items()]
        return sorted(rows, key=lambda r: -r["t_min_s"])

    def by_op(self) -> list[dict]:
        groups: dict[str, list] = defaultdict(list)
        for r in self.nodes:
            groups[r["op"]].append(r)
        rows = [{"op": k, "count": len(v), **node_sum(v)} for k, v in groups.items()]
        return sorted(rows, key=lambda r: -r["t_min_s"])

    def by_graph(self) -> list[dict]:
        """One row per graph: its phase, Dynamo compile id, source and totals.  Graphs of one frame compiled
        more than once (grad / no_grad / inference_mode, other shapes) are alternatives: read them here
        rather than in the totals, which add up every graph."""
        return self.data["graphs"]

    def by_module_time(self, depth: int | None = None) -> list[dict]:
        """Measured kernel time per module cut to ``depth`` (each kernel once: rows sum to the total)."""
        rows = [{"module": k, **kernel_sum(v, self.device)} for k, v in by_depth(self.kernels, depth).items()]
        return sorted(rows, key=lambda r: -r["time_s"])

    # ---------------------------------------------------------------- tables
    def _stage_section(self) -> Section:
        return Section("stages", ["stage", "calls", "span ms", "busy ms", "idle %", "flops", "bytes", "MFU %",
                                  "MFU busy %", "MBU %", "mem-bound %"],
                       [[s["name"], s["calls"], ms(s["span_s"]), ms(s["busy_s"]), f"{s['idle_share'] * 100:.1f}",
                         num(s["flops"]), num(s["bytes"], "B"), pct(s["mfu"]), pct(s["mfu_busy"]), pct(s["mbu"]),
                         f"{s['memory_bound_share'] * 100:.0f}"] for s in self.stages])

    def _kernel_section(self, top: int | None = 15) -> Section:
        return Section(f"top {top} kernels" if top else "kernels",
                       ["kernel", "graph", "stage", "module", "calls", "time ms", "flops", "bytes", "MFU %", "MBU %",
                        "SOL %", "bound", "flags"],
                       [[(k["name"][:48]), k["graph"], k["stage"] or "-", k["module"] or "(root)", k["calls"],
                         f"{k['time_s'] * 1e3:.4g}", num(k["flops"]), num(k["bytes"], "B"), pct(k["mfu"]),
                         pct(k["mbu"]), pct(k["sol"]), k["bound"], ",".join(k.get("flags", ()))]
                        for k in (self.kernels[:top] if top else self.kernels)])

    def _module_time_section(self, depth: int | None = 2, top: int | None = 15) -> Section:
        return Section(f"measured time by module (depth {depth})",
                       ["module", "time ms", "kernels", "flops", "bytes", "MFU %", "MBU %", "mem-bound %"],
                       [[r["module"] or "(root)", f"{r['time_s'] * 1e3:.4g}", r["kernels"], num(r["flops"]),
                         num(r["bytes"], "B"), pct(r["mfu"]), pct(r["mbu"]), f"{r['memory_bound_share'] * 100:.0f}"]
                        for r in self.by_module_time(depth)[:top]])

    def _static_section(self, by: str = "module", depth: int | None = 2, top: int | None = 25) -> Section:
        if by == "module":
            rows, key = self.by_module(depth), "module"
        elif by == "op":
            rows, key = self.by_op(), "op"
        elif by == "node":
            rows, key = sorted(self.nodes, key=lambda r: -r["t_min_s"]), "name"
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
            out.append([label, num(r["flops"]), num(r["flops_dense"]), num(r["vector_flops"]), num(nb, "B"),
                        "-" if r["intensity"] is None else f"{r['intensity']:.3g}", bound, ms(r["t_min_s"]),
                        f"{r['t_min_s'] / total_t * 100:.1f}"])
        headers = [key if by != "node" else "node", "flops", "flops_dense", "vector", "bytes", "FLOP/B",
                   "bound", "t_min ms", "% t_min"]
        return Section(f"static cost by {by}" + (f" (depth {depth})" if by == "module" else ""), headers, out)

    def stage_table(self) -> str:
        return render.tabulate(self._stage_section())

    def kernel_table(self, top: int | None = 15) -> str:
        return render.tabulate(self._kernel_section(top))

    def module_time_table(self, depth: int | None = 2, top: int | None = 15) -> str:
        return render.tabulate(self._module_time_section(depth, top))

    def table(self, by: str = "module", depth: int | None = 2, top: int | None = 25) -> str:
        """A table ``by`` module (at ``depth``), op, or node."""
        return render.tabulate(self._static_section(by, depth, top))

    def _graph_section(self) -> Section:
        return Section("per graph (the totals add these up)",
                       ["graph", "phase", "compile id", "source", "nodes", "flops", "flops_dense", "vector", "bytes",
                        "t_min ms"],
                       [[g["id"], g["phase"], g["compile_id"] or "-", g["source"], g["nodes"], num(g["flops"]),
                         num(g["flops_dense"]), num(g["vector_flops"]), num(g["bytes_read"] + g["bytes_written"], "B"),
                         ms(g["t_min_s"])] for g in self.by_graph()])

    def graph_table(self) -> str:
        return render.tabulate(self._graph_section())

    def sections(self, by: str = "module", depth: int | None = 2, top: int | None = 25) -> list[Section]:
        """Everything the text and Markdown renderers show, in order."""
        out = [Section(lines=self._summary_lines())]
        if len(self.by_graph()) > 1:
            out.append(self._graph_section())
        if self.stages:
            out += [self._stage_section(), self._kernel_section(), self._module_time_section(depth)]
            if any(k["flags"] for k in self.kernels) or any((r["mbu"] or 0) > 1 or (r["mfu"] or 0) > 1
                                                           for r in self.stages + self.by_module_time(depth)):
                out.append(Section(lines=["* above 100%:", *self.data.get("flagged", [])]))
        return out + [self._static_section(by, depth, top)]

    def table_rows(self, name: str | None = None) -> list[dict]:
        """A derived table by name: nodes (default), kernels, kernel_map, stages, modules, module_times."""
        name = name or "nodes"
        tables = ("nodes", "kernels", "kernel_map", "stages", "modules", "module_times", "graphs")
        if name not in tables:
            raise GraphMFUError(f"no table {name!r} in a report; use one of {', '.join(tables)}")
        return self.data.get(name, [])

    def csv_fields(self, name: str | None = None) -> tuple:
        return self.CSV_FIELDS.get(name or "nodes", ())

    # ---------------------------------------------------------------- text
    def coverage_line(self) -> str:
        c = self.coverage()
        unk = ", ".join(f"{u['op']} x{u['count']} ({num(u['output_bytes'], 'B')} out)" for u in c["unknown_ops"])
        line = (f"coverage: {c['nodes_total'] - c['nodes_unknown']}/{c['nodes_total']} nodes have a rule"
                f"{'; no rule: ' + unk if unk else ''}")
        if "time_attributed" in c:
            line += f"; {c['time_attributed'] * 100:.2f}% of measured kernel time attributed to graph nodes"
            if c["unattributed_kernels"]:
                line += (f" ({len(c['unattributed_kernels'])} unattributed kernel name(s), see "
                         f"coverage.unattributed_kernels)")
        if c.get("graphs_failed"):
            line += f"; {len(c['graphs_failed'])} graph(s) not analysed (see coverage.graphs_failed)"
        return line

    def _summary_lines(self) -> list[str]:
        t, d = self.totals, self.data["device"]
        n = len(self.data["graphs"])
        lines = [f"graphmfu report — {n} graph(s), {t['nodes']} nodes, torch {self.data['torch']}"
                 + (f"; totals are the sum over all {n} graphs (per graph: by_graph())" if n > 1 else ""),
                 f"device: {d['name']} ({'measured' if d['measured'] else d['source']}); "
                 + ", ".join(f"{k} {v:.4g}" for k, v in d["peaks"].items()) + f" TFLOP/s; DRAM {d['dram_gbps']:.4g} GB/s",
                 f"matrix FLOPs {num(t['flops'])} (dense {num(t['flops_dense'])}), vector FLOPs "
                 f"{num(t['vector_flops'])}, bytes {num(t['bytes_read'] + t['bytes_written'], 'B')}, roofline "
                 f"t_min {ms(t['t_min_s'])} ms ({t['memory_bound_share'] * 100:.0f}% of it memory-bound)"]
        for ph in ("forward", "backward", "inference"):
            p = self.phase(ph)
            if p["nodes"]:
                lines.append(f"  {ph:9s} matrix {num(p['flops'])} (dense {num(p['flops_dense'])}), "
                             f"t_min {ms(p['t_min_s'])} ms")
        lines.append(self.coverage_line())
        notes = self.data["notes"]
        cov = self.coverage()
        first = bool(cov.get("foreign_share")) + (cov.get("outside_graphs_share", 0) > 0.5)  # not ours: said first
        return [*(f"note: {n}" for n in notes[:first]), *lines, *(f"note: {n}" for n in notes[first:])]

    def summary(self) -> str:
        return "\n".join(self._summary_lines())

    def __str__(self) -> str:
        return self.summary()

    # ---------------------------------------------------------------- headroom (graphmfu/headroom/)
    def _require_timing(self, what: str) -> None:
        if self.record.timing is None or not self.kernels:
            raise GraphMFUError(f"{what} needs a timed report (measured kernels): use graphmfu.profile() around the "
                                f"compiled model, then p.report()")

    def headroom(self, depth: int | None = 2):
        """Time above the roofline per kernel, module (cut to ``depth``) and stage, ranked, with each row's share
        of the step (``headroom.ranking``): ``.rows(by)``, ``.table()``."""
        from graphmfu.headroom.ranking import headroom

        self._require_timing("headroom()")
        return headroom(self.data, self.record.timing.unattributed, depth)

    def causes(self, ncu=None) -> list:
        """Where the lost time comes from: ``Cause(kind, where, lost_s, evidence, action)`` ranked by ``lost_s``
        (``headroom.causes``).  ``ncu``: an ``ncu.join`` table, for hardware against model FLOPs."""
        from graphmfu.headroom.causes import causes

        self._require_timing("causes()")
        return causes(self.data, self.record, self.device, ncu)

    def predict(self, device=None, ceilings: str | None = None, sizes: dict | None = None):
        """This run's step and stage times predicted on ``device`` (default: the measured one), per kernel class
        (``headroom.predict``); ``ceilings``: None (calibrated where known, else datasheet), "datasheet" or
        "calibrated"; ``sizes``: a shape what-if, the dynamic graphs' size symbols at other values
        (``{"s0": 32}``: the batch 8 measured, batch 32 asked; ``record.graphs[i].hints`` names them)."""
        from graphmfu.headroom.predict import devices, predict

        self._require_timing("predict()")
        measured, target, which = devices(self.device, device if device is not None else self.device, ceilings)
        data = self.data if measured == self.device else self.on(measured).data
        return predict(data, self.record, measured, target, which, sizes)

    def headroom_sections(self, top: int | None = 10) -> list[Section]:
        """The headroom tables and the ranked causes, as sections (the text and HTML reports show them)."""
        from graphmfu.headroom.causes import section

        return [*self.headroom().sections(top), section(self.causes(), top)]

    # ---------------------------------------------------------------- plots and frames
    def roofline_view(self, by: str = "kernel", stage: str | None = None, color: str | None = None,
                      depth: int | None = 2, top: int = 5) -> dict:
        """What ``plot_roofline`` draws (``derive.roofline_view``): roofs, points, labelled offenders."""
        return roofline_view(self.data, self.device, by=by, stage=stage, color=color, depth=depth, top=top)

    def plot_roofline(self, path=None, by: str = "kernel", stage: str | None = None, color: str | None = None,
                      depth: int | None = 2, top: int = 5, title: str | None = None):
        """A log-log roofline: one roof per compute unit present and DRAM; ``by`` kernel (measured; a
        static report falls back to nodes at t_min), module (cut to ``depth``) or node; points sized by
        time, coloured by ``color`` (module or stage), the ``top`` offenders labelled.  ``path`` ending
        .png/.svg/.pdf (matplotlib), .html (plotly, self-contained), .txt; None returns terminal text."""
        from graphmfu.render.roofline import plot

        return plot(self.roofline_view(by, stage, color, depth, top), path, title)

    def to_pandas(self, table: str | None = None):
        """A derived table (``table_rows`` names: nodes, kernels, stages, modules, ...) as a pandas DataFrame;
        nested fields flattened to dotted columns, as in the CSV."""
        from graphmfu.render import frame

        return frame(self.table_rows(table))

    # ---------------------------------------------------------------- files
    def to_dict(self) -> dict:
        """The document ``.json`` holds: the derived tables, and the record they derive from."""
        return {**self.data, "record": self.record.to_dict()}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1, default=str)

    def to_csv(self, table: str | None = None) -> str:
        return render.renderers()[".csv"].render(self, table=table)

    def save(self, path, **options) -> Path:
        """Write ``.json`` (record + device + derived tables), ``.csv`` (``table=`` nodes, kernels, ...;
        or ``r.kernels.csv``), ``.md``, ``.txt``, ``.html`` (one self-contained page), ``.png``/``.svg``
        (the roofline; ``by=``, ``stage=``)."""
        return render.write(self, path, **options)

    @classmethod
    def from_dict(cls, data) -> "Report":
        if not isinstance(data, dict) or "schema" not in data:
            raise GraphMFUError("not a graphmfu report (no schema field); pass a JSON file written by Report.save()")
        schema = str(data["schema"])
        if schema != SCHEMA:
            if schema.startswith("graphmfu.report/"):
                raise GraphMFUError(f"report schema {schema} was written by a newer graphmfu than this one "
                                    f"(reads {SCHEMA}); upgrade graphmfu to read it")
            raise GraphMFUError(f"not a graphmfu report (schema {schema!r}, expected {SCHEMA!r})")
        rec = data.get("record")
        if not isinstance(rec, dict) or rec.get("schema") != RECORD_SCHEMA:
            raise GraphMFUError("this report has no record section (written by an older graphmfu): re-run the "
                                "analysis and save it again")
        return cls(Record.from_dict(rec), DeviceSpec.from_dict(data["device"]))

    @classmethod
    def load(cls, path) -> "Report":
        p = Path(path)
        try:
            data = json.loads(p.read_text())
        except (OSError, ValueError) as e:
            raise GraphMFUError(f"cannot read report {path}: {e}; pass a JSON file written by Report.save()") from None
        return cls.from_dict(data)
