"""Stage time against CUDA events around the same code (GPU; issue 21 item 3), and where any difference lies.

The Llama-3-8B-shaped prefill of 2 layers (d 4096, 32 q / 8 kv heads, ffn 14336, vocab 128256), T = 2048,
bf16, compiled with graphmfu.backend.  Printed per call, each a median over blocks:

* ``events``: CUDA events around N back-to-back calls, no profiler;
* under ``graphmfu.profile()`` with one ``stage`` around the N calls: the stage's span and busy time from
  the trace, CUDA events recorded inside the same stage (the same code, the same run), and what separates
  span from busy: the lead (stage start to its first kernel), the gaps between kernels, the tail;
* the same with each call its own stage occurrence.

    python bench/stage_events.py [--calls 10] [--blocks 5] [--out DIR]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

import graphmfu  # noqa: E402
from examples.minimal_llama import Llama, LlamaConfig  # noqa: E402

SHAPE = dict(dim=4096, layers=2, heads=32, kv_heads=8, ffn=14336, vocab=128256)


def events_block(fn, n: int) -> float:
    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize()
    a.record()
    for _ in range(n):
        fn()
    b.record()
    torch.cuda.synchronize()
    return a.elapsed_time(b) * 1e-3 / n


def gaps(session) -> dict:
    """Lead, inter-kernel gaps and tail of each stage occurrence of the session's last trace (seconds)."""
    measured, stages = session._traces[-1][0], session._traces[-1][1]
    out = {"lead": 0.0, "gaps": 0.0, "tail": 0.0, "kernels": 0}
    for occ in stages:
        ks = sorted((m for m in measured if occ["start_us"] <= m.launch_start_us <= occ["end_us"]),
                    key=lambda m: m.start_us)
        if not ks:
            continue
        out["kernels"] += len(ks)
        out["lead"] += (ks[0].start_us - occ["start_us"]) * 1e-6
        out["cpu_lead"] = out.get("cpu_lead", 0.0) + (ks[0].launch_start_us - occ["start_us"]) * 1e-6
        out["launch_to_start"] = out.get("launch_to_start", 0.0) + (ks[0].start_us - ks[0].launch_start_us) * 1e-6
        end = ks[0].end_us
        for m in ks[1:]:
            if m.start_us > end:
                out["gaps"] += (m.start_us - end) * 1e-6
            end = max(end, m.end_us)
        out["tail"] += (occ["end_us"] - end) * 1e-6  # negative: the device ran past the stage's CPU end
    return out


def profiled(fn, n: int, per_call: bool) -> dict:
    import time

    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    cpu = {}
    with graphmfu.profile() as p:
        if per_call:
            a.record()
            for _ in range(n):
                with graphmfu.stage("prefill"):
                    fn()
            b.record()
        else:
            t0 = time.perf_counter()
            with graphmfu.stage("prefill"):
                t1 = time.perf_counter()
                a.record()
                t2 = time.perf_counter()
                fn()
                t3 = time.perf_counter()
                for _ in range(n - 1):
                    fn()
                b.record()
            cpu = {"stage_enter": t1 - t0, "event_record": t2 - t1, "first_call_cpu": t3 - t2}
    torch.cuda.synchronize()
    rep = p.report()
    st = {s["name"]: s for s in rep.stages}["prefill"]
    g = gaps(p)
    return {"span": st["span_s"] / n, "busy": st["busy_s"] / n, "events_in_profile": a.elapsed_time(b) * 1e-3 / n,
            "mfu": st["mfu"], "flops": st["flops"] / n, "lead": g["lead"] / n, "gaps": g["gaps"] / n,
            "tail": g["tail"] / n, "kernels": g["kernels"] / n, "cpu_lead": g.get("cpu_lead", 0.0) / n,
            "launch_to_start": g.get("launch_to_start", 0.0) / n, "stage": st, "notes": rep.data["notes"], **cpu}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=10)
    ap.add_argument("--blocks", type=int, default=5)
    ap.add_argument("--seq", type=int, default=2048)
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    torch.manual_seed(0)
    cfg = LlamaConfig(max_seq=a.seq + 8, **SHAPE)
    model = Llama(cfg).to(device="cuda", dtype=torch.bfloat16).eval()
    tokens = torch.randint(0, cfg.vocab, (1, a.seq), device="cuda")
    cm = torch.compile(model, backend=graphmfu.backend)

    def call():
        with torch.no_grad():
            cm(tokens)

    for _ in range(3):
        call()
    torch.cuda.synchronize()
    ev, one, per = [], [], []
    for _ in range(a.blocks):  # interleaved: the device's state drifts the same for all three
        ev.append(events_block(call, a.calls))
        one.append(profiled(call, a.calls, per_call=False))
        per.append(profiled(call, a.calls, per_call=True))
    med = lambda rows, k: statistics.median(r[k] for r in rows)  # noqa: E731
    e = statistics.median(ev)
    peak = graphmfu.get_device("cuda").matrix_tflops("bf16") * 1e12
    lines = [f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}; Llama-3-8B shape, 2 layers, T {a.seq}, "
             f"bf16, prefill; {a.calls} calls per block, median of {a.blocks} blocks; per call:",
             f"  CUDA events, no profiler           {e * 1e3:8.3f} ms   MFU {one[0]['flops'] / e / peak:6.1%}"]
    for label, rows in (("one stage around the calls", one), ("one stage per call", per)):
        span, ein = med(rows, "span"), med(rows, "events_in_profile")
        lines += [f"  {label}:",
                  f"    stage span (trace)               {span * 1e3:8.3f} ms   MFU {med(rows, 'mfu'):6.1%}   "
                  f"span / events no profiler {span / e:.3f}",
                  f"    CUDA events inside the stage     {ein * 1e3:8.3f} ms   span / events here {span / ein:.3f}",
                  f"    busy (kernel time, union)        {med(rows, 'busy') * 1e3:8.3f} ms",
                  f"    lead (stage start -> 1st kernel) {med(rows, 'lead') * 1e3:8.3f} ms   of it CPU to its launch "
                  f"{med(rows, 'cpu_lead') * 1e3:.3f} ms, launch to start {med(rows, 'launch_to_start') * 1e3:.3f} ms",
                  f"    gaps between kernels             {med(rows, 'gaps') * 1e3:8.3f} ms",
                  f"    tail (last kernel end -> CPU end){med(rows, 'tail') * 1e3:8.3f} ms   kernels {med(rows, 'kernels'):.0f}"]
    if one[0].get("stage_enter") is not None:
        lines.append(f"  CPU, one stage: stage enter {med(one, 'stage_enter') * 1e3:.3f} ms, event record "
                     f"{med(one, 'event_record') * 1e3:.3f} ms, first call {med(one, 'first_call_cpu') * 1e3:.3f} ms")
    print("\n".join(lines))
    if a.out:
        Path(a.out).mkdir(parents=True, exist_ok=True)
        (Path(a.out) / "stage_events.json").write_text(json.dumps(
            {"events_no_profiler_s": ev, "one_stage": [{k: v for k, v in r.items() if k != "stage"} for r in one],
             "per_call": [{k: v for k, v in r.items() if k != "stage"} for r in per]}, indent=1, default=str))
        (Path(a.out) / "stage_events.txt").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
