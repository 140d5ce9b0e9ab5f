"""transformers' generate() on a GPU, where it compiles the forward itself (issue 20).

A Llama (d 1024, 2 layers, 16 heads = 16 KV heads: MHA, so FlopCounterMode's SDPA formula applies), batch 4 with
left padding (0, 7, 20, 45 pads), a 100-token prompt, 16 new tokens, bf16, ``cache_implementation="static"``.

* ``issue``: the issue's script: ``model.forward = torch.compile(model.forward, backend=graphmfu.backend)``, then
  generate() inside a meter step and inside ``profile()`` + ``stage("generate")``;
* ``capture``: the same under ``graphmfu.capture_all()``, one meter step per forward
  (``graphmfu.integrations.transformers.generate``);
* references: FlopCounterMode on eager generate() of the same inputs (``disable_compile=True``, dense), the hand
  count (effective: each row's real tokens, causal, keys up to its position; dense: every query against the
  static cache), and the tokens of plain generate() without graphmfu.

    python bench/generate_hf_gpu.py [--out DIR]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

import graphmfu  # noqa: E402

D, L, H, FFN, V = 1024, 2, 16, 2816, 32000
PROMPT, NEW, PADS = 100, 16, (0, 7, 20, 45)


def build():
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=V, hidden_size=D, intermediate_size=FFN, num_hidden_layers=L, num_attention_heads=H,
                      num_key_value_heads=H, max_position_embeddings=512)
    torch.manual_seed(0)
    return LlamaForCausalLM(cfg).to("cuda", torch.bfloat16).eval()


def inputs():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1, V, (len(PADS), PROMPT), generator=g)
    am = torch.ones(len(PADS), PROMPT, dtype=torch.long)
    for row, p in enumerate(PADS):
        am[row, :p] = 0
        ids[row, :p] = 0
    return ids.cuda(), am.cuda()


def hand() -> dict:
    """Matrix FLOPs of one generate() call by hand: per position 2*(4*D*D + 3*D*FFN) per layer; the head 2*D*V at
    one position per row and forward; attention 4*hd*H per (query, key) pair per layer (Q@K^T and P@V)."""
    b, hd = len(PADS), D // H
    per_pos, head, pair = L * 2 * (4 * D * D + 3 * D * FFN), 2 * D * V, L * H * 4 * hd
    rope = 2 * b * (hd // 2)  # per position: the rotary table's inv_freq[hd/2, 1] @ position[1, T] (once per forward)
    cache = PROMPT + NEW - 1  # the static cache's length (the last new token is never cached): dense meets all of it
    forwards = [PROMPT] + [1] * (NEW - 1)
    linear = sum(b * (n * per_pos + head) + rope * n for n in forwards)
    dense = sum(b * n * cache for n in forwards) * pair
    eff = 0
    for p in PADS:
        real = PROMPT - p
        eff += real * (real + 1) // 2  # prefill: the real tokens, causal (pads attend to nothing)
        eff += sum(PROMPT + k - p for k in range(1, NEW))  # decode step k at position PROMPT-1+k: keys p..that
    return {"linear": linear, "attention_dense": dense, "attention": eff * pair, "dense": linear + dense,
            "effective": linear + eff * pair, "prefill": b * (PROMPT * per_pos + head) + rope * PROMPT + sum(
                (PROMPT - p) * (PROMPT - p + 1) // 2 for p in PADS) * pair,
            "decode": [b * (per_pos + head) + rope + sum(PROMPT + k - p for p in PADS) * pair for k in range(1, NEW)]}


def main(argv=None) -> int:
    from transformers.generation.configuration_utils import CompileConfig  # noqa: F401 - present in 5.17

    from graphmfu.integrations import transformers as gt

    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=None)
    ap.add_argument("--only", choices=["issue", "capture"], default=None)
    a = ap.parse_args(argv)
    ids, am = inputs()
    kw = dict(attention_mask=am, max_new_tokens=NEW, min_new_tokens=NEW, do_sample=False, pad_token_id=0,
              cache_implementation="static")
    h = hand()
    out = {"hand": h}
    lines = [f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}; Llama d{D} {L} layers, MHA {H} heads, "
             f"batch {len(PADS)} (pads {PADS}), prompt {PROMPT}, {NEW} new tokens, bf16, static cache"]

    # references: eager FLOPs (dense) and the tokens of plain generate()
    model = build()
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        eager_tokens = model.generate(ids, disable_compile=True, **kw)
    fc_total = fc.get_total_flops()
    with torch.no_grad():
        plain_tokens = model.generate(ids, **kw)  # transformers' own compile (Inductor, reduce-overhead)
        plain_tokens = model.generate(ids, **kw)
    torch._dynamo.reset()
    inductor_model = build()
    inductor_model.forward = torch.compile(inductor_model.forward)  # the script with plain Inductor
    with torch.no_grad():
        inductor_model.generate(ids, **kw)
        inductor_tokens = inductor_model.generate(ids, **kw)
    del inductor_model
    torch._dynamo.reset()
    lines.append(f"  hand count: effective {h['effective']:,}, dense {h['dense']:,} (attention {h['attention']:,} "
                 f"of dense {h['attention_dense']:,})")
    lines.append(f"  FlopCounterMode, eager generate(): {fc_total:,} (dense == hand: {fc_total == h['dense']})")

    # the script
    if a.only == "capture":
        return _capture(a, model, ids, kw, h, plain_tokens, out, lines)
    graphmfu.reset()
    model.forward = torch.compile(model.forward, backend=graphmfu.backend)
    meter = graphmfu.meter()
    with torch.no_grad():
        t0 = time.perf_counter()
        model.generate(ids, **kw)
        t_compile = time.perf_counter() - t0
        with meter.step(tokens=len(PADS) * NEW):
            tok_meter = model.generate(ids, **kw)
        with graphmfu.profile() as p, graphmfu.stage("generate"):
            tok_prof = model.generate(ids, **kw)
    row = meter.records[0]
    rep = p.report()
    st = {s["name"]: s for s in rep.stages}["generate"]
    cov = rep.coverage()
    out["issue"] = {"meter": {k: row.get(k) for k in ("flops", "flops_dense", "graph_calls", "foreign_calls", "flags",
                                                       "note", "attention_flops", "tokens_per_s", "mfu")},
                    "profile": {"flops": st["flops"], "flops_dense": st["flops_dense"],
                                "in_graphs": cov["time_attributed_in_graphs"], "attributed": cov["time_attributed"],
                                "foreign_share": cov.get("foreign_share"), "notes": rep.data["notes"][:3]},
                    "same_tokens": bool(torch.equal(tok_meter, inductor_tokens) and torch.equal(tok_prof, inductor_tokens)),
                    "compile_s": t_compile}
    lines += [f"  the issue's script (forward compiled with graphmfu, generate(static)):",
              f"    meter   flops {row['flops']:,}  dense {row['flops_dense']:,}  calls {row['graph_calls']}  foreign "
              f"{row['foreign_calls']}  flags {row['flags']}",
              f"    profile flops {st['flops']:,}  dense {st['flops_dense']:,}  in-graph time attributed "
              f"{cov['time_attributed_in_graphs']:.4f}  foreign share {cov.get('foreign_share', 0):.4f}",
              f"    dense vs FlopCounterMode {row['flops_dense'] / fc_total - 1:+.5%}; effective == hand "
              f"{row['flops'] == h['effective']} ({row['flops'] - h['effective']:+,}); same tokens "
              f"{out['issue']['same_tokens']}"]

    return _capture(a, model, ids, kw, h, plain_tokens, out, lines)


def _capture(a, model, ids, kw, h, plain_tokens, out, lines) -> int:
    from graphmfu.integrations import transformers as gt

    # capture_all(), one meter step per forward; the forward not compiled by the user: the prefill runs eagerly
    graphmfu.reset()
    torch._dynamo.reset()
    model2 = build()
    with torch.no_grad(), graphmfu.capture_all() as cap:
        model2.generate(ids, **kw)
        m2 = graphmfu.meter()
        tok_cap = gt.generate(model2, ids, meter=m2, **kw)
    rows = m2.records
    out["capture"] = {"routed": cap.routed, "rows": [{k: r.get(k) for k in ("flops", "flops_dense", "graph_calls",
                                                                            "foreign_calls", "step_s", "mfu", "mbu")}
                                                     for r in rows], "same_tokens": bool(torch.equal(tok_cap, plain_tokens))}
    decode = [r["flops"] for r in rows[1:]]
    lines += [f"  capture_all() (no compile of the user's), one step per forward: {len(rows)} steps; prefill "
              f"{rows[0]['flops']:,} flags {rows[0].get('flags')} (eager); decode steps == hand "
              f"{decode == h['decode']} (sum {sum(decode):,} vs {sum(h['decode']):,}); foreign calls "
              f"{sum(r['foreign_calls'] for r in rows)}; routed {[(r['what'], r['mode']) for r in cap.routed]}; "
              f"same tokens as plain generate() {out['capture']['same_tokens']}"]
    from graphmfu import _inductor

    lines.append(f"  torch.compile calls seen: {[(c['backend'], c['mode'], c['caller']) for c in _inductor.compile_sites()]}")
    print("\n".join(lines))
    if a.out:
        Path(a.out).mkdir(parents=True, exist_ok=True)
        (Path(a.out) / "generate_hf.json").write_text(json.dumps(out, indent=1, default=str))
        (Path(a.out) / "generate_hf.txt").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
