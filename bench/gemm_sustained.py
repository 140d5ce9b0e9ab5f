"""A sustained bf16 GEMM ceiling: the GEMMs of one Llama 3 405B layer at TP8 (forward, input grad, weight grad),
looped back to back for ``--seconds`` on one GPU, timed in windows with CUDA events, the SM clock, power and
temperature read beside them (nvidia-smi).  What a long training run's GEMMs reach once the GPU sits at its
power limit, against ``graphmfu calibrate``'s best-of 8192^3 burst (80.5% of the H200's datasheet peak).

    python bench/gemm_sustained.py [--seconds 60] [--tokens 8192] [--out DIR]

Shapes (per rank; hidden 16384, FFN 53248, 128 query heads and 8 KV heads of 128 at TP 8; ``--tokens`` rows, the
sequence after sequence parallelism's all-gather): QKV 16384 -> 2304, output 2048 -> 16384, gate+up 16384 ->
13312, down 6656 -> 16384; each as forward [T,K]x[K,N], input grad [T,N]x[N,K] and weight grad [K,T]x[T,N].
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

PEAK_BF16 = 989.5e12  # H100/H200 SXM dense bf16 datasheet (graphmfu/hardware)
LAYER = [("qkv", 16384, 2304), ("o", 2048, 16384), ("gate_up", 16384, 13312), ("down", 6656, 16384)]


def gemms(t: int):
    """(name, A, B) for one layer's 12 GEMMs; FLOPs 2*M*K*N each."""
    out = []
    for name, k, n in LAYER:
        x = torch.randn(t, k, device="cuda", dtype=torch.bfloat16)
        w = torch.randn(k, n, device="cuda", dtype=torch.bfloat16)
        dy = torch.randn(t, n, device="cuda", dtype=torch.bfloat16)
        out += [(f"{name}.fwd", x, w), (f"{name}.dgrad", dy, w.t()), (f"{name}.wgrad", x.t(), dy)]
    return out


def flops(ops) -> int:
    return sum(2 * a.shape[0] * a.shape[1] * b.shape[1] for _, a, b in ops)


def smi_start(path: Path):
    try:
        return subprocess.Popen(["nvidia-smi", "--query-gpu=timestamp,clocks.sm,power.draw,temperature.gpu,"
                                 "clocks_throttle_reasons.active", "--format=csv,noheader,nounits", "-lms", "500"],
                                stdout=path.open("w"), stderr=subprocess.DEVNULL)
    except (OSError, FileNotFoundError):
        return None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--tokens", type=int, default=8192)
    ap.add_argument("--window", type=float, default=2.0, help="seconds per timed window")
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    out = Path(a.out or ".")
    out.mkdir(parents=True, exist_ok=True)
    ops = gemms(a.tokens)
    per_layer = flops(ops)
    # each GEMM alone, best of 20 after warm-up: the burst figure of these shapes
    alone = {}
    for name, x, w in ops:
        for _ in range(5):
            torch.mm(x, w)
        ts = []
        for _ in range(20):
            s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            s.record()
            torch.mm(x, w)
            e.record()
            e.synchronize()
            ts.append(s.elapsed_time(e) * 1e-3)
        alone[name] = 2 * x.shape[0] * x.shape[1] * w.shape[1] / min(ts)
    smi = smi_start(out / "gemm_sustained_smi.csv")
    windows = []
    t_end = time.perf_counter() + a.seconds
    reps = 1
    torch.cuda.synchronize()
    while time.perf_counter() < t_end:
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        for _ in range(reps):
            for _, x, w in ops:
                torch.mm(x, w)
        e.record()
        e.synchronize()
        dt = s.elapsed_time(e) * 1e-3
        windows.append({"t": a.seconds - (t_end - time.perf_counter()), "seconds": dt, "layers": reps,
                        "tflops": per_layer * reps / dt / 1e12})
        reps = max(1, int(reps * a.window / max(dt, 1e-6)))  # about --window seconds per window
    if smi is not None:
        smi.terminate()
        smi.wait()
    tf = [w["tflops"] for w in windows]
    late = [w["tflops"] for w in windows if w["t"] > a.seconds / 2]
    total_s = sum(w["seconds"] for w in windows)
    total = sum(per_layer * w["layers"] for w in windows) / total_s
    lines = [f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}; one 405B layer's GEMMs at TP8, "
             f"{a.tokens} tokens: {per_layer / 1e12:.3f} TFLOP per pass, {len(ops)} GEMMs",
             "each GEMM alone, best of 20 (TFLOP/s, % of 989.5): " + ", ".join(
                 f"{k} {v / 1e12:.0f} ({v / PEAK_BF16:.1%})" for k, v in alone.items()),
             f"sustained {total_s:.1f} s in {len(windows)} windows: overall {total / 1e12:.1f} TFLOP/s "
             f"= {total / PEAK_BF16:.1%} of peak; first window {tf[0]:.1f}, second half median "
             f"{statistics.median(late):.1f} (min {min(late):.1f}, max {max(late):.1f}) = "
             f"{statistics.median(late) * 1e12 / PEAK_BF16:.1%} of peak"]
    smi_rows = []
    p = out / "gemm_sustained_smi.csv"
    if p.exists():
        for line in p.read_text().splitlines():
            f = [x.strip() for x in line.split(",")]
            try:
                smi_rows.append({"clock_mhz": float(f[1]), "power_w": float(f[2]), "temp_c": float(f[3]),
                                 "throttle": f[4]})
            except (IndexError, ValueError):
                continue
    if smi_rows:
        half = smi_rows[len(smi_rows) // 2:]
        lines.append(f"nvidia-smi every 0.5 s, second half: SM clock median {statistics.median(r['clock_mhz'] for r in half):.0f} "
                     f"MHz (min {min(r['clock_mhz'] for r in half):.0f}), power median "
                     f"{statistics.median(r['power_w'] for r in half):.0f} W (max {max(r['power_w'] for r in half):.0f}), "
                     f"temperature max {max(r['temp_c'] for r in half):.0f} C, throttle reasons seen "
                     f"{sorted({r['throttle'] for r in half})}")
    text = "\n".join(lines)
    print(text)
    (out / "gemm_sustained.txt").write_text(text + "\n")
    (out / "gemm_sustained.json").write_text(json.dumps({"alone": alone, "windows": windows, "smi": smi_rows,
                                                         "per_layer_flops": per_layer}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
