"""``graphmfu`` on the command line (also ``python -m graphmfu``).

    graphmfu run script.py [--steps N | --wait W --warmup U --active A --repeat R] [--out DIR] -- [script args]
    graphmfu show report.json [--by module|op|node] [--depth N] [--top N] [--html r.html] [--ceilings calibrated]
    graphmfu plot report.json [-o roofline.png|.svg|.html|.txt] [--by kernel|module|node] [--stage S]
    graphmfu compare script.py [--iters N] [--warmup N] [--mode M] [--json F] [--markdown F] [--html F] -- [args]
    graphmfu calibrate [--device cuda|cpu] [--quick]
    graphmfu ncu report.json ncu.csv [...]
    graphmfu devices
    graphmfu plan --model llama3-405b --world 8192 --tp 8 --pp 16 --dp 64 --seq 8192 [--search] [--json F]

``graphmfu run`` runs an unmodified script as ``python script.py args`` would, with ``torch.compile``
routed to graphmfu's backend (``backend="inductor"``, the default, becomes ``graphmfu.backend`` with the
same ``mode``/``options``; other backends are left alone), profiles it (the whole run, or a schedule of
steps: a step begins at each call of the first compiled model or function that runs, as
``torch.profiler.schedule`` counts them) and writes ``report.json``, ``report.html`` and the annotated
trace into ``--out``.  A script that opens its own ``graphmfu.profile()`` measures itself: the run's
profile stops there and the script's session is the report.

``graphmfu compare`` imports ``script.py`` (its ``if __name__ == "__main__"`` block does not run)
and calls its ``graphmfu_compare(argv)``, which returns a dict: ``model`` (an nn.Module) and
``stages`` ({name: args tuple or callable(model)}), optionally ``warmup``, ``iters``, ``mode``,
``training``.  ``examples/minimal_llama.py`` implements it.
"""
from __future__ import annotations

import argparse
import sys

from graphmfu.errors import GraphMFUError


def _load_doc(path: str, cmd: str):
    """A saved report or comparison (JSON), by its schema."""
    import json
    from pathlib import Path

    from graphmfu.comparison import Comparison
    from graphmfu.report import Report

    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise GraphMFUError(f"{cmd}: cannot read {path}: {e}; pass a JSON file written by Report.save() or "
                            f"Comparison.save()") from None
    if isinstance(data, dict) and str(data.get("schema", "")).startswith("graphmfu.compare/"):
        return Comparison(data)
    return Report.from_dict(data)


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
            doc = Comparison(data)
            if a.ceilings:
                doc = doc.on(_ceilings(doc.device, a.ceilings))
            text = doc.table(depth=a.depth, top=a.top)
        else:
            doc = Report.from_dict(data)
            if a.ceilings:
                doc = doc.on(ceilings=a.ceilings)
            text = f"{doc.summary()}\n\n{doc.table(by=a.by, depth=a.depth, top=a.top)}"
            if a.headroom:
                from graphmfu.headroom.cli import show_headroom

                text += "\n\n" + show_headroom(doc, top=a.top or None)
        if a.html:
            doc.save(a.html if a.html.endswith((".html", ".htm")) else a.html + ".html", depth=a.depth)
    except (KeyError, IndexError, TypeError, AttributeError, ValueError) as e:
        what = "comparison" if is_cmp else "report"
        detail = f"missing field {e}" if isinstance(e, KeyError) else f"{type(e).__name__}: {e}"
        raise GraphMFUError(f"show: {a.report} is not a complete graphmfu {what} ({detail}); pass a JSON file "
                            f"written by {'Comparison' if is_cmp else 'Report'}.save() of this graphmfu") from None
    print(text)
    if a.html:
        print(f"HTML written to {a.html}")


def _ceilings(dev, which: str):
    from graphmfu.calibrate import ceilings_for

    return ceilings_for(dev, which)


def _plot(a) -> None:
    doc = _load_doc(a.report, "plot")
    if a.ceilings:
        doc = doc.on(_ceilings(doc.device, a.ceilings))
    by = a.by or ("module" if hasattr(doc, "reports") else "kernel")
    out = doc.plot_roofline(a.output, by=by, stage=a.stage, color=a.color, depth=a.depth, top=a.top)
    if a.output is None:
        print(out, end="")
    else:
        print(f"roofline written to {out}")


def _calibrate(a) -> None:
    from graphmfu.calibrate import calibrate, table
    from graphmfu.progress import progress

    with progress(total=6, desc="graphmfu calibrate") as bar:
        e = calibrate(a.device, quick=a.quick, progress=bar)
    print(table(e))


def _ncu(argv: list) -> int:
    import importlib

    try:
        ncu = importlib.import_module("graphmfu.ncu")
    except ImportError:
        print("graphmfu ncu: not available in this graphmfu (no graphmfu/ncu.py); update graphmfu", file=sys.stderr)
        return 2
    try:
        return int(ncu.main(list(argv)) or 0)
    except GraphMFUError as e:
        print(str(e), file=sys.stderr)
        return 2


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
    if a.html:
        cmp.save(a.html if a.html.endswith((".html", ".htm")) else a.html + ".html", depth=a.depth)
        print(f"HTML written to {a.html}")


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


def _assumption(text: str):
    """argparse type: KEY=VALUE (a number, true/false, or a name such as a link fabric)."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE (e.g. gemm=0.7 or tp_overlap=1), got {text!r}")
    v = value.strip()
    if v.lower() in ("true", "false"):
        return key.strip(), v.lower() == "true"
    try:
        return key.strip(), float(v)
    except ValueError:
        return key.strip(), v


def _plan(a) -> None:
    import json
    import os

    from graphmfu.parallel import plan_parallel

    model = a.model
    if os.path.exists(model):  # a transformers config.json (or a folder holding one)
        try:
            from transformers import AutoConfig
        except ImportError:
            raise GraphMFUError("plan: reading a config needs transformers: pip install transformers") from None
        path = os.path.join(model, "config.json") if os.path.isdir(model) else model
        try:
            data = json.loads(open(path).read())
            model = AutoConfig.for_model(**data)
        except (OSError, ValueError, KeyError) as e:
            raise GraphMFUError(f"plan: cannot read a transformers config from {path}: {e}") from None
    links = {k: v for k, v in (("internode", a.internode), ("nvlink", a.nvlink)) if v is not None}
    for k, v in links.items():
        try:
            links[k] = float(v)
        except ValueError:
            pass
    opts = {k: v for k, v in (("recompute", a.recompute), ("cp_mode", a.cp_mode)) if v is not None}
    if a.no_sp:
        opts["sequence_parallel"] = False
    plan = plan_parallel(model, world=a.world, tp=a.tp, pp=a.pp, dp=a.dp, cp=a.cp, ep=a.ep, fsdp=a.fsdp,
                         microbatches=a.microbatches, virtual_stages=a.virtual_stages,
                         microbatch_size=a.microbatch_size, seq=a.seq, device=a.device, links=links or None,
                         search=a.search, global_batch=a.global_batch, assumptions=dict(a.set or []),
                         balance_ends=a.balance_ends, reshard_after_forward=a.reshard, **opts)
    print(plan.table(top=a.top))
    if a.json:
        plan.save(a.json)
        print(f"plan written to {a.json}")


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


def _run(a) -> int:
    return Run(a).main()


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="graphmfu", description="graphmfu: FLOPs, bytes and roofline per op/module")
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="profile an unmodified script: graphmfu run script.py -- [script args]")
    r.add_argument("script")
    r.add_argument("--out", default="graphmfu-run", help="folder for report.json, report.html, trace (default "
                                                          "graphmfu-run)")
    r.add_argument("--steps", type=_count(1), default=None,
                   help="profile N steps after one compile step and one profiler warm-up step (a step begins at "
                        "each call of the first compiled model/function); default: the whole run")
    r.add_argument("--wait", type=_count(0), default=None, help="schedule: steps skipped per cycle")
    r.add_argument("--warmup", type=_count(0), default=None, help="schedule: profiler warm-up steps per cycle")
    r.add_argument("--active", type=_count(1), default=None, help="schedule: steps recorded per cycle")
    r.add_argument("--repeat", type=_count(0), default=None, help="schedule: cycles (0: until the run ends)")
    r.add_argument("--skip-first", type=_count(0), default=None, help="schedule: steps skipped before the first "
                                                                      "cycle (default 1: the compile)")
    r.add_argument("--no-profile", action="store_true",
                   help="only route torch.compile: a static report of the compiled graphs (for scripts that run "
                        "torch.profiler themselves)")
    r.add_argument("--device", default=None, help="ceilings to report against (default: where the graphs ran)")
    r.add_argument("--ceilings", choices=("datasheet", "calibrated"), default=None)
    r.add_argument("--quiet", action="store_true", help="print no tables (files only)")
    r.set_defaults(fn=_run)
    s = sub.add_parser("show", help="print a saved report (JSON from Report.save)")
    s.add_argument("report")
    s.add_argument("--by", choices=("module", "op", "node"), default="module")
    s.add_argument("--depth", type=_count(0), default=2)
    s.add_argument("--top", type=_count(0), default=25, help="rows to print (0: all)")
    s.add_argument("--html", default=None, help="also write the report as one self-contained HTML page here")
    s.add_argument("--ceilings", choices=("datasheet", "calibrated"), default=None,
                   help="SOL against the datasheet or the ceilings graphmfu calibrate measured")
    s.add_argument("--headroom", action="store_true",
                   help="time above the roofline per stage, module and kernel, and its causes (timed reports)")
    s.set_defaults(fn=_show)
    pl = sub.add_parser("plot", help="draw a saved report's roofline: graphmfu plot r.json -o roofline.png")
    pl.add_argument("report")
    pl.add_argument("-o", "--output", default=None, help=".png, .svg, .pdf (matplotlib), .html (plotly), .txt; "
                                                         "none: the terminal")
    pl.add_argument("--by", choices=("kernel", "module", "node"), default=None,
                    help="default: kernel (a comparison: module)")
    pl.add_argument("--stage", default=None)
    pl.add_argument("--color", choices=("module", "stage"), default=None)
    pl.add_argument("--depth", type=_count(0), default=2)
    pl.add_argument("--top", type=_count(0), default=5, help="offenders to label")
    pl.add_argument("--ceilings", choices=("datasheet", "calibrated"), default=None)
    pl.set_defaults(fn=_plot)
    cal = sub.add_parser("calibrate", help="measure this device's achievable ceilings (GEMMs, a DRAM copy)")
    cal.add_argument("--device", default=None, help="cuda (default when present) or cpu")
    cal.add_argument("--quick", action="store_true", help="smaller sizes, fewer repeats")
    cal.set_defaults(fn=_calibrate)
    sub.add_parser("ncu", help="join an Nsight Compute CSV to a report: graphmfu ncu report.json ncu.csv",
                   add_help=False)
    c = sub.add_parser("compare", help="eager against compiled: graphmfu compare script.py -- [script args]")
    c.add_argument("script")
    c.add_argument("--warmup", type=_count(0), default=None)
    c.add_argument("--iters", type=_count(1), default=None)
    c.add_argument("--mode", default=None, help="torch.compile mode for the compiled side")
    c.add_argument("--depth", type=_count(0), default=2)
    c.add_argument("--top", type=_count(0), default=10, help="rows to print (0: all)")
    c.add_argument("--json", help="write the comparison document (JSON) here")
    c.add_argument("--markdown", help="write the comparison as Markdown here")
    c.add_argument("--html", help="write the comparison as one self-contained HTML page here")
    c.add_argument("--no-clean", action="store_true", help="skip the unprofiled timing iterations")
    c.set_defaults(fn=_compare)
    sub.add_parser("predict", help="predict a timed report on another device: graphmfu predict r.json --on b200",
                   add_help=False)
    d = sub.add_parser("devices", help="list the device table (dense peaks, DRAM bandwidth, sources)")
    d.set_defaults(fn=_devices)
    _plan_parser(sub)
    return p


def _plan_parser(sub) -> None:
    pn = sub.add_parser("plan", help="plan a parallel layout on paper: graphmfu plan --model llama3-405b --world 8192 "
                                     "--tp 8 --pp 16 --dp 64 --seq 8192 [--search]")
    pn.add_argument("--model", required=True, help="a preset (llama3-8b, llama3-70b, llama3-405b, deepseek-v3, "
                                                   "tiny-llama, tiny-moe) or a transformers config.json / folder")
    pn.add_argument("--world", type=_count(1), required=True, help="ranks (GPUs) in the job")
    for name, default, text in (("--tp", 1, "tensor parallel"), ("--pp", 1, "pipeline stages"),
                                ("--cp", 1, "context parallel"), ("--ep", 1, "expert parallel")):
        pn.add_argument(name, type=_count(1), default=default, help=f"{text} degree (default {default})")
    pn.add_argument("--dp", type=_count(1), default=None, help="data parallel degree (default: world / (tp*cp*pp))")
    pn.add_argument("--fsdp", type=_count(1), default=None, help="FSDP shard group (default: all of dp*cp; 1: DDP; "
                                                                 "between: HSDP)")
    pn.add_argument("--seq", type=_count(1), required=True, help="tokens per sequence")
    pn.add_argument("--microbatches", type=_count(1), default=None, help="microbatches per step (default: pp)")
    pn.add_argument("--microbatch-size", type=_count(1), default=None, help="sequences per microbatch (default 1)")
    pn.add_argument("--virtual-stages", type=_count(1), default=1, help="model chunks per pipeline rank (interleaved)")
    pn.add_argument("--recompute", choices=("none", "selective", "full"), default=None)
    pn.add_argument("--cp-mode", choices=("allgather", "ring"), default=None)
    pn.add_argument("--no-sp", action="store_true", help="no sequence parallelism (TP all-reduces)")
    pn.add_argument("--balance-ends", action="store_true", help="embedding and head take a layer's slot (Llama 3)")
    pn.add_argument("--reshard", action="store_true", help="FSDP reshards parameters after the forward")
    pn.add_argument("--device", default="h100-sxm", help="device name or alias (default h100-sxm)")
    pn.add_argument("--internode", default=None, help="inter-node fabric (links.csv: roce-400g, ib-ndr-400g, ...) or "
                                                      "GB/s per GPU")
    pn.add_argument("--nvlink", default=None, help="intra-node fabric name or GB/s per GPU")
    pn.add_argument("--set", action="append", type=_assumption, metavar="KEY=VALUE",
                    help="override an assumption (gemm=0.7, attention=0.5, tp_overlap=1, ...); repeatable")
    pn.add_argument("--search", action="store_true", help="also rank candidate layouts of this world and batch")
    pn.add_argument("--global-batch", type=_count(1), default=None, help="sequences per step for --search (default: "
                                                                         "the given layout's)")
    pn.add_argument("--top", type=_count(0), default=20, help="rows to print (0: all)")
    pn.add_argument("--json", default=None, help="write the plan (rows, breakdown, assumptions) as JSON here")
    pn.set_defaults(fn=_plan)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["ncu"]:  # its own argument parser (graphmfu/ncu.py)
        return _ncu(argv[1:])
    if argv[:1] == ["predict"]:  # its own argument parser (graphmfu/headroom/cli.py)
        from graphmfu.headroom.cli import predict_main

        return predict_main(argv[1:])
    p = parser()
    rest = []
    if "--" in argv:  # everything after -- belongs to the compared script
        i = argv.index("--")
        argv, rest = argv[:i], argv[i + 1:]
    a = p.parse_args(argv)
    a.script_args = rest
    try:
        return int(a.fn(a) or 0)
    except GraphMFUError as e:
        print(str(e), file=sys.stderr)
        return 2


# --------------------------------------------------------------------------- graphmfu run


class _Stopped(Exception):
    """The run's own profile ended early because the script opened its own graphmfu.profile()."""


class _Counted:
    """graphmfu's backend for a routed ``torch.compile``, counting compiles for the progress line."""

    _graphmfu_backend = True

    def __deepcopy__(self, memo):  # as graphmfu's Backend: a handle, not a value
        return self

    def __init__(self, backend, run: "Run"):
        self.backend, self.run = backend, run

    def __call__(self, gm, example_inputs, **options):
        self.run.compiles += 1
        self.run.bar.update(1, f"compiling graph {self.run.compiles}")
        return self.backend(gm, example_inputs, **options)


class Run:
    """One ``graphmfu run``: the script executed as ``__main__`` with torch.compile routed to graphmfu's
    backend and its run profiled; then the report, its HTML page and the trace are written."""

    def __init__(self, a):
        self.a = a
        self.compiles = self.calls = 0
        self.capture = None  # the run's graphmfu.capture_all()
        self.own = None  # the run's own ProfileSession
        self.own_stopped = False
        self.sessions: list = []  # the script's own graphmfu.profile()/attach() sessions
        self.step_owner = None  # id of the compiled object whose calls mark steps
        self.bar = None

    # ---------------------------------------------------------------- routing torch.compile
    def _capture(self):
        """graphmfu.capture_all() for the script, each routed compile counted for the progress line and each
        compiled result marking the profiler's steps."""
        from graphmfu.capture_all import CaptureAll

        return CaptureAll(wrap=lambda b: _Counted(b, self), on_compiled=self._stepped)

    @property
    def left_alone(self) -> list[str]:
        return [e["backend"] for e in self.capture.left_alone] if self.capture is not None else []

    def _stepped(self, compiled):
        """Calls of the first compiled object that runs mark the profiler's steps (with a schedule)."""
        import functools

        import torch

        def mark():
            if self.own is None or self.own_stopped or torch.compiler.is_compiling():
                return
            if self.step_owner is None:
                self.step_owner = id(compiled)
            if self.step_owner == id(compiled):
                self.calls += 1
                if self.calls > 1 and self.scheduled:
                    self.own.step()

        if isinstance(compiled, torch.nn.Module):
            compiled.register_forward_pre_hook(lambda *_: mark())
            return compiled
        if not callable(compiled):
            return compiled

        @functools.wraps(compiled)
        def call(*args, **kwargs):
            mark()
            return compiled(*args, **kwargs)
        return call

    # ---------------------------------------------------------------- the script's own sessions
    def _script_profile(self, original):
        run = self

        def profile(**kwargs):
            run._stop_own()
            s = original(**kwargs)
            run.sessions.append(s)
            return s
        profile.__doc__ = original.__doc__
        return profile

    def _script_attach(self, original):
        run = self

        def attach(prof, registry=None):
            s = original(prof, registry)
            run.sessions.append(s)
            return s
        attach.__doc__ = original.__doc__
        return attach

    def _stop_own(self) -> None:
        if self.own is not None and not self.own_stopped:
            self.own_stopped = True
            # not an error of the script's: a stage it has open stays open (the session's end check skipped)
            self.own.__exit__(_Stopped, _Stopped(), None)

    # ---------------------------------------------------------------- the schedule
    @property
    def scheduled(self) -> bool:
        a = self.a
        return any(v is not None for v in (a.steps, a.wait, a.warmup, a.active, a.repeat, a.skip_first))

    def _profiler_kwargs(self) -> dict:
        a = self.a
        if not self.scheduled:
            return {}
        from torch.profiler import schedule

        if a.steps is not None and a.active is not None:
            raise GraphMFUError("run: give --steps N or a schedule (--wait/--warmup/--active/--repeat), not both")
        active = a.steps if a.steps is not None else (a.active or 1)
        return {"schedule": schedule(wait=a.wait or 0, warmup=1 if a.warmup is None else a.warmup, active=active,
                                     repeat=1 if a.repeat is None and a.steps is not None else (a.repeat or 0),
                                     skip_first=1 if a.skip_first is None else a.skip_first)}

    # ---------------------------------------------------------------- running
    def main(self) -> int:
        import os
        import runpy
        import traceback

        import torch

        from graphmfu.profile import ProfileSession
        from graphmfu.progress import progress

        path = self.a.script
        if not os.path.isfile(path):
            raise GraphMFUError(f"run: no such script {path!r}; give the path of a Python file: graphmfu run "
                                f"script.py -- [its arguments]")
        pkg = sys.modules["graphmfu"]  # the package the script imports: its profile/attach are patched below
        patches = []
        if not self.a.no_profile:
            patches += [(pkg, "profile", self._script_profile(pkg.profile)),
                        (pkg, "attach", self._script_attach(pkg.attach))]
        saved = [(obj, name, getattr(obj, name)) for obj, name, _ in patches]
        argv, syspath = sys.argv[:], sys.path[:]
        code = 0
        failed = None
        self.bar = progress(desc="graphmfu run")
        try:
            self.capture = self._capture()
            for obj, name, new in patches:
                setattr(obj, name, new)
            sys.argv = [path, *self.a.script_args]
            sys.path.insert(0, os.path.dirname(os.path.abspath(path)))
            if not self.a.no_profile:
                self.own = ProfileSession(**self._profiler_kwargs())
                self.own.__enter__()
            try:
                runpy.run_path(path, run_name="__main__")
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
            except GraphMFUError:
                raise
            except Exception:  # noqa: BLE001 - the script's own failure: its traceback, then what was measured
                traceback.print_exc()
                failed = code = 1
        finally:
            if self.own is not None and not self.own_stopped:
                self.bar.update(0, "joining the profile")
                self.own_stopped = True
                self.own.__exit__(None, None, None)
            for obj, name, old in saved:
                setattr(obj, name, old)
            if self.capture is not None:
                self.capture.close()
            sys.argv, sys.path[:] = argv, syspath
            self.bar.close()
        self._write(failed)
        return code

    def _report(self):
        from graphmfu.hardware import device_for
        from graphmfu.registry import DEFAULT
        from graphmfu.report import Report

        for s in reversed(self.sessions):  # the script measured itself: its last session that joined
            try:
                return s.report(self.a.device), s, "the script's own graphmfu.profile() session"
            except GraphMFUError:
                continue
        if self.own is not None:
            try:
                what = "the run's profile" + (" (stopped when the script opened its own)" if self.sessions else "")
                return self.own.report(self.a.device), self.own, what
            except GraphMFUError as e:
                note = str(e)
        else:
            note = "not profiled (--no-profile)"
        if not DEFAULT.graphs and not DEFAULT.failures:
            raise GraphMFUError(f"run: {self.a.script} compiled nothing with torch.compile"
                                + (f" (backends left alone: {', '.join(sorted(set(self.left_alone)))})"
                                   if self.left_alone else "")
                                + "; graphmfu run reports on torch.compile'd models and functions")
        rec = DEFAULT.record()
        return Report(rec, device_for((g.device for g in rec.graphs), self.a.device)), None, f"static ({note})"

    def _write(self, failed) -> None:
        from pathlib import Path

        rep, session, what = self._report()
        if self.a.ceilings:
            rep = rep.on(ceilings=self.a.ceilings)
        if self.left_alone:
            rep.record.notes.append(f"graphmfu run: torch.compile calls with other backends were not routed "
                                    f"({', '.join(sorted(set(self.left_alone)))}); their graphs are not counted")
        out = Path(self.a.out)
        out.mkdir(parents=True, exist_ok=True)
        written = [rep.save(out / "report.json"), rep.save(out / "report.html")]
        export = getattr(session, "export_chrome_trace", None)
        if export is not None:
            try:
                export(str(out / "trace.json.gz"))
                written.append(out / "trace.json.gz")
            except GraphMFUError as e:
                print(f"graphmfu run: no trace written: {e}", file=sys.stderr)
        if not self.a.quiet:
            print(f"\ngraphmfu run: {self.a.script}: {len(rep.record.graphs)} graph(s), {self.compiles} compile(s) "
                  f"through graphmfu's backend; report from {what}")
            print(rep.summary())
            if rep.stages:
                print(rep.stage_table())
            if rep.kernels:
                print(rep.kernel_table(top=10))
            else:
                print(rep.table(top=15))
        print("graphmfu run wrote " + ", ".join(str(p) for p in written)
              + (" (the script failed: the report holds what ran before)" if failed else ""))


if __name__ == "__main__":
    sys.exit(main())
