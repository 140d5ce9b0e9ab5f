"""``graphmfu`` on the command line: view a saved report, list known devices.

    graphmfu show report.json [--by module|op|node] [--depth N] [--top N]   (a report or a comparison)
    graphmfu compare script.py [--iters N] [--warmup N] [--mode M] [--json F] [--markdown F] -- [script args]
    graphmfu devices

``graphmfu compare`` imports ``script.py`` (its ``if __name__ == "__main__"`` block does not run)
and calls its ``graphmfu_compare(argv)``, which returns a dict: ``model`` (an nn.Module) and
``stages`` ({name: args tuple or callable(model)}), optionally ``warmup``, ``iters``, ``mode``,
``training``.  ``examples/minimal_llama.py`` implements it.
"""
from __future__ import annotations

import argparse
import sys

from graphmfu.errors import GraphMFUError


def _show(a) -> None:
    import json
    from pathlib import Path

    from graphmfu.comparison import Comparison
    from graphmfu.report import Report

    try:
        data = json.loads(Path(a.report).read_text())
    except (OSError, ValueError) as e:
        raise GraphMFUError(f"show: cannot read {a.report}: {e}; pass a JSON file written by Report.save() or "
                            f"Comparison.save()") from None
    is_cmp = isinstance(data, dict) and str(data.get("schema", "")).startswith("graphmfu.compare/")
    # Report.from_dict / Comparison() reject a non-dict, a missing schema or record, a newer schema; a
    # document that passes those checks but lacks a field further in is still the file's fault, not a bug
    # to show as a traceback.
    try:
        if is_cmp:
            text = Comparison(data).table(depth=a.depth, top=a.top)
        else:
            rep = Report.from_dict(data)
            text = f"{rep.summary()}\n\n{rep.table(by=a.by, depth=a.depth, top=a.top)}"
    except (KeyError, IndexError, TypeError, AttributeError, ValueError) as e:
        what = "comparison" if is_cmp else "report"
        detail = f"missing field {e}" if isinstance(e, KeyError) else f"{type(e).__name__}: {e}"
        raise GraphMFUError(f"show: {a.report} is not a complete graphmfu {what} ({detail}); pass a JSON file "
                            f"written by {'Comparison' if is_cmp else 'Report'}.save() of this graphmfu") from None
    print(text)


def load_script(path: str):
    """Import a compare script by path (not as __main__); return its graphmfu_compare function."""
    import importlib.util
    import os

    if not os.path.isfile(path):
        raise GraphMFUError(f"compare: no such script {path!r}; give the path of a Python file that defines "
                            f"graphmfu_compare(argv)")
    spec = importlib.util.spec_from_file_location("graphmfu_compare_script", path) if path.endswith(".py") else None
    if spec is None or spec.loader is None:
        raise GraphMFUError(f"compare: {path} is not a Python file (.py); give the path of a .py script that "
                            f"defines graphmfu_compare(argv) (see examples/minimal_llama.py)")
    sys.path.insert(0, os.path.dirname(os.path.abspath(path)))
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses and pickling look the module up there
    try:
        spec.loader.exec_module(mod)
    except Exception as e:  # noqa: BLE001 - the user's script: one line, not a traceback
        raise GraphMFUError(f"compare: importing {path} failed: {type(e).__name__}: {e}") from None
    fn = getattr(mod, "graphmfu_compare", None)
    if not callable(fn):
        raise GraphMFUError(f"compare: {path} has no graphmfu_compare(argv) function; define one returning "
                            f"{{'model': ..., 'stages': {{name: args}}}} (see examples/minimal_llama.py)")
    return fn


def _compare(a) -> None:
    import torch

    from graphmfu.compare import compare

    setup = load_script(a.script)(list(a.script_args))
    if not isinstance(setup, dict) or "model" not in setup:
        raise GraphMFUError(f"compare: {a.script}'s graphmfu_compare(argv) must return a dict with 'model' and "
                            f"'stages', got {type(setup).__name__}")
    extra = set(setup) - {"model", "stages", "warmup", "iters", "mode", "training", "args"}
    if extra:
        raise GraphMFUError(f"compare: graphmfu_compare returned unknown key(s) {sorted(extra)}; allowed: model, "
                            f"stages, args, warmup, iters, mode, training")
    opts = {k: setup[k] for k in ("warmup", "iters", "mode", "training") if k in setup}
    for k in ("warmup", "iters", "mode"):
        if getattr(a, k) is not None:
            opts[k] = getattr(a, k)
    torch.manual_seed(0)
    cmp = compare(setup["model"], *setup.get("args", ()), stages=setup.get("stages"), clean=not a.no_clean, **opts)
    print(cmp.table(depth=a.depth, top=a.top))
    if a.json:
        cmp.save(a.json)
        print(f"comparison written to {a.json}")
    if a.markdown:
        cmp.save(a.markdown if a.markdown.endswith(".md") else a.markdown + ".md")
        print(f"markdown written to {a.markdown}")


def _devices(a) -> None:
    from tabulate import tabulate

    from graphmfu.hardware import DTYPES, device_aliases, known_devices, lookup

    aliases = device_aliases()
    rows = []
    for name in known_devices():
        s = lookup(name)
        rows.append([name] + [s.peaks_tflops.get(d, "") for d in DTYPES]
                    + [s.dram_gbps, ";".join(aliases.get(name, [])), s.source])
    print(tabulate(rows, headers=["device", *DTYPES, "DRAM GB/s", "aliases", "source"],
                   tablefmt="simple"))


def _count(minimum: int):
    """argparse type: an integer >= minimum (a negative --top or --depth would silently drop rows)."""
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {text!r}") from None
        if v < minimum:
            raise argparse.ArgumentTypeError(f"must be an integer >= {minimum}, got {v}"
                                             + (" (0 means all)" if minimum == 0 else ""))
        return v
    parse.__name__ = f"integer >= {minimum}"
    return parse


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="graphmfu", description="graphmfu: FLOPs, bytes and roofline per op/module")
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("show", help="print a saved report (JSON from Report.save)")
    s.add_argument("report")
    s.add_argument("--by", choices=("module", "op", "node"), default="module")
    s.add_argument("--depth", type=_count(0), default=2)
    s.add_argument("--top", type=_count(0), default=25, help="rows to print (0: all)")
    s.set_defaults(fn=_show)
    c = sub.add_parser("compare", help="eager against compiled: graphmfu compare script.py -- [script args]")
    c.add_argument("script")
    c.add_argument("--warmup", type=_count(0), default=None)
    c.add_argument("--iters", type=_count(1), default=None)
    c.add_argument("--mode", default=None, help="torch.compile mode for the compiled side")
    c.add_argument("--depth", type=_count(0), default=2)
    c.add_argument("--top", type=_count(0), default=10, help="rows to print (0: all)")
    c.add_argument("--json", help="write the comparison document (JSON) here")
    c.add_argument("--markdown", help="write the comparison as Markdown here")
    c.add_argument("--no-clean", action="store_true", help="skip the unprofiled timing iterations")
    c.set_defaults(fn=_compare)
    d = sub.add_parser("devices", help="list the device table (dense peaks, DRAM bandwidth, sources)")
    d.set_defaults(fn=_devices)
    argv = list(sys.argv[1:] if argv is None else argv)
    rest = []
    if "--" in argv:  # everything after -- belongs to the compared script
        i = argv.index("--")
        argv, rest = argv[:i], argv[i + 1:]
    a = p.parse_args(argv)
    a.script_args = rest
    try:
        a.fn(a)
    except GraphMFUError as e:
        print(str(e), file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
