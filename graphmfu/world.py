"""The world view: the reports of every rank of a job, gathered (``graphmfu.gather``), on one device.

A ``WorldReport`` holds each rank's ``Record`` (device-free, as that rank collected it) and one
``DeviceSpec`` (every rank of a job runs the same device); each rank's tables are that rank's
``Report``.  Derived here, at view time:

* ``ranks``: per rank its host, local device, totals (FLOPs, bytes, bus bytes), coverage, stages
  (span, busy, MFU as the rank's Report derives them) and exposed communication per stage;
* ``totals``: world sums (FLOPs of every rank: data parallelism counts each rank's own batch, tensor
  parallelism each rank's shard — nothing is divided by an assumed parallelism);
* ``stages``: per stage, world MFU = Σ over ranks of the matrix FLOPs' time at peak / (world size x
  the slowest rank's span), the span spread over ranks (min, max, the straggler), communication time
  and the exposed part (``overlap.py``) as shares of the summed spans;
* ``collectives``: per (kind, group, link) the count, payload and bus bytes per rank, the link's
  bandwidth (``hardware/links.py``: the group's ranks on one host -> NVLink/PCIe, else inter-node),
  the time the bus bytes need at that bandwidth and, when profiled, the measured time and bus
  bandwidth of the collectives' kernels.
"""
from __future__ import annotations

import json
from collections import defaultdict
from functools import cached_property
from pathlib import Path

from graphmfu import render
from graphmfu.errors import GraphMFUError
from graphmfu.hardware import DeviceSpec, get_device
from graphmfu.hardware.links import LinkSpec, links_for, same_host
from graphmfu.record import Record
from graphmfu.render import Section, ms, num, pct
from graphmfu.report import Report
from graphmfu.roofline import matrix_time_s, rate

WORLD_SCHEMA = "graphmfu.world/1"


class WorldReport:
    """Every rank's record on one device: ``ranks``, ``totals``, ``stages``, ``collectives``, ``notes``."""

    title = "graphmfu world report"

    def __init__(self, records: list[Record], device: DeviceSpec, links: LinkSpec | None = None,
                 notes: list | None = None):
        if not records or not all(isinstance(r, Record) for r in records) or not isinstance(device, DeviceSpec):
            raise GraphMFUError("WorldReport(records, device) takes a list of graphmfu Records (one per rank) and a "
                                "DeviceSpec; use graphmfu.gather(report) on every rank")
        self.records = sorted(records, key=lambda r: r.rank)
        self.device = device
        self.links = links or links_for(device)
        self.extra_notes = list(notes or [])

    # ---------------------------------------------------------------- per rank
    @cached_property
    def reports(self) -> list[Report]:
        return [Report(r, self.device) for r in self.records]

    def on(self, device=None, **link_overrides) -> "WorldReport":
        dev = self.device if device is None else get_device(device)
        return WorldReport(self.records, dev, links_for(dev, **link_overrides), self.extra_notes)

    @cached_property
    def hosts(self) -> dict:
        return {r.rank: r.host for r in self.records}

    def _comm_ops(self, rec: Record):
        return [(g, n) for g in rec.graphs for n in g.nodes if n.comm is not None]

    def link_of(self, comm, rec: Record) -> str:
        return self.links.link(same_host(comm.ranks, self.hosts, rec.local_world_size))

    @cached_property
    def ranks(self) -> list[dict]:
        rows = []
        for rec, rep in zip(self.records, self.reports):
            t = rep.totals
            cov = rep.coverage()
            comms = self._comm_ops(rec)
            rows.append({
                "rank": rec.rank, "world_size": rec.world_size, "host": rec.host, "local_rank": rec.local_rank,
                "device": rec.device, "pid": rec.pid, "graphs": len(rec.graphs),
                "flops": t["flops"], "flops_dense": t["flops_dense"], "vector_flops": t["vector_flops"],
                "bytes": t["bytes_read"] + t["bytes_written"], "t_matrix_s": _t_matrix(rec, self.device),
                "collectives": len(comms), "comm_bytes": _sum(n.comm.bytes for _, n in comms),
                "coverage": {"nodes_total": cov["nodes_total"], "nodes_unknown": cov["nodes_unknown"],
                             "unknown_ops": [u["op"] for u in cov["unknown_ops"]],
                             "graphs_failed": len(cov["graphs_failed"]),
                             "time_attributed": cov.get("time_attributed")},
                "stages": [{k: s[k] for k in ("name", "calls", "span_s", "busy_s", "flops", "mfu")} | {
                    "t_matrix_s": _stage_t_matrix(rep, s["name"])} for s in rep.stages],
                "exposed_comm": list(rec.timing.exposed_comm) if rec.timing is not None else [],
            })
        return rows

    # ---------------------------------------------------------------- world
    @cached_property
    def totals(self) -> dict:
        rs = self.ranks
        return {"ranks": len(rs), "world_size": max(r["world_size"] for r in rs),
                "hosts": len({r["host"] for r in rs}),
                **{k: sum(r[k] for r in rs) for k in ("flops", "flops_dense", "vector_flops", "bytes", "t_matrix_s",
                                                       "collectives")},
                "comm_bytes": _sum(r["comm_bytes"] for r in rs)}

    @cached_property
    def stages(self) -> list[dict]:
        n = len(self.ranks)
        by_name: dict = defaultdict(dict)
        for r in self.ranks:
            for s in r["stages"]:
                by_name[s["name"]][r["rank"]] = s
        exposed = {(r["rank"], e["stage"]): e for r in self.ranks for e in r["exposed_comm"]}
        rows = []
        for name, per in sorted(by_name.items()):
            spans = {rk: s["span_s"] for rk, s in per.items()}
            slow = max(spans, key=spans.get)
            span_max, span_min = spans[slow], min(spans.values())
            comm = [exposed[(rk, name)] for rk in per if (rk, name) in exposed]
            total_span = sum(spans.values())
            rows.append({
                "name": name, "ranks": len(per), "flops": sum(s["flops"] for s in per.values()),
                "span_max_s": span_max, "span_min_s": span_min, "span_mean_s": total_span / len(per),
                "straggler": slow, "spread": rate(span_max - span_min, span_max),
                "world_mfu": rate(sum(s["t_matrix_s"] for s in per.values()), n * span_max),
                "comm_s": sum(c["comm_s"] for c in comm) if comm else None,
                "exposed_s": sum(c["exposed_s"] for c in comm) if comm else None,
                "comm_share": rate(sum(c["comm_s"] for c in comm), total_span) if comm else None,
                "exposed_share": rate(sum(c["exposed_s"] for c in comm), total_span) if comm else None,
                "per_rank": {rk: {"span_s": s["span_s"], "mfu": s["mfu"]} for rk, s in sorted(per.items())},
            })
        return rows

    @cached_property
    def collectives(self) -> list[dict]:
        groups: dict = {}
        for rec, rep in zip(self.records, self.reports):
            measured = _measured_comm_time(rec, rep)
            for g, node in self._comm_ops(rec):
                c = node.comm
                link = self.link_of(c, rec)
                key = (c.kind, c.group, c.group_size, link)
                row = groups.setdefault(key, {"kind": c.kind, "group": c.group, "group_size": c.group_size,
                                              "link": link, "link_gbps": self.links.gbps(link), "ranks": set(),
                                              "count": 0, "size": 0, "comm_bytes": 0, "time_s": 0.0, "timed": 0})
                row["ranks"].add(rec.rank)
                row["count"] += 1
                row["size"] += c.size or 0
                row["comm_bytes"] = _sum([row["comm_bytes"], c.bytes])
                t = measured.get((g.id, node.name))
                if t is not None:
                    row["time_s"] += t
                    row["timed"] += 1
        out = []
        for row in groups.values():
            nr = len(row["ranks"])
            per_rank = row["comm_bytes"] / nr if row["comm_bytes"] is not None else None
            t_min = per_rank / (row["link_gbps"] * 1e9) if per_rank is not None and row["link_gbps"] else None
            time = row["time_s"] / nr if row["timed"] else None
            out.append({**row, "ranks": sorted(row["ranks"]), "count": row["count"] // nr, "size": row["size"] // nr,
                        "comm_bytes": per_rank, "t_min_s": t_min, "time_s": time,
                        "busbw_gbps": rate(per_rank, time) / 1e9 if time and per_rank is not None else None,
                        "link_util": rate(t_min, time) if t_min is not None and time else None})
        return sorted(out, key=lambda r: (r["kind"], r["group"]))

    @cached_property
    def notes(self) -> list[str]:
        out = list(self.extra_notes)
        for r in self.ranks:
            if not r["graphs"]:
                out.append(f"rank {r['rank']}: no graph recorded (nothing compiled with graphmfu.backend ran on "
                           f"this rank, or torch ran the model eagerly: see docs/distributed.md)")
        for rec in self.records:
            out += [f"rank {rec.rank}: {n}" for n in rec.notes]
        unknown = [c for c in self.collectives if c["comm_bytes"] is None]
        if unknown:
            out.append(f"{len(unknown)} collective group(s) could not be resolved: bus bytes unknown")
        if self.links.source:
            out.append(f"links: {self.links.source}")
        return out

    # ---------------------------------------------------------------- documents
    def sections(self, **options) -> list[Section]:
        t = self.totals
        out = [Section(lines=[
            f"{self.title}: {t['ranks']} rank(s) of world size {t['world_size']} on {t['hosts']} host(s); "
            f"device {self.device.name}",
            f"world: {num(t['flops'])} matrix FLOPs ({num(t['vector_flops'])} vector), {num(t['bytes'], 'B')} "
            f"DRAM bytes, {num(t['comm_bytes'] or 0, 'B')} bus bytes in {t['collectives']} collective op(s)"])]
        out.append(Section("ranks", ["rank", "host", "device", "graphs", "flops", "bytes", "bus bytes",
                                     "collectives", "unknown nodes"],
                           [[str(r["rank"]), r["host"], r["device"], str(r["graphs"]), num(r["flops"]),
                             num(r["bytes"], "B"), num(r["comm_bytes"] or 0, "B"), str(r["collectives"]),
                             f"{r['coverage']['nodes_unknown']}/{r['coverage']['nodes_total']}"] for r in self.ranks]))
        if self.stages:
            out.append(Section("stages (world)", ["stage", "ranks", "flops", "span max ms", "span min ms", "straggler",
                                                  "spread %", "world MFU %", "comm %", "exposed comm %"],
                               [[s["name"], str(s["ranks"]), num(s["flops"]), ms(s["span_max_s"]),
                                 ms(s["span_min_s"]), str(s["straggler"]), pct(s["spread"]), pct(s["world_mfu"]),
                                 pct(s["comm_share"]), pct(s["exposed_share"])] for s in self.stages]))
        if self.collectives:
            out.append(Section("collectives (per rank)", ["kind", "group", "n", "link", "GB/s", "count", "size",
                                                          "bus bytes", "t_min ms", "time ms", "busbw GB/s", "link %"],
                               [[c["kind"], c["group"], str(c["group_size"]), c["link"], _g(c["link_gbps"]),
                                 str(c["count"]), num(c["size"], "B"),
                                 num(c["comm_bytes"], "B") if c["comm_bytes"] is not None else "?",
                                 ms(c["t_min_s"]) if c["t_min_s"] is not None else "-",
                                 ms(c["time_s"]) if c["time_s"] is not None else "-", _g(c["busbw_gbps"]),
                                 pct(c["link_util"])] for c in self.collectives]))
        if self.notes:
            out.append(Section("notes", lines=list(self.notes)))
        return out

    def table(self) -> str:
        return render.renderers()[".txt"].render(self)

    def __str__(self) -> str:
        return self.table()

    def table_rows(self, name: str | None = None) -> list[dict]:
        tables = {"ranks": self.ranks, "stages": self.stages, "collectives": self.collectives}
        name = name or "ranks"
        if name not in tables:
            raise GraphMFUError(f"no table {name!r} in a world report; use one of {', '.join(tables)}")
        return tables[name]

    CSV_FIELDS = {"ranks": ("rank", "host", "local_rank", "device", "graphs", "flops", "flops_dense", "vector_flops",
                            "bytes", "t_matrix_s", "collectives", "comm_bytes"),
                  "stages": ("name", "ranks", "flops", "span_max_s", "span_min_s", "span_mean_s", "straggler",
                             "spread", "world_mfu", "comm_s", "exposed_s", "comm_share", "exposed_share"),
                  "collectives": ("kind", "group", "group_size", "link", "link_gbps", "count", "size",
                                  "comm_bytes", "t_min_s", "time_s", "busbw_gbps", "link_util")}

    def csv_fields(self, name: str | None = None) -> tuple:
        return self.CSV_FIELDS.get(name or "ranks", ())

    def to_dict(self) -> dict:
        return {"schema": WORLD_SCHEMA, "device": self.device.to_dict(), "links": self.links.to_dict(),
                "totals": self.totals, "ranks": self.ranks, "stages": self.stages, "collectives": self.collectives,
                "notes": self.notes, "extra_notes": self.extra_notes, "records": [r.to_dict() for r in self.records]}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1, default=str)

    def save(self, path, **options) -> Path:
        """``.json`` (every rank's record + the derived tables), ``.txt``, ``.md``, ``.csv`` (``table=``)."""
        return render.write(self, path, **options)

    @classmethod
    def from_dict(cls, d) -> "WorldReport":
        if not isinstance(d, dict) or d.get("schema") != WORLD_SCHEMA:
            raise GraphMFUError(f"not a graphmfu world report (schema {WORLD_SCHEMA}); pass a JSON file written by "
                                f"WorldReport.save()")
        links = d.get("links")
        return cls([Record.from_dict(r) for r in d["records"]], DeviceSpec.from_dict(d["device"]),
                   LinkSpec(**links) if links else None, d.get("extra_notes"))

    @classmethod
    def load(cls, path) -> "WorldReport":
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, ValueError) as e:
            raise GraphMFUError(f"cannot read world report {path}: {e}") from None
        return cls.from_dict(data)


def _sum(values):
    """Sum, or None when any value is unknown (a bus-byte total with an unresolved group is unknown)."""
    total = 0
    for v in values:
        if v is None:
            return None
        total += v
    return total


def _g(x) -> str:
    return "-" if x is None else f"{x:.4g}"


def _t_matrix(rec: Record, dev: DeviceSpec) -> float:
    """Time of the record's matrix FLOPs at peak (recomputed nodes are HFU: left out)."""
    return sum(matrix_time_s(n.cost, dev) for g in rec.graphs for n in g.nodes
               if n.cost is not None and not n.recompute)


def _stage_t_matrix(rep: Report, stage: str) -> float:
    return sum(k["t_matrix_s"] for k in rep.kernels if k["stage"] == stage or (k["stage"] or "").startswith(stage + "/"))


def _measured_comm_time(rec: Record, rep: Report) -> dict:
    """(graph id, op name) -> measured seconds of the kernels that run that collective op."""
    out: dict = {}
    gmap = {g.id: g for g in rec.graphs}
    for k in rep.kernels:
        g = gmap.get(k["graph"])
        if g is None or k["index"] >= len(g.kernels):
            continue
        by_name = {n.name: n for n in g.nodes}
        comm = [n for n in g.kernels[k["index"]].nodes if by_name.get(n) is not None and by_name[n].comm is not None]
        if len(comm) == 1:
            out[(g.id, comm[0])] = out.get((g.id, comm[0]), 0.0) + k["time_s"]
    return out


__all__ = ["WorldReport", "WORLD_SCHEMA"]
