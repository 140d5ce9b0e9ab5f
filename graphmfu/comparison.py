"""The Comparison: eager against compiled — two records of the same stages, viewed side by side.

The document (schema ``graphmfu.compare/1``, ``docs/report-schema.md``) stores what was collected:
both sides' records (the eager recording and the compiled graphs, each with its profile's timing),
the run conditions, and per stage the ``torch.cuda.Event`` time of the profiled calls and the time of
calls with no profiler.  Everything else is derived from the two ``Report``\\ s on one device.

Everything is **per iteration** of a stage (totals over the timed iterations / stage calls).
Per side and per stage (top-level stage names; nested stages roll up into them):

* ``span_s``: device span per call, from the profile; ``event_s``: ``torch.cuda.Event`` time of the
  same calls (wall clock on CPU) — the cross-check; ``clean_s``: event time with no profiler;
* ``busy_s``, ``idle_share`` (launch gaps), ``kernels`` (launches per call), MFU/MBU over the span,
  ``memory_bound_share``;
* ``flops``/``flops_dense``/``vector_flops``: each graph's ops times its calls in the stage (eager: the
  recorded ops of one call); ``bytes``: each graph's kernels (eager: one per op; compiled: fused
  kernels' boundary bytes), so ``bytes_saved`` is the fusion saving.

Per module (a tree: each row includes its descendants; rows at one depth never double count): the
same quantities (a fused kernel spanning modules sits at their common ancestor, so deep rows of the
compiled side can be lighter than the eager side's).  ``flops_match`` is False when matrix FLOPs
differ by more than 1e-6 (relative): a difference is flagged, never hidden.  ``slower`` lists every
module where compiled takes longer, with the compiled kernels responsible and the eager ops (same
module subtree, same ATen op) they replaced.
"""
from __future__ import annotations

import json
from functools import cached_property
from pathlib import Path

from graphmfu import render
from graphmfu.derive import graph_calls, module_tree, roofline_point, top_stage
from graphmfu.errors import GraphMFUError
from graphmfu.hardware import DeviceSpec
from graphmfu.record import Record
from graphmfu.render import Section, ms, num, pct
from graphmfu.report import Report
from graphmfu.roofline import rate, roofs, utilisation

SCHEMA = "graphmfu.compare/1"
SIDES = ("eager", "compiled")
_FIELDS = ("flops", "flops_dense", "vector_flops", "bytes")


def _match(e: float, c: float) -> bool:
    return abs(e - c) <= 1e-6 * max(abs(e), abs(c), 1)


def _in(module: str, prefix: str) -> bool:
    return not prefix or module == prefix or module.startswith(prefix + ".")


def _base_op(op: str) -> str:
    return op.rsplit(".", 1)[0] if op.count(".") >= 2 else op


def _x(r):
    return "-" if r is None else f"{r:.2f}x"


def _pair(a, b, fmt=pct):
    return f"{fmt(a)} / {fmt(b)}"


def _stage_calls(rep: Report) -> dict:
    return {s["name"]: s["calls"] for s in rep.stages if "/" not in s["name"]}


def _module_rows(rep: Report, stage_names: list[str]) -> dict:
    """(stage, module prefix) -> per-iteration sums of one side: FLOPs from each graph's ops times its
    calls, bytes from its kernels, time from the measured kernels."""
    calls = _stage_calls(rep)
    rows = []
    km = rep.data["kernel_map"]
    for (gid, st), n in graph_calls(rep.kernels).items():
        if st not in calls:
            continue
        per = n / (calls[st] or 1)
        rows += [{"stage": st, "module": r["module"], **{f: r[f] * per for f in _FIELDS[:3]}} for r in rep.nodes
                 if r["graph"] == gid and not r.get("recompute")]
        rows += [{"stage": st, "module": k["module"], "bytes": k["bytes"] * per} for k in km if k["graph"] == gid]
    for k in rep.kernels:
        st = top_stage(k["stage"])
        n = calls.get(st) or 1
        rows.append({"stage": st, "module": k["module"], "time_s": k["time_s"] / n, "kernels": k["launches"] / n,
                     "t_matrix_s": k["t_matrix_s"] / n, "t_min_s": k["t_min_s"] / n, "k_bytes": k["bytes"] / n,
                     "mem_time_s": k["time_s"] / n if k["bound"] == "memory" else 0.0})

    def summarise(rs):
        a = {f: sum(r.get(f, 0) for r in rs) for f in (*_FIELDS, "time_s", "kernels", "t_matrix_s", "t_min_s",
                                                      "k_bytes", "mem_time_s")}
        u = utilisation(a["t_matrix_s"], a["k_bytes"], a["t_min_s"], a["time_s"], rep.device)
        return {"time_s": a["time_s"], "kernels": a["kernels"], **{f: a[f] for f in _FIELDS}, "mfu": u["mfu"],
                "mbu": u["mbu"], "sol": u["sol"], "t_min_s": a["t_min_s"], "t_matrix_s": a["t_matrix_s"],
                "memory_bound_share": rate(a["mem_time_s"], a["time_s"]) or 0.0}

    out = {}
    for st in stage_names:
        for r in module_tree([r for r in rows if r["stage"] == st], summarise):
            out[(st, r["module"])] = {k: v for k, v in r.items() if k not in ("module", "depth")}
    return out


def _stage_side(row: dict, static: dict, events_s, clean_s) -> dict:
    n = row["calls"] or 1
    span = row["span_s"] / n
    return {"calls": row["calls"], "span_s": span, "busy_s": row["busy_s"] / n, "idle_share": row["idle_share"],
            "kernels": row["kernel_launches"] / n, "kernel_time_s": row["kernel_time_s"] / n,
            **{f: static.get(f, 0) for f in _FIELDS},
            "mfu": row["mfu"], "mfu_busy": row["mfu_busy"], "mbu": row["mbu"],
            "memory_bound_share": row["memory_bound_share"], "unattributed_s": row["unattributed_s"] / n,
            "event_s": events_s, "clean_s": clean_s,
            "span_vs_event": rate(span, events_s) if events_s else None}


def _empty_side() -> dict:
    return {"time_s": 0.0, "kernels": 0, "flops": 0, "flops_dense": 0, "vector_flops": 0, "bytes": 0, "mfu": None,
            "mbu": None, "sol": None, "t_min_s": 0.0, "t_matrix_s": 0.0, "memory_bound_share": 0.0}


class Comparison:
    """Eager vs compiled: ``stage_table()``, ``module_table(depth)``, ``kernel_table(side)``,
    ``slower_table()``, ``table()`` (all of them), ``markdown()``, ``save()``/``load()``."""

    title = "graphmfu compare"

    def __init__(self, doc: dict):
        if not isinstance(doc, dict) or doc.get("schema") != SCHEMA:
            got = doc.get("schema") if isinstance(doc, dict) else type(doc).__name__
            raise GraphMFUError(f"not a graphmfu comparison (schema {got!r}, expected {SCHEMA!r})")
        if not isinstance(doc.get("records"), dict):
            raise GraphMFUError("this comparison has no records (written by an older graphmfu): run compare again")
        self.doc = {k: doc[k] for k in ("schema", "created", "torch", "device", "conditions", "events_s", "clean_s",
                                        "records")}
        self.device = DeviceSpec.from_dict(doc["device"])
        self.reports = {side: Report(Record.from_dict(doc["records"][side]), self.device) for side in SIDES}

    @classmethod
    def of(cls, eager: Report, compiled: Report, device: DeviceSpec, conditions: dict, events_s: dict,
           clean_s: dict) -> "Comparison":
        """The comparison of two timed reports of the same stages."""
        return cls({"schema": SCHEMA, "created": compiled.record.created, "torch": compiled.record.torch,
                    "device": device.to_dict(), "conditions": conditions, "events_s": events_s, "clean_s": clean_s,
                    "records": {"eager": eager.record.to_dict(), "compiled": compiled.record.to_dict()}})

    # ---------------------------------------------------------------- derived
    @cached_property
    def data(self) -> dict:
        names = self.doc["conditions"]["stages"]
        reps = self.reports
        calls = {side: _stage_calls(reps[side]) for side in SIDES}
        for name in names:
            missing = [side for side in SIDES if name not in calls[side]]
            if missing:
                raise GraphMFUError(f"compare: stage {name!r} ran on "
                                    f"{'no side' if len(missing) == 2 else 'the ' + SIDES[1 - SIDES.index(missing[0])] + ' side only'}; "
                                    f"both sides must run the same stages")
        mods = {side: _module_rows(reps[side], names) for side in SIDES}
        stages = []
        for name in names:
            sides = {}
            for side in SIDES:
                row = next(s for s in reps[side].stages if s["name"] == name)
                sides[side] = _stage_side(row, mods[side].get((name, ""), {}), self.doc["events_s"][side].get(name),
                                          self.doc["clean_s"][side].get(name))
            e, c = sides["eager"], sides["compiled"]
            stages.append({"name": name, "eager": e, "compiled": c, "speedup": rate(e["span_s"], c["span_s"]),
                           "speedup_events": rate(e["event_s"], c["event_s"]) if c["event_s"] else None,
                           "speedup_clean": rate(e["clean_s"], c["clean_s"]) if c["clean_s"] else None,
                           "flops_match": _match(e["flops"], c["flops"]), "bytes_saved": e["bytes"] - c["bytes"]})
        modules = []
        keys = set(mods["eager"]) | set(mods["compiled"])
        for st, mod in sorted(keys, key=lambda k: (names.index(k[0]), k[1].split(".") if k[1] else [])):
            e, c = mods["eager"].get((st, mod), _empty_side()), mods["compiled"].get((st, mod), _empty_side())
            modules.append({"stage": st, "module": mod, "depth": len(mod.split(".")) if mod else 0, "eager": e,
                            "compiled": c, "speedup": rate(e["time_s"], c["time_s"]),
                            "flops_match": _match(e["flops"], c["flops"]), "bytes_saved": e["bytes"] - c["bytes"]})
        cov = {}
        for side in SIDES:
            rc = reps[side].coverage()
            cov[side] = {"time_attributed": rc.get("time_attributed", 0.0),
                         "unattributed_kernels": rc.get("unattributed_kernels", []), "unknown_ops": rc["unknown_ops"],
                         "graphs_failed": rc["graphs_failed"]}
        cov["eager"]["ops_recorded"] = sum(len(g.nodes) for g in reps["eager"].record.graphs)
        return {"schema": SCHEMA, "created": self.doc["created"], "torch": self.doc["torch"],
                "device": self.doc["device"], "conditions": self.doc["conditions"], "stages": stages,
                "modules": modules, "slower": self._slower(modules, calls),
                "kernels": {side: reps[side].kernels for side in SIDES}, "coverage": cov,
                "notes": [*reps["eager"].data["notes"], *reps["compiled"].data["notes"]]}

    def _slower(self, modules, calls, top: int = 5) -> list[dict]:
        """Every (stage, module) where compiled takes longer per iteration, with the compiled kernels in
        it and the eager ops they replaced (same module subtree, same ATen op as one of their nodes)."""
        crep, erep = self.reports["compiled"], self.reports["eager"]
        node_op = {(r["graph"], r["name"]): (r["op"], r["module"]) for r in crep.nodes}
        out = []
        for m in modules:
            e, c = m["eager"], m["compiled"]
            if not (c["time_s"] > e["time_s"] > 0):
                continue
            st, mod = m["stage"], m["module"]
            ck = sorted((k for k in crep.kernels if top_stage(k["stage"]) == st and _in(k["module"], mod)),
                        key=lambda k: -k["time_s"])[:top]
            ek_all = [k for k in erep.kernels if top_stage(k["stage"]) == st and _in(k["module"], mod)]
            n_c, n_e = calls["compiled"].get(st) or 1, calls["eager"].get(st) or 1
            rows = []
            for k in ck:
                ops = {(_base_op(node_op[(k["graph"], n)][0]), node_op[(k["graph"], n)][1])
                       for n in k["nodes"] if (k["graph"], n) in node_op}
                replaced = [x for x in ek_all if (_base_op(x["op"]), x["module"]) in ops]
                rows.append({"kernel": k["name"], "module": k["module"], "bound": k["bound"],
                             "time_s": k["time_s"] / n_c, "mfu": k["mfu"], "mbu": k["mbu"], "sol": k["sol"],
                             "replaces": [{"op": x["op"], "module": x["module"], "gpu_kernels": x["gpu_kernels"],
                                           "time_s": x["time_s"] / n_e, "mfu": x["mfu"], "mbu": x["mbu"],
                                           "sol": x["sol"]} for x in replaced],
                             "replaced_time_s": sum(x["time_s"] for x in replaced) / n_e})
            out.append({"stage": st, "module": mod, "depth": m["depth"], "eager_time_s": e["time_s"],
                        "compiled_time_s": c["time_s"], "slowdown": c["time_s"] / e["time_s"], "kernels": rows})
        return sorted(out, key=lambda r: -(r["compiled_time_s"] - r["eager_time_s"]))

    def on(self, device) -> "Comparison":
        """The same two records placed on another device's roofline."""
        from graphmfu.hardware import get_device

        return Comparison({**self.doc, "device": get_device(device).to_dict()})

    @property
    def stages(self) -> list[dict]:
        return self.data["stages"]

    def modules(self, depth: int | None = None, stage: str | None = None) -> list[dict]:
        return [m for m in self.data["modules"] if (depth is None or m["depth"] <= depth)
                and (stage is None or m["stage"] == stage)]

    @property
    def slower(self) -> list[dict]:
        return self.data["slower"]

    def coverage(self) -> dict:
        return self.data["coverage"]

    # ---------------------------------------------------------------- roofline, frames
    def roofline_view(self, by: str = "module", stage: str | None = None, color: str | None = None,
                      depth: int | None = 2, top: int = 5) -> dict:
        """Eager → compiled per module on one roofline: for each module of the partition at ``depth`` (rows
        at that depth, and shallower modules with no children), an eager point (hollow) and a compiled point
        with an arrow between them; per-iteration numbers of the module table (intensity = all FLOPs /
        bytes, y = all FLOPs / time).  The ``top`` modules by compiled time are labelled."""
        if by != "module":
            raise GraphMFUError(f"Comparison.plot_roofline(by={by!r}): a comparison is drawn per module (by='module')")
        if color not in (None, "module", "stage"):
            raise GraphMFUError(f"plot_roofline(color={color!r}): use 'module' or 'stage'")
        names = self.doc["conditions"]["stages"]
        if stage is not None and stage not in names:
            raise GraphMFUError(f"plot_roofline(stage={stage!r}): no such stage; stages: {', '.join(names)}")
        rows = [m for m in self.data["modules"] if stage is None or m["stage"] == stage]
        if color is None:
            color = "stage" if len({m["stage"] for m in rows}) > 1 else "module"
        paths = {(m["stage"], m["module"]) for m in rows}

        def leaf(m):  # no child module in the same stage
            return not any(st == m["stage"] and p.startswith(m["module"] + ".") for st, p in paths) if m["module"] \
                else len(paths) == 1
        keep = [m for m in rows if m["module"] and (m["depth"] == depth or (depth is None or m["depth"] < depth)
                                                     and leaf(m))] if depth != 0 else [m for m in rows if not m["module"]]
        points, arrows, compiled = [], [], []
        for m in keep:
            grp = m["stage"] if color == "stage" else (m["module"].split(".")[0] if m["module"] else "(root)")
            pair = []
            for side in SIDES:
                r = m[side]
                p = roofline_point({**r, "module": m["module"], "stage": m["stage"]}, self.device,
                                   f"{m['module'] or '(root)'} [{m['stage']}] {side}", grp)
                p.update(mfu=r["mfu"], mbu=r["mbu"], sol=r["sol"], side=side)  # the module table's numbers
                ok = p["intensity"] is not None and p["tflops"] and p["time_s"] > 0
                pair.append(len(points) if ok else None)
                if ok:
                    points.append(p)
            if None not in pair:
                arrows.append(tuple(pair))
            if pair[1] is not None:
                compiled.append(pair[1])
        labelled = sorted(compiled, key=lambda i: -points[i]["time_s"])[:top]
        nodes = [n for side in SIDES for n in self.reports[side].nodes]
        matrix = {dt for n in nodes for dt, f in n.get("flops_by_dtype", {}).items() if f}
        vector = {dt for n in nodes for dt, f in n.get("vector_flops_by_dtype", {}).items() if f} or {"fp32"}
        drawn = {i for a in arrows for i in a}
        no_flops = [m for m in keep if not (m["compiled"]["flops"] + m["compiled"]["vector_flops"])
                    and m["compiled"]["time_s"] > 0]
        return {"by": "module", "stage": stage, "color": color, "measured": True, "device": self.device.name,
                "dram_gbps": self.device.dram_gbps, "roofs": roofs(self.device, matrix, vector), "points": points,
                "arrows": arrows, "labelled": labelled, "label_by": "largest compiled time", "unpaired": len(points) - len(drawn),
                "left_out": {"no_flops": {"count": len(no_flops), "time_s": sum(m["compiled"]["time_s"]
                                                                                for m in no_flops)},
                             "no_bytes": {"count": 0, "time_s": 0.0}}}

    def plot_roofline(self, path=None, by: str = "module", stage: str | None = None, color: str | None = None,
                      depth: int | None = 2, top: int = 5, title: str | None = None):
        """Eager → compiled per module on a roofline (``roofline_view``); ``path`` as ``Report.plot_roofline``."""
        from graphmfu.render.roofline import plot

        return plot(self.roofline_view(by, stage, color, depth, top), path, title)

    def to_pandas(self, table: str | None = None):
        """A table of ``table_rows`` (stages, modules, slower, kernels.eager, kernels.compiled) as a DataFrame,
        the eager/compiled sides as dotted columns (``eager.time_s``)."""
        from graphmfu.render import frame

        return frame(self.table_rows(table))

    # ---------------------------------------------------------------- tables
    def _stage_section(self) -> Section:
        rows = []
        for s in self.stages:
            e, c = s["eager"], s["compiled"]
            rows.append([s["name"], ms(e["span_s"]), ms(c["span_s"]), _x(s["speedup"]), _x(s["speedup_clean"]),
                         f"{e['kernels']:.0f} / {c['kernels']:.0f}",
                         num(c["flops"]) + ("" if s["flops_match"] else f" (eager {num(e['flops'])}!)"),
                         f"{num(e['bytes'], 'B')} / {num(c['bytes'], 'B')}", _pair(e["mfu"], c["mfu"]),
                         _pair(e["mbu"], c["mbu"]), _pair(e["idle_share"], c["idle_share"]),
                         f"{ms(e['event_s'])} / {ms(c['event_s'])}"])
        return Section("Stages — per stage (eager / compiled)",
                       ["stage", "eager ms", "compiled ms", "speedup", "speedup (no profiler)", "kernels e/c",
                        "matrix FLOPs", "bytes e/c", "MFU % e/c", "MBU % e/c", "idle % e/c", "events ms e/c"], rows)

    def _module_section(self, depth: int | None = 2, stage: str | None = None) -> Section:
        rows = []
        for m in self.modules(depth, stage):
            e, c = m["eager"], m["compiled"]
            rows.append([m["stage"], "  " * m["depth"] + (m["module"] or "(root)"), ms(e["time_s"]),
                         ms(c["time_s"]), _x(m["speedup"]), f"{e['kernels']:.0f} / {c['kernels']:.0f}",
                         num(c["flops"]) + ("" if m["flops_match"] else f" (eager {num(e['flops'])}!)"),
                         f"{num(e['bytes'], 'B')} / {num(c['bytes'], 'B')}", _pair(e["mfu"], c["mfu"]),
                         _pair(e["mbu"], c["mbu"])])
        return Section(f"per module (depth {depth})",
                       ["stage", "module", "eager ms", "compiled ms", "speedup", "kernels e/c", "matrix FLOPs",
                        "bytes e/c", "MFU % e/c", "MBU % e/c"], rows)

    def _kernel_section(self, side: str, top: int | None = 10) -> Section:
        if side not in SIDES:
            raise GraphMFUError(f"kernel_table(side={side!r}): use 'eager' or 'compiled'")
        calls = {s["name"]: s[side]["calls"] or 1 for s in self.stages}
        ks = sorted(self.data["kernels"][side], key=lambda k: -k["time_s"])
        rows = []
        for k in ks[:top] if top else ks:
            name = k["name"] if side == "compiled" else f"{k['op']} ({', '.join(k['gpu_kernels'])})"
            rows.append([name[:60], k["stage"] or "-", k["module"] or "(root)",
                         ms(k["time_s"] / calls.get(top_stage(k["stage"]), 1)), num(k["flops"]), num(k["bytes"], "B"),
                         pct(k["mfu"]), pct(k["mbu"]), pct(k["sol"]), k["bound"]])
        return Section(f"top {top} {side} kernels",
                       ["kernel" if side == "compiled" else "op (kernels)", "stage", "module", "ms/iter",
                        "flops (all iters)", "bytes (all iters)", "MFU %", "MBU %", "SOL %", "bound"], rows)

    def _slower_section(self, depth: int | None = None) -> Section:
        rows = []
        for s in self.slower:
            if depth is not None and s["depth"] > depth:
                continue
            rows.append([s["stage"], s["module"] or "(root)", ms(s["eager_time_s"]), ms(s["compiled_time_s"]),
                         f"{s['slowdown']:.2f}x", "", "", ""])
            for k in s["kernels"]:
                rep = ", ".join(f"{x['op']} {ms(x['time_s'])} ms MBU {pct(x['mbu'])} MFU {pct(x['mfu'])}"
                                for x in k["replaces"][:3]) or "-"
                rows.append(["", "  " + k["kernel"][:50], "", ms(k["time_s"]), k["bound"],
                             f"{pct(k['mfu'])} / {pct(k['mbu'])}", ms(k["replaced_time_s"]), rep[:90]])
        return Section("modules where compiled is slower",
                       ["stage", "module / compiled kernel", "eager ms", "compiled ms", "slower / bound",
                        "MFU/MBU % (compiled)", "replaced eager ms", "eager ops replaced (MBU, MFU %)"], rows)

    def stage_table(self, fmt: str = "simple") -> str:
        return render.tabulate(self._stage_section(), fmt)

    def module_table(self, depth: int | None = 2, stage: str | None = None, fmt: str = "simple") -> str:
        return render.tabulate(self._module_section(depth, stage), fmt)

    def kernel_table(self, side: str, top: int | None = 10, fmt: str = "simple") -> str:
        return render.tabulate(self._kernel_section(side, top), fmt)

    def slower_table(self, depth: int | None = None, fmt: str = "simple") -> str:
        return render.tabulate(self._slower_section(depth), fmt)

    def coverage_line(self) -> str:
        c = self.coverage()
        out = []
        for side in SIDES:
            u = c[side]["unattributed_kernels"]
            out.append(f"{side}: {c[side]['time_attributed'] * 100:.2f}% of kernel time attributed"
                       + (f" ({len(u)} unattributed kernel name(s))" if u else "")
                       + (f"; no rule for {', '.join(x['op'] for x in c[side]['unknown_ops'])}"
                          if c[side]["unknown_ops"] else ""))
        return "coverage — " + "; ".join(out)

    def _header(self) -> str:
        d, cond = self.data["device"], self.data["conditions"]
        return (f"graphmfu compare — {d['name']}, torch {self.data['torch']}; {cond['iters']} profiled iterations "
                f"after {cond['warmup']} warm-up, same profiler ({cond['profiler']}) on both sides; compiled mode "
                f"{cond['mode'] or 'default'}; times per iteration")

    def sections(self, depth: int | None = 2, top: int = 10) -> list[Section]:
        """Everything the text and Markdown renderers show, in order."""
        out = [Section(lines=[self._header()]), self._stage_section(), self._module_section(depth)]
        out += [self._kernel_section(side, top) for side in SIDES]
        out.append(self._slower_section(depth) if self.slower else Section(lines=["no module is slower compiled"]))
        flagged = [f"{side}: {line}" for side in SIDES for line in self.reports[side].data.get("flagged", [])]
        legend = ["* above 100%:", *flagged] if flagged else []
        return out + [Section(lines=[self.coverage_line()] + [f"note: {n}" for n in self.data["notes"]] + legend)]

    def table(self, depth: int | None = 2, top: int = 10) -> str:
        return render.renderers()[".txt"].render(self, depth=depth, top=top)

    def markdown(self, depth: int | None = 2, top: int = 10) -> str:
        return render.renderers()[".md"].render(self, depth=depth, top=top)

    def __str__(self) -> str:
        return self.table()

    def table_rows(self, name: str | None = None) -> list[dict]:
        """A derived table by name: stages (default), modules, slower, kernels.eager, kernels.compiled."""
        name = name or "stages"
        if name.startswith("kernels.") and name.split(".", 1)[1] in SIDES:
            return self.data["kernels"][name.split(".", 1)[1]]
        if name not in ("stages", "modules", "slower"):
            raise GraphMFUError(f"no table {name!r} in a comparison; use stages, modules, slower, kernels.eager or "
                                f"kernels.compiled")
        return self.data[name]

    def csv_fields(self, name: str | None = None) -> tuple:
        return ()

    # ---------------------------------------------------------------- files
    def to_dict(self) -> dict:
        return {**self.data, "events_s": self.doc["events_s"], "clean_s": self.doc["clean_s"],
                "records": self.doc["records"]}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1, default=str)

    def save(self, path, **options) -> Path:
        """``.json`` (the document), ``.md`` (Markdown), ``.txt`` (the text tables), ``.csv`` (one table)."""
        return render.write(self, path, **options)

    @classmethod
    def load(cls, path) -> "Comparison":
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, ValueError) as e:
            raise GraphMFUError(f"cannot read comparison {path}: {e}; pass a JSON file written by Comparison.save()") from None
        return cls(data)
