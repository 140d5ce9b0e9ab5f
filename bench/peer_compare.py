"""Issue 18, "no peer does this": one profiled run read by graphmfu, by Inductor's own
``torch._inductor.analysis.profile_analysis`` and by HTA's kernel breakdown, side by side over the same
top-N kernels by time (docs/peers.md).

    PYTHONPATH=. python bench/peer_compare.py --make DIR [--device cpu|cuda] [--llama "--dim 256 ..."]
        profile a small Llama (examples/minimal_llama.py) compiled with graphmfu.backend, in
        graphmfu.profile(record_shapes=True) and graphmfu.stage(...), Inductor's benchmark_kernel on (both are
        what profile_analysis reads); writes DIR/report.json, DIR/trace.json.gz (graphmfu's annotated trace of
        the same profile) and DIR/meta.json.  Imports no HTA (the GPU machine has none).
    PYTHONPATH=. python bench/peer_compare.py DIR [--top 12]
        the comparison: profile_analysis on the trace with graphmfu's fields removed (its own numbers, not an
        echo of graphmfu's kernel_flop), HTA on the trace as written; the table, the peers' raw output and what
        each tool answers.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import datetime
import gzip
import io
import json
import logging
import re
import shutil
import sys
import tempfile
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch._inductor.config as inductor_config  # noqa: E402

import graphmfu  # noqa: E402
from graphmfu.render import Section, ms, tabulate  # noqa: E402
from graphmfu.render import trace as trace_render  # noqa: E402

GPU_LLAMA = "--dim 2048 --ffn 5632 --heads 16 --kv-heads 4 --layers 2 --vocab 32000 --seq 512"
GM_KEYS = (*trace_render.COUNTED, *trace_render.FIELDS)  # what graphmfu adds to a kernel event's args
NOTES = {
    "cpu": "a CPU trace has no device kernels (cat 'kernel') and an empty deviceProperties: profile_analysis's "
           "augment_trace and its table read only those, so its table is empty",
    "name": "its _compute_stats skips kernel events without args['name'], and Kineto writes none: its table as "
            "shipped is empty; the value is from the same code with args['name'] filled in (shim)",
    "info": "device not in its device_info table: it writes 0 for achieved FLOPS % and bandwidth %",
    "host": "its estimators (_calculate_flops, _estimate_gb) applied to the host op, as augment_trace would for "
            "a kernel that op launched",
    "zero": "its estimate is 0 = no rule: it counts only aten mm/addmm/bmm/baddbmm/conv (+ CUDA SDPA) host ops "
            "recorded with shapes, or Inductor's kernel_flop/kernel_num_gb on Triton launches (benchmark_kernel)",
    "shared": "trace name shared with other graphmfu kernels: the peer's per-name number covers all of them",
    "nogpu": "HTA's kernel breakdown counts GPU kernels (stream != -1): none in this trace, its tables are empty",
    "nohta": "HTA not installed",
}


# ---------------------------------------------------------------------------------------------- --make
def make(out, device: str = "cpu", llama: str | None = None, iters: int = 3) -> dict:
    """Profile minimal_llama compiled with graphmfu.backend; write report.json, trace.json.gz, meta.json."""
    from examples.minimal_llama import build, parse_args

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    argv = (llama if llama is not None else GPU_LLAMA if device == "cuda" else "").split() + ["--device", device]
    a = parse_args(argv)
    stages = [s for s in ("prefill", "decode") if getattr(a, s)] or ["prefill", "decode"]
    torch._dynamo.reset()
    graphmfu.reset()
    model, tokens, caches, next_tok, dtype = build(a)
    fn = torch.compile(model, backend=graphmfu.backend)
    calls = {"prefill": lambda: fn(tokens), "decode": lambda: fn(next_tok, caches)}
    # benchmark_kernel: Inductor puts its own kernel_flop / kernel_num_gb on each Triton launch (profile_analysis
    # reads them); it adds metadata and a benchmark harness to the generated modules, not work to the run
    with torch.no_grad(), inductor_config.patch(benchmark_kernel=True):
        for _ in range(2):  # compile (outside the profile) and warm up
            for s in stages:
                calls[s]()
        with graphmfu.profile(record_shapes=True) as p, graphmfu.stage("BENCHMARK"):
            for _ in range(iters):
                for s in stages:
                    with graphmfu.stage(s):
                        calls[s]()
    rep = p.report()
    rep.save(out / "report.json")
    summary = p.export_chrome_trace(out / "trace.json.gz")
    meta = {"date": datetime.date.today().isoformat(), "torch": torch.__version__, "device": device,
            "device_name": torch.cuda.get_device_name() if device == "cuda" else rep.device.name,
            "report_device": rep.device.name, "dtype": str(dtype).split(".")[-1], "llama": argv, "stages": stages,
            "iters": iters, "record_shapes": True, "inductor_benchmark_kernel": True, "trace": summary}
    (out / "meta.json").write_text(json.dumps(meta, indent=1))
    print(f"peer_compare --make: {' '.join(argv)}; {dtype}; stages {'+'.join(stages)} x {iters}; "
          f"torch {torch.__version__}; {meta['device_name']}")
    print(rep.kernel_table(top=12))
    print(f"wrote {out / 'report.json'}, {out / 'trace.json.gz'} ({summary['annotated_kernel_events']} annotated "
          f"kernel events), {out / 'meta.json'}")
    return meta


# ---------------------------------------------------------------------------------------------- inputs
def load(d) -> tuple:
    """(Report, annotated trace dict, trace path, meta) from a directory --make wrote (or any report + trace)."""
    d = Path(d)
    rep_path, trace_path = d / "report.json", d / "trace.json.gz"
    if not rep_path.exists() or not trace_path.exists():
        for f in sorted(d.glob("*.json*")):
            head = (gzip.open if f.name.endswith(".gz") else open)(f, "rt").read(4096)
            if '"traceEvents"' in head or '"schemaVersion"' in head:
                trace_path = f
            elif '"graphmfu.report/' in head:
                rep_path = f
    meta = json.loads((d / "meta.json").read_text()) if (d / "meta.json").exists() else {}
    return graphmfu.Report.load(rep_path), trace_render.read(trace_path), trace_path, meta


def _gm(args: dict, key: str):
    """A field graphmfu wrote (``graphmfu_<key>`` where the profiler had its own ``key``)."""
    return args.get("graphmfu_" + key, args.get(key))


def strip(data: dict) -> dict:
    """A copy of the trace without graphmfu's fields: what the profiler alone wrote (the profiler's own
    ``kernel_flop`` on an Inductor launch is kept; graphmfu's stage track and counters are dropped)."""
    out = copy.deepcopy(data)
    out.pop("graphmfu", None)
    for e in out["traceEvents"]:
        a = e.get("args")
        if not isinstance(a, dict) or _gm(a, "graph_key") is None:
            if isinstance(a, dict):
                a.pop("graphmfu", None)
            continue
        for k in GM_KEYS:
            a.pop("graphmfu_" + k if "graphmfu_" + k in a else k, None)
    out["traceEvents"] = [e if e.get("cat") not in ("graphmfu", "graphmfu_stage") else {"ph": "M", "name": "dropped"}
                          for e in out["traceEvents"]]  # same indices as the annotated trace
    return out


# ---------------------------------------------------------------------------------------------- the peers
def run_profile_analysis(raw: dict, dtype: str | None) -> dict:
    """Inductor's profile_analysis on the trace without graphmfu's fields: ``--analysis FILE DTYPE`` (JsonProfile,
    augment_trace, report) as shipped, then with the args['name'] shim; its per-event estimates by trace index."""
    from torch._inductor.analysis import profile_analysis as pa

    res = {"table": "", "table_shim": "", "shim": False, "rows": 0, "stats": {}, "devices": [], "events": {},
           "error": None}
    tmp = Path(tempfile.mkdtemp()) / "raw.json"
    tmp.write_text(json.dumps(raw))
    try:
        p = pa.JsonProfile(str(tmp), dtype=dtype)
        res["devices"] = [(d.name, d.info is not None) for d in p._devices.values()]
        try:
            p.augment_trace()
        except Exception as e:  # noqa: BLE001 - said in the output; its per-event functions on what they can read
            res["error"] = f"augment_trace raised {type(e).__name__}: {e}; estimates below skip the events it failed on"
            _augment_each(pa, p.events)
        res["table"] = p.report()
        res["rows"] = sum(len(d.stats) for d in p._devices.values())
        for i, e in enumerate(p.events):  # augment_trace's own numbers on device kernels
            if e.get("cat") == "kernel" and "kernel_flop" in e.get("args", {}):
                res["events"][i] = (e["args"]["kernel_flop"], e["args"]["kernel_num_gb"], "kernel")
        if res["rows"] == 0:  # as shipped it lists nothing: fill args['name'] (the shim) and run its table again
            for e in p.events:
                if e.get("cat") == "kernel" and isinstance(e.get("args"), dict):
                    e["args"].setdefault("name", e["name"])
            p._create_devices()
            res["table_shim"], res["shim"] = p.report(), True
        for d in p._devices.values():
            res["stats"].update({n: [float(v) for v in row] for n, row in p._create_single_table(d)[1].items()})
    except Exception as e:  # noqa: BLE001 - reported, never hidden
        res["error"] = (res["error"] + "; " if res["error"] else "") + f"{type(e).__name__}: {e}"
    host = not any(e.get("cat") == "kernel" for e in raw["traceEvents"])
    for i, e in enumerate(raw["traceEvents"] if host else ()):  # no device kernels: its estimators on the host ops
        if e.get("cat") == "cpu_op" and isinstance(e.get("args"), dict):
            try:
                res["events"][i] = (pa._calculate_flops(e), pa._estimate_gb(e), "host")
            except Exception:  # noqa: BLE001 - its estimator failed on this op: no estimate
                pass
    shutil.rmtree(tmp.parent, ignore_errors=True)
    return res


def _augment_each(pa, events: list) -> None:
    """``_augment_trace_helper`` event by event, skipping a kernel whose launching op is missing or unreadable."""
    ops = {e["args"]["External id"]: e for e in events
           if e.get("cat") == "cpu_op" and "External id" in e.get("args", {})}
    for e in events:
        op = ops.get(e.get("args", {}).get("External id")) if e.get("cat") == "kernel" else None
        if op is None:
            continue
        try:
            flops = pa._calculate_flops(op) or pa._calculate_flops(e)
            e["args"]["kernel_flop"], e["args"]["kernel_num_gb"] = flops, pa._estimate_gb(op)
        except Exception:  # noqa: BLE001
            continue


def run_hta(trace_path) -> dict:
    """HTA's TraceAnalysis(trace_dir).get_gpu_kernel_breakdown() on the trace as written (all kernels, no plots)."""
    res = {"types": [], "kernels": {}, "total_us": 0.0, "error": None, "installed": True}
    try:
        from hta.trace_analysis import TraceAnalysis
    except ImportError:
        res["installed"] = False
        return res
    d = Path(tempfile.mkdtemp())
    shutil.copy(trace_path, d / Path(trace_path).name)
    logging.getLogger("hta").setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()), \
                warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pandas deprecations inside HTA
            types, kernels = TraceAnalysis(trace_dir=str(d)).get_gpu_kernel_breakdown(
                visualize=False, duration_ratio=1.0, num_kernels=10 ** 9, include_memory_kernels=True)
        res["types"] = [(r.kernel_type, float(r.sum), float(r.percentage)) for r in types.itertuples()]
        res["total_us"] = float(types["sum"].sum()) if len(types) else 0.0
        res["kernels"] = {r["name"]: (r["kernel_type"], float(r["sum (us)"]), int(r["rank"]))
                          for _, r in kernels.iterrows()}
        res["text"] = f"{types.to_string()}\n\n{kernels.to_string()}"
    except Exception as e:  # noqa: BLE001
        res["error"] = f"{type(e).__name__}: {e}"
    shutil.rmtree(d, ignore_errors=True)
    return res


# ---------------------------------------------------------------------------------------------- the table
def kernel_cause(rep, row: dict, found: list):
    """The highest-ranked kernel-level cause naming this kernel (stage-level ones, launch gaps and eager work,
    are about the time between kernels and stay in the cause list)."""
    from graphmfu.headroom.evidence import gemm_dims, is_matmul

    g = next(g for g in rep.record.graphs if g.id == row["graph"])
    ops = {n.name: n for n in g.nodes}
    dims = [gemm_dims(ops[n]) for n in row["nodes"] if n in ops and is_matmul(ops[n].op)]
    shapes = {f"[{m}x{k}] x [{k}x{n}] {dt}" for m, k, n, dt in filter(None, dims)}
    mod = row["module"] or "(root)"
    here = f"{mod} ({row['stage'] or 'no stage'})"
    for c in found:
        if (c.kind == "small_gemm" and mod in c.where.split(", ") and any(s in c.evidence for s in shapes)) or \
                (c.kind == "tile_padding" and shapes and c.where.startswith(mod + " (")) or \
                (c.kind in ("unfused_chain", "dense_attention") and c.where == here) or \
                (c.kind == "tf32_off" and shapes and str(row["graph"]) in re.findall(r"\d+", c.where)):
            return c
    return None


def compare(rep, data: dict, pa: dict, hta: dict, top: int = 12) -> list[dict]:
    """The top ``top`` graphmfu kernel rows by measured time, each with its trace events' names and the peers'
    numbers for those events (profile_analysis) or names (profile_analysis's table, HTA)."""
    events: dict = {}  # (graph, kernel index, stage) -> trace indices
    for i, e in enumerate(data["traceEvents"]):
        a = e.get("args")
        if isinstance(a, dict) and _gm(a, "graph_key") is not None:
            events.setdefault((_gm(a, "graph"), _gm(a, "kernel_index"), _gm(a, "stage")), []).append(i)
    owners: dict = {}  # trace name -> graphmfu rows it serves
    for key, idx in events.items():
        for i in idx:
            owners.setdefault(data["traceEvents"][i]["name"], set()).add(key)
    heads = {(h["graph"], h["index"], h["stage"]): h for h in rep.headroom().rows("kernel")}
    found = rep.causes()
    rows = []
    for n, k in enumerate(sorted(rep.kernels, key=lambda k: -k["time_s"])[:top], 1):
        key = (k["graph"], k["index"], k["stage"])
        idx = events.get(key, [])
        dur: dict = {}  # the kernel's GPU kernels by time, longest first (a cuBLAS memset precedes its GEMM)
        for i in idx:
            e = data["traceEvents"][i]
            dur[e["name"]] = dur.get(e["name"], 0.0) + float(e.get("dur") or 0)
        names = sorted(dur, key=lambda nm: -dur[nm])
        est = [pa["events"][i] for i in idx if i in pa["events"]]
        h = heads[key]
        cause = kernel_cause(rep, k, found)
        rows.append({
            "rank": n, "graph": k["graph"], "index": k["index"], "kernel": k["name"], "trace_names": names,
            "calls": k["calls"], "events": len(idx), "time_s": k["time_s"], "flops": k["flops"],
            "flops_dense": k["flops_dense"], "bytes": k["bytes"], "t_min_s": k["t_min_s"], "sol": k["sol"],
            "headroom_s": h["headroom_s"], "share_of_step": h["share_of_step"], "bound": k["bound"],
            "module": k["module"], "stage": k["stage"], "cause": cause,
            "shared": any(len(owners[nm]) > 1 for nm in names),
            "pa_flops": sum(f for f, _, _ in est) if est else None,
            "pa_bytes": round(sum(b for _, b, _ in est) * 1e9) if est else None,
            "pa_from": est[0][2] if est else None,
            "pa_stats": [pa["stats"][nm] for nm in names if nm in pa["stats"]],
            "hta": [hta["kernels"][nm] for nm in names if nm in hta["kernels"]]})
    return rows


def _n(x) -> str:
    return "-" if x is None else f"{x:,.0f}" if abs(x) >= 1e3 or x == int(x) else f"{x:.3g}"


def render(rows: list[dict], pa: dict, hta: dict) -> str:
    used: dict = {}

    def mark(key):
        used.setdefault(key, chr(ord("a") + len(used)))
        return f"[{used[key]}]"

    out = []
    cpu = not pa["devices"]
    for r in rows:
        shared = (lambda: f" {mark('shared')}") if r["shared"] else (lambda: "")
        c = r["cause"]
        if r["pa_flops"] is None:
            pa_f = pa_b = "—"
        else:
            note = mark("host") if r["pa_from"] == "host" else ""
            note += mark("zero") if not r["pa_flops"] else ""
            pa_f, pa_b = f"{_n(r['pa_flops'])} {note}".strip(), f"{_n(r['pa_bytes'])}"
        if r["pa_stats"]:
            s = r["pa_stats"][0]  # count, mean FLOP/s, mean GB/s, mean us, achieved FLOPS %, achieved bandwidth %
            info = all(ok for _, ok in pa["devices"])
            ach = f"{s[4]:.1f} / {s[5]:.1f}" if info else f"— {mark('info')}"
            pa_s = f"{s[1] / 1e12:.3g} TF/s, {s[2]:.3g} GB/s, {ach}{' ' + mark('name') if pa['shim'] else ''}{shared()}"
        else:
            pa_s = f"— {mark('cpu')}" if cpu else (f"— ({pa['error']})" if pa["error"] else "— (no row)")
        if not hta["installed"]:
            h_t = h_s = f"— {mark('nohta')}"
        elif r["hta"]:
            h_t = "/".join(sorted({t for t, _, _ in r["hta"]}))
            us = sum(s for _, s, _ in r["hta"])
            h_s = f"{us:.0f} ({us / hta['total_us'] * 100 if hta['total_us'] else 0:.1f}%){shared()}"
        else:
            h_t = h_s = f"— {mark('nogpu')}" if not hta["kernels"] else "— (no row)"
        name = r["trace_names"][0] if r["trace_names"] else r["kernel"]
        name = (name[:34] + "…" if len(name) > 35 else name) + \
            (f" +{len(r['trace_names']) - 1}" if len(r["trace_names"]) > 1 else "")
        out.append([str(r["rank"]), name, str(r["calls"]), ms(r["time_s"]), _n(r["flops"]), _n(r["bytes"]),
                    ms(r["t_min_s"]), f"{r['sol'] * 100:.1f}" if r["sol"] is not None else "-", ms(r["headroom_s"]),
                    r["bound"], r["module"] or "(root)", r["stage"] or "-", c.kind if c else "—",
                    pa_f, pa_b, pa_s, h_t, h_s])
    sec = Section(None, ["#", "kernel (trace name)", "calls", "time ms", "gm FLOPs", "gm bytes", "gm t_min ms",
                         "gm SOL %", "gm headroom ms", "gm bound", "gm module", "gm stage", "gm kernel cause",
                         "pa FLOPs", "pa bytes", "pa table (mean FLOP/s, GB/s, achieved % F/B)", "HTA type",
                         "HTA us (% of GPU kernel time)"], out)
    legend = [f"[{v}] {NOTES[k]}" for k, v in used.items()]
    if hta["kernels"]:
        legend.append("HTA us: HTA floors every event's ts and dur to whole microseconds when it parses a trace "
                      "(its 'Rounding down ns resolution events'): a 1.7 us kernel counts 1 us")
    return tabulate(sec) + ("\n" + "\n".join(legend) if legend else "")


def answers(rep, rows: list[dict], pa: dict, hta: dict) -> str:
    """What each tool answers, with this run's numbers where there are any."""
    n = len(rows)
    gm_cost = sum(1 for r in rows if r["flops"] or r["bytes"])
    pa_f = [r for r in rows if r["pa_flops"]]
    ratio = [r["pa_bytes"] / r["bytes"] for r in pa_f if r["bytes"] and r["pa_bytes"]]
    attn: dict = {}  # the first attention row of each stage
    for r in rows:
        if "attention" in r["kernel"] or any("attention" in t or "sdpa" in t for t in r["trace_names"]):
            attn.setdefault(r["stage"], r)
    attn = list(attn.values())
    causes = rep.causes()
    kinds = sorted({c.kind for c in causes})
    devices = ", ".join(f"{d}{'' if ok else ' (not in its device_info table)'}" for d, ok in pa["devices"]) or \
        "none, deviceProperties is empty"
    lines = [
        f"FLOPs and bytes per (fused) kernel — graphmfu: {gm_cost} of these {n} kernels costed, from their origin "
        f"ATen nodes (a fused kernel's bytes are what crosses its boundary). profile_analysis: FLOPs for {len(pa_f)} "
        f"of {n} ({', '.join(sorted({r['trace_names'][0] for r in pa_f})) or 'none'}); bytes by its mm formula "
        f"2*(MK+KN+MN)*itemsize" + (f", {min(ratio):.2f}-{max(ratio):.2f}x graphmfu's where both count"
                                     if ratio else "") + ". HTA: time only, no FLOPs or bytes.",
        "Attention under masks — graphmfu: " + ("; ".join(
            f"{r['trace_names'][0] if r['trace_names'] else r['kernel']} ({r['stage']}): {_n(r['flops'])} kept-pair "
            f"FLOPs of {_n(r['flops_dense'])} dense; profile_analysis: {_n(r['pa_flops'])}" for r in attn[:2])
            or "no attention kernel in the top rows") + ". profile_analysis's SDPA rule (torch.utils.flop_counter) "
        "counts dense (no mask term) and covers only the CUDA SDPA ops; HTA: none.",
        "Per module / per stage — graphmfu: every row carries its module and stage (module and stage tables, "
        "headroom per module and stage). profile_analysis: per kernel name only. HTA: per kernel name and type "
        "(COMPUTATION / COMMUNICATION / MEMORY); time per user annotation (get_gpu_user_annotation_breakdown) "
        "without FLOPs.",
        f"Roofline — graphmfu: t_min, SOL and bound on {rep.device.name}. profile_analysis: achieved FLOPS % and "
        f"bandwidth % of datasheet peaks for the devices in its table (this trace's: {devices}). HTA: none.",
        f"Causes with actions — graphmfu: {len(causes)} cause(s) here ({', '.join(kinds) or 'none'}), each with its "
        "evidence and one action. profile_analysis: none. HTA: symptoms across the trace (idle time, kernel launch "
        "delays, queue length, comm/comp overlap, critical path), no per-kernel cause or action.",
        "What-if — graphmfu: Report.predict(other device) from this run. profile_analysis: --diff of two measured "
        "traces. HTA: TraceDiff of two measured traces. Neither predicts.",
        "What the peers do better — profile_analysis needs no backend: it reads any Kineto trace (eager aten "
        "mm/conv included) and Inductor's own per-Triton-kernel estimates, diffs and combines traces. HTA reads "
        "many ranks at once and answers what graphmfu does not: idle-time classes, launch statistics, queue "
        "lengths, memory bandwidth counters, the critical path.",
    ]
    return "\n".join(f"* {x}" for x in lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="graphmfu beside Inductor's profile_analysis and HTA's kernel breakdown "
                                             "on one profiled run (docs/peers.md)")
    ap.add_argument("dir", nargs="?", help="a directory holding report.json + trace.json.gz of one profiled run")
    ap.add_argument("--make", metavar="DIR", help="profile a small Llama and write the pair here")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=("cpu", "cuda"))
    ap.add_argument("--llama", default=None,
                    help=f"minimal_llama args (default: its own on CPU; on CUDA {GPU_LLAMA!r})")
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--top", type=int, default=12)
    ap.add_argument("--dtype", default=None, help="profile_analysis's dtype argument (default: the run's, meta.json)")
    a = ap.parse_args(argv)
    if a.make:
        make(a.make, a.device, a.llama, a.iters)
        return 0
    if not a.dir:
        ap.error("give DIR (report + trace) or --make DIR")
    rep, data, trace_path, meta = load(a.dir)
    total = sum(_gm(e["args"], "kernel_flop") or 0 for e in data["traceEvents"]
                if isinstance(e.get("args"), dict) and _gm(e["args"], "graph_key") is not None)
    same = total == sum(k["flops"] for k in rep.kernels)
    pa = run_profile_analysis(strip(data), a.dtype or meta.get("dtype") or "float32")
    hta = run_hta(trace_path)
    rows = compare(rep, data, pa, hta, a.top)
    print(f"peer_compare: {a.dir}: {meta.get('device_name', '?')}, torch {meta.get('torch', '?')} "
          f"(profiled {meta.get('date', '?')}), graphmfu device {rep.device.name}; compared with torch "
          f"{torch.__version__} profile_analysis" + (", HTA" if hta["installed"] else " (HTA not installed)"))
    print(f"same run: the trace's graphmfu FLOPs sum to the report's kernel FLOPs: {'yes' if same else 'NO'} "
          f"({total:,})")
    print(f"\ntop {len(rows)} kernels by measured time (gm = graphmfu, pa = profile_analysis; totals over calls):")
    print(render(rows, pa, hta))
    used = list({id(c): c for r in rows if (c := r["cause"])}.values())
    print("\nkernel causes in the table (graphmfu), then the step's top causes:")
    for c in [*used, *[c for c in rep.causes()[:3] if all(c.line() != u.line() for u in used)]]:
        ev = c.evidence if len(c.evidence) < 160 else c.evidence[:157] + "..."
        print(f"  [{c.kind}] {c.where}: ~{ms(c.lost_s)} ms — {ev} -> {c.action}")
    print(f"\nprofile_analysis (--analysis on the trace without graphmfu's fields; devices {pa['devices'] or 'none'}; "
          f"rows in its table as shipped: {pa['rows']}{'; error: ' + pa['error'] if pa['error'] else ''}):")
    print(pa["table"] or "(empty)")
    if pa["shim"] and pa["stats"]:
        print(f"with the args['name'] shim:\n{pa['table_shim']}")
    got = f"{len(hta['kernels'])} kernel names, {hta['total_us']:.0f} us" + \
        ("" if hta["kernels"] else " (no GPU kernels)")
    print("\nHTA get_gpu_kernel_breakdown: " + ("not installed" if not hta["installed"] else hta["error"] or got))
    if hta.get("text") and hta["kernels"]:
        print(hta["text"])
    print("\nwhat each tool answers (this run):")
    print(answers(rep, rows, pa, hta))
    return 0


if __name__ == "__main__":
    sys.exit(main())
