"""The Comparison: eager against compiled, one JSON document (schema ``graphmfu.compare/1``,
``docs/report-schema.md``) and the views derived from it (tables, Markdown).

Everything is **per iteration** of a stage (totals over the timed iterations / stage calls).
Per side and per stage (top-level stage names; nested stages roll up into them):

* ``span_s``: device span (first kernel start to last kernel end) per call, from the profile;
  ``event_s``: ``torch.cuda.Event`` time of the same calls (wall clock on CPU) — the cross-check;
  ``clean_s``: event time of further calls with no profiler attached;
* ``busy_s``, ``idle_share`` (launch gaps), ``kernels`` (launches per call), MFU/MBU over the span,
  ``memory_bound_share``;
* ``flops``/``flops_dense``/``vector_flops``: static, eager = the recorded ops of one call,
  compiled = the graph nodes times their calls; ``bytes``: eager = sum over ops, compiled = fused
  kernels' boundary bytes (``bytes_saved`` = the fusion saving).

Per module (a tree: each row includes its descendants; rows at one depth never double count):
the same quantities from each side's kernel rows (a fused kernel spanning modules sits at their
common ancestor, so deep rows of the compiled side can be lighter than the eager side's).
``flops_match`` is False when matrix FLOPs differ by more than 1e-6 (relative): a difference is
flagged, never hidden.  ``slower`` lists every module where compiled takes longer, with the
compiled kernels responsible and the eager ops (same module subtree, same ATen op) they replaced.
"""
from __future__ import annotations

import json
import time
from collections import defaultdict
from pathlib import Path

import torch

from graphmfu.errors import GraphMFUError
from graphmfu.report import _fmt, _pct, _rate

SCHEMA = "graphmfu.compare/1"
_FIELDS = ("flops", "flops_dense", "vector_flops", "bytes")


def _top(stage: str | None) -> str | None:
    return stage.split("/", 1)[0] if stage else None


def _prefixes(module: str):
    parts = module.split(".") if module else []
    for d in range(len(parts) + 1):
        yield ".".join(parts[:d])


def _base_op(op: str) -> str:
    return op.rsplit(".", 1)[0] if op.count(".") >= 2 else op


def _zero() -> dict:
    return {"time_s": 0.0, "kernels": 0, "t_matrix_s": 0.0, "mem_time_s": 0.0, "flops": 0, "flops_dense": 0,
            "vector_flops": 0, "bytes": 0, "k_bytes": 0}


def _modules(static_items, kernel_rows, stage_calls: dict, dram_gbps: float) -> dict:
    """(stage, module prefix) -> per-iteration sums; static items give FLOPs/bytes, kernel rows time."""
    acc: dict = defaultdict(_zero)
    for it in static_items:  # (stage, module, {field: value}) already per iteration
        st, mod, vals = it
        for p in _prefixes(mod):
            a = acc[(st, p)]
            for f in _FIELDS:
                a[f] += vals[f]
    for r in kernel_rows:
        st = _top(r["stage"])
        n = stage_calls.get(st) or 1
        for p in _prefixes(r["module"]):
            a = acc[(st, p)]
            a["time_s"] += r["time_s"] / n
            a["kernels"] += r["launches"] / n
            a["t_matrix_s"] += r["t_matrix_s"] / n
            a["k_bytes"] += r["bytes"] / n
            if r["bound"] == "memory":
                a["mem_time_s"] += r["time_s"] / n
    out = {}
    for key, a in acc.items():
        t = a["time_s"]
        out[key] = {"time_s": t, "kernels": a["kernels"], "flops": a["flops"], "flops_dense": a["flops_dense"],
                    "vector_flops": a["vector_flops"], "bytes": a["bytes"], "mfu": _rate(a["t_matrix_s"], t),
                    "mbu": _rate(a["k_bytes"] / (dram_gbps * 1e9), t),
                    "memory_bound_share": _rate(a["mem_time_s"], t) or 0.0}
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
            "span_vs_event": _rate(span, events_s) if events_s else None}


def _match(e: float, c: float) -> bool:
    return abs(e - c) <= 1e-6 * max(abs(e), abs(c), 1)


def build(stage_names: list[str], eager: dict, compiled: dict, dev, conditions: dict) -> "Comparison":
    crep = compiled["report"].data
    e_calls = {s["name"]: s["calls"] for s in eager["stages"] if "/" not in s["name"]}
    c_calls = {s["name"]: s["calls"] for s in crep.get("stages", []) if "/" not in s["name"]}
    for name in stage_names:
        if name not in e_calls or name not in c_calls:
            raise GraphMFUError(f"compare: stage {name!r} ran on {'no side' if name not in e_calls and name not in c_calls else ('the compiled side only' if name not in e_calls else 'the eager side only')}; "
                                f"both sides must run the same stages")

    # static FLOPs/bytes per iteration: eager = recorded ops (one call each); compiled = nodes x calls
    e_static = [(op.stage, op.module, {"flops": op.cost.flops, "flops_dense": op.cost.flops_dense,
                                       "vector_flops": op.cost.vector_flops, "bytes": op.cost.bytes})
                for op in eager["ops"] if op.cost is not None]
    calls_gs: dict = defaultdict(int)
    for k in crep.get("kernels", []):
        key = (k["graph"], _top(k["stage"]))
        calls_gs[key] = max(calls_gs[key], k["calls"])
    c_static = []
    for (gid, st), n in calls_gs.items():
        if st is None:
            continue
        per = n / (c_calls.get(st) or 1)
        for r in crep["nodes"]:
            if r["graph"] == gid and not r.get("recompute"):
                c_static.append((st, r["module"], {"flops": r["flops"] * per, "flops_dense": r["flops_dense"] * per,
                                                   "vector_flops": r["vector_flops"] * per, "bytes": 0}))
        for k in crep["kernel_map"]:
            if k["graph"] == gid:
                c_static.append((st, k["module"], {"flops": 0, "flops_dense": 0, "vector_flops": 0,
                                                   "bytes": k["bytes"] * per}))
    e_mod = _modules(e_static, eager["kernels"], e_calls, dev.dram_gbps)
    c_mod = _modules(c_static, crep.get("kernels", []), c_calls, dev.dram_gbps)

    stages = []
    for name in stage_names:
        er = next(s for s in eager["stages"] if s["name"] == name)
        cr = next(s for s in crep["stages"] if s["name"] == name)
        es = _stage_side(er, e_mod.get((name, ""), {}), eager["events_s"].get(name), eager["clean_s"].get(name))
        cs = _stage_side(cr, c_mod.get((name, ""), {}), compiled["events_s"].get(name), compiled["clean_s"].get(name))
        stages.append({"name": name, "eager": es, "compiled": cs,
                       "speedup": _rate(es["span_s"], cs["span_s"]),
                       "speedup_events": _rate(es["event_s"], cs["event_s"]) if cs["event_s"] else None,
                       "speedup_clean": _rate(es["clean_s"], cs["clean_s"]) if cs["clean_s"] else None,
                       "flops_match": _match(es["flops"], cs["flops"]),
                       "bytes_saved": es["bytes"] - cs["bytes"]})

    modules = []
    for key in sorted(set(e_mod) | set(c_mod), key=lambda k: (stage_names.index(k[0]) if k[0] in stage_names
                                                               else len(stage_names), k[1].split(".") if k[1] else [])):
        st, mod = key
        if st not in stage_names:
            continue
        e, c = e_mod.get(key, _empty_side()), c_mod.get(key, _empty_side())
        modules.append({"stage": st, "module": mod, "depth": len(mod.split(".")) if mod else 0, "eager": e,
                        "compiled": c, "speedup": _rate(e["time_s"], c["time_s"]),
                        "flops_match": _match(e["flops"], c["flops"]), "bytes_saved": e["bytes"] - c["bytes"]})

    slower = _slower(modules, eager["kernels"], crep, e_calls, c_calls)
    ekern = [{k: v for k, v in r.items() if k != "index"} for r in eager["kernels"]]
    unknown: dict = {}
    for op in eager["ops"]:
        if op.cost is None:
            u = unknown.setdefault(op.op, {"op": op.op, "count": 0})
            u["count"] += 1
    data = {
        "schema": SCHEMA, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "torch": torch.__version__,
        "device": dev.to_dict(), "conditions": {**conditions, "stages": stage_names},
        "stages": stages, "modules": modules, "slower": slower,
        "kernels": {"eager": ekern, "compiled": crep.get("kernels", [])},
        "coverage": {
            "eager": {"time_attributed": eager["time_attributed"], "unattributed_kernels": eager["unattributed_kernels"],
                      "ops_recorded": len(eager["ops"]), "unknown_ops": sorted(unknown.values(), key=lambda u: -u["count"])},
            "compiled": {"time_attributed": crep["coverage"].get("time_attributed", 0.0),
                         "unattributed_kernels": crep["coverage"].get("unattributed_kernels", []),
                         "unknown_ops": crep["coverage"]["unknown_ops"],
                         "graphs_failed": crep["coverage"]["graphs_failed"]}},
        "notes": [*eager["notes"], *crep.get("notes", [])],
    }
    return Comparison(data)


def _empty_side() -> dict:
    return {"time_s": 0.0, "kernels": 0, "flops": 0, "flops_dense": 0, "vector_flops": 0, "bytes": 0, "mfu": None,
            "mbu": None, "memory_bound_share": 0.0}


def _in(module: str, prefix: str) -> bool:
    return not prefix or module == prefix or module.startswith(prefix + ".")


def _slower(modules, ekernels, crep, e_calls, c_calls, top: int = 5) -> list[dict]:
    """Every (stage, module) where compiled takes longer per iteration, with the compiled kernels in
    it and the eager ops they replaced (same module subtree, same ATen op as one of their nodes)."""
    node_op = {(r["graph"], r["name"]): (r["op"], r["module"]) for r in crep["nodes"]}
    out = []
    for m in modules:
        e, c = m["eager"], m["compiled"]
        if not (c["time_s"] > e["time_s"] > 0):
            continue
        st, mod = m["stage"], m["module"]
        ck = sorted((k for k in crep.get("kernels", []) if _top(k["stage"]) == st and _in(k["module"], mod)),
                    key=lambda k: -k["time_s"])[:top]
        ek_all = [k for k in ekernels if _top(k["stage"]) == st and _in(k["module"], mod)]
        rows = []
        for k in ck:
            ops = {(_base_op(node_op[(k["graph"], n)][0]), node_op[(k["graph"], n)][1])
                   for n in k["nodes"] if (k["graph"], n) in node_op}
            replaced = [x for x in ek_all if (_base_op(x["op"]), x["module"]) in ops]
            n_c, n_e = c_calls.get(st) or 1, e_calls.get(st) or 1
            rows.append({"kernel": k["name"], "module": k["module"], "bound": k["bound"],
                         "time_s": k["time_s"] / n_c, "mfu": k["mfu"], "mbu": k["mbu"], "sol": k["sol"],
                         "replaces": [{"op": x["op"], "module": x["module"], "gpu_kernels": x["gpu_kernels"],
                                       "time_s": x["time_s"] / n_e, "mfu": x["mfu"], "mbu": x["mbu"], "sol": x["sol"]}
                                      for x in replaced],
                         "replaced_time_s": sum(x["time_s"] for x in replaced) / n_e})
        out.append({"stage": st, "module": mod, "depth": m["depth"], "eager_time_s": e["time_s"],
                    "compiled_time_s": c["time_s"], "slowdown": c["time_s"] / e["time_s"], "kernels": rows})
    return sorted(out, key=lambda r: -(r["compiled_time_s"] - r["eager_time_s"]))


# --------------------------------------------------------------------------- the document


def _ms(s):
    return "-" if s is None else f"{s * 1e3:.4g}"


def _x(r):
    return "-" if r is None else f"{r:.2f}x"


def _pair(a, b, fmt=_pct):
    return f"{fmt(a)} / {fmt(b)}"


class Comparison:
    """Eager vs compiled: ``stage_table()``, ``module_table(depth)``, ``kernel_table(side)``,
    ``slower_table()``, ``table()`` (all of them), ``markdown()``, ``save()``/``load()``."""

    def __init__(self, data: dict):
        if data.get("schema") != SCHEMA:
            raise GraphMFUError(f"not a graphmfu comparison (schema {data.get('schema')!r}, expected {SCHEMA!r})")
        self.data = data

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

    # ---------------------------------------------------------------- tables
    def _tab(self, rows, headers, fmt):
        from tabulate import tabulate

        return tabulate(rows, headers=headers, tablefmt=fmt, disable_numparse=True)

    def stage_table(self, fmt: str = "simple") -> str:
        rows = []
        for s in self.stages:
            e, c = s["eager"], s["compiled"]
            rows.append([s["name"], _ms(e["span_s"]), _ms(c["span_s"]), _x(s["speedup"]), _x(s["speedup_clean"]),
                         f"{e['kernels']:.0f} / {c['kernels']:.0f}",
                         _fmt(c["flops"]) + ("" if s["flops_match"] else f" (eager {_fmt(e['flops'])}!)"),
                         f"{_fmt(e['bytes'], 'B')} / {_fmt(c['bytes'], 'B')}", _pair(e["mfu"], c["mfu"]),
                         _pair(e["mbu"], c["mbu"]), _pair(e["idle_share"], c["idle_share"]),
                         f"{_ms(e['event_s'])} / {_ms(c['event_s'])}"])
        return self._tab(rows, ["stage", "eager ms", "compiled ms", "speedup", "speedup (no profiler)",
                                "kernels e/c", "matrix FLOPs", "bytes e/c", "MFU % e/c", "MBU % e/c", "idle % e/c",
                                "events ms e/c"], fmt)

    def module_table(self, depth: int | None = 2, stage: str | None = None, fmt: str = "simple") -> str:
        rows = []
        for m in self.modules(depth, stage):
            e, c = m["eager"], m["compiled"]
            rows.append([m["stage"], "  " * m["depth"] + (m["module"] or "(root)"), _ms(e["time_s"]),
                         _ms(c["time_s"]), _x(m["speedup"]), f"{e['kernels']:.0f} / {c['kernels']:.0f}",
                         _fmt(c["flops"]) + ("" if m["flops_match"] else f" (eager {_fmt(e['flops'])}!)"),
                         f"{_fmt(e['bytes'], 'B')} / {_fmt(c['bytes'], 'B')}", _pair(e["mfu"], c["mfu"]),
                         _pair(e["mbu"], c["mbu"])])
        return self._tab(rows, ["stage", "module", "eager ms", "compiled ms", "speedup", "kernels e/c",
                                "matrix FLOPs", "bytes e/c", "MFU % e/c", "MBU % e/c"], fmt)

    def kernel_table(self, side: str, top: int | None = 10, fmt: str = "simple") -> str:
        if side not in ("eager", "compiled"):
            raise GraphMFUError(f"kernel_table(side={side!r}): use 'eager' or 'compiled'")
        calls = {s["name"]: s[side]["calls"] or 1 for s in self.stages}
        ks = sorted(self.data["kernels"][side], key=lambda k: -k["time_s"])
        rows = []
        for k in ks[:top] if top else ks:
            name = k["name"] if side == "compiled" else f"{k['op']} ({', '.join(k['gpu_kernels'])})"
            rows.append([name[:60], k["stage"] or "-", k["module"] or "(root)",
                         _ms(k["time_s"] / calls.get(_top(k["stage"]), 1)), _fmt(k["flops"]), _fmt(k["bytes"], "B"),
                         _pct(k["mfu"]), _pct(k["mbu"]), _pct(k["sol"]), k["bound"]])
        return self._tab(rows, ["kernel" if side == "compiled" else "op (kernels)", "stage", "module", "ms/iter",
                                "flops (all iters)", "bytes (all iters)", "MFU %", "MBU %", "SOL %", "bound"], fmt)

    def slower_table(self, depth: int | None = None, fmt: str = "simple") -> str:
        rows = []
        for s in self.slower:
            if depth is not None and s["depth"] > depth:
                continue
            rows.append([s["stage"], s["module"] or "(root)", _ms(s["eager_time_s"]), _ms(s["compiled_time_s"]),
                         f"{s['slowdown']:.2f}x", "", "", ""])
            for k in s["kernels"]:
                rep = ", ".join(f"{x['op']} {_ms(x['time_s'])} ms MBU {_pct(x['mbu'])} MFU {_pct(x['mfu'])}"
                                for x in k["replaces"][:3]) or "-"
                rows.append(["", "  " + k["kernel"][:50], "", _ms(k["time_s"]), k["bound"],
                             f"{_pct(k['mfu'])} / {_pct(k['mbu'])}", _ms(k["replaced_time_s"]), rep[:90]])
        return self._tab(rows, ["stage", "module / compiled kernel", "eager ms", "compiled ms", "slower / bound",
                                "MFU/MBU % (compiled)", "replaced eager ms", "eager ops replaced (MBU, MFU %)"], fmt)

    def coverage_line(self) -> str:
        c = self.coverage()
        out = []
        for side in ("eager", "compiled"):
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

    def table(self, depth: int | None = 2, top: int = 10) -> str:
        parts = [self._header(), "", "per stage (eager / compiled):", self.stage_table(), "",
                 f"per module (depth {depth}):", self.module_table(depth), ""]
        for side in ("eager", "compiled"):
            parts += [f"top {top} {side} kernels:", self.kernel_table(side, top), ""]
        parts.append("modules where compiled is slower:" if self.slower else "no module is slower compiled")
        if self.slower:
            parts.append(self.slower_table(depth))
        parts += ["", self.coverage_line()] + [f"note: {n}" for n in self.data["notes"]]
        return "\n".join(parts)

    def markdown(self, depth: int | None = 2, top: int = 10) -> str:
        parts = ["# graphmfu compare", "", self._header(), "", "## Stages", "", self.stage_table("github"), "",
                 f"## Modules (depth {depth})", "", self.module_table(depth, fmt="github"), ""]
        for side in ("eager", "compiled"):
            parts += [f"## Top {top} {side} kernels", "", self.kernel_table(side, top, "github"), ""]
        parts += ["## Modules where compiled is slower", ""]
        parts.append(self.slower_table(depth, "github") if self.slower else "None.")
        parts += ["", self.coverage_line(), ""] + [f"- note: {n}" for n in self.data["notes"]]
        return "\n".join(parts) + "\n"

    def __str__(self) -> str:
        return self.table()

    # ---------------------------------------------------------------- files
    def to_json(self) -> str:
        return json.dumps(self.data, indent=1, default=str)

    def save(self, path) -> Path:
        """``.json`` (the document), ``.md`` (Markdown) or anything else (the text tables)."""
        p = Path(path)
        p.write_text(self.to_json() if p.suffix == ".json" else self.markdown() if p.suffix == ".md" else self.table())
        return p

    @classmethod
    def load(cls, path) -> "Comparison":
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, ValueError) as e:
            raise GraphMFUError(f"cannot read comparison {path}: {e}; pass a JSON file written by Comparison.save()") from None
        return cls(data)
