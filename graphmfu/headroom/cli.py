"""The command line of headroom (wired into ``graphmfu/cli.py``):

    graphmfu show r.json --headroom           # show_headroom(report): ranked headroom and causes
    graphmfu predict r.json --on b200 [--ceilings datasheet|calibrated] [--json out.json]
    graphmfu predict r.json --sizes s0=32      # a shape what-if on the measured device
"""
from __future__ import annotations

import argparse
import sys

from graphmfu.errors import GraphMFUError


def show_headroom(report, top: int | None = 10) -> str:
    """The headroom tables (stage, module, kernel) and the ranked causes of a timed Report, as text."""
    from graphmfu.render import tabulate

    parts = []
    for s in report.headroom_sections(top):
        parts.append(f"{s.title}:" if s.title else "")
        if s.headers:
            parts.append(tabulate(s))
        parts += s.lines
        parts.append("")
    return "\n".join(p for p in parts).rstrip("\n")


def predict_main(argv=None) -> int:
    """``graphmfu predict r.json --on DEVICE``: the run's step and stage times predicted on DEVICE."""
    from graphmfu.report import Report

    ap = argparse.ArgumentParser(prog="graphmfu predict", description="predict a timed report's step and stage "
                                 "times on another device, per kernel class (docs/headroom.md)")
    ap.add_argument("report", help="a report saved from graphmfu.profile() (report.json)")
    ap.add_argument("--on", default=None, dest="device", help="target device (name or alias: h100-sxm, b200); "
                    "default: the measured one")
    ap.add_argument("--sizes", default=None, help="size symbols at other values, e.g. s0=32 (the measured dynamic "
                    "graphs' symbols: a batch of 8 measured, 32 asked)")
    ap.add_argument("--ceilings", choices=("datasheet", "calibrated"), default=None,
                    help="default: calibrated where graphmfu calibrate measured the target, else datasheet")
    ap.add_argument("--json", default=None, help="also write the prediction as JSON here")
    a = ap.parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        sizes = _parse_sizes(a.sizes) if a.sizes else None
        if a.device is None and sizes is None:
            raise GraphMFUError("say what to predict: --on DEVICE (another device) and/or --sizes s0=32 (other shapes)")
        p = Report.load(a.report).predict(a.device, ceilings=a.ceilings, sizes=sizes)
    except GraphMFUError as e:
        print(f"graphmfu predict: error: {e}", file=sys.stderr)
        return 2
    print(p.table())
    if a.json:
        import json
        from pathlib import Path

        Path(a.json).write_text(json.dumps(p.to_dict(), indent=1, default=str))
    return 0


def _parse_sizes(text: str) -> dict:
    out = {}
    for part in text.split(","):
        k, eq, v = part.partition("=")
        if not eq or not v.strip().lstrip("-").isdigit():
            raise GraphMFUError(f"--sizes {text!r}: write symbol=integer pairs separated by commas, e.g. s0=32")
        out[k.strip()] = int(v)
    return out


__all__ = ["show_headroom", "predict_main"]
