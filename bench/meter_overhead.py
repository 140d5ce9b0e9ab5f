"""What the meter costs, and whether its MFU agrees with graphmfu.profile()'s (GPU).

    python bench/meter_overhead.py            # writes $OUT/meter_overhead.txt (OUT defaults to ./out)

Two workloads on Llama-3-8B layer shapes with 2 layers, bf16: a training step (forward, backward, an eager
fused AdamW) of --seq tokens, and a decode step against a static KV cache compiled with
mode="reduce-overhead" (CUDA graphs).  Overhead: rounds of N plain steps and N metered steps in
alternating order (ABBA), each block timed by CUDA events around the whole block; the ratio of the
medians over rounds (target <= 1.01).  Agreement: the same steps run once more under graphmfu.profile()
with a stage per step and the meter on: the meter's MFU (matrix time at peak / step time by events)
against the profile's stage MFU (over the stage span) — target within 2%.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import graphmfu  # noqa: E402
from examples.generate_llama import Generator, StaticCache  # noqa: E402
from examples.minimal_llama import Llama, LlamaConfig  # noqa: E402
from examples.train_llama import PRESETS  # noqa: E402


def _share(rows):
    """The time share in graphs, from the steps that timed their graph calls (every 10th by default)."""
    xs = [r["graph_time_share"] for r in rows if r["graph_time_share"] is not None]
    return f"{sum(xs) / len(xs):.1%} (mean of {len(xs)} timed steps)" if xs else "-"


CPU: dict = {True: [], False: []}  # CPU seconds per block (no sync inside), metered or not


def _block(fn, n, meter=None, tokens=None):
    """Seconds for n steps (events around the block)."""
    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    a.record()
    t0 = time.perf_counter()
    for _ in range(n):
        if meter is None:
            fn()
        else:
            with meter.step(tokens=tokens):
                fn()
    CPU[meter is not None].append((time.perf_counter() - t0) / n)
    b.record()
    b.synchronize()
    return a.elapsed_time(b) / 1e3


def overhead(fn, n, rounds, tokens, out):
    meter = graphmfu.meter(cuda=True)
    plain, metered = [], []
    for r in range(rounds):
        order = (False, True) if r % 2 == 0 else (True, False)
        for use in order:
            t = _block(fn, n, meter if use else None, tokens)
            (metered if use else plain).append(t / n)
    cpu = {k: v[-rounds:] for k, v in CPU.items()}
    t0 = time.perf_counter()
    rows = meter.records
    out(f"  CPU per step (loop, no sync) plain " + ", ".join(f"{x * 1e6:.0f}" for x in cpu[False]) + " us; metered "
        + ", ".join(f"{x * 1e6:.0f}" for x in cpu[True]) + f" us; {len(rows)} records derived when read in "
        f"{time.perf_counter() - t0:.3f} s")
    ratio = statistics.median(metered) / statistics.median(plain)
    per_round = [m / p for m, p in zip(metered, plain)]
    out(f"  plain step  median {statistics.median(plain) * 1e3:.4f} ms  (rounds: "
        + ", ".join(f"{x * 1e3:.4f}" for x in plain) + ")")
    out(f"  metered     median {statistics.median(metered) * 1e3:.4f} ms  (rounds: "
        + ", ".join(f"{x * 1e3:.4f}" for x in metered) + ")")
    out(f"  ratio metered/plain (medians) {ratio:.4f}; per round " + ", ".join(f"{x:.4f}" for x in per_round))
    return ratio, rows


def agreement(fn, n, tokens, out):
    meter = graphmfu.meter(cuda=torch.cuda.is_available(), graph_time=1)
    with graphmfu.profile() as p:
        for i in range(n):
            # the stage inside the meter step: both bracket the same work (the meter's own bookkeeping at a
            # step's start and end, finishing earlier steps, lies outside its events and outside the stage)
            with meter.step(tokens=tokens), graphmfu.stage(f"step{i}"):
                fn()
    rep = p.report()
    rows = meter.records
    if os.environ.get("TRACE_DIR"):  # the profile's trace, to look at a stage that disagrees
        p.export_chrome_trace(os.path.join(os.environ["TRACE_DIR"], f"agreement_{n}.json.gz"))
    worst = 0.0
    out(f"  {'step':>5} {'meter step ms':>14} {'stage span ms':>14} {'busy ms':>9} {'in graphs ms':>13} "
        f"{'meter MFU':>10} {'profile MFU':>12} {'meter MBU':>10} {'profile MBU':>12} {'MFU diff':>9}")
    by_name = {s["name"]: s for s in rep.stages}
    for r in rows:
        s = by_name[f"step{r['step']}"]
        diff = r["mfu"] / s["mfu"] - 1 if s["mfu"] else float("nan")
        worst = max(worst, abs(diff))
        out(f"  {r['step']:>5} {r['step_s'] * 1e3:>14.4f} {s['span_s'] * 1e3:>14.4f} {s['busy_s'] * 1e3:>9.3f} "
            f"{r['graph_s'] * 1e3:>13.3f} {r['mfu']:>10.4%} "
            f"{s['mfu']:>12.4%} {r['mbu']:>10.4%} {s['mbu']:>12.4%} {diff:>+9.2%}")
    for r in rows:  # what a step that disagrees holds: its kernel time by graph, and kernels outside graphs
        s = by_name[f"step{r['step']}"]
        if s["mfu"] and abs(r["mfu"] / s["mfu"] - 1) > 0.02:
            t = rep.record.timing
            name = f"step{r['step']}"
            by_graph: dict = {}
            for x in t.launches:
                if x["stage"] == name:
                    by_graph[x["graph"]] = by_graph.get(x["graph"], 0.0) + x["time_s"]
            other = sorted((x for x in t.unattributed if x["stage"] == name), key=lambda x: -x["time_s"])[:6]
            out(f"    {name}: kernel time by graph " + ", ".join(f"{g}: {v * 1e3:.3f} ms" for g, v in by_graph.items())
                + "; outside graphs " + ", ".join(f"{x['name'][:40]} x{x['count']} {x['time_s'] * 1e3:.3f} ms"
                                                  for x in other))
            for measured, stages, *_ in p._traces:  # the stage's raw timeline (bench diagnostics: private)
                for occ in (o for o in stages if o["name"] == name):
                    ks = sorted((m for m in measured if occ["start_us"] <= m.launch_start_us <= occ["end_us"]),
                                key=lambda m: m.start_us)
                    if not ks:
                        continue
                    t0 = occ["start_us"]
                    out(f"      CPU range {0:.1f}..{occ['end_us'] - t0:.1f} us; {len(ks)} kernels, first start "
                        f"{ks[0].start_us - t0:.1f}, last end {max(m.end_us for m in ks) - t0:.1f} us")
                    late = max(ks, key=lambda m: m.end_us)
                    out(f"      latest end: {late.name[:60]} launched {late.launch_start_us - t0:.1f}, ran "
                        f"{late.start_us - t0:.1f}..{late.end_us - t0:.1f} us")
                    prev = ks[0]
                    for m in ks[1:]:
                        if m.start_us - max(prev.end_us, 0) > 1000:
                            out(f"      gap {m.start_us - prev.end_us:.1f} us before {m.name[:50]} (launched "
                                f"{m.launch_start_us - t0:.1f}, started {m.start_us - t0:.1f}) after "
                                f"{prev.name[:40]}")
                        prev = m if m.end_us > prev.end_us else prev
    same = sum(r["flops"] == by_name[f"step{r['step']}"]["flops"] for r in rows)
    out(f"  FLOPs: meter = profile stage on {same} of {len(rows)} steps (step 0: meter {rows[0]['flops']:,}, "
        f"profile {by_name['step0']['flops']:,}; last: meter {rows[-1]['flops']:,}); "
        f"coverage {rep.coverage()['time_attributed'] * 100:.2f}%")
    return worst


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--seq", type=int, default=2048)
    p.add_argument("--batch", type=int, default=8, help="decode batch")
    p.add_argument("--cache", type=int, default=2048, help="decode cache size")
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--train-steps", type=int, default=10)
    p.add_argument("--decode-steps", type=int, default=200)
    a = p.parse_args(argv)
    out_dir = os.environ.get("OUT", "out")
    os.makedirs(out_dir, exist_ok=True)
    lines = []

    def out(s=""):
        print(s, flush=True)
        lines.append(s)

    dev = "cuda"
    cfg = LlamaConfig(**{**PRESETS["8b-2l"], "layers": a.layers}, max_seq=max(a.seq, a.cache) + 8)
    out(f"meter overhead — {torch.cuda.get_device_name()}, torch {torch.__version__}; Llama-3-8B shapes, "
        f"{a.layers} layers, bf16")
    torch.manual_seed(0)
    model = Llama(cfg).to(device=dev, dtype=torch.bfloat16)

    # ---- training
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=True)
    fwd = torch.compile(model, backend=graphmfu.backend)
    x = torch.randint(0, cfg.vocab, (1, a.seq), device=dev)

    def train():
        fwd(x).float().logsumexp(-1).mean().backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(3):
        train()
    torch.cuda.synchronize()
    out(f"\ntraining step: batch 1 x {a.seq} tokens, {a.train_steps} steps per block, {a.rounds} rounds")
    r_train, rows = overhead(train, a.train_steps, a.rounds, a.seq, out)
    out(f"  meter: MFU {rows[-1]['mfu']:.2%}, HFU {rows[-1]['hfu']:.2%}, {rows[-1]['tflops']:.1f} TFLOP/s, "
        f"{_share(rows)} in graphs, FLOPs {rows[-1]['flops']:,}")
    out("  agreement with graphmfu.profile() over 5 steps:")
    w_train = agreement(train, 5, a.seq, out)
    del opt

    # ---- decode
    model.eval()
    gen = Generator(model, StaticCache(cfg, a.batch, a.cache, dev, torch.bfloat16))
    step = torch.compile(gen, backend=graphmfu.backend(mode="reduce-overhead"))
    tok = torch.randint(0, cfg.vocab, (a.batch, 1), device=dev)
    positions = torch.arange(a.cache, device=dev)
    state = {"i": 0}

    def decode():
        i = state["i"] = (state["i"] + 1) % (a.cache - 1)
        torch.compiler.cudagraph_mark_step_begin()
        with torch.no_grad():
            step(tok, positions[a.cache // 2 + i % (a.cache // 2 - 1):][:1])

    for _ in range(5):
        decode()
    torch.cuda.synchronize()
    out(f"\ndecode step (reduce-overhead): batch {a.batch}, static cache {a.cache}, {a.decode_steps} steps per "
        f"block, {a.rounds} rounds")
    r_dec, rows = overhead(decode, a.decode_steps, a.rounds, a.batch, out)
    out(f"  meter: MBU {rows[-1]['mbu']:.2%}, MFU {rows[-1]['mfu']:.2%}, kv bytes {rows[-1]['kv_bytes']:,}, "
        f"{_share(rows)} in graphs")
    out("  agreement with graphmfu.profile() over 20 steps:")
    w_dec = agreement(decode, 20, a.batch, out)

    out(f"\nsummary: overhead training {r_train:.4f}, decode {r_dec:.4f} (target <= 1.01); "
        f"meter vs profile MFU worst |diff| training {w_train:.2%}, decode {w_dec:.2%} (target 2%)")
    with open(os.path.join(out_dir, "meter_overhead.txt"), "w") as f:
        f.write("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
