"""The annotated profiler trace: torch.profiler's Chrome trace with graphmfu's numbers in it.

``ProfileSession.export_chrome_trace(path)`` writes the profiler's own trace (Kineto JSON: Perfetto,
chrome://tracing, HTA) and this module adds, in place:

* every joined kernel event's ``args`` — ``kernel_flop`` and ``kernel_num_gb`` (the names Inductor's
  ``profile_analysis`` reads: matrix FLOPs and GB moved) and graphmfu's fields (``FIELDS``).  A launch
  site that ran several kernels in one call (a split-K GEMM and its reduce) has its cost counted on
  its first kernel (``site_index`` 0; the others carry 0) and its utilisation over all of them
  (``site_time_us``), so per-event FLOPs add up to the report's kernel totals;
* unattributed kernel events: ``graphmfu: "unattributed (<where>)"``;
* a ``graphmfu stages`` track: one slice per stage occurrence over its kernels' device span, with the
  stage's report row (calls, span, MFU, MBU ...) in its args, and counter tracks (``"ph": "C"``)
  ``graphmfu MFU % <stage>`` / ``graphmfu MBU % <stage>`` at the stage's report value over each
  occurrence;
* ``distributedInfo`` (rank, world size) where the trace has none, so HTA assigns the file a rank;
  ``graphmfu`` at the top: schema, device, how many joined kernel events were found and annotated.

Every device number comes from the Report (``derive.kernel_static``, ``roofline.utilisation``,
``derive.kernel_flags``); this module only places them.  The per-event join is ``join.event_keys``.
"""
from __future__ import annotations

import dataclasses
import gzip
import json
import math
from pathlib import Path

from graphmfu import join
from graphmfu.derive import kernel_flags, kernel_static
from graphmfu.roofline import utilisation

SCHEMA = "graphmfu.trace/1"
DEVICE_CATS = ("kernel", "gpu_memcpy", "gpu_memset", "gpu_user_annotation")
HOST_CATS = ("cpu_op", "user_annotation")
# the fields a joined kernel event carries (besides kernel_flop and kernel_num_gb); docs/traces.md
FIELDS = ("flops", "flops_dense", "vector_flops", "bytes", "bytes_read", "bytes_written", "mfu", "mbu", "sol",
          "bound", "flags", "t_min_us", "module", "nodes", "stage", "graph", "graph_key", "phase", "kernel",
          "kernel_index", "call", "sizes", "joined_by", "site_index", "site_kernels", "site_time_us")
COUNTED = ("kernel_flop", "kernel_num_gb", "flops", "flops_dense", "vector_flops", "bytes", "bytes_read",
           "bytes_written")


def read(path) -> dict:
    p = Path(path)
    opener = gzip.open if p.name.endswith(".gz") else open
    with opener(p, "rt") as f:
        return json.load(f)


def write(data: dict, path) -> Path:
    """Write the trace (gzipped when the path ends in ``.gz``); strict JSON (no NaN/Infinity)."""
    p = Path(path)
    opener = gzip.open if p.name.endswith(".gz") else open
    with opener(p, "wt") as f:
        json.dump(_finite(data), f, allow_nan=False)
    return p


def _finite(x):
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_finite(v) for v in x]
    return x


def trace_keys(events: list[dict]) -> dict[tuple, dict]:
    """The trace's events under ``join.event_keys``' keys: device activities by (External id of the
    launching op, name, place among that op's activities of that name); CPU events by their id."""
    out: dict[tuple, dict] = {}
    seen: dict[tuple, int] = {}
    for e in sorted((e for e in events if e.get("ph") == "X" and isinstance(e.get("args"), dict)),
                    key=lambda e: e.get("ts", 0)):
        ext = e["args"].get("External id")
        if ext is None:
            continue
        cat = e.get("cat")
        if cat in DEVICE_CATS:
            base = ("device", ext, e.get("name"))
        elif cat in HOST_CATS:
            base = ("host", ext, e.get("name"))
        else:
            continue
        n = seen[base] = seen.get(base, -1) + 1
        out[(*base, n)] = e
    return out


def _put(args: dict, key: str, value) -> None:
    """Add a field without overwriting the profiler's own (a memcpy's ``bytes``): ours is then
    ``graphmfu_<key>``."""
    args["graphmfu_" + key if key in args else key] = value


def kernel_fields(report, measured: list) -> dict[int, dict]:
    """id(Measured) -> the fields of its event, for every joined kernel of ``measured`` (one trace)."""
    dev = report.device
    graphs = {g.id: g for g in report.record.graphs}
    known = {(r["graph"], r["index"]): r["known"] for r in report.kernels}
    out: dict[int, dict] = {}
    for (gid, ki, call), ms in join.site_groups(measured).items():
        g = graphs[gid]
        k = g.kernels[ki]
        cost = k.cost_at(ms[0].sizes)
        st = kernel_static(dataclasses.replace(k, cost=cost), dev)
        t = sum(m.time_s for m in ms)
        u = utilisation(st["t_matrix_s"], st["bytes"], st["t_min_s"], t, dev)
        site = {"mfu": u["mfu"], "mbu": u["mbu"], "sol": u["sol"],
                "bound": st["bound"] if known.get((gid, ki), True) else "unknown",
                "flags": kernel_flags(u["mfu"], u["mbu"], cost.bytes_read, dev), "t_min_us": st["t_min_s"] * 1e6,
                "module": k.module, "nodes": list(k.nodes), "graph": gid, "graph_key": g.key,
                "phase": k.phase or g.phase, "kernel": k.name, "kernel_index": ki, "call": call,
                "site_kernels": len(ms), "site_time_us": t * 1e6}
        counted = {"kernel_flop": cost.flops, "kernel_num_gb": cost.bytes / 1e9, "flops": cost.flops,
                   "flops_dense": cost.flops_dense, "vector_flops": cost.vector_flops, "bytes": cost.bytes,
                   "bytes_read": cost.bytes_read, "bytes_written": cost.bytes_written}
        for i, m in enumerate(ms):
            f = {**(counted if i == 0 else {c: 0 for c in counted}), **site, "stage": m.stage,
                 "joined_by": m.how, "site_index": i}
            if m.sizes:
                f["sizes"] = dict(m.sizes)
            out[id(m)] = f
    return out


def annotate(data: dict, report, measured: list, stages: list[dict], *, trace: int = 0, traces: int = 1) -> dict:
    """Add graphmfu's fields, stage track and counters to ``data`` (the profiler's exported trace of
    the joined trace ``measured``/``stages``; ``report`` is that trace's Report).  Returns the summary
    also stored under ``data["graphmfu"]``."""
    events = data.setdefault("traceEvents", [])
    found = trace_keys(events)
    fields = kernel_fields(report, measured)
    at: dict[int, dict] = {}  # id(Measured) -> its trace event
    annotated = 0
    for key, m in join.event_keys(measured).items():
        e = found.get(key)
        if e is None:
            continue
        at[id(m)] = e
        if m.graph is None:
            e["args"]["graphmfu"] = f"unattributed ({m.where or 'outside graphs'})"
            continue
        for k, v in fields[id(m)].items():
            _put(e["args"], k, v)
        annotated += 1
    joined = sum(1 for m in measured if m.graph is not None)
    _stages(events, report, measured, stages, at)
    rec = report.record
    if "distributedInfo" not in data:
        data["distributedInfo"] = {"rank": rec.rank, "world_size": rec.world_size}
    summary = {"schema": SCHEMA, "device": report.device.name, "trace": trace, "traces": traces,
               "joined_kernel_events": joined, "annotated_kernel_events": annotated,
               "kernel_flop_total": sum(f["kernel_flop"] for f in fields.values()),
               "note": ("annotated: the profiler's current trace, the last of "
                        f"{traces} joined traces (a schedule's cycles); export each cycle from on_trace_ready"
                        if traces > 1 else "annotated: the profile's one trace")}
    data["graphmfu"] = summary
    return summary


def retitle(data: dict, path) -> None:
    """The trace's ``traceName`` is the file it is written to (the profiler wrote it to a temporary one)."""
    if "traceName" in data:
        data["traceName"] = str(path)


def _stages(events: list, report, measured: list, stages: list[dict], at: dict) -> None:
    """The stage track (one slice per occurrence, over its kernels) and the MFU/MBU counter tracks."""
    rows = {r["name"]: r for r in report.stages}
    named: dict[str, list] = {}
    for e in sorted((e for e in events if e.get("ph") == "X" and e.get("cat") in HOST_CATS
                     and str(e.get("name", "")).startswith(join.STAGE_RANGE)), key=lambda e: e.get("ts", 0)):
        named.setdefault(e["name"][len(join.STAGE_RANGE):], []).append(e)
    tids = [e["tid"] for e in events if isinstance(e.get("tid"), int)]
    tid = max(tids, default=0) + 1
    pids = set()
    seen: dict[str, int] = {}
    for s in sorted(stages, key=lambda s: s["start_us"]):
        n = seen[s["name"]] = seen.get(s["name"], -1) + 1
        cpu = named.get(s["name"], [])
        ks = [at[id(m)] for m in measured if id(m) in at and s["start_us"] <= m.launch_start_us <= s["end_us"]]
        if ks:
            start, end, pid = min(e["ts"] for e in ks), max(e["ts"] + e.get("dur", 0) for e in ks), ks[0]["pid"]
        elif n < len(cpu):
            start, end, pid = cpu[n]["ts"], cpu[n]["ts"] + cpu[n].get("dur", 0), cpu[n]["pid"]
        else:
            continue
        row = rows.get(s["name"], {})
        pids.add(pid)
        events.append({"ph": "X", "cat": "graphmfu_stage", "name": f"stage {s['name']}", "pid": pid, "tid": tid,
                       "ts": start, "dur": end - start,
                       "args": {"occurrence": n, "span": "its kernels' device span (first start to last end)",
                                **{k: row.get(k) for k in ("calls", "span_s", "busy_s", "flops", "bytes", "mfu",
                                                           "mfu_busy", "mbu", "memory_bound_share")}}})
        for what in ("mfu", "mbu"):
            v = row.get(what)
            if v is None:
                continue
            name = f"graphmfu {what.upper()} % {s['name']}"
            events.append({"ph": "C", "cat": "graphmfu", "name": name, "pid": pid, "tid": tid, "ts": start,
                           "args": {f"{what.upper()} %": v * 100}})
            events.append({"ph": "C", "cat": "graphmfu", "name": name, "pid": pid, "tid": tid, "ts": end,
                           "args": {f"{what.upper()} %": 0}})
    for pid in pids:
        events.append({"ph": "M", "name": "thread_name", "pid": pid, "tid": tid, "args": {"name": "graphmfu stages"}})


# the value types HTA parses graphmfu's fields as (hta_parser_config)
_NUMERIC = {"kernel_flop": int, "flops": int, "flops_dense": int, "vector_flops": int, "bytes": int, "bytes_read": int,
            "bytes_written": int, "graph": int, "kernel_index": int, "call": int, "site_index": int,
            "site_kernels": int, "kernel_num_gb": float, "mfu": float, "mbu": float, "sol": float, "t_min_us": float,
            "site_time_us": float}


def hta_parser_config():
    """An HTA ``ParserConfig`` that keeps graphmfu's fields as columns.  HTA keeps only the ``args`` its
    config names (by default Kineto's: stream, correlation, input dims ...), so ``kernel_flop``, ``mfu``
    ... need naming: ``hta.common.trace.Trace(trace_dir=d, parser_config=hta_parser_config())``."""
    try:
        from hta.configs.default_values import AttributeSpec, ValueType, YamlVersion
        from hta.configs.parser_config import ParserConfig
    except ImportError as e:
        from graphmfu.errors import GraphMFUError

        raise GraphMFUError("reading graphmfu's fields with HTA needs HTA: pip install HolisticTraceAnalysis") from e
    cfg = ParserConfig()
    version = getattr(cfg, "version", YamlVersion(1, 0, 0))
    specs = []
    for name in (*COUNTED[:2], *FIELDS):
        kind = _NUMERIC.get(name)
        vt, default = ((ValueType.Int, -1) if kind is int else (ValueType.Float, -1.0) if kind is float
                       else (ValueType.Object, None))
        specs.append(AttributeSpec(name, name, vt, default, version))
    cfg.add_args(specs)
    return cfg


__all__ = ["hta_parser_config", "annotate", "kernel_fields", "trace_keys", "read", "write", "retitle", "SCHEMA", "FIELDS"]
