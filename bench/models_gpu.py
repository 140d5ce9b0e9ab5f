"""The real-model suite on the GPU (issue 10, item 5): every inference case of tests/hf_models.py (tiny
transformers models, random weights) and two vision models (torchvision resnet50, timm vit_small),
compiled with ``graphmfu.backend``, called once to compile, then once under ``graphmfu.profile()``.

Per model, from the profiled report (per-call numbers: each graph's nodes times its calls in the
profiled call, so a graph Dynamo calls once per layer after a graph break counts every call):
  graphs, failed graphs, unknown ops (ops with no rule), % of measured kernel time attributed,
  dense FLOPs against the reference, attention (SDPA, or bmm inside the attention modules) dense and
  effective FLOPs against the hand count of tests/test_models.py (the (query, key) pairs each mask
  keeps), MoE routed experts against tokens x top-k (hand).
The reference for dense FLOPs is FlopCounterMode over the same eager call (on the CPU), each
``F.scaled_dot_product_attention`` call counted by FlopCounterMode's own SDPA formula (K/V heads
expanded) whatever backend eager or the compiled graph picks for it (CPU eager runs the fused CPU
flash kernel, or the math path's bmm when q/k and v head dims differ; the CUDA graph may run efficient
attention or the math path's bmm), ``_grouped_mm`` as 0 (it misses the routed experts that run as
transformers' ``grouped_mm_fallback``) plus the experts by hand.  graphmfu's SDPA nodes are each
checked against the same formula.

Acceptance (issue 10): dense within 0.1% of the reference, attention dense and effective equal to the
hand count within 0.1%, 0 unknown ops, 0 failed graphs.  A row that misses one says which in
``check``; the exit status is 1 if any row does.  Effective counts the issue leaves open are
listed as known (``KNOWN_EFFECTIVE``, from tests/test_models.py's strict xfails) and not failed.

    OUT=out PYTHONPATH=. python bench/models_gpu.py [--models llama,bert,resnet50] [--device cpu]

Writes models_gpu.txt (the table and the failures) and models_gpu.json under $OUT (default ./out).
With no CUDA it runs on CPU (slow: pick a few --models)."""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import time
import traceback
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from torch.overrides import TorchFunctionMode  # noqa: E402
from torch.utils import flop_counter as fcm  # noqa: E402

import graphmfu  # noqa: E402

TOL = 1e-3  # 0.1%
EXPERT_OPS = ("transformers.grouped_mm_fallback.default", "aten._grouped_mm.default")
VISION = ("resnet50", "vit_small")


def _load_suite():
    """tests/test_models.py as a module: its cases (tests/hf_models.py) and hand counts."""
    spec = importlib.util.spec_from_file_location("graphmfu_tests_test_models", ROOT / "tests" / "test_models.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def _is_sdpa(op: str) -> bool:
    return op.startswith("aten._scaled_dot_product") and "backward" not in op


def _zero(*args, **kwargs) -> int:
    return 0


class _AttentionByFormula(TorchFunctionMode):
    """At each ``F.scaled_dot_product_attention`` call: FlopCounterMode's SDPA formula over the call's
    q/k/v (K/V heads expanded to Q's), and whatever FlopCounterMode counted inside the call taken back
    out.  Eager picks its SDPA backend per device and shape (on the CPU the fused
    ``_scaled_dot_product_flash_attention_for_cpu``, or the math path's bmm where the head dims differ,
    e.g. DeepSeek-V3's qk 24 / v 16) and the compiled CUDA graph may pick another (efficient attention,
    or the math path's bmm): counting the call by its formula makes the reference the same whichever
    kernel either side runs."""

    def __init__(self, fc):
        super().__init__()
        self.fc, self.formula, self.inside, self.calls = fc, 0, 0, 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is not torch.nn.functional.scaled_dot_product_attention:
            return func(*args, **kwargs)
        before = self.fc.get_total_flops()
        out = func(*args, **kwargs)
        self.inside += self.fc.get_total_flops() - before
        named = dict(zip(("query", "key", "value"), args[:3]), **kwargs)
        q, k, v = (list(named[n].shape) for n in ("query", "key", "value"))
        self.formula += fcm.sdpa_flop_count(q, (k[0], q[1], k[2], k[3]), (v[0], q[1], v[2], v[3]))
        self.calls += 1
        return out


def reference(model, inputs: dict) -> int:
    """FlopCounterMode's total over one eager no-grad call, each SDPA call counted by FlopCounterMode's
    own SDPA formula whichever backend eager runs it on (``_AttentionByFormula``), grouped mm as 0
    (the routed experts are added by hand).  SDPA's fused ops are also mapped to 0 because
    FlopCounterMode asserts on GQA SDPA under torch 2.11; the formula counts them instead."""
    packets = [p for p in fcm.flop_registry
               if "scaled_dot_product" in str(p) or "_grouped_mm" in str(p)]
    fc = fcm.FlopCounterMode(display=False, custom_mapping={p: _zero for p in packets})
    attn = _AttentionByFormula(fc)
    with torch.no_grad(), fc, attn:
        model(**inputs)
    return fc.get_total_flops() - attn.inside + attn.formula


def sdpa_formula(node) -> int:
    """FlopCounterMode's forward SDPA formula for one graphmfu SDPA node (K/V heads expanded to Q's)."""
    q, k, v = (list(s[0]) for s in node["inputs"][:3])
    kx, vx = (k[0], q[1], k[2], k[3]), (v[0], q[1], v[2], v[3])
    return fcm.sdpa_flop_count(q, kx, vx)


def graph_calls(rep) -> dict:
    """Calls of each graph in the profiled block: the most calls of any of its kernels."""
    calls: dict = {}
    for k in rep.kernels:
        calls[k["graph"]] = max(calls.get(k["graph"], 0), k["calls"])
    return calls


def run_model(model, inputs: dict, device: str):
    """Compile with graphmfu.backend, warm up once, profile one call; the profiled Report."""
    torch._dynamo.reset()
    graphmfu.reset()
    compiled = torch.compile(model, backend=graphmfu.backend)
    with torch.no_grad():
        compiled(**inputs)
        if device == "cuda":
            torch.cuda.synchronize()
        with graphmfu.profile() as p, graphmfu.stage("infer"):
            compiled(**inputs)
            if device == "cuda":
                torch.cuda.synchronize()
    return p.report()


def measure(name: str, model, inputs: dict, device: str, suite=None) -> dict:
    """One row of the table.  ``model`` and ``inputs`` on the CPU: FlopCounterMode's reference runs
    there (eager transformers experts on CUDA may take a grouped-mm kernel that fp32 lacks; the count
    does not depend on the device), then both move to ``device`` for the compiled, profiled calls."""
    t0 = time.perf_counter()
    ref = reference(model, inputs)
    model = model.to(device)
    inputs = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}
    rep = run_model(model, inputs, device)
    cov = rep.coverage()
    calls = graph_calls(rep)

    def total(nodes, key):
        return sum(n[key] * calls.get(n["graph"], 0) for n in nodes)

    nodes = rep.nodes
    sdpa = [n for n in nodes if _is_sdpa(n["op"])]
    experts = [n for n in nodes if n["op"] in EXPERT_OPS]
    # per call: measured kernel rows (an input-dependent mask is counted from each call's real mask
    # there); an SDPA node is one kernel of its own (extern / fallback), so its row is its count
    sdpa_rows = [k for k in rep.kernels if _is_sdpa(k["op"])]
    dense = sum(k["flops_dense"] for k in rep.kernels)
    row = {"model": name, "graphs": len(rep.data["graphs"]), "failed": len(cov["graphs_failed"]),
           "unknown": sum(u["count"] for u in cov["unknown_ops"]), "attributed": cov.get("time_attributed", 0.0),
           "calls_missing": sorted(g["id"] for g in rep.data["graphs"] if not calls.get(g["id"])),
           "dense": dense, "nodes_x_calls": total(nodes, "flops_dense"), "reference": None, "attn_dense": None,
           "attn_dense_hand": None, "attn_eff": None, "attn_eff_hand": None, "experts": None, "experts_hand": None,
           "stage_flops_dense": None, "unattributed": cov.get("unattributed_kernels", [])[:8], "check": []}
    if rep.stages:
        row["stage_flops_dense"] = rep.stages[0]["flops_dense"]
    bad_sdpa = [n["module"] for n in sdpa if n["flops_dense"] != sdpa_formula(n)]
    row["reference"] = ref + total(experts, "flops_dense")
    if suite is not None and name in suite.H.MODELS:
        spec = suite.attention_hand(name)
        mods = set(spec)
        bmm = [n for n in nodes if n["op"] == "aten.bmm.default" and n["module"]
               and any(m == n["module"] or m.endswith("." + n["module"]) for m in mods)]
        row["attn_dense"] = sum(k["flops_dense"] for k in sdpa_rows) + total(bmm, "flops_dense")
        row["attn_eff"] = sum(k["flops"] for k in sdpa_rows) + total(bmm, "flops")
        row["attn_dense_hand"] = sum(suite.attention_flops(d, hq, dqk, dv, False) for _, d, hq, dqk, dv in spec.values())
        row["attn_eff_hand"] = sum(suite.attention_flops(k, hq, dqk, dv, False) for k, _, hq, dqk, dv in spec.values())
        if name in suite.MOE:
            row["experts"], row["experts_hand"] = total(experts, "flops_dense"), suite.routed_hand(name, False)
    # the acceptance
    chk = row["check"]
    if row["failed"]:
        chk.append(f"failed graphs: {cov['graphs_failed']}")
    if row["unknown"]:
        chk.append(f"unknown ops: {[u['op'] for u in cov['unknown_ops']]}")
    if row["calls_missing"]:
        chk.append(f"graphs with no joined call: {row['calls_missing']}")
    if bad_sdpa:
        chk.append(f"SDPA nodes != FlopCounterMode formula: {bad_sdpa}")
    if not _close(dense, row["reference"]):
        chk.append("dense != reference")
    if dense != row["nodes_x_calls"]:
        chk.append("kernel rows != nodes x calls (a node in no joined kernel?)")
    if row["attn_dense_hand"] is not None and not _close(row["attn_dense"], row["attn_dense_hand"]):
        chk.append("attention dense != hand")
    if row["attn_eff_hand"] is not None and not _close(row["attn_eff"], row["attn_eff_hand"]):
        known = getattr(suite, "EFFECTIVE_WRONG", {}).get(name)
        chk.append("attention effective != hand" + (" (known: strict xfail in tests/test_models.py)" if known else ""))
    if row["experts_hand"] is not None and row["experts"] != row["experts_hand"]:
        chk.append("experts != tokens x top-k")
    row["seconds"] = time.perf_counter() - t0
    return row


def _close(a, b) -> bool:
    return a is not None and b is not None and abs(a - b) <= TOL * max(abs(b), 1)


def vision(name: str):
    """torchvision resnet50 / timm vit_small (random weights), batch 2 at 224x224, on the CPU."""
    torch.manual_seed(0)
    if name == "resnet50":
        import torchvision

        model = torchvision.models.resnet50()
    else:
        import timm

        model = timm.create_model("vit_small_patch16_224", pretrained=False)
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    return model.eval(), {"x": x}


class _Positional(torch.nn.Module):
    """Calls ``model(x)`` from ``model(x=...)``: one calling convention for every case."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(x)


def _fmt(v, pct=False):
    if v is None:
        return "-"
    if pct:
        return f"{v * 100:.2f}%"
    return f"{v:,}" if isinstance(v, int) else str(v)


def _ratio(a, b):
    return "-" if a is None or b is None or not b else f"{a / b:.5f}"


def table(rows: list[dict]) -> str:
    head = ["model", "graphs", "failed", "unknown", "attributed", "dense", "reference", "dense/ref",
            "attn dense/hand", "attn eff", "attn eff hand", "eff/hand", "experts/hand", "s", "check"]
    body = [[r["model"], r["graphs"], r["failed"], r["unknown"], _fmt(r["attributed"], pct=True), _fmt(r["dense"]),
             _fmt(r["reference"]), _ratio(r["dense"], r["reference"]), _ratio(r["attn_dense"], r["attn_dense_hand"]),
             _fmt(r["attn_eff"]), _fmt(r["attn_eff_hand"]), _ratio(r["attn_eff"], r["attn_eff_hand"]),
             _ratio(r["experts"], r["experts_hand"]), f"{r.get('seconds', 0):.1f}",
             "ok" if not r["check"] else "; ".join(r["check"])] for r in rows]
    cells = [[str(c) for c in row] for row in [head] + body]
    w = [max(len(row[i]) for row in cells) for i in range(len(head) - 1)]
    lines = ["  ".join(c.rjust(w[i]) if i else c.ljust(w[i]) for i, c in enumerate(row[:-1])) + "  " + row[-1]
             for row in cells]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="", help="comma-separated names (default: every suite model + vision)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--out", default=os.environ.get("OUT", "out"))
    a = ap.parse_args(argv)
    warnings.filterwarnings("ignore")
    if a.device == "cuda" and not torch.cuda.is_available():
        print("no CUDA here: running on CPU (--device cpu)")
        a.device = "cpu"
    suite = _load_suite()
    names = [n for n in a.models.split(",") if n] or [*suite.H.MODELS, *VISION]
    try:
        import transformers

        tv = transformers.__version__
    except ImportError:
        tv = "-"
    dev_name = torch.cuda.get_device_name() if a.device == "cuda" else "cpu"
    header = (f"graphmfu real-model suite, inference, through graphmfu.profile(): {dev_name}, torch {torch.__version__}, "
              f"transformers {tv}")
    print(header, flush=True)
    rows, t0 = [], time.perf_counter()
    for name in names:
        try:
            if name in VISION:
                model, x = vision(name)
                row = measure(name, _Positional(model), x, a.device)
            else:
                c = suite.H.MODELS[name]()
                x = {k: v for k, v in c.inputs.items() if k != "labels"}
                row = measure(name, c.model, x, a.device, suite)
        except Exception as e:  # noqa: BLE001 - one row per model, the run goes on
            row = {"model": name, "graphs": 0, "failed": 0, "unknown": 0, "attributed": None, "dense": None,
                   "reference": None, "attn_dense": None, "attn_dense_hand": None, "attn_eff": None,
                   "attn_eff_hand": None, "experts": None, "experts_hand": None,
                   "check": [f"error: {type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"],
                   "traceback": traceback.format_exc()}
        rows.append(row)
        print(f"  {name}: {'ok' if not row['check'] else '; '.join(row['check'])}", flush=True)
    text = "\n".join([header, table(rows), "",
                      f"{sum(not r['check'] for r in rows)}/{len(rows)} models meet the acceptance; "
                      f"total {time.perf_counter() - t0:.0f} s"])
    print(text)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "models_gpu.txt").write_text(text + "\n")
    (out / "models_gpu.json").write_text(json.dumps({"header": header, "rows": rows}, indent=1, default=str))
    return 0 if all(not r["check"] or all("(known" in c for c in r["check"]) for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
