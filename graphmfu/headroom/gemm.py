"""Causes inside matrix products: tile padding, fp32 with TF32 off, GEMMs too small to fill the device.

Each reads the GEMM kernels' origin nodes (``OpRecord.inputs``: [..., M, K] x [..., K, N]) and the kernel
rows' measured time and roofline minimum; lost_s is as docs/headroom.md says per cause.
"""
from __future__ import annotations

from collections import defaultdict

from graphmfu.headroom.evidence import Cause, Context, gemm_dims, is_matmul, us
from graphmfu.render import ms
from graphmfu.roofline import place

TILE = 64  # GEMM tiles (and 128-byte rows of bf16) are multiples of 64 elements
SMALL_T_MIN_S = 10e-6  # per call at the device's ceilings: too little work to fill the device
SMALL_SOL = 0.25


def next_multiple(n: int, of: int = TILE) -> int:
    return -(-n // of) * of


def _gemms(ctx: Context):
    """(kernel row, its matrix-product node, (M, K, N, dtype)) for each GEMM kernel with static sizes."""
    for k in ctx.kernels:
        for op in ctx.ops(k):
            if is_matmul(op.op) and (d := gemm_dims(op)) is not None:
                yield k, op, d
                break


def _headroom(k: dict) -> float:
    return max(k["time_s"] - k["t_min_s"], 0.0)


def _aligned_sol(weight_gemms: list) -> dict:
    """dtype -> the fraction of its roofline minimum this run's aligned, compute-bound weight GEMMs reached
    (sum t_min / sum time): what a GEMM of this run reaches when no dimension is misaligned."""
    tm: dict = defaultdict(float)
    tt: dict = defaultdict(float)
    for k, _, (m, kd, n, dt) in weight_gemms:
        if k["bound"] != "compute" or any(v > TILE and v % TILE for v in (kd, n)):
            continue
        tm[dt] += k["t_min_s"]
        tt[dt] += k["time_s"]
    return {dt: tm[dt] / tt[dt] for dt in tt if tt[dt] > 0}


def _pads_to(ctx: Context, graphs: set, module: str, v: int) -> tuple[list, int | None]:
    """Kernels of these graphs and module that pad a tensor's dimension to ``v`` on every call (Inductor's
    ``pad_mm`` aligns an odd GEMM dimension with ``constant_pad_nd``: a copy of the weight per call), and the
    dimension before padding."""
    rows, orig = [], None
    for k in ctx.kernels:
        if k["graph"] not in graphs or k["module"] != module:
            continue
        for op in ctx.ops(k):
            if not op.op.startswith("aten.constant_pad_nd") or not op.inputs or not op.outputs:
                continue
            (a, _), (b, _) = op.inputs[0], op.outputs[0]
            diff = [(x, y) for x, y in zip(a, b) if x != y]
            if len(diff) == 1 and diff[0][1] == v:
                rows.append(k)
                orig = diff[0][0]
                break
    return rows, orig


def tile_padding(ctx: Context) -> list[Cause]:
    """K or N (a weight's dimension: vocab, hidden, heads x head_dim) not a multiple of the tile.  lost_s: the
    time above what the run's aligned compute-bound GEMMs of the same dtype reached (their fraction of the
    roofline), at least the tiles' padded share of the time; with no aligned reference, the whole headroom
    (an upper bound)."""
    from graphmfu.rules.matmul import WEIGHT_PRODUCTS

    # batched products multiply activations (sequence lengths are data, not a choice): weight GEMMs only
    weight = [(k, op, d) for k, op, d in _gemms(ctx)
              if op.op.startswith(WEIGHT_PRODUCTS) and "attention_matmul" not in op.flags]
    groups: dict = defaultdict(list)
    for k, op, (m, kd, n, dt) in weight:
        for name, v in (("N", n), ("K", kd)):
            if v > TILE and v % TILE:
                groups[(k["module"], v)].append((k, name, (m, kd, n, dt)))
                break
    out = []
    vocab = max((v for _, v in groups), default=0)
    ref = _aligned_sol(weight)
    for (module, v), items in groups.items():
        rows = list({id(k): k for k, _, _ in items}.values())
        t = sum(k["time_s"] for k in rows)
        copies, orig = _pads_to(ctx, {k["graph"] for k in rows}, module, v)
        dim = orig or v  # the model's dimension (before Inductor's own padding)
        pad = next_multiple(dim)
        m, kd, n, dt = items[0][2]
        sol = sum(k["t_min_s"] for k in rows) / t if t else 0.0
        waste = t * (1 - v / pad)
        if dt in ref:
            lost = max(sum(max(k["time_s"] - k["t_min_s"] / ref[dt], 0.0) for k in rows), waste)
            how = (f"{ms(lost)} ms above what this run's aligned {dt} GEMMs reach ({ref[dt]:.1%} of the roofline; "
                   f"these {sol:.1%})")
        else:
            lost = sum(_headroom(k) for k in rows)
            how = (f"{ms(lost)} ms above the roofline (no aligned compute-bound {dt} GEMM in this run to compare "
                   f"with: an upper bound of what the padding costs)")
        if copies:  # Inductor already pads the model's dimension each call: that copy is lost too
            tc = sum(k["time_s"] for k in copies)
            lost += tc
            how += (f"; Inductor pads {orig} -> {v} on every call ({len(copies)} kernel(s), {copies[0]['name']}: "
                    f"{copies[0]['bytes'] / max(copies[0]['calls'], 1) / 1e6:.1f} MB per call, {ms(tc)} ms)")
        what = "vocab" if v == vocab and v >= 8192 else ("out_features" if items[0][1] == "N" else "in_features")
        evidence = (f"{len(rows)} GEMM kernel(s) in {module or '(root)'} with a dimension of {v} (first: "
                    f"[{m}x{kd}] x [{kd}x{n}] {dt}), not a multiple of {TILE}: tiles run {pad / v - 1:.2%} padded "
                    f"work and rows are not {TILE}-aligned; {ms(t)} ms measured, {how}")
        for k in rows:
            r = ctx.ncu.get((k["graph"], k["index"]))
            if r and r.get("padding") is not None:
                evidence += f"; ncu: hardware FLOPs = model x {1 + r['padding']:.4f} ({k['name']})"
                break
        out.append(Cause("tile_padding", f"{module or '(root)'} ({what} {dim})", lost, evidence,
                         f"pad {what} {dim} -> {pad} (next multiple of {TILE}; mask or slice the extra "
                         f"{pad - dim} outputs)"))
    return out


def tf32_off(ctx: Context) -> list[Cause]:
    """fp32 matrix FLOPs in graphs compiled (or recorded) with TF32 off, on a device whose TF32 peak is higher."""
    dev = ctx.device
    if not dev.peaks_tflops.get("tf32") or dev.matrix_tflops("tf32") <= dev.matrix_tflops("fp32"):
        return []
    lost, rows, flops, graphs = 0.0, 0, 0, set()
    for k in ctx.kernels:
        g = ctx.graph(k["graph"])
        cost = ctx.kernel_record(k).cost
        f32 = dict(cost.matrix).get("fp32", 0)
        if g.tf32 or not f32:
            continue
        before, after = place(cost, dev).t_min_s, place(cost.relabel({"fp32": "tf32"}), dev).t_min_s
        lost += k["time_s"] * (1 - after / before) if before else 0.0
        rows, flops, graphs = rows + 1, flops + f32 * k["calls"], graphs | {g.id}
    if not rows or lost <= 0:
        return []  # memory-bound where TF32 would not help
    evidence = (f"{rows} kernel(s) of graph(s) {sorted(graphs)} run {flops:.3g} fp32 matrix FLOPs compiled with TF32 "
                f"off: priced at the fp32 peak {dev.matrix_tflops('fp32'):.4g} TFLOP/s, TF32's is "
                f"{dev.matrix_tflops('tf32'):.4g}; at the same fraction of the TF32 roofline they would take "
                f"{ms(lost)} ms less")
    return [Cause("tf32_off", f"graph(s) {sorted(graphs)}", lost, evidence,
                  "set torch.backends.cuda.matmul.allow_tf32 = True (or torch.set_float32_matmul_precision('high')) "
                  "before compiling, or run the matmuls in bf16 autocast")]


def small_gemms(ctx: Context) -> list[Cause]:
    """GEMMs whose per-call roofline time is a few microseconds and that reach a small share of it."""
    groups: dict = defaultdict(list)
    for k, op, (m, kd, n, dt) in _gemms(ctx):
        per_call = k["t_min_s"] / k["calls"] if k["calls"] else 0.0
        if 0 < per_call < SMALL_T_MIN_S and (k["sol"] or 0) < SMALL_SOL:
            groups[(m, kd, n, dt)].append(k)
    out = []
    for (m, kd, n, dt), rows in groups.items():
        calls = sum(k["calls"] for k in rows)
        t, tmin = sum(k["time_s"] for k in rows), sum(k["t_min_s"] for k in rows)
        evidence = (f"{len(rows)} GEMM kernel(s) [{m}x{kd}] x [{kd}x{n}] {dt}, {calls} call(s): {us(tmin / calls)} "
                    f"per call at the ceiling, {us(t / calls)} measured (SOL {tmin / t:.1%}): too few tiles to "
                    f"occupy the device")
        where = ", ".join(sorted({k["module"] or "(root)" for k in rows}))[:80]
        out.append(Cause("small_gemm", where, t - tmin, evidence,
                         "batch them into fewer, larger GEMMs (a larger batch, torch.bmm or one fused QKV / "
                         "gate-up projection), or replay them with CUDA graphs if the launches dominate"))
    return out


__all__ = ["tile_padding", "tf32_off", "small_gemms", "next_multiple", "TILE"]
