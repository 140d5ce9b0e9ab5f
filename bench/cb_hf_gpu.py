"""transformers' continuous batching (``generate_batch``) counted per engine step (issue 20, part 4).

A Llama (d 1024, 2 layers, 16 heads = 16 KV heads, FFN 2816, vocab 32000, bf16, ``sdpa`` run as the engine's
paged SDPA), 8 prompts of different lengths (``PROMPTS``), 32 new tokens each, greedy;
``ContinuousBatchingConfig(default_compile_level=1)`` (the engine compiles its step with Inductor,
``dynamic=True``, and pads each batch), ``use_cuda_graph=False``; ``max_batch_tokens`` below the prompts' total,
so the prompts are prefilled over several steps, some of them beside decoding requests.

* ``plain``: the engine's own Inductor compile, no graphmfu (the reference tokens and tokens/s);
* ``meter``: under ``graphmfu.capture_all()`` with ``EngineSteps(meter=...)``: one meter row per engine step;
  the sum of the rows' FLOPs against the hand count (below), each row against its own step's hand count, the
  padding the engine added;
* ``profile``: the same under ``graphmfu.profile()``: in-graph kernel time attributed;
* ``cost``: tokens/s of ``plain`` and ``meter`` runs, alternated (each on its own persistent manager, compiled
  once), ``--repeats`` triples plain / graphmfu / plain again in random orders (an A/A control of the noise);
* ``eager``: the default config (no compile): the row's note.

Hand count (schedule-free: whatever steps the engine makes, each request's tokens go through once):
per token 2*(4*D*D + 3*D*FFN) per layer; the LM head 2*D*V per new token; attention 4*hd*H per (query, key)
pair per layer, a request of ``n = prompt + 31`` computed tokens having ``n*(n+1)/2`` causal pairs; plus the
rotary table's outer product, ``hd`` FLOPs per query row the forward ran (padding included: the engine runs it
over the padded positions; it is 0.00001 of the total).

    python bench/cb_hf_gpu.py [--out DIR] [--repeats 40]
    python bench/cb_hf_gpu.py --cpu          # a small dry run on the CPU (transformers 5.23)
"""
from __future__ import annotations

import argparse
import json
import random
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

import graphmfu  # noqa: E402
from graphmfu.integrations.continuous_batching import EngineSteps  # noqa: E402

GPU = dict(D=1024, L=2, H=16, FFN=2816, V=32000, NEW=32, PROMPTS=(17, 45, 80, 100, 133, 160, 201, 256), MBT=512)
CPU = dict(D=64, L=2, H=4, FFN=128, V=256, NEW=4, PROMPTS=(5, 3, 10, 7), MBT=16)


def build(c, device, dtype):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=c["V"], hidden_size=c["D"], intermediate_size=c["FFN"], num_hidden_layers=c["L"],
                      num_attention_heads=c["H"], num_key_value_heads=c["H"], max_position_embeddings=1024)
    cfg._attn_implementation = "sdpa"
    torch.manual_seed(0)
    return LlamaForCausalLM(cfg).to(device, dtype).eval()


def prompts(c):
    g = torch.Generator().manual_seed(0)
    return [torch.randint(1, c["V"], (n,), generator=g).tolist() for n in c["PROMPTS"]]


def cb_config(c, level: int):
    from transformers.generation.configuration_utils import ContinuousBatchingConfig

    fields = ContinuousBatchingConfig.__dataclass_fields__
    size = {"page_size": 16} if "page_size" in fields else {"block_size": 16}
    extra = {"auto_switch_to_flash": False} if "auto_switch_to_flash" in fields else {}
    # no block sharing: a persistent manager would otherwise reuse the cached prompts of the run before
    return ContinuousBatchingConfig(num_blocks=256, max_batch_tokens=c["MBT"], default_compile_level=level,
                                    use_cuda_graph=False, allow_block_sharing=False, **size, **extra)


def hand(c, rows_run: int) -> dict:
    D, L, H, FFN, V, NEW = c["D"], c["L"], c["H"], c["FFN"], c["V"], c["NEW"]
    hd = D // H
    tokens = sum(p + NEW - 1 for p in c["PROMPTS"])  # prompt + every new token but the last go through the model
    linear = L * 2 * (4 * D * D + 3 * D * FFN) * tokens
    head = 2 * D * V * NEW * len(c["PROMPTS"])
    pairs = sum((p + NEW - 1) * (p + NEW) // 2 for p in c["PROMPTS"])
    attention = L * H * 4 * hd * pairs
    rope = hd * rows_run
    return {"linear": linear, "head": head, "attention": attention, "rope": rope,
            "total": linear + head + attention + rope}


def step_hand(c, b) -> int:
    D, L, H, FFN, V = c["D"], c["L"], c["H"], c["FFN"], c["V"]
    hd = D // H
    att = sum(L * H * 4 * hd * (r.q * r.k["full_attention"] - r.q * (r.q - 1) // 2) for r in b.requests)
    return L * 2 * (4 * D * D + 3 * D * FFN) * b.q_tokens + 2 * D * V * b.new_tokens + att


def run(model, ps, gc, cbc, persistent=False):
    t0 = time.perf_counter()
    with torch.no_grad():
        out = model.generate_batch(ps, generation_config=gc, continuous_batching_config=cbc, progress_bar=False,
                                   persistent_manager=persistent)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    # the engine's serving window: first request out of the queue to last request finished
    window = max(v.lifespan[1] for v in out.values()) - min(v.lifespan[0] for v in out.values())
    return {k: list(v.generated_tokens) for k, v in out.items()}, window


def serve(model, ps, gc, cbc=None, new=None):
    """The engine driven through its manager with every request queued before its loop starts (a schedule
    that does not depend on thread timing, unlike generate_batch, whose requests arrive while the loop
    runs); the manager is kept on the model for the next call (compiled once).  Returns the tokens and the
    engine's serving window (first request scheduled to last finished)."""
    m = model.init_continuous_batching(generation_config=gc, continuous_batching_config=cbc)
    if not m.warmed_up:
        m.warmup()
    m.background_thread_status.clear()  # the last stop's status would drop requests added before start()
    m.add_requests(inputs=ps, max_new_tokens=new or gc.max_new_tokens)
    m.start()
    results = {}
    try:
        while len(results) < len(ps):
            r = m.get_result(timeout=1)
            if r is not None and r.is_finished():
                results[r.request_id] = r
            elif r is None and not m.is_running():
                raise RuntimeError("the continuous-batching loop stopped before every request finished")
    finally:
        m.stop(block=True, keep_for_next_session=True)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    window = max(v.lifespan[1] for v in results.values()) - min(v.lifespan[0] for v in results.values())
    order = sorted(results, key=lambda k: int(k.split("_")[-1]))
    return [list(results[k].generated_tokens) for k in order], window


def _bootstrap(ratios, n=2000, seed=0):
    """A 95% interval of the median per-pair ratio, less one (resampled pairs)."""
    import random

    rng = random.Random(seed)
    meds = sorted(statistics.median(rng.choices(ratios, k=len(ratios))) for _ in range(n))
    return meds[int(0.025 * n)] - 1, meds[int(0.975 * n) - 1] - 1


def main(argv=None) -> int:
    from transformers import GenerationConfig

    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=None)
    ap.add_argument("--cpu", action="store_true")
    ap.add_argument("--repeats", type=int, default=40)
    ap.add_argument("--cost-only", action="store_true", help="stop after the cost (diagnosis)")
    ap.add_argument("--layers", type=int, default=None, help="decoder layers (default 2): a longer device step")
    a = ap.parse_args(argv)
    c = dict(CPU if a.cpu else GPU)
    if a.layers:
        c["L"] = a.layers
    device, dtype = ("cpu", torch.float32) if a.cpu else ("cuda", torch.bfloat16)
    ps = prompts(c)
    gc = GenerationConfig(max_new_tokens=c["NEW"], do_sample=False, eos_token_id=-1, pad_token_id=0)
    import transformers

    lines = [f"{torch.cuda.get_device_name(0) if device == 'cuda' else 'CPU'}, torch {torch.__version__}, "
             f"transformers {transformers.__version__}; Llama d{c['D']} {c['L']} layers, MHA {c['H']} heads, FFN "
             f"{c['FFN']}, vocab {c['V']}, {dtype}; {len(ps)} prompts {c['PROMPTS']}, {c['NEW']} new tokens each; "
             f"generate_batch, default_compile_level=1, max_batch_tokens {c['MBT']}, no CUDA graphs"]
    out: dict = {"config": {k: v for k, v in c.items()}}

    for name in ("recompile_limit", "cache_size_limit"):  # four engines compile one function in this process
        if hasattr(torch._dynamo.config, name):
            setattr(torch._dynamo.config, name, 64)
    n_tok = len(ps) * c["NEW"]

    # plain: the engine's own Inductor compile (first run compiles; the second is the reference)
    plain_model = build(c, device, dtype)
    run(plain_model, ps, gc, cb_config(c, 1), persistent=True)
    with EngineSteps(meter=None, stages=False) as plain_steps:  # its schedule (bookkeeping only)
        plain_tokens, _ = run(plain_model, ps, gc, None, persistent=True)

    # meter: capture_all + EngineSteps; the first run compiles, the second is measured
    graphmfu.reset()
    model = build(c, device, dtype)
    with graphmfu.capture_all() as cap:
        with EngineSteps(meter=graphmfu.meter()):
            run(model, ps, gc, cb_config(c, 1), persistent=True)
    meter = graphmfu.meter()
    steps = EngineSteps(meter=meter)
    with steps:
        tokens, _ = run(model, ps, gc, None, persistent=True)
    rows = meter.records
    rows_run = sum(b.num_q_tokens for b in steps.batches)
    h = hand(c, rows_run)
    rope = c["D"] // c["H"] if device == "cuda" else 0  # the CPU runs the K=1 rotary product as a mul (no FLOPs)
    total = sum(r["flops"] for r in rows)
    per_step = [(r["flops"], step_hand(c, b) + rope * b.num_q_tokens) for r, b in zip(rows, steps.batches)]
    exact_steps = sum(1 for f, s in per_step if f == s)
    kinds = {}
    for b in steps.batches:
        kinds[b.kind] = kinds.get(b.kind, 0) + 1
    executed = sum(r.get("flops_executed") or r["flops"] for r in rows)
    step_s = sum(r["step_s"] for r in rows)
    diff = sum(1 for k in tokens if tokens[k] != plain_tokens.get(k))
    same_schedule = [(b.requests, b.num_q_tokens) for b in steps.batches] == [(b.requests, b.num_q_tokens)
                                                                            for b in plain_steps.batches]
    out["meter"] = {"steps": len(rows), "kinds": kinds, "flops": total, "hand": h, "error": total / h["total"] - 1,
                    "steps_equal_their_hand_count": exact_steps, "executed": executed,
                    "padded_tokens": sum(r.get("padded_tokens") or 0 for r in rows),
                    "q_tokens": sum(b.q_tokens for b in steps.batches), "rows_run": rows_run,
                    "same_tokens": tokens == plain_tokens, "requests_with_other_tokens": diff,
                    "same_schedule": same_schedule, "routed": cap.routed,
                    "tokens": tokens, "plain_tokens": plain_tokens, "graphs": len(graphmfu.report().record.graphs),
                    "rows": [{k: r.get(k) for k in ("step", "engine_step", "requests", "prefill_tokens", "decode_tokens",
                                                    "new_tokens", "context_tokens", "kv_bytes_read", "flops",
                                                    "flops_executed", "padding_share", "attention_flops", "step_s",
                                                    "mfu", "mfu_executed", "mbu", "tokens_per_s", "graph_calls",
                                                    "foreign_calls", "flags", "note")} for r in rows]}
    lines += [f"  hand count: {h['total']:,} (linear {h['linear']:,}, head {h['head']:,}, attention "
              f"{h['attention']:,}, rotary {h['rope']:,})",
              f"  meter (capture_all + EngineSteps, the second generate_batch): {len(rows)} engine steps {kinds}; sum "
              f"of step FLOPs {total:,} ({total / h['total'] - 1:+.5%} vs hand); {exact_steps}/{len(rows)} steps = "
              f"their own hand count; executed (with the engine's padding) {executed:,}, padded query tokens "
              f"{out['meter']['padded_tokens']:,} of {rows_run:,} run; foreign calls "
              f"{sum(r['foreign_calls'] for r in rows)}; flags {sorted({f for r in rows for f in r['flags']})}; "
              f"steps {step_s * 1e3:.1f} ms, {n_tok / step_s:.0f} tok/s in steps, {total / step_s / 1e12:.1f} "
              f"TFLOP/s; tokens as plain Inductor: {len(tokens) - diff}/{len(tokens)} requests identical (same schedule "
              f"of batches: {same_schedule})"]
    for r in rows[:3] + rows[-2:]:
        lines.append(f"    step {r['step']} {r['engine_step']}: requests {r['requests']} prefill {r['prefill_tokens']} "
                     f"decode {r['decode_tokens']} context {r['context_tokens']} flops {r['flops']:,} executed "
                     f"{r.get('flops_executed') or r['flops']:,} kv read {r['kv_bytes_read']:,} B "
                     f"{r['step_s'] * 1e3:.2f} ms MFU {r['mfu'] or 0:.2%} (executed {r.get('mfu_executed') or 0:.2%}) "
                     f"MBU {r['mbu'] or 0:.2%}")

    # cost: tokens/s with and without graphmfu, alternated, each on its persistent manager (compiled above)
    tp, tg, ta, same, plain_same = [], [], [], [], []
    first = None
    rng = random.Random(0)
    # one EngineSteps and meter across every graphmfu run, as a server keeps them (its per-model facts and
    # checked mask counts are made once, not at every run)
    kept = EngineSteps(meter=graphmfu.meter())
    for _ in range(a.repeats):  # every request queued before the loop starts: one schedule for every run
        got = {}
        for arm in rng.sample(("plain", "graphmfu", "plain again"), 3):  # each triple in its own order
            if arm == "graphmfu":
                with kept:
                    got[arm] = serve(model, ps, gc)
            else:  # plain again: the A/A control (the measurement's own noise)
                got[arm] = serve(plain_model, ps, gc)
        (t_plain, dt), (t_g, dg) = got["plain"], got["graphmfu"]
        tp.append(dt)
        tg.append(dg)
        ta.append(got["plain again"][1])
        first = first or t_plain
        same.append(t_plain == t_g)
        plain_same.append(t_plain == first)
    cost = statistics.median(tg) / statistics.median(tp) - 1
    kept_rows = kept.meter.records
    out["cost_rows"] = {"steps": len(kept_rows), "flops": sum(r["flops"] for r in kept_rows)}
    pair = statistics.median(g / p for g, p in zip(tg, tp)) - 1
    control = statistics.median(x / p for x, p in zip(ta, tp)) - 1
    lo, hi = _bootstrap([g / p for g, p in zip(tg, tp)])
    out["cost"] = {"plain_s": tp, "graphmfu_s": tg, "plain_again_s": ta, "plain_tok_s": n_tok / statistics.median(tp),
                   "graphmfu_tok_s": n_tok / statistics.median(tg), "cost": cost, "cost_per_pair_median": pair,
                   "cost_ci95": [lo, hi], "control_plain_again": control, "same_tokens": same,
                   "plain_same_as_first_plain": plain_same}
    lines.append(f"  tokens/s (the engine's serving window, every request queued before its loop starts; {a.repeats} "
                 f"triples plain / graphmfu / plain again, each in a random order): plain {n_tok / statistics.median(tp):.1f}, "
                 f"with graphmfu (meter, per-step rows) {n_tok / statistics.median(tg):.1f}; cost: median of the "
                 f"per-pair ratios {pair:+.2%} (95% bootstrap interval {lo:+.2%} .. {hi:+.2%}), ratio of medians "
                 f"{cost:+.2%}; A/A control (plain again / plain, per pair) {control:+.2%}; same tokens in every "
                 f"pair {all(same)}; every plain run = the first {all(plain_same)}; one EngineSteps kept over the "
                 f"graphmfu runs: {len(kept_rows)} rows, {out['cost_rows']['flops'] / a.repeats:,.0f} FLOPs per run")
    if a.cost_only:
        print("\n".join(lines))
        return 0

    # profile: in-graph kernel time attributed (the compiled engine, one more run)
    with EngineSteps(meter=None, stages=True):
        with graphmfu.profile() as p:
            run(model, ps, gc, None, persistent=True)
    rep = p.report()
    cov = rep.coverage()
    stages = {s["name"]: (s.get("calls"), s.get("flops")) for s in rep.stages}
    out["profile"] = {"in_graphs": cov.get("time_attributed_in_graphs"), "attributed": cov.get("time_attributed"),
                      "foreign_share": cov.get("foreign_share"), "stages": stages, "notes": rep.data["notes"][:4]}
    lines.append(f"  profile: in-graph kernel time attributed {cov.get('time_attributed_in_graphs') or 0:.4f}, all "
                 f"kernel time {cov.get('time_attributed') or 0:.4f}, foreign {cov.get('foreign_share') or 0:.4f}; "
                 f"stages {stages}")

    # eager: the default config compiles nothing
    m3 = graphmfu.meter()
    with EngineSteps(meter=m3):
        run(build(c, device, dtype), ps, gc, cb_config(c, 0))
    r3 = m3.records
    out["eager"] = {"flags": r3[0]["flags"], "note": r3[0].get("note")}
    lines.append(f"  default config (no compile): {len(r3)} steps, flags {r3[0]['flags']}; note: {r3[0].get('note')}")

    print("\n".join(lines))
    if a.out:
        Path(a.out).mkdir(parents=True, exist_ok=True)
        (Path(a.out) / "cb_hf.json").write_text(json.dumps(out, indent=1, default=str))
        (Path(a.out) / "cb_hf.txt").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
