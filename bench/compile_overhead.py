"""Compile-time overhead of the graphmfu backend: (compile + first call with graphmfu.backend) /
(compile + first call with plain Inductor), same model, caches off for both, median of 3.
Each trial runs in a fresh process with its own empty Inductor cache dir; trials alternate.
Target: <= 1.05.
    python bench/compile_overhead.py [--trials 3] [--inference] [-- extra minimal_llama flags]
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

TRIAL = r"""
import json, sys, time, torch
sys.path.insert(0, {root!r})
from examples.minimal_llama import Llama, LlamaConfig
backend_name, inference, device = sys.argv[1], sys.argv[2] == "1", sys.argv[3]
import graphmfu
torch.manual_seed(0)
dtype = torch.bfloat16 if device == "cuda" else torch.float32
model = Llama(LlamaConfig()).to(device=device, dtype=dtype)
tokens = torch.randint(0, 1000, (1, 128), device=device)
be = graphmfu.backend if backend_name == "graphmfu" else "inductor"
t0 = time.perf_counter()
cm = torch.compile(model, backend=be)
if inference:
    with torch.no_grad():
        out = cm(tokens)
else:
    cm(tokens).float().pow(2).mean().backward()
if device == "cuda":
    torch.cuda.synchronize()
dt = time.perf_counter() - t0
nodes = len(graphmfu.report().nodes) if backend_name == "graphmfu" else 0
print(json.dumps({{"t": dt, "nodes": nodes}}))
"""


def trial(name, inference, device):
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, TORCHINDUCTOR_FORCE_DISABLE_CACHES="1", TORCHINDUCTOR_CACHE_DIR=cache,
                   PYTHONWARNINGS="ignore")
        code = TRIAL.format(root=str(ROOT))
        p = subprocess.run([sys.executable, "-c", code, name, "1" if inference else "0", device],
                           capture_output=True, text=True, env=env)
        if p.returncode:
            sys.exit(f"trial {name} failed:\n{p.stderr[-2000:]}")
        return json.loads(p.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--trials", type=int, default=3)
    ap.add_argument("--inference", action="store_true")
    ap.add_argument("--device", default="cuda" if _has_cuda() else "cpu")
    a = ap.parse_args()
    times = {"inductor": [], "graphmfu": []}
    nodes = 0
    for i in range(a.trials):
        for name in ("inductor", "graphmfu"):
            r = trial(name, a.inference, a.device)
            times[name].append(r["t"])
            nodes = max(nodes, r["nodes"])
            print(f"trial {i + 1} {name:8s} compile+first call {r['t']:.2f} s", flush=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    ratio = med["graphmfu"] / med["inductor"]
    print(f"compile_overhead ({a.device}, minimal_llama default, {'inference' if a.inference else 'training step'}, "
          f"{nodes} nodes analysed): plain Inductor median {med['inductor']:.2f} s, graphmfu median "
          f"{med['graphmfu']:.2f} s, ratio {ratio:.3f} (target <= 1.05: {'met' if ratio <= 1.05 else 'NOT met'})")


def _has_cuda():
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


if __name__ == "__main__":
    main()
