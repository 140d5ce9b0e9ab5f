"""Headroom: measured time above the roofline, per kernel, module and stage, ranked.

Derived from a timed report's own rows (``derive.views``), never stored:

  kernel  headroom_s = time_s - t_min_s            (the kernel row's measured time, all calls, less its
                                                    roofline minimum on the report's device)
  module  headroom_s = sum over its kernels         (kernels cut to ``depth``: each kernel in one module,
                                                    so the module rows sum to the kernel rows)
  stage   headroom_s = span_s - t_min_s             (the stage's device span less the roofline minimum of
                                                    its kernels: launch gaps and kernels of no known cost
                                                    count in full)
  step_s             = sum of top-level stage spans + kernel time outside every stage
                       (no stages: the profile's device kernel time)
  share_of_step      = headroom_s / step_s

A headroom can be negative: a kernel faster than its roofline minimum (operands in cache, a wrong
ceiling; the row's ``flags`` say which).  Nested stages are inclusive (a child's headroom is in its
parent's), so only top-level stage shares add up.
"""
from __future__ import annotations

import dataclasses

from graphmfu.derive import by_depth, in_stage
from graphmfu.render import Section, ms


@dataclasses.dataclass
class Headroom:
    """Ranked headroom rows of one timed report (``Report.headroom()``)."""
    step_s: float
    kernels: list
    modules: list
    stages: list
    depth: int | None = 2

    def rows(self, by: str = "kernel") -> list[dict]:
        """The ranked rows of ``by`` kernel, module or stage (most headroom first)."""
        table = {"kernel": self.kernels, "module": self.modules, "stage": self.stages}
        if by not in table:
            from graphmfu.errors import GraphMFUError

            raise GraphMFUError(f"headroom rows(by={by!r}): use 'kernel', 'module' or 'stage'")
        return table[by]

    def section(self, by: str = "kernel", top: int | None = 10) -> Section:
        rows = self.rows(by)[:top] if top else self.rows(by)
        title = f"headroom by {by}" + (f" (depth {self.depth})" if by == "module" else "") + \
            f": time above the roofline, step {ms(self.step_s)} ms"
        where = {"kernel": ["stage", "module"], "module": [], "stage": []}[by]
        return Section(title, [by, *where, "measured ms", "t_min ms", "headroom ms", "% of step", "SOL %", "bound"],
                       [[r["name"][:56] or "(root)", *((r[w] or ("(root)" if w == "module" else "-")) for w in where), ms(r["measured_s"]),
                         ms(r["t_min_s"]), ms(r["headroom_s"]), _pct(r["share_of_step"]), _pct(r["sol"]), r["bound"]]
                        for r in rows])

    def sections(self, top: int | None = 10) -> list[Section]:
        return [self.section(by, top) for by in ("stage", "module", "kernel") if self.rows(by)]

    def table(self, by: str | None = None, top: int | None = 10) -> str:
        from graphmfu.render import tabulate

        secs = [self.section(by, top)] if by else self.sections(top)
        return "\n\n".join(f"{s.title}:\n{tabulate(s)}" for s in secs)

    def __str__(self) -> str:
        return self.table()


def _pct(x) -> str:
    return "-" if x is None else f"{x * 100:.1f}"


def step_s(data: dict, unattributed: list) -> float:
    """The step's measured time: top-level stage spans plus kernel time outside every stage."""
    stages = data.get("stages", [])
    if not stages:
        return data.get("timing", {}).get("device_kernel_time_s", 0.0) or \
            sum(k["time_s"] for k in data.get("kernels", []))
    spans = sum(s["span_s"] for s in stages if s["parent"] is None)
    outside = sum(k["time_s"] for k in data.get("kernels", []) if not k["stage"])
    outside += sum(o["time_s"] for o in unattributed if not o["stage"])
    return spans + outside


def _row(name: str, measured: float, t_min: float, step: float, bound: str, **extra) -> dict:
    h = measured - t_min
    return {"name": name, "measured_s": measured, "t_min_s": t_min, "headroom_s": h,
            "share_of_step": h / step if step else None, "sol": t_min / measured if measured else None,
            "bound": bound, **extra}


def _bound(rows: list[dict]) -> str:
    """The bound holding most of the rows' time (``mixed`` when no bound holds half of it)."""
    t: dict = {}
    for r in rows:
        t[r["bound"]] = t.get(r["bound"], 0.0) + r["time_s"]
    total = sum(t.values())
    best = max(t, key=t.get) if t else "none"
    return best if total and t[best] >= total / 2 else "mixed"


def headroom(data: dict, unattributed: list, depth: int | None = 2) -> Headroom:
    """The headroom of a derived document (``Report.data``) and its timing's unattributed rows."""
    step = step_s(data, unattributed)
    kernels = data.get("kernels", [])
    krows = [_row(k["name"], k["time_s"], k["t_min_s"], step, k["bound"], stage=k["stage"], module=k["module"],
                  graph=k["graph"], index=k["index"], op=k["op"], calls=k["calls"], flags=list(k.get("flags", ())))
             for k in kernels]
    mrows = [_row(mod, sum(k["time_s"] for k in ks), sum(k["t_min_s"] for k in ks), step, _bound(ks), module=mod,
                  kernels=len(ks)) for mod, ks in by_depth(kernels, depth).items()]
    srows = []
    for s in data.get("stages", []):
        ks = [k for k in kernels if in_stage(k["stage"], s["name"])]
        srows.append(_row(s["name"], s["span_s"], sum(k["t_min_s"] for k in ks), step, _bound(ks) if ks else "none",
                          stage=s["name"], parent=s["parent"], idle_s=s["span_s"] - s["busy_s"],
                          kernel_headroom_s=sum(k["time_s"] - k["t_min_s"] for k in ks),
                          unattributed_s=s["unattributed_s"]))
    key = lambda r: -r["headroom_s"]  # noqa: E731
    return Headroom(step, sorted(krows, key=key), sorted(mrows, key=key), sorted(srows, key=key), depth)


__all__ = ["Headroom", "headroom", "step_s"]
