"""Issue 18 on the GPU: planted inefficiencies, one at a time, on a small Llama (examples/minimal_llama.py),
each profiled with graphmfu, its top cause read, the printed action applied, and the time recovered measured;
then a shape what-if: decode measured at batch 8, predicted at batch 32 (``Report.predict(sizes=)``) against
the measured batch 32.

For each plant: ``before`` (planted) and ``after`` (the action applied) are profiled the same way (a warm-up
call, then ``CALLS`` calls in one stage); ``lost`` is the top cause's own estimate on ``before``; ``recovered``
= stage time per call before - after; ``recovered / lost`` >= 0.5 is the issue's line.

    python bench/headroom_gpu.py [--out DIR] [--cpu] [--only vocab,break,...]
"""
from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import time
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

import graphmfu  # noqa: E402
from examples.minimal_llama import Block, Llama, LlamaConfig  # noqa: E402

CALLS = 10
SMALL = dict(dim=1024, layers=2, heads=16, kv_heads=4, ffn=2816, vocab=32064, max_seq=2048)
CPU_SMALL = dict(dim=128, layers=2, heads=4, kv_heads=2, ffn=352, vocab=4032, max_seq=256)


class BreakBlock(Block):
    """A layer with a graph break between its attention and its MLP (what a print or a data-dependent branch does)."""

    def forward(self, x, cos, sin, cache=None):
        a, new = self.attn(self.attn_norm(x), cos, sin, cache)
        x = x + a
        torch._dynamo.graph_break()
        return x + self.mlp(self.mlp_norm(x)), new


def eager_norm(x, w, eps=1e-5):
    """RMSNorm written as separate ops, run eagerly (one kernel each)."""
    xf = x.float()
    ms_ = xf.pow(2)
    ms_ = ms_.mean(-1, keepdim=True)
    r = torch.rsqrt(ms_ + eps)
    return (xf * r).to(x.dtype) * w


def tiny_loop(scores, n):
    """A per-column Python loop (a repetition penalty written token by token): n tiny kernels."""
    for i in range(n):
        scores[:, i] = scores[:, i] * 0.9
    return scores


def vector_loop(scores, n):
    scores[:, :n] = scores[:, :n] * 0.9
    return scores


def profile(fn, stage="step", calls=CALLS):
    """Warm-up calls (three: CUDA graph trees warm up, record, then replay), then ``calls`` calls in one stage
    under graphmfu.profile()."""
    with torch.no_grad():
        for _ in range(3):
            fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        with graphmfu.profile() as p:
            with graphmfu.stage(stage):
                for _ in range(calls):
                    fn()
    return p.report()


REPEATS = 7


def _timed(fn, calls=CALLS) -> float:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(calls):
        fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return (time.perf_counter() - t) / calls


def alternated(before, after, rounds=REPEATS):
    """Seconds per call of ``before`` and ``after`` without the profiler, ``rounds`` rounds of ``CALLS`` calls
    each, alternating which goes first (the host's drift falls on both)."""
    rb, ra = [], []
    with torch.no_grad():
        before()
        after()  # compiled again after the reset between the two profiles: warm both
        for i in range(rounds):
            for fn, acc in ((before, rb), (after, ra)) if i % 2 == 0 else ((after, ra), (before, rb)):
                acc.append(_timed(fn))
    return rb, ra


def per_call(rep, stage="step") -> float:
    s = {x["name"]: x for x in rep.stages}[stage]
    return s["span_s"] / CALLS  # one stage entered once around the CALLS calls


def build(cfg, device, dtype, block=None):
    torch.manual_seed(0)
    m = Llama(LlamaConfig(**cfg))
    if block is not None:
        m.layers[0] = block(m.cfg)
    return m.to(device=device, dtype=dtype).eval()


def compiled(m):
    return torch.compile(m, backend=graphmfu.backend)


def fresh():
    torch._dynamo.reset()
    graphmfu.reset()


# ----------------------------------------------------------------------------------- the plants
def plants(device, dtype, small, batch, seq, big=None, break_mode=None, norm_big=None):
    """name -> (expected cause kinds, make_before, make_after, what the action is); ``big``: (batch, seq) of the
    plants whose cost is on the device (vocab, tf32, norm): large enough that the host is not the bottleneck;
    ``norm_big``: the norm plant's own (batch, seq), default ``big``"""
    tokens = torch.randint(0, 1000, (batch, seq), device=device)
    large = torch.randint(0, 1000, big, device=device) if big else tokens
    norm_tokens = torch.randint(0, 1000, norm_big, device=device) if norm_big else large

    def forward_of(cfg, dt=dtype, block=None):
        m = compiled(build(cfg, device, dt, block))
        return lambda: m(large)

    def vocab(fixed):
        return forward_of({**small, "vocab": 32064 if fixed and device == "cuda" else
                           (small["vocab"] if fixed else small["vocab"] - 63)})

    def brk(fixed):
        model = build(small, device, dtype, None if fixed else BreakBlock)
        m = torch.compile(model, backend=graphmfu.backend(mode=break_mode)) if break_mode else compiled(model)
        one = tokens[:, :1]
        hd = small["dim"] // small["heads"]
        caches = [(torch.zeros(batch, small["kv_heads"], seq, hd, device=device, dtype=dtype),) * 2
                  for _ in range(small["layers"])]
        return lambda: m(one, caches)

    def tf32(fixed):
        torch.backends.cuda.matmul.allow_tf32 = bool(fixed)
        torch.backends.cudnn.allow_tf32 = bool(fixed)
        return forward_of(small, torch.float32)

    def loop(fixed):
        m = compiled(build(small, device, dtype))
        n = 256
        post = torch.compile(tiny_loop, backend=graphmfu.backend) if fixed else tiny_loop  # the action: compile it

        def step():
            logits = m(tokens[:, :1])[:, -1].float()
            return post(logits, n)
        return step

    def norm(fixed):
        m = build(small, device, dtype)
        body = compiled(_Trunk(m))
        w = m.norm.weight
        fused = torch.compile(eager_norm, backend=graphmfu.backend)  # the action: compile the code that runs them

        def step():
            h = body(norm_tokens)
            return fused(h, w) if fixed else eager_norm(h, w)
        return step

    return {
        "vocab": ({"tile_padding"}, lambda: vocab(False), lambda: vocab(True), "pad vocab to the next multiple of 64"),
        "break": ({"graph_break"}, lambda: brk(False), lambda: brk(True), "remove the graph break"),
        "tf32": ({"tf32_off"}, lambda: tf32(False), lambda: tf32(True), "allow_tf32 = True"),
        "loop": ({"launch_bound", "eager_work"}, lambda: loop(False), lambda: loop(True),
                 "the Python loop compiled (torch.compile)"),
        "norm": ({"unfused_chain", "eager_work"}, lambda: norm(False), lambda: norm(True),
                 "the norm's code compiled (torch.compile)"),
    }


class _Trunk(torch.nn.Module):
    """The Llama up to its final norm (the norm is applied outside, eagerly or compiled)."""

    def __init__(self, m):
        super().__init__()
        self.m = m

    def forward(self, tokens):
        m = self.m
        t = tokens.shape[1]
        cos, sin = m.rope_cos[:t], m.rope_sin[:t]
        x = m.embed(tokens)
        for layer in m.layers:
            x, _ = layer(x, cos, sin, None)
        return x


def run_plant(name, spec, lines, out, save=None):
    expected, before_fn, after_fn, action = spec
    fresh()
    bf = before_fn()
    before = profile(bf)
    if save:
        before.save(Path(save) / f"{name}_before.json")
    causes = before.causes()
    top = causes[0] if causes else None
    fresh()
    af = after_fn()
    after = profile(af)
    tb, ta = per_call(before), per_call(after)
    lost = top.lost_s / CALLS if top is not None else 0.0  # the cause's estimate over the stage's calls
    named = [c for c in causes if c.kind in expected]
    first = named[0] if named else None
    lost_named = first.lost_s / CALLS if first is not None else 0.0
    rec = tb - ta
    row = {"plant": name, "top_kind": top.kind if top else None, "top_is_planted": bool(top and top.kind in expected),
           "rank_of_planted": (causes.index(first) + 1) if first else None,
           "top": top.to_dict() if top else None, "planted": first.to_dict() if first else None,
           "before_ms": tb * 1e3, "after_ms": ta * 1e3, "recovered_ms": rec * 1e3,
           "lost_ms_top": lost * 1e3, "lost_ms_planted": lost_named * 1e3,
           "recovered_over_lost": rec / lost_named if lost_named else None, "action_applied": action,
           "causes": [c.line() for c in causes[:5]]}
    if name != "tf32":  # TF32 is a global switch: the two cannot alternate (and its effect is 5x, not noise)
        rb, ra = alternated(bf, af)
        row.update({"unprofiled_before_ms": [x * 1e3 for x in rb], "unprofiled_after_ms": [x * 1e3 for x in ra]})
        mb, ma = statistics.median(rb), statistics.median(ra)
        row["unprofiled_recovered_ms"] = (mb - ma) * 1e3
        row["unprofiled_recovered_over_lost"] = (mb - ma) / lost_named if lost_named else None
    out["plants"].append(row)
    lines.append(f"{name:6s} top cause {row['top_kind']} (planted cause rank {row['rank_of_planted']}); stage per call "
                 f"{tb * 1e3:.3f} -> {ta * 1e3:.3f} ms after '{action}': recovered {rec * 1e3:.3f} ms of the "
                 f"planted cause's {lost_named * 1e3:.3f} ms = {row['recovered_over_lost'] or 0:.2f}")
    if "unprofiled_recovered_ms" in row:
        lines.append(f"         without the profiler, {REPEATS} alternated rounds of {CALLS} calls: median "
                     f"{statistics.median(row['unprofiled_before_ms']):.3f} -> "
                     f"{statistics.median(row['unprofiled_after_ms']):.3f} ms per call: recovered "
                     f"{row['unprofiled_recovered_ms']:.3f} ms = {row['unprofiled_recovered_over_lost'] or 0:.2f} of "
                     f"the planted cause's estimate (before {', '.join(f'{x:.3f}' for x in row['unprofiled_before_ms'])}; "
                     f"after {', '.join(f'{x:.3f}' for x in row['unprofiled_after_ms'])})")
    for c in causes[:4]:
        lines.append(f"         {c.line()[:400]}")
    print("\n".join(lines[-5:]), flush=True)  # as it goes: a run cut short keeps what it measured
    return before


# ----------------------------------------------------------------------------------- batch what-if
def batch_whatif(device, dtype, cfg, seq, lines, out, b0=8, b1=32, mode=None):
    """Decode at batch ``b0`` profiled, batch ``b1`` predicted from it and profiled.  ``mode="reduce-overhead"``:
    the step replayed as CUDA graphs (the host's launch gaps gone: the device's time is what is predicted); the
    KV caches are marked static addresses, so the graphs read them in place (no per-call input copy)."""
    fresh()
    m = torch.compile(build(cfg, device, dtype), backend=graphmfu.backend(mode=mode)) if mode else \
        compiled(build(cfg, device, dtype))
    hd = cfg["dim"] // cfg["heads"]

    def inputs(b):
        tok = torch.randint(0, 1000, (b, 1), device=device)
        caches = [tuple(torch.randn(b, cfg["kv_heads"], seq, hd, device=device, dtype=dtype) for _ in range(2))
                  for _ in range(cfg["layers"])]
        torch._dynamo.mark_dynamic(tok, 0)
        for k, v in caches:
            for x in (k, v):
                torch._dynamo.mark_dynamic(x, 0)
                if mode:
                    torch._dynamo.mark_static_address(x)
        return tok, caches

    def warmed(tok, caches):
        with torch.no_grad():
            for _ in range(3 if mode else 0):  # CUDA graph trees: warm up, record, then replay in the profile
                m(tok, caches)
        return lambda: m(tok, caches)

    t0, c0 = inputs(b0)
    r0 = profile(warmed(t0, c0), "decode")
    syms = {k: v for g in r0.record.graphs for k, v in g.hints.items() if v == b0}
    if not syms:
        lines.append(f"what-if: no symbol at the batch {b0} among {[g.hints for g in r0.record.graphs]}")
        return
    sym = ",".join(sorted(syms))  # Dynamo gives each input's batch its own symbol (equal ones replaced in the kernels)
    pred = r0.predict(sizes={k: b1 for k in syms})
    del c0
    t1, c1 = inputs(b1)
    r1 = profile(warmed(t1, c1), "decode")
    measured = per_call(r1, "decode")
    predicted = next(s["predicted_s"] for s in pred.stages if s["name"] == "decode") / CALLS
    err = predicted / measured - 1
    key = "whatif" if not mode else f"whatif_{mode}"
    cov = r1.coverage()
    floor = next((a for a in pred.assumes if "per launch" in a), "")
    out[key] = {"mode": mode, "config": cfg, "cache": seq, "symbol": sym, "batch_measured": b0, "batch_asked": b1,
                "attributed_b1": cov.get("time_attributed"), "floor": floor,
                "kernels_predicted_ms": sum(c["predicted_s"] for c in pred.classes if c["class"] != "idle") / CALLS * 1e3,
                "kernels_measured_ms": sum(c["measured_s"] for c in r1.predict().classes if c["class"] != "idle")
                / CALLS * 1e3,
                "measured_b0_ms": per_call(r0, "decode") * 1e3, "predicted_ms": predicted * 1e3,
                "measured_ms": measured * 1e3, "error": err, "classes": pred.classes,
                "measured_classes_b1": r1.predict().classes, "assumes": pred.assumes,
                "recompiles": len(r1.record.graphs)}
    w = out[key]
    st = next(s for s in pred.stages if s["name"] == "decode")
    busy = st["measured_s"] - st["idle_s"]
    w["replayed"] = st["replayed"]
    w["additive_ms"] = (st["idle_s"] + busy * (st["predicted_kernel_s"] / st["kernel_s"] if st["kernel_s"] else 1)) \
        / CALLS * 1e3  # the model before timelines: launch gaps kept, busy scaled
    w["additive_error"] = w["additive_ms"] / (measured * 1e3) - 1
    lines.append(f"   decode stage {'replayed from its launch timeline' if st['replayed'] else 'gaps kept'}; the "
                 f"additive model (gaps kept, busy scaled) would say {w['additive_ms']:.3f} ms "
                 f"({w['additive_error']:+.1%})")
    lines.append(f"what-if decode {cfg['dim']}d {cfg['layers']} layers, cache {seq}, mode {mode or 'default'}: measured "
                 f"at batch {b0} {per_call(r0, 'decode') * 1e3:.3f} ms/step; predicted at batch {b1} ({sym} = {b1}) "
                 f"{predicted * 1e3:.3f} ms; measured at batch {b1} {measured * 1e3:.3f} ms: error {err:+.1%}; kernels "
                 f"predicted {w['kernels_predicted_ms']:.3f} ms, measured {w['kernels_measured_ms']:.3f} ms "
                 f"({w['kernels_predicted_ms'] / w['kernels_measured_ms'] - 1:+.1%}); batch {b1} kernel time "
                 f"attributed {cov.get('time_attributed') or 0:.3f}")
    lines.append("   " + pred.table().replace("\n", "\n   "))
    lines.append("   measured at batch %d, per kernel class: %s" % (b1, ", ".join(
        f"{c['class']} {c['measured_s'] * 1e3:.3f} ms" for c in r1.predict().classes)))
    print("\n".join(lines[-3:]), flush=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=None)
    ap.add_argument("--cpu", action="store_true")
    ap.add_argument("--only", default=None)
    ap.add_argument("--no-whatif", action="store_true")
    ap.add_argument("--no-plants", action="store_true", help="only the what-if")
    ap.add_argument("--whatif-modes", default="both", help="both | reduce-overhead | default")
    ap.add_argument("--break-mode", default=None, help="compile mode of the break plant, e.g. reduce-overhead")
    ap.add_argument("--save", action="store_true", help="save each plant's planted report under --out")
    ap.add_argument("--big", default=None, help="batch x seq of the vocab, tf32 and norm plants, e.g. 16x1024")
    ap.add_argument("--norm-big", default=None,
                    help="batch x seq of the norm plant alone (default --big), e.g. 32x1024: at 16x1024 the trunk's "
                         "mean kernel (40 us) is within 2x of the H200 host's 22-47 us per launch, and on a slow "
                         "host day the trunk itself turns launch-bound")
    a = ap.parse_args(argv)
    if a.out:
        Path(a.out).mkdir(parents=True, exist_ok=True)
    device = "cpu" if a.cpu or not torch.cuda.is_available() else "cuda"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    small = SMALL if device == "cuda" else CPU_SMALL
    batch, seq = (8, 512) if device == "cuda" else (2, 32)
    head = (f"{torch.cuda.get_device_name(0) if device == 'cuda' else 'CPU'}, torch {torch.__version__}; "
            f"small Llama {small}; batch {batch} x {seq}; {CALLS} calls per profile")
    lines, out = [head], {"config": small, "batch": batch, "seq": seq, "plants": []}
    big = tuple(int(x) for x in a.big.split("x")) if a.big else None
    if big:
        lines.append(f"vocab, tf32 and norm at batch x seq {big[0]} x {big[1]} (the device, not the host, the bottleneck)")
    norm_big = tuple(int(x) for x in a.norm_big.split("x")) if a.norm_big else None
    if norm_big:
        lines.append(f"norm at batch x seq {norm_big[0]} x {norm_big[1]}")
    ps = plants(device, dtype, small, batch, seq, big, a.break_mode, norm_big)
    if a.break_mode:
        lines.append(f"break plant compiled with mode={a.break_mode!r} before and after (the decode step replayed as "
                     f"CUDA graphs: the launch path inside the graphs is not the bottleneck)")
    for name in () if a.no_plants else (a.only.split(",") if a.only else ps):
        if name == "tf32" and device != "cuda":
            continue
        try:
            run_plant(name, ps[name], lines, out, a.out if a.save else None)
        except Exception as e:  # noqa: BLE001 - one plant failing is a line, the others still run
            lines.append(f"{name}: failed: {type(e).__name__}: {e}")
        finally:
            torch.backends.cuda.matmul.allow_tf32 = False
    if not a.no_whatif:
        cfg = (dict(dim=4096, layers=8, heads=32, kv_heads=8, ffn=14336, vocab=128256, max_seq=2048)
               if device == "cuda" else CPU_SMALL)
        for mode in (None, "reduce-overhead") if a.whatif_modes == "both" else \
                ((None,) if a.whatif_modes == "default" else (a.whatif_modes,)):
            try:
                batch_whatif(device, dtype, cfg, 1024 if device == "cuda" else 32, lines, out, mode=mode)
            except Exception as e:  # noqa: BLE001
                lines.append(f"what-if ({mode or 'default'}) failed: {type(e).__name__}: {e}")
    text = "\n".join(lines)
    print(text)
    if a.out:
        d = Path(a.out)
        d.mkdir(parents=True, exist_ok=True)
        (d / "headroom_gpu.txt").write_text(text + "\n")
        (d / "headroom_gpu.json").write_text(json.dumps(out, indent=1, default=str))
    return 0


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())
