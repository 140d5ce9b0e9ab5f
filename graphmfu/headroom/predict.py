"""What-if on another device: the measured run's step and stage times carried to another device's ceilings.

Per kernel class — ``gemm`` (matrix FLOPs), ``attention`` (SDPA / flex / attention written as matmuls),
``memory`` (no matrix FLOPs: memory-bound and vector work), ``collective`` (NCCL / c10d kernels),
``uncosted`` (kernels outside every graph, of no known cost) and ``idle`` (launch gaps: span - busy):

  achieved_c   = sum t_min_c(measured device) / sum time_c      (the class's fraction of its roofline)
  predicted_k  = fixed_k + (time_k - fixed_k) x t_min_k(target) / t_min_k(measured)   (each kernel k)
  fixed_k      = min(time_k, launches_k x floor): floor = the run's shortest launch of a latency-bound
                 kernel (under 10% of its roofline: a norm on a decode batch), 0 when there is none
  predicted_c  = sum of predicted_k over the class (floor 0: time_c x t_min_c(target) / t_min_c(measured)
                 for one kernel, its achieved fraction kept)
  uncosted     : time x DRAM GB/s(measured) / DRAM GB/s(target)
  collective   : time x NVLink GB/s(measured) / NVLink GB/s(target) when both have a figure, else unchanged
  idle         : the replay's (the host's launch times are the same); unchanged where there is no timeline

Per stage (inclusive of nested stages, each with its own classes): predicted span = the stage's launch timeline
replayed with each kernel's predicted time (``timeline.replay``: a kernel starts when the host launched it or
when the previous one ends, whichever is later; a host-paced stage stays as long as its launches), else (no
timeline kept: kernels on several streams, an older record, a very long profile) idle + busy x (predicted
kernel time / measured kernel time).  The step is the top-level stages plus kernels outside stages (no
stages: the kernel time); predicted MFU = the step's matrix FLOPs at the target's peaks / predicted step.
Predicting the measured device returns the measured times.  ``Prediction.assumes`` says all of this.
"""
from __future__ import annotations

import dataclasses

from graphmfu import timeline
from graphmfu.derive import in_stage, views
from graphmfu.errors import GraphMFUError
from graphmfu.headroom.ranking import step_s
from graphmfu.overlap import is_comm
from graphmfu.render import Section, ms, pct

CLASSES = ("gemm", "attention", "memory", "collective", "uncosted")


@dataclasses.dataclass
class Prediction:
    measured_device: str
    device: str
    ceilings: str
    step_s: float
    predicted_step_s: float
    mfu: float | None
    predicted_mfu: float | None
    classes: list
    stages: list
    assumes: list

    @property
    def speedup(self) -> float | None:
        return self.step_s / self.predicted_step_s if self.predicted_step_s else None

    def sections(self) -> list[Section]:
        head = [f"predicted on {self.device} ({self.ceilings}) from the run measured on {self.measured_device}: "
                f"step {ms(self.step_s)} -> {ms(self.predicted_step_s)} ms (x{self.speedup or 0:.3g}), "
                f"MFU {pct(self.mfu)}% -> {pct(self.predicted_mfu)}%"]
        out = [Section(lines=head),
               Section("per kernel class", ["class", "measured ms", "t_min ms", "achieved %", "t_min on target ms",
                                            "predicted ms"],
                       [[c["class"], ms(c["measured_s"]), ms(c["t_min_s"]), pct(c["achieved"]),
                         ms(c["t_min_target_s"]), ms(c["predicted_s"])] for c in self.classes])]
        if self.stages:
            out.append(Section("per stage", ["stage", "measured ms", "predicted ms", "idle ms", "predicted idle ms",
                                             "launch gaps"],
                               [[s["name"], ms(s["measured_s"]), ms(s["predicted_s"]), ms(s["idle_s"]),
                                 ms(s["predicted_idle_s"]), "replayed" if s["replayed"] else "kept"]
                                for s in self.stages]))
        out.append(Section("assumes", lines=[f"- {a}" for a in self.assumes]))
        return out

    def table(self) -> str:
        from graphmfu.render import tabulate

        parts = []
        for s in self.sections():
            if s.title:
                parts.append(f"{s.title}:")
            if s.headers:
                parts.append(tabulate(s))
            parts += s.lines
        return "\n".join(parts)

    def __str__(self) -> str:
        return self.table()

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "speedup": self.speedup}


def kernel_class(k: dict, ops) -> str:
    """The class of a kernel row (``ops``: its origin OpRecords)."""
    if is_comm(k["name"]) or any(is_comm(g) for g in k.get("gpu_kernels", ())) or "c10d" in k["op"]:
        return "collective"
    if any("attention" in o.op or "attention_matmul" in o.flags for o in ops):
        return "attention"
    return "gemm" if k["flops"] else "memory"


def _ratios(classes: dict, uncosted: float, collective: float) -> dict:
    """class -> predicted / measured time: the bandwidth ratios for uncosted kernels and collectives, the
    kernels' own carried times for the others."""
    out = {"uncosted": uncosted, "collective": collective}
    for c, (t, _tmin, _tmin_target, pt) in classes.items():
        if c not in out:
            out[c] = pt / t if t else 1.0
    return out


def _sum(rows: list, key) -> dict:
    """class -> [measured time, t_min measured, t_min target, predicted time] over (row, class, t_min target,
    predicted) rows."""
    out = {c: [0.0, 0.0, 0.0, 0.0] for c in CLASSES}
    for k, c, tt, pt in rows:
        if key(k):
            out[c][0] += k["time_s"]
            out[c][1] += k["t_min_s"]
            out[c][2] += tt
            out[c][3] += pt
    return out


LATENCY_SHARE = 0.1  # a kernel under this fraction of its roofline is latency-bound (launch, ramp, a tail)


def launch_floor(kernels: list) -> float:
    """Seconds a kernel launch takes however little it does, from the run itself: the shortest launch among
    the latency-bound kernels (at under ``LATENCY_SHARE`` of their roofline minimum: a norm or an add on a
    decode batch); 0 when the run has none (then every kernel's time scales with its roofline)."""
    per = [k["time_s"] / k["launches"] for k in kernels
           if k.get("launches") and k["time_s"] > 0 and k["t_min_s"] < LATENCY_SHARE * k["time_s"]]
    return min(per) if per else 0.0


def _carried(k: dict, t_target: float, floor: float) -> float:
    """One kernel on the target (or at other sizes): its launches' fixed floor kept, the rest of its time
    scaled by its roofline minimum there over here (the fraction of the roofline it reached is kept)."""
    if not k["t_min_s"]:
        return k["time_s"]
    fixed = min(k["time_s"], floor * (k.get("launches") or 0))
    return fixed + (k["time_s"] - fixed) * t_target / k["t_min_s"]


def _bandwidth_ratio(measured, target) -> tuple[float, float | None]:
    from graphmfu.hardware.links import links_for

    def nvlink(dev):
        try:
            return links_for(dev).nvlink_gbps
        except Exception:  # noqa: BLE001 - no link figure is not an error here
            return None

    a, b = nvlink(measured), nvlink(target)
    return measured.dram_gbps / target.dram_gbps, (a / b if a and b else None)


def at_sizes(record, sizes: dict):
    """``record`` with every dynamic graph call's size symbols set to ``sizes`` (the others kept as measured):
    the same kernels, each costed at the new values (a shape what-if: batch 8 measured, batch 32 asked)."""
    known = {k: v for g in record.graphs for k, v in g.hints.items()}
    for r in record.timing.launches:
        known.update(r.get("sizes") or {})
    missing = sorted(set(sizes) - set(known))
    if missing:
        have = ", ".join(f"{k}={v}" for k, v in sorted(known.items())) or "none: every graph is static"
        raise GraphMFUError(f"predict(sizes=...): no measured graph call has symbol(s) {', '.join(missing)} (the "
                            f"measured symbols: {have}); compile with dynamic=True or "
                            f"Dynamo's mark_dynamic(x, dim) so the dimension is a symbol")
    hints = {g.id: g.hints for g in record.graphs}
    launches = []
    for r in record.timing.launches:
        base = r.get("sizes") or hints.get(r["graph"]) or {}
        new = {k: int(sizes[k]) if k in sizes else v for k, v in base.items()}
        launches.append({**r, "sizes": new or r.get("sizes")})
    return dataclasses.replace(record, timing=dataclasses.replace(record.timing, launches=launches))


def predict(data: dict, record, measured, target, ceilings: str = "datasheet", sizes: dict | None = None) -> Prediction:
    """``data``: the derived document of ``record`` on ``measured`` (Report.data); ``target``: a DeviceSpec;
    ``sizes``: size symbols' values to predict at (``{"s0": 32}``), each kernel costed there."""
    if sizes:
        tdata = views(at_sizes(record, sizes), target)
    else:
        tdata = data if target == measured else views(record, target)
    t_target = {(k["graph"], k["index"], k["stage"]): k["t_min_s"] for k in tdata.get("kernels", [])}
    t_matrix = {(k["graph"], k["index"], k["stage"]): k["t_matrix_s"] for k in tdata.get("kernels", [])}
    ops_by = {g.id: {o.name: o for o in g.nodes} for g in record.graphs}
    floor = launch_floor(data.get("kernels", []))
    rows = []
    for k in data.get("kernels", []):
        ops = [ops_by[k["graph"]][n] for n in k["nodes"] if n in ops_by[k["graph"]]]
        tt = t_target[(k["graph"], k["index"], k["stage"])]
        rows.append((k, kernel_class(k, ops), tt, _carried(k, tt, floor)))
    un = record.timing.unattributed if record.timing is not None else []
    bw, link = _bandwidth_ratio(measured, target)
    ratio_of = lambda cls: _ratios(cls, bw, link if link is not None else 1.0)  # noqa: E731

    def carried(key, ukey) -> tuple[float, float, dict]:
        cls = _sum(rows, key)
        cls["uncosted"][0] += sum(o["time_s"] for o in un if ukey(o))  # carried by the bandwidth ratio
        r = ratio_of(cls)
        t = sum(v[0] for v in cls.values())
        return t, sum(v[0] * r[c] for c, v in cls.items()), {c: (v, r[c]) for c, v in cls.items()}

    ratio = _launch_ratios(rows, bw, link)
    # a CPU run's "kernels" run on the host that launches them: its gaps are its own time, not slack to replay
    lines = record.timing.timelines if record.timing is not None and record.timing.cuda else {}
    stages = []
    for s in data.get("stages", []):
        t, pt, _ = carried(lambda k, n=s["name"]: in_stage(k["stage"], n), lambda o, n=s["name"]: in_stage(o["stage"], n))
        idle = s["span_s"] - s["busy_s"]
        busy = s["busy_s"] * (pt / t) if t else s["busy_s"]
        span, replayed, why = idle + busy, False, None
        occs = lines.get(s["name"], ())
        if occs and len(occs) == s["calls"]:
            out = [timeline.replay(o, ratio) for o in occs]
            span, busy = sum(o[0] for o in out) * 1e-6, sum(o[1] for o in out) * 1e-6
            whys = sorted({w for w in map(timeline.why_not, occs) if w})
            replayed, why = not whys, "; ".join(whys) or None
        stages.append({"name": s["name"], "parent": s["parent"], "measured_s": s["span_s"], "predicted_s": span,
                       "idle_s": idle, "predicted_idle_s": max(span - busy, 0.0), "replayed": replayed,
                       "not_replayed": why, "kernel_s": t, "predicted_kernel_s": pt})
    step = step_s(data, un)
    if stages:
        _, outside, _ = carried(lambda k: not k["stage"], lambda o: not o["stage"])
        predicted = sum(s["predicted_s"] for s in stages if s["parent"] is None) + outside
    else:
        t, pt, _ = carried(lambda k: True, lambda o: True)
        predicted = step * (pt / t) if t else step
    _, _, cls = carried(lambda k: True, lambda o: True)
    classes = [{"class": c, "measured_s": v[0], "t_min_s": v[1], "achieved": v[1] / v[0] if v[0] and v[1] else None,
                "t_min_target_s": v[2], "predicted_s": v[0] * r, "ratio": r} for c, (v, r) in cls.items() if v[0]]
    idle_all = sum(s["idle_s"] for s in stages if s["parent"] is None)
    if idle_all:
        idle_pred = sum(s["predicted_idle_s"] for s in stages if s["parent"] is None)
        classes.append({"class": "idle", "measured_s": idle_all, "t_min_s": 0.0, "achieved": None,
                        "t_min_target_s": 0.0, "predicted_s": idle_pred, "ratio": idle_pred / idle_all})
    mfu = sum(k["t_matrix_s"] for k in data.get("kernels", [])) / step if step else None
    pmfu = sum(t_matrix.values()) / predicted if predicted else None
    said = assumes(measured, target, ceilings, link is not None, floor,
                   replayed=[s["name"] for s in stages if s["replayed"]],
                   kept=[f"{s['name']} ({'in some occurrences: ' + s['not_replayed'] if s['not_replayed'] else _why_none(record)})"
                         for s in stages if not s["replayed"]])
    if sizes:
        said += [f"at {_sizes(sizes)}: each measured kernel costed at these symbol values, the others as measured "
                 f"(a probe's count, e.g. an attention mask's kept pairs, is a symbol too: give it when it changes); "
                 f"the same kernels and launches: the compiled graphs' own fusion at the new sizes may differ"]
    return Prediction(measured.name, target.name + (f" at {_sizes(sizes)}" if sizes else ""), ceilings, step,
                      predicted, mfu, pmfu, classes, stages, said)


def _sizes(sizes: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in sizes.items())


def _launch_ratios(rows: list, bw: float, link: float | None):
    """``ratio(graph, kernel, stage)``: a launch's predicted / measured time, for the timeline replay: its kernel
    row's own carried time in that stage (collectives: the link ratio), kernels outside graphmfu's graphs the
    DRAM ratio."""
    link = link if link is not None else 1.0
    by = {(k["graph"], k["index"], k["stage"]): (link if cls == "collective" else pt / k["time_s"]) if k["time_s"] else 1.0
          for k, cls, _tt, pt in rows}
    return lambda g, k, stage: bw if g is None else by.get((g, k, stage), 1.0)


def _why_none(record) -> str:
    """Why a stage of ``record`` had no launch timeline to replay."""
    if record.timing is None or not record.timing.cuda:
        return "a CPU run: its kernels run on the host that launches them"
    if not record.timing.timelines:
        return f"a record without timelines (from before them, or a profile of over {timeline.MAX_LAUNCHES} launches)"
    return "no timeline for the stage"


def assumes(measured, target, ceilings: str, link: bool, floor: float = 0.0, replayed=(), kept=()) -> list[str]:
    """What the prediction takes for granted; ``replayed``: the stages whose launch timelines were replayed,
    ``kept``: the others, each with why (``"decode (a CPU run ...)"``)."""
    out = [f"each kernel keeps the fraction of its roofline minimum it reached on {measured.name} (same kernels, "
           f"shapes, dtypes and fusion; its time x t_min on {target.name} / t_min on {measured.name})"
           + (f", above a fixed {floor * 1e6:.2f} us per launch that does not scale (the run's shortest launch "
              f"of a latency-bound kernel: under {LATENCY_SHARE:.0%} of its roofline)" if floor else
              "; no kernel of this run is latency-bound, so no per-launch floor is kept"),
           f"ceilings: {target.name} {ceilings} ({target.source}); {measured.name}: {measured.source}",
           *([f"stage(s) {', '.join(replayed)}: the measured launch timeline replayed with the predicted kernel "
              f"times (each kernel starts when the host launched it or when the previous one ends; the host's "
              f"launch times are the same: the same host, launch path and Python overhead; a launch made while "
              f"{timeline.QUEUED}+ kernels were queued waits only for the previous kernel)"] if replayed else []),
           *([f"stage(s) {'; '.join(kept)}: launch gaps (span - busy) unchanged, busy time scaled with the kernel "
              f"time"] if kept else []),
           *([] if replayed or kept else ["launch gaps (span - busy) are unchanged: the same host, launch path and "
                                          "Python overhead"]),
           "kernels of no known cost (outside every graph, unknown ops) scale with DRAM bandwidth",
           ("collectives scale with NVLink bandwidth" if link else
            "collectives are unchanged (no link figure for both devices)"),
           "overlap between streams is unchanged: busy time scales with the kernel time",
           "TF32 and dtypes as recorded: a faster path the target offers (fp8, TF32 left off) is not taken"]
    if measured.measured and not target.measured:
        out.append(f"measured on a CPU ({measured.name}): its achieved fractions say little about a GPU; read the "
                   f"prediction as arithmetic, not a forecast")
    return out





def devices(measured, device, ceilings: str | None = None) -> tuple:
    """(measured, target, ceilings used): ``device`` resolved; ``ceilings`` None: the target's calibrated
    ceilings where ``graphmfu calibrate`` measured it (then the measured device's too, when it has them),
    else the datasheet's; "datasheet" / "calibrated" as ``Report.on``."""
    from graphmfu.calibrate import ceilings_for, entry
    from graphmfu.hardware import get_device

    target = get_device(device)
    which = ceilings or ("calibrated" if target.measured or entry(target.name) else "datasheet")
    if which == "calibrated":
        target = ceilings_for(target, "calibrated")
        if measured.measured or entry(measured.name):
            measured = ceilings_for(measured, "calibrated")
    elif ceilings == "datasheet":
        target = ceilings_for(target, "datasheet")
    return measured, target, which
__all__ = ["predict", "devices", "Prediction", "kernel_class", "CLASSES", "assumes"]
