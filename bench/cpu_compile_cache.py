"""Whether graphmfu's CPU compiles reuse Inductor's C++ code cache: one model compiled twice in one process
(``torch._dynamo.reset()`` between), with graphmfu.backend and with plain Inductor, each in a fresh process with
its own empty Inductor cache dir and the FX / AOT caches off (as graphmfu compiles).  Prints each compile's
seconds and how many C++ kernel libraries (.so) it built, and after graphmfu's second compile a profiled call:
its C++ kernels must still join the graph (names ``graph_<id>_<kernel>``).

    python bench/cpu_compile_cache.py
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

TRIAL = r"""
import json, os, sys, time, torch
sys.path.insert(0, {root!r})
from pathlib import Path
from examples.minimal_llama import Llama, LlamaConfig
import graphmfu
torch._inductor.config.fx_graph_cache = False
torch._functorch.config.enable_autograd_cache = False
which = sys.argv[1]
cache = Path(os.environ["TORCHINDUCTOR_CACHE_DIR"])
torch.manual_seed(0)
model = Llama(LlamaConfig(dim=64, layers=2, heads=4, kv_heads=2, ffn=160, vocab=512, max_seq=128)).eval()
tokens = torch.randint(0, 512, (1, 32))
out = []
for i in range(2):
    torch._dynamo.reset()
    graphmfu.reset()
    before = len(list(cache.rglob("*.so")))
    t = time.perf_counter()
    cm = torch.compile(model, backend=graphmfu.backend if which == "graphmfu" else "inductor")
    with torch.no_grad():
        cm(tokens)
    out.append({{"seconds": time.perf_counter() - t, "new_so": len(list(cache.rglob("*.so"))) - before}})
if which == "graphmfu":
    with torch.no_grad(), graphmfu.profile() as p:
        cm(tokens)
    cov = p.report().coverage()
    out.append({{"time_attributed": cov.get("time_attributed")}})
print("RESULT " + json.dumps(out))
"""


def trial(which: str) -> list:
    with tempfile.TemporaryDirectory() as d:
        env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": d, "GRAPHMFU_PROGRESS": "0"}
        r = subprocess.run([sys.executable, "-c", TRIAL.format(root=str(ROOT)), which], env=env,
                           capture_output=True, text=True, timeout=900)
        line = next((x for x in r.stdout.splitlines() if x.startswith("RESULT ")), None)
        if line is None:
            raise SystemExit(f"{which} trial failed:\n{r.stderr[-2000:]}")
        return json.loads(line[len("RESULT "):])


def main() -> int:
    import torch

    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs; a 2-layer Llama d64 compiled twice in one process")
    res = {w: trial(w) for w in ("inductor", "graphmfu")}
    for w, r in res.items():
        print(f"{w:>9}: first {r[0]['seconds']:.2f} s ({r[0]['new_so']} new .so), second {r[1]['seconds']:.2f} s "
              f"({r[1]['new_so']} new .so)" + (f"; profiled call: kernel time attributed {r[2]['time_attributed']:.3f}"
                                               if len(r) > 2 else ""))
    ratio = res["graphmfu"][1]["seconds"] / res["inductor"][1]["seconds"]
    print(f"second compile, graphmfu / plain Inductor: {ratio:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
