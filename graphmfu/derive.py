"""Views: every table a report shows, derived from a record and a device.

``views(record, device)`` returns the derived document (``docs/report-schema.md``): node rows placed
on the roofline, totals, the module tree, the kernel map, and — when the record has timing — kernel
rows with MFU/MBU/SOL, module times and stage rows.  Nothing here is stored: a saved report is its
record plus the device, and ``Report.on(other_device)`` re-derives every number.

One module aggregation (``module_tree``/``by_depth``) serves nodes, kernels, module times, stages and
the comparison; one kernel-row derivation serves compiled graphs and eager recordings; the
utilisation formulas are ``roofline.utilisation``.
"""
from __future__ import annotations

import math
from collections import defaultdict
from typing import Callable, Iterable

from graphmfu.cost import REGISTRY, Cost, ensure_builtin_rules
from graphmfu.hardware import DeviceSpec
from graphmfu.join import FOREIGN
from graphmfu.record import GraphRecord, KernelRecord, OpRecord, Record
from graphmfu.roofline import matrix_time_s, place, rate, roofs, utilisation

SCHEMA = "graphmfu.report/1"
_SUMS = ("flops", "flops_dense", "vector_flops", "bytes_read", "bytes_written", "t_min_s",
         "t_compute_s", "t_memory_s")


# --------------------------------------------------------------------------- module tree


def module_tree(rows: list[dict], summarise: Callable[[list], dict], key: str = "module") -> list[dict]:
    """One row per module path prefix (inclusive: a row counts in each of its ancestors)."""
    groups: dict[str, list] = defaultdict(list)
    for r in rows:
        parts = r[key].split(".") if r[key] else []
        for d in range(len(parts) + 1):
            groups[".".join(parts[:d])].append(r)
    return [{"module": path, "depth": len(path.split(".")) if path else 0, **summarise(groups[path])}
            for path in sorted(groups, key=lambda p: p.split(".") if p else [])]


def by_depth(rows: list[dict], depth: int | None) -> dict[str, list]:
    """Rows grouped by module path cut to ``depth`` components (each row once)."""
    groups: dict[str, list] = defaultdict(list)
    for r in rows:
        parts = r["module"].split(".") if r["module"] else []
        groups[".".join(parts if depth is None else parts[:depth])].append(r)
    return groups


# --------------------------------------------------------------------------- nodes


def node_row(rec: OpRecord, dev: DeviceSpec) -> dict:
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
    if rec.flags:
        row["flags"] = list(rec.flags)
    return row


def node_sum(rows: Iterable[dict]) -> dict:
    """Totals over node rows; recomputed forward work (checkpointing) is HFU: ``flops_recompute``."""
    tot = {k: 0 for k in _SUMS}
    tot["flops_recompute"] = 0
    n = mem = 0
    for r in rows:
        n += 1
        for k in _SUMS:
            if r.get("recompute") and k in ("flops", "flops_dense", "vector_flops"):
                continue
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


# --------------------------------------------------------------------------- kernels


def kernel_static(k: KernelRecord, dev: DeviceSpec) -> dict:
    """A kernel's cost placed on the roofline (one call)."""
    p = place(k.cost, dev)
    return {"flops": k.cost.flops, "flops_dense": k.cost.flops_dense, "vector_flops": k.cost.vector_flops,
            "bytes": k.cost.bytes, "t_min_s": p.t_min_s, "t_matrix_s": matrix_time_s(k.cost, dev), "bound": p.bound,
            "intensity": None if math.isinf(p.intensity) else p.intensity}


def _kernel_ops(recs: dict, k: KernelRecord) -> tuple[str, bool]:
    """(the origin op when the kernel has exactly one, whether every origin has a rule); ``recs``: the
    graph's ops by name."""
    ops = [recs[n] for n in k.nodes if n in recs]
    return (ops[0].op if len(ops) == 1 else ""), all(r.known for r in ops)


# why a utilisation can pass 100%, said wherever it does (kernel rows carry the flag names)
FLAGS = {
    "cache_resident": "MBU above 100%: the kernel's operands fit in the device's {cache} MB last-level cache, "
                      "where the kernel before it left them; unique bytes bound the traffic, not the DRAM traffic",
    "above_dram_roof": "MBU above 100% with operands larger than the cache: the device's DRAM bandwidth figure is "
                       "below what a kernel reached (re-measure it, or set GRAPHMFU_DRAM_GBPS)",
    "above_peak": "MFU above 100%: faster than the peak of its dtype; the ceiling is wrong (a measured CPU is "
                  "re-measured, then raised to the kernel's rate) or so are its FLOPs",
}


def kernel_flags(mfu, mbu, bytes_read_per_call, dev: DeviceSpec) -> list[str]:
    """Why this kernel's MFU or MBU passes 100% (names of FLAGS); empty when neither does."""
    out = []
    if mbu is not None and mbu > 1:
        fits = dev.cache_mb is not None and bytes_read_per_call <= dev.cache_mb * 1e6
        out.append("cache_resident" if fits else "above_dram_roof")
    if mfu is not None and mfu > 1:
        out.append("above_peak")
    return out


def observed_rates(record: Record, cache_mb: float | None, min_time_s: float = 20e-6) -> dict:
    """The best rates measured kernels reached: per matrix dtype (TFLOP/s, kernels of one dtype) and
    DRAM (GB/s, kernels whose reads exceed the cache) — what a ceiling must not be below."""
    out: dict = {}
    if record.timing is None:
        return out
    gmap = {g.id: g for g in record.graphs}
    for r in record.timing.launches:
        c = gmap[r["graph"]].kernels[r["kernel"]].cost_at(r.get("sizes"))
        t = r["time_s"]
        if t < min_time_s:
            continue
        if len(c.matrix) == 1:
            dt, f = c.matrix[0]
            out[dt] = max(out.get(dt, 0.0), f * r["calls"] / t / 1e12)
        if cache_mb is not None and c.bytes_read > cache_mb * 1e6:
            out["dram_gbps"] = max(out.get("dram_gbps", 0.0), c.bytes * r["calls"] / t / 1e9)
    return out


def kernel_row(g: GraphRecord, k: KernelRecord, launches: list[dict], dev: DeviceSpec,
               recs: dict | None = None) -> dict:
    """One measured kernel (a graph's kernel in one stage, over all its calls there — for a dynamic graph,
    each call costed at its own sizes): what it moved and computed, its time, and its utilisation."""
    calls = [(k.cost_at(r.get("sizes")), r["calls"]) for r in launches]
    cost = sum((c.map(lambda v, n=n: v * n) for c, n in calls), Cost())
    p = place(cost, dev)
    n, t = sum(r["calls"] for r in launches), sum(r["time_s"] for r in launches)
    op, known = _kernel_ops(recs if recs is not None else {r.name: r for r in g.nodes}, k)
    first = launches[0]
    row = {"name": k.name, "op": op, "graph": g.id, "phase": k.phase or g.phase, "index": k.index, "nodes": k.nodes,
           "module": k.module, "stage": first["stage"], "calls": n, "launches": sum(r["launches"] for r in launches),
           "extern": k.extern, "known": known,
           "gpu_kernels": list(dict.fromkeys(x for r in launches for x in r["gpu_kernels"])),
           "joined_by": sorted({x for r in launches for x in r["joined_by"]}),
           "flops": cost.flops, "flops_dense": cost.flops_dense, "vector_flops": cost.vector_flops,
           "bytes": cost.bytes, "bytes_inductor": None if k.bytes_inductor is None or k.sym else k.bytes_inductor * n,
           "bytes_nodes": k.bytes_nodes * n, "time_s": t, "t_min_s": p.t_min_s,
           "t_matrix_s": matrix_time_s(cost, dev), "bound": p.bound if known else "unknown",
           "intensity": None if math.isinf(p.intensity) else p.intensity,
           "achieved_tflops": rate(cost.flops, t * 1e12), "achieved_gbps": rate(cost.bytes, t * 1e9)}
    if k.sym:
        row["sizes"] = [r["sizes"] for r in launches]
    row.update(utilisation(row["t_matrix_s"], row["bytes"], row["t_min_s"], t, dev))
    row["flags"] = kernel_flags(row["mfu"], row["mbu"], max(c.bytes_read for c, _ in calls), dev)
    return row


def kernel_sum(rs: list[dict], dev: DeviceSpec) -> dict:
    """Totals, MFU, MBU, SOL and memory-bound share over measured kernel rows."""
    t = sum(r["time_s"] for r in rs)
    out = {"time_s": t, "flops": sum(r["flops"] for r in rs), "flops_dense": sum(r["flops_dense"] for r in rs),
           "vector_flops": sum(r["vector_flops"] for r in rs), "bytes": sum(r["bytes"] for r in rs),
           "t_min_s": sum(r["t_min_s"] for r in rs), "t_matrix_s": sum(r["t_matrix_s"] for r in rs),
           "kernels": len(rs), "memory_bound_share": rate(sum(r["time_s"] for r in rs if r["bound"] == "memory"), t)
           or 0.0}
    out.update(utilisation(out["t_matrix_s"], out["bytes"], out["t_min_s"], t, dev))
    return out


def in_stage(stage: str | None, name: str) -> bool:
    """Is ``stage`` the stage ``name`` or nested in it?"""
    return bool(stage) and (stage == name or stage.startswith(name + "/"))


def stage_row(measured: dict, kernels: list[dict], unattributed: list[dict], dev: DeviceSpec) -> dict:
    """A stage's measured span and busy time with the FLOPs and bytes of the kernels run in it."""
    name = measured["name"]
    a = kernel_sum([r for r in kernels if in_stage(r["stage"], name)], dev)
    span, busy = measured["span_s"], measured["busy_s"]
    u = utilisation(a["t_matrix_s"], a["bytes"], a["t_min_s"], span, dev)
    return {"name": name, "parent": name.rsplit("/", 1)[0] if "/" in name else None, "calls": measured["calls"],
            "span_s": span, "busy_s": busy, "idle_share": (1 - busy / span) if span else 0.0, "flops": a["flops"],
            "flops_dense": a["flops_dense"], "vector_flops": a["vector_flops"], "bytes": a["bytes"],
            "kernel_time_s": a["time_s"], "kernel_launches": measured["launches"], "mfu": u["mfu"],
            "mfu_busy": rate(a["t_matrix_s"], busy), "mbu": u["mbu"], "memory_bound_share": a["memory_bound_share"],
            "unattributed_s": sum(o["time_s"] for o in unattributed if in_stage(o["stage"], name)),
            "foreign_s": sum(o["time_s"] for o in unattributed if in_stage(o["stage"], name) and o["where"] == FOREIGN),
            # the host's time in the stage (CPU span) and, of it, inside graphmfu's graph calls (None: recorded before)
            "host_s": measured.get("host_s"), "host_in_graphs_s": measured.get("host_in_graphs_s")}


# --------------------------------------------------------------------------- the document


def _coverage(nodes: list[dict], failures) -> dict:
    unknown: dict[str, dict] = {}
    for r in nodes:
        if not r["known"]:
            u = unknown.setdefault(r["op"], {"op": r["op"], "count": 0, "output_bytes": 0})
            u["count"] += 1
            u["output_bytes"] += r["output_bytes"]
    cov = {"nodes_total": len(nodes), "nodes_unknown": sum(u["count"] for u in unknown.values()),
           "unknown_ops": sorted(unknown.values(), key=lambda u: -u["count"]), "graphs_failed": list(failures)}
    for name in REGISTRY.flags:
        cov[name] = sum(1 for r in nodes if name in r.get("flags", ()))
    return cov


def _flag_notes(cov: dict) -> list[str]:
    return [f.summary.format(n=cov[name]) for name, f in REGISTRY.flags.items() if cov.get(name)]


def _graph_totals(gid: int, nodes: list[dict]) -> dict:
    t = node_sum(r for r in nodes if r["graph"] == gid)
    return {k: t[k] for k in ("flops", "flops_dense", "vector_flops", "bytes_read", "bytes_written", "t_min_s",
                              "flops_recompute")}


def alternatives(graphs: list[GraphRecord]) -> dict:
    """Dynamo frame -> compile ids of its graphs, for frames compiled more than once (recompiles for other
    guards: grad mode, inference mode, shapes...).  Their graphs are alternatives, not parts of one step."""
    by_frame: dict = defaultdict(set)
    for g in graphs:
        if g.compile_id and "/" in g.compile_id and g.source == "backend":
            by_frame[_frame_of(g)].add(g.compile_id)
    return {f: sorted(a) for f, a in by_frame.items() if len(a) > 1}


def _frame_of(g: GraphRecord) -> str:
    """The code (and module) a graph was compiled from; Dynamo's frame number where that was not recorded
    (older records: two codes can share a number after a reset of Dynamo)."""
    return g.frame or f"Dynamo frame {g.compile_id.split('/', 1)[0]}"


def _alternatives(graphs: list[GraphRecord]) -> list[str]:
    out = []
    for frame, attempts in alternatives(graphs).items():
        ids = [g.id for g in graphs if g.compile_id and "/" in g.compile_id and _frame_of(g) == frame]
        where = frame.rsplit("@", 1)[0]
        out.append(f"graphs {ids} are {len(attempts)} compilations of the same code ({where}, one module: "
                   f"recompiles for other guards, e.g. grad mode or shapes): the totals add up alternatives, not "
                   f"one model's cost; read them per graph (Report.by_graph(), Report.select(graphs=[...]))")
    return out


def _ahead(graphs: list[GraphRecord]) -> list[str]:
    ids = [g.id for g in graphs if g.ahead]
    if not ids:
        return []
    return [f"graph(s) {ids} are backward graphs compiled ahead with their forward (dynamic shapes), before any "
            f"backward ran: the static totals include them whether or not a backward ever runs (an inference-only "
            f"run: Report.select(phase='forward')); under profile() and the meter only calls that ran count"]


def _dynamic_notes(graphs: list[GraphRecord]) -> list[str]:
    out = []
    for g in graphs:
        pairs = {k: v for k, v in g.hints.items() if k.startswith("pairs_")}
        sizes = {k: v for k, v in g.hints.items() if k not in pairs}
        if sizes:
            out.append(f"graph {g.id} has dynamic shapes: its static numbers are at the compile-time hints {sizes} "
                       f"(node rows carry the formulas); measured kernels and stages are costed at each call's own "
                       f"sizes")
        if pairs:
            out.append(f"graph {g.id}: attention pairs kept by input-dependent masks are counted per call under "
                       f"profile() and the meter ({', '.join(pairs)}); its static numbers count them without "
                       f"values {pairs}")
    return out


def _merge_unattributed(rows: list[dict]) -> list[dict]:
    out: dict = {}
    for o in rows:
        m = out.setdefault((o["name"], o["where"], o["launch_op"]), {"name": o["name"], "where": o["where"],
                                                                     "launch_op": o["launch_op"], "count": 0,
                                                                     "time_s": 0.0})
        m["count"] += o["count"]
        m["time_s"] += o["time_s"]
    return sorted(out.values(), key=lambda o: -o["time_s"])


def views(record: Record, dev: DeviceSpec) -> dict:
    """The derived document of ``record`` placed on ``dev``."""
    ensure_builtin_rules()  # the flags the rule files declare
    graphs = record.graphs
    nodes = [node_row(rec, dev) for g in graphs for rec in g.nodes]
    cov = _coverage(nodes, record.failures)
    data = {
        "schema": SCHEMA, "created": record.created, "torch": record.torch, "device": dev.to_dict(),
        "totals": node_sum(nodes),
        "graphs": [{"id": g.id, "key": g.key, "phase": g.phase, "aot_id": g.aot_id, "compile_id": g.compile_id,
                    "device": g.device, "source": g.source, "nodes": len(g.nodes), "dynamic": g.dynamic,
                    "hints": g.hints, "tf32": g.tf32, **({"stage": g.stage} if g.stage else {}),
                    **_graph_totals(g.id, nodes)} for g in graphs],
        "nodes": nodes,
        "modules": module_tree(nodes, node_sum),
        "coverage": cov,
        # a static report sums every graph; a timed one counts each graph's real calls per stage
        "notes": [*record.notes, *_flag_notes(cov), *(_alternatives(graphs) if record.timing is None else []),
                  *(_ahead(graphs) if record.timing is None else []),
                  *_dynamic_notes(graphs)],
        "kernel_map": [{"graph": g.id, "index": k.index, "name": k.name, "extern": k.extern, "nodes": k.nodes,
                        "module": k.module, **kernel_static(k, dev), "bytes_inductor": k.bytes_inductor,
                        "bytes_nodes": k.bytes_nodes} for g in graphs for k in g.kernels],
    }
    t = record.timing
    if t is not None:
        gmap = {g.id: g for g in graphs}
        groups: dict = defaultdict(list)  # a kernel in a stage, over all call sizes
        for r in t.launches:
            groups[(r["graph"], r["kernel"], r["stage"])].append(r)
        recs = {gid: {r.name: r for r in gmap[gid].nodes} for gid in {gid for gid, _, _ in groups}}
        kernels = sorted((kernel_row(gmap[gid], gmap[gid].kernels[ki], rs, dev, recs[gid])
                          for (gid, ki, _), rs in groups.items()), key=lambda r: -r["time_s"])
        data["kernels"] = kernels
        data["module_times"] = module_tree(kernels, lambda rs: kernel_sum(rs, dev))
        data["stages"] = [stage_row(s, kernels, t.unattributed, dev) for s in t.stages]
        data["timing"] = {"device_kernel_time_s": t.device_kernel_time_s, "attributed_time_s": t.attributed_time_s,
                          "cuda": t.cuda, "notes": t.notes}
        cov["time_attributed"] = rate(t.attributed_time_s, t.device_kernel_time_s) or 0.0
        cov["unattributed_kernels"] = _merge_unattributed(t.unattributed)
        cov["foreign_time_s"] = t.foreign_time_s
        cov["foreign_share"] = rate(t.foreign_time_s, t.device_kernel_time_s) or 0.0
        inside = sum(o["time_s"] for o in t.unattributed if o["where"] == "inside graph")
        outside = sum(o["time_s"] for o in t.unattributed if o["where"] == "outside graphs")
        cov["time_attributed_in_graphs"] = rate(t.attributed_time_s, t.attributed_time_s + inside) or 0.0
        cov["outside_graphs_share"] = rate(outside, t.device_kernel_time_s) or 0.0
        data["notes"] += t.notes
        if cov["outside_graphs_share"] > 0.5:  # what is not ours to count comes first
            data["notes"].insert(0, f"MOST OF THE KERNEL TIME IS NOT IN COMPILED GRAPHS: {cov['outside_graphs_share']:.1%} "
                                    f"ran eagerly, outside every compiled graph (coverage.unattributed_kernels, 'outside "
                                    f"graphs'): its FLOPs are not counted; the graphs' own kernel time is "
                                    f"{cov['time_attributed_in_graphs']:.1%} attributed")
        if t.foreign_time_s:
            data["notes"].insert(0, foreign_note(cov["foreign_share"], t.foreign_time_s, t.foreign_sites))
        flagged = {f for k in kernels for f in k["flags"]}  # the tables' legend: why a value passes 100%
        data["flagged"] = [f"{sum(f in k['flags'] for k in kernels)} kernel row(s) flagged {f}: "
                           + FLAGS[f].format(cache=dev.cache_mb) for f in FLAGS if f in flagged]
    return data


def likely_caller(sites: list) -> str:
    """`` (likely transformers/modeling_utils.py:4826 get_compiled_call: torch.compile with backend inductor,
    mode reduce-overhead; ...)``: the most recent torch.compile call with another backend (``Timing.foreign_sites``
    form), or ""."""
    if not sites:
        return ""
    s = sites[-1]
    more = f"; {len(sites) - 1} other such call(s)" if len(sites) > 1 else ""
    hint = ("; transformers' generate() compiles the model's forward itself with a static cache: also "
            "generate(..., compile_config=CompileConfig(backend=graphmfu.backend))" if "transformers/" in s["caller"]
            else "")
    return (f" (likely {s['caller']}: torch.compile with backend {s['backend']}"
            + (f", mode {s['mode']}" if s.get("mode") else "") + f"{more}{hint})")


def foreign_note(share: float, seconds: float, sites: list) -> str:
    """The line a report opens with when kernels ran in graphs graphmfu did not compile."""
    head = "MOST OF THE KERNEL TIME IS NOT COUNTED: " if share > 0.5 else ""
    return (f"{head}{share:.1%} of the kernel time ({seconds * 1e3:.3g} ms) ran in graphs compiled outside graphmfu"
            f"{likely_caller(sites)}: their FLOPs are not counted and their kernels are listed as '{FOREIGN}'; route "
            f"every torch.compile through graphmfu with graphmfu.capture_all() (or compile with graphmfu.backend)")


def graph_calls(kernels: list[dict]) -> dict:
    """(graph, top-level stage) -> calls of that graph in that stage (its most-called kernel's calls)."""
    out: dict = defaultdict(int)
    for k in kernels:
        key = (k["graph"], top_stage(k["stage"]))
        out[key] = max(out[key], k["calls"])
    return out


def top_stage(stage: str | None) -> str | None:
    return stage.split("/", 1)[0] if stage else None


# --------------------------------------------------------------------------- roofline plots


def roofline_point(row: dict, dev: DeviceSpec, label: str, group: str, time_s: float | None = None,
                   t_matrix_s: float | None = None) -> dict:
    """A row (kernel, module, node, stage side) as a roofline point: x = intensity (all FLOPs / bytes, as
    ``roofline.place``), y = achieved FLOP/s (all FLOPs / time), MFU/MBU/SOL from ``roofline.utilisation``.
    ``time_s`` defaults to the row's measured time; a static row is placed at its ``t_min_s``."""
    flops_all = row["flops"] + row["vector_flops"]
    nbytes = row["bytes"] if "bytes" in row else row["bytes_read"] + row["bytes_written"]
    measured = time_s is None and "time_s" in row
    t = row["time_s"] if measured else (time_s if time_s is not None else row["t_min_s"])
    if t_matrix_s is None:
        t_matrix_s = row.get("t_matrix_s")
    if t_matrix_s is None:
        t_matrix_s = sum(f / (dev.matrix_tflops(dt) * 1e12) for dt, f in row.get("flops_by_dtype", {}).items())
    t_min = row.get("t_min_s", 0.0)
    u = utilisation(t_matrix_s, nbytes, t_min, t, dev)
    return {"label": label, "group": group, "module": row.get("module", ""), "stage": row.get("stage"),
            "flops": row["flops"], "vector_flops": row["vector_flops"], "bytes": nbytes, "time_s": t,
            "t_min_s": t_min, "lost_s": max(t - t_min, 0.0), "measured": measured,
            "intensity": flops_all / nbytes if nbytes else None,
            "tflops": rate(flops_all, t * 1e12) if flops_all else None, "bound": row.get("bound"), **u}


def _cut(module: str, depth: int | None) -> str:
    parts = module.split(".") if module else []
    return ".".join(parts if depth is None else parts[:depth]) or "(root)"


def roofline_view(data: dict, dev: DeviceSpec, by: str = "kernel", stage: str | None = None,
                  color: str | None = None, depth: int | None = 2, top: int = 5) -> dict:
    """What a roofline plot of a derived document draws: ``roofs`` (compute units present, the DRAM roof),
    ``points`` (measured kernels or modules at their time; nodes, and every row of a static report, at
    t_min), ``labelled`` (indices of the top offenders: most time lost to the roofline, or most t_min when
    static) and ``left_out`` (rows with no FLOPs or no bytes, which a FLOP/byte plot cannot place)."""
    from graphmfu.errors import GraphMFUError

    if by not in ("kernel", "node", "module"):
        raise GraphMFUError(f"plot_roofline(by={by!r}): use 'kernel', 'node' or 'module'")
    if color not in (None, "module", "stage"):
        raise GraphMFUError(f"plot_roofline(color={color!r}): use 'module' or 'stage'")
    timed = bool(data.get("kernels"))
    stages = sorted({s["name"] for s in data.get("stages", [])})
    if stage is not None and stage not in stages:
        raise GraphMFUError(f"plot_roofline(stage={stage!r}): no such stage in this report"
                            + (f"; stages: {', '.join(stages)}" if stages else " (it has no timing: profile it)"))
    if by == "kernel" and not timed:
        by = "node"  # a static report has no measured kernels: its nodes, at t_min
    kernels = [k for k in data.get("kernels", []) if stage is None or in_stage(k["stage"], stage)]
    if color is None:
        color = "stage" if by == "kernel" and len({k["stage"] for k in kernels}) > 1 else "module"
    rows = []
    if by == "kernel":
        for k in kernels:
            g = (k["stage"] or "(no stage)") if color == "stage" else _cut(k["module"], 1)
            rows.append(roofline_point(k, dev, f"{k['name']} [{k['module'] or 'root'}]", g))
    elif by == "module" and timed:
        groups = by_depth(kernels, depth)
        for mod, ks in groups.items():
            r = {**kernel_sum(ks, dev), "module": mod}
            rows.append(roofline_point(r, dev, mod or "(root)", stage or "all stages" if color == "stage"
                                       else _cut(mod, 1)))
    elif by == "module":
        for mod, ns in by_depth(data["nodes"], depth).items():
            r = {**node_sum(ns), "module": mod}
            r["flops_by_dtype"] = _dtype_sum(ns)
            rows.append(roofline_point(r, dev, mod or "(root)", _cut(mod, 1)))
    else:
        for n in data["nodes"]:
            if n.get("recompute"):
                continue
            g = (n.get("stage") or n["phase"]) if color == "stage" else _cut(n["module"], 1)
            rows.append(roofline_point(n, dev, f"{n['name']} {n['op']} [{n['module'] or 'root'}]", g,
                                       time_s=n["t_min_s"]))
    points = [r for r in rows if r["intensity"] is not None and r["tflops"] and r["time_s"] > 0]
    no_flops = [r for r in rows if not (r["flops"] + r["vector_flops"]) and r["time_s"] > 0]
    no_bytes = [r for r in rows if r["intensity"] is None and (r["flops"] + r["vector_flops"])]
    key = (lambda r: r["lost_s"]) if any(r["measured"] for r in points) else (lambda r: r["time_s"])
    order = sorted(range(len(points)), key=lambda i: -key(points[i]))
    matrix = {dt for n in data["nodes"] for dt, f in n.get("flops_by_dtype", {}).items() if f}
    vector = {dt for n in data["nodes"] for dt, f in n.get("vector_flops_by_dtype", {}).items() if f} or {"fp32"}
    return {"by": by, "stage": stage, "color": color, "measured": any(r["measured"] for r in points),
            "device": dev.name, "dram_gbps": dev.dram_gbps, "roofs": roofs(dev, matrix, vector),
            "points": points, "labelled": order[:top],
            "left_out": {"no_flops": {"count": len(no_flops), "time_s": sum(r["time_s"] for r in no_flops)},
                         "no_bytes": {"count": len(no_bytes), "time_s": sum(r["time_s"] for r in no_bytes)}}}


def _dtype_sum(nodes: list[dict]) -> dict:
    out: dict = defaultdict(float)
    for n in nodes:
        if not n.get("recompute"):
            for dt, f in n.get("flops_by_dtype", {}).items():
                out[dt] += f
    return dict(out)


__all__ = ["views", "module_tree", "by_depth", "node_row", "node_sum", "kernel_row", "kernel_sum", "kernel_static",
           "stage_row", "in_stage", "graph_calls", "top_stage", "SCHEMA", "FLAGS", "kernel_flags", "observed_rates",
           "roofline_point", "roofline_view"]
