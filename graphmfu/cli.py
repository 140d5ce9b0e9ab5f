"""``graphmfu`` on the command line: view a saved report, list known devices.

    graphmfu show report.json [--by module|op|node] [--depth N] [--top N]
    graphmfu devices
"""
from __future__ import annotations

import argparse
import sys

from graphmfu.errors import GraphMFUError


def _show(a) -> None:
    from graphmfu.report import Report

    rep = Report.load(a.report)
    print(rep.summary())
    print()
    print(rep.table(by=a.by, depth=a.depth, top=a.top))


def _devices(a) -> None:
    from tabulate import tabulate

    from graphmfu.hardware import DTYPES, known_devices, lookup

    rows = []
    for name in known_devices():
        s = lookup(name)
        rows.append([name] + [s.peaks_tflops.get(d, "") for d in DTYPES] + [s.dram_gbps, s.source])
    print(tabulate(rows, headers=["device", *DTYPES, "DRAM GB/s", "source"], tablefmt="simple"))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="graphmfu", description="graphmfu: FLOPs, bytes and roofline per op/module")
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("show", help="print a saved report (JSON from Report.save)")
    s.add_argument("report")
    s.add_argument("--by", choices=("module", "op", "node"), default="module")
    s.add_argument("--depth", type=int, default=2)
    s.add_argument("--top", type=int, default=25)
    s.set_defaults(fn=_show)
    d = sub.add_parser("devices", help="list the device table (dense peaks, DRAM bandwidth, sources)")
    d.set_defaults(fn=_devices)
    a = p.parse_args(argv)
    try:
        a.fn(a)
    except GraphMFUError as e:
        print(str(e), file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
