"""GPU validation of ``graphmfu.compare`` (issue 4): minimal_llama prefill (T=512) and one decode step
over a 512-token cache, bf16, d 4096, ffn 11008, 32 heads, eager against compiled.

Prints the comparison (stage, module, kernel, slower-module tables) and the cross-check of every
stage time graphmfu reports (the device span of each call, from the profile) against
``torch.cuda.Event`` timing of the same calls; target: within 5%.  Writes JSON and Markdown to $OUT.

    PYTHONPATH=. python bench/compare_gpu.py [--layers 2] [--mode reduce-overhead]
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
import graphmfu  # noqa: E402
from minimal_llama import graphmfu_compare  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--kv-heads", type=int, default=32)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--mode", default=None)
    ap.add_argument("--stages", default="prefill,decode")
    ap.add_argument("--tag", default="default")
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    a = ap.parse_args()
    argv = ["--dim", "4096", "--ffn", "11008", "--heads", "32", "--kv-heads", str(a.kv_heads), "--layers",
            str(a.layers), "--vocab", str(a.vocab), "--seq", "512", "--dtype", "bf16", "--device", "cuda"]
    argv += [f"--{s}" for s in a.stages.split(",")]
    setup = graphmfu_compare(argv)
    cmp = graphmfu.compare(setup["model"], stages=setup["stages"], warmup=a.warmup, iters=a.iters, mode=a.mode)
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}; minimal_llama {' '.join(argv)}; "
          f"compiled mode {a.mode or 'default'}")
    print(cmp.table(depth=3, top=10))
    print("\ncross-check: graphmfu stage time (device span per call) vs torch.cuda.Event of the same calls")
    worst = 0.0
    for s in cmp.stages:
        for side in ("eager", "compiled"):
            x = s[side]
            dev = abs(x["span_s"] / x["event_s"] - 1)
            worst = max(worst, dev)
            print(f"  {s['name']:8s} {side:8s} graphmfu {x['span_s'] * 1e3:8.4f} ms  events {x['event_s'] * 1e3:8.4f} ms"
                  f"  diff {dev * 100:5.2f}%  (no profiler: {x['clean_s'] * 1e3:.4f} ms)")
    print(f"worst deviation {worst * 100:.2f}% ({'within' if worst <= 0.05 else 'NOT within'} 5%)")
    out = Path(a.out)
    cmp.save(out / f"compare_{a.tag}.json")
    cmp.save(out / f"compare_{a.tag}.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
