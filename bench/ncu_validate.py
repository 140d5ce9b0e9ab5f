"""GPU validation of graphmfu's kernel-level numbers against Nsight Compute's hardware counters.

    python3 bench/ncu_validate.py [--layers 2] [--seq 512]     # on a CUDA machine with ncu

1. graphmfu: the minimal_llama model (bf16, d 4096, ffn 11008, 32 heads, T=512 prefill and one
   decode step over a 512-token cache), compiled with graphmfu.backend, profiled inside a
   BENCHMARK stage with nested prefill/decode stages; prints the stage table.
2. ncu --clock-control none --set roofline (+ DRAM bytes read/write) --csv --page raw with NVTX
   filtering on BENCHMARK, running this script's --ncu-target mode (same model, same compile,
   one iteration in the range).
3. Per Inductor kernel, through graphmfu.ncu (the import `graphmfu ncu report.json ncu.csv` runs):
   graphmfu FLOPs vs ncu tensor-pipe ops, graphmfu bytes vs ncu DRAM bytes, graphmfu time (torch
   profiler) vs ncu duration; the GPU kernels are matched in launch order (names checked).  The
   same import from the saved report alone (kernel-sequence alignment) must give the same rows.
4. The decode step again under mode="reduce-overhead" (CUDA graphs): joined by order.
"""
import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

import graphmfu  # noqa: E402
from examples.minimal_llama import build, parse_args  # noqa: E402
from graphmfu import ncu as ncu_import  # noqa: E402
from graphmfu.join import join, stage_of  # noqa: E402


def model_args(a):
    return parse_args(["--device", "cuda", "--dtype", "bf16", "--dim", "4096", "--ffn", "11008", "--heads", "32",
                       "--kv-heads", str(a.kv_heads), "--layers", str(a.layers), "--seq", str(a.seq),
                       "--vocab", "32000"])


def setup(a, mode=None):
    ma = model_args(a)
    model, tokens, caches, next_tok, _ = build(ma)
    fn = torch.compile(model, backend=graphmfu.backend(mode=mode))
    steps = {"prefill": lambda: fn(tokens), "decode": lambda: fn(next_tok, caches)}
    with torch.no_grad():
        for _ in range(5):
            for s in steps.values():
                s()
    torch.cuda.synchronize()
    return steps


def run_benchmark(steps, names=("prefill", "decode"), iters=1):
    with torch.no_grad(), graphmfu.stage("BENCHMARK"):
        for _ in range(iters):
            for n in names:
                with graphmfu.stage(n):
                    steps[n]()
    torch.cuda.synchronize()


def ncu_target(a):
    steps = setup(a)
    run_benchmark(steps)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", type=int, default=1)
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--kv-heads", type=int, default=32)
    ap.add_argument("--ncu-target", action="store_true")
    ap.add_argument("--ncu-timeout", type=int, default=300)
    ap.add_argument("--skip-ncu", action="store_true")
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    a = ap.parse_args()
    if a.ncu_target:
        return ncu_target(a)

    # ---- 1. graphmfu
    steps = setup(a)
    with graphmfu.profile() as p:
        run_benchmark(steps, iters=1)
    rep = p.report()
    rep.save(Path(a.out) / "ncu_validate_graphmfu.json")
    graphs = {g.id: g for g in graphmfu.registry.DEFAULT.graphs}
    measured, stage_ranges, _ = join(p.prof, list(graphs.values()), cuda=True)
    for m in measured:
        m.stage = stage_of(m, stage_ranges)
    # ncu profiles kernels, not memsets/memcpys
    measured = sorted((m for m in measured if not m.name.startswith(("Memset", "Memcpy"))), key=lambda m: m.start_us)
    print(f"graphmfu on {torch.cuda.get_device_name()}, torch {torch.__version__}: d 4096, ffn 11008, 32 q / "
          f"{a.kv_heads} kv heads, {a.layers} layers, T={a.seq} prefill + 1 decode step, bf16")
    print(rep.stage_table())
    bench = next(s for s in rep.stages if s["name"] == "BENCHMARK")
    print(f"BENCHMARK: {(bench['kernel_time_s'] - bench['unattributed_s']) / bench['kernel_time_s'] * 100:.2f}% of GPU "
          f"kernel time attributed to graph nodes; coverage.time_attributed "
          f"{rep.coverage()['time_attributed'] * 100:.2f}%; unattributed: "
          f"{[(u['name'][:40], u['launch_op'], round(u['time_s'] * 1e6, 1)) for u in rep.coverage()['unattributed_kernels']]}")

    if a.skip_ncu:
        return cuda_graphs(a)
    # ---- 2. ncu
    # the counters compared, not the whole roofline set (which replays every kernel ~40 times)
    metrics = ("regex:^sm__ops_path_tensor_src_.*\\.sum$,dram__bytes_read.sum,dram__bytes_write.sum,"
               "lts__t_sectors_srcunit_tex_op_write.sum,gpu__time_duration.sum")
    cmd = ["ncu", "--clock-control", "none", "--metrics", metrics, "--csv", "--page", "raw",
           "--nvtx", "--nvtx-include", "BENCHMARK/", sys.executable, __file__, "--ncu-target", "--layers",
           str(a.layers), "--seq", str(a.seq), "--kv-heads", str(a.kv_heads)]
    print("running:", " ".join(cmd), flush=True)
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, PYTHONWARNINGS="ignore"),
                           timeout=a.ncu_timeout)
    except subprocess.TimeoutExpired:
        print(f"ncu did not finish in {a.ncu_timeout} s")
        return 1
    raw = Path(a.out) / "ncu_validate_raw.csv"
    raw.write_text(r.stdout)
    if r.returncode:
        print("ncu failed:", r.stderr[-2000:])
        return 1
    table = ncu_import.join(rep, raw, measured=measured)
    n_ncu = len(ncu_import.parse(raw))
    print(f"ncu: {n_ncu} kernels in BENCHMARK; graphmfu measured {len(measured)} GPU kernels; "
          f"{len(table.unmatched)} ncu kernel(s) unmatched")
    aligned = ncu_import.join(Path(a.out) / "ncu_validate_graphmfu.json", raw)
    key = ("graph", "index", "stage", "flops", "hw_flops", "bytes", "dram_read", "dram_write", "l2_write", "ncu_time_s")
    same = sorted(tuple(x[k] for k in key) for x in table.rows) == sorted(tuple(x[k] for k in key) for x in aligned.rows)
    print(f"graphmfu ncu report.json ncu.csv (alignment, no session): {len(aligned.rows)} rows, "
          f"{'the same' if same else 'DIFFERENT'} as the launch-order join")
    print(aligned.table())
    (Path(a.out) / "ncu_import_table.txt").write_text(aligned.table() + "\n")

    # ---- 3. per Inductor kernel (the table of earlier runs, from the import's rows, in launch order)
    rows = []
    from tabulate import tabulate

    graphs = {g.id: g for g in rep.record.graphs}
    for x in table.rows:
        k = graphs[x["graph"]].kernels[x["index"]]
        f, b, br, bw = x["flops"], x["bytes"], x["bytes_read"], x["bytes_written"]
        gm_t = sum(m.time_s for m in measured if (m.graph, m.kernel, m.stage) == (x["graph"], x["index"], x["stage"])
                   and not m.name.startswith(("Memset", "Memcpy")))
        l2w = x["l2_write"] or 0.0
        rows.append([k.name[:40], k.module or "(root)", f"{f:.4g}", f"{x['hw_flops']:.4g}",
                     "-" if not f else f"{x['hw_flops'] / f:.4f}", f"{b / 1e6:.2f}",
                     f"{(x['dram_read'] + x['dram_write']) / 1e6:.2f}",
                     "-" if not b else f"{(x['dram_read'] + x['dram_write']) / b:.3f}", f"{br / 1e6:.2f}",
                     f"{x['dram_read'] / 1e6:.2f}", "-" if not br else f"{x['dram_read'] / br:.3f}", f"{bw / 1e6:.2f}",
                     f"{x['dram_write'] / 1e6:.2f}", f"{l2w / 1e6:.2f}", "-" if not bw else f"{l2w / bw:.3f}",
                     f"{gm_t * 1e6:.1f}", f"{x['ncu_time_s'] * 1e6:.1f}"])
    print(tabulate(rows, headers=["kernel", "module", "gm FLOPs", "ncu tensor", "ratio", "gm MB", "ncu DRAM MB",
                                  "ratio", "gm read MB", "ncu read MB", "ratio", "gm write MB", "ncu DRAM write MB",
                                  "ncu L2 write MB", "ratio", "gm us", "ncu us"],
                   tablefmt="simple", disable_numparse=True))
    gemm = [r for r in rows if r[4] != "-" and r[0].startswith("extern_kernels.mm")]
    within = [r for r in gemm if abs(float(r[4]) - 1) <= 1e-3]
    big = [r for r in rows if r[7] != "-" and float(r[5]) > 10]
    bytes_ok = [r for r in big if abs(float(r[7]) - 1) <= 0.15]
    reads_ok = [r for r in big if r[10] != "-" and abs(float(r[10]) - 1) <= 0.15]
    both_ok = [r for r in reads_ok if r[14] == "-" or abs(float(r[14]) - 1) <= 0.15]
    # total bytes against what the kernel moved: DRAM reads (caches flushed before each kernel) plus the
    # stores that reached L2 (write-back: an output that fits in L2 is not in DRAM when the kernel ends)
    total_ok = [r for r in big if abs((float(r[9]) + float(r[13])) / float(r[5]) - 1) <= 0.15]
    print(f"summary: {len(within)}/{len(gemm)} GEMM kernels with ncu tensor ops within 0.1% of graphmfu FLOPs "
          f"(the others are tile-padded: ratios above); of {len(big)} kernels moving >10 MB, {len(bytes_ok)} within 15% "
          f"of ncu DRAM bytes (read + write) and {len(reads_ok)} within 15% of ncu DRAM reads; {len(both_ok)} with reads "
          f"within 15% of DRAM reads and writes within 15% of ncu's L2 write traffic; {len(total_ok)}/{len(big)} with "
          f"total bytes within 15% of ncu DRAM reads + L2 writes; misses: "
          f"{[(r[0], r[5], round(float(r[9]) + float(r[13]), 2)) for r in big if r not in total_ok]}")
    tot_gm = sum(float(r[2]) for r in rows)
    tot_ncu = sum(float(r[3]) for r in rows)
    print(f"total matrix FLOPs: graphmfu {tot_gm:.4g}, ncu tensor-pipe {tot_ncu:.4g} (ratio {tot_ncu / tot_gm:.4f})")
    json.dump({"rows": rows}, open(Path(a.out) / "ncu_validate_rows.json", "w"))
    return cuda_graphs(a)


def cuda_graphs(a):
    # ---- 4. CUDA graphs
    torch._dynamo.reset()
    graphmfu.reset()
    steps = setup(a, mode="reduce-overhead")
    with graphmfu.profile() as p2:
        run_benchmark(steps, names=("decode",), iters=3)
    rep2 = p2.report()
    print("decode under mode='reduce-overhead' (CUDA graphs):")
    print(rep2.stage_table())
    print(rep2.coverage_line())
    how = sorted({h for k in rep2.kernels for h in k["joined_by"]})
    print(f"joined by: {how}; notes: {rep2.data['notes']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
