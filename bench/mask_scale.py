"""What counting an in-graph attention mask costs at long sequences (issue 10).

A 1-layer attention model builds its mask in the graph (causal; sliding window) and is analysed with
``graphmfu.analyze`` (fake tensors: nothing of T x T is allocated by the model).  For each case this
prints the time of the mask pass (rules/masks.py) itself, the whole analyze() with and without the
pass, the peak of tensor memory the counting holds alive (every tensor it allocates, tracked by a
dispatch mode, its storage freed when the last tensor on it is collected; the pass's other objects
are a few small formula tuples), and checks the count against the closed form.
Targets: < 1 s and < 100 MB at T = 131072.

    .venv/bin/python bench/mask_scale.py [T ...]
"""
from __future__ import annotations

import gc
import sys
import time
import weakref
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import graphmfu  # noqa: E402
from graphmfu import _inductor  # noqa: E402
from graphmfu.cost import REGISTRY, ensure_builtin_rules  # noqa: E402

WINDOW = 4096


class Attn(nn.Module):
    def __init__(self, kind: str, d: int = 64, heads: int = 1):
        super().__init__()
        self.kind, self.heads = kind, heads
        self.qkv = nn.Linear(d, 3 * d, bias=False)

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        i = torch.arange(t, device=x.device)
        qi, kj = i[:, None], i[None, :]
        mask = kj <= qi
        if self.kind == "window":
            mask = mask & (kj > qi - WINDOW)
        bias = torch.where(mask, 0.0, float("-inf")).to(x.dtype)  # the additive form HF passes
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias)


def expected_pairs(kind: str, t: int) -> int:
    if kind == "causal":
        return t * (t + 1) // 2
    w = min(WINDOW, t)
    return w * (w + 1) // 2 + (t - w) * w  # rows i < w see i + 1 keys, the rest w


class LiveTensors(_inductor.dispatch_mode_base()):
    """Peak bytes of the tensors allocated under it that are alive at once."""

    def __init__(self):
        super().__init__()
        self.storages: dict = {}  # data_ptr -> [bytes, live tensor objects]
        self.now = self.peak = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in _inductor.tree_leaves(out):
            if isinstance(t, torch.Tensor) and t.device.type == "cpu":
                st = t.untyped_storage()
                key = st.data_ptr()
                entry = self.storages.get(key)
                if entry is None:
                    entry = self.storages[key] = [st.nbytes(), 0]
                    self.now += entry[0]
                    self.peak = max(self.peak, self.now)
                entry[1] += 1
                weakref.finalize(t, self._release, key)
        return out

    def _release(self, key):
        entry = self.storages.get(key)
        if entry is not None:
            entry[1] -= 1
            if entry[1] == 0:
                self.now -= entry[0]
                del self.storages[key]


def run(kind: str, t: int, masks) -> dict:
    model = Attn(kind)
    x = torch.randn(1, t, 64) if t <= 4096 else torch.empty(1, t, 64, device="meta")
    timings, formulas = [], []
    inner, count_kept = masks._masked_attention, masks.count_kept

    def timed(gm, records):
        t0 = time.perf_counter()
        inner(gm, records)
        timings.append(time.perf_counter() - t0)

    def keep(formula, tq, tk):
        formulas.append((formula, tq, tk))
        return count_kept(formula, tq, tk)

    masks._masked_attention, masks.count_kept = timed, keep
    try:
        t0 = time.perf_counter()
        rep = graphmfu.analyze(model, x)
        total = time.perf_counter() - t0
    finally:
        masks._masked_attention, masks.count_kept = inner, count_kept
    peak = 0
    for formula, tq, tk in formulas:  # the same counting again, its tensors tracked
        gc.collect()
        with LiveTensors() as live:
            count_kept(formula, tq, tk)
        peak = max(peak, live.peak)
    passes = REGISTRY.graph_passes
    REGISTRY.graph_passes = [p for p in passes if p is not masks.masked_attention]
    try:
        t0 = time.perf_counter()
        graphmfu.analyze(model, x)
        without = time.perf_counter() - t0
    finally:
        REGISTRY.graph_passes = passes
    node = next(n for g in rep.record.graphs for n in g.nodes if "scaled_dot_product" in n.op)
    per_pair = 2 * 64 + 2 * 64  # heads 1, D = Dv = 64
    pairs = node.cost.flops // per_pair
    return {"kind": kind, "T": t, "pass_s": sum(timings), "pass_mb": peak / 1e6, "analyze_s": total,
            "analyze_without_s": without,
            "pairs": pairs, "expected": expected_pairs(kind, t), "flags": node.flags}


def main(argv):
    ensure_builtin_rules()
    masks = sys.modules["graphmfu.rules.masks"]
    sizes = [int(a) for a in argv] or [1024, 131072]
    print(f"{'mask':8} {'T':>7} {'pass s':>8} {'pass MB':>8} {'analyze s':>10} {'w/o pass s':>10} "
          f"{'pairs':>12} {'exact':>6}")
    worst_s = worst_mb = 0.0
    for t in sizes:
        for kind in ("causal", "window"):
            r = run(kind, t, masks)
            ok = r["pairs"] == r["expected"] and not r["flags"]
            print(f"{kind:8} {t:>7} {r['pass_s']:>8.4f} {r['pass_mb']:>8.1f} {r['analyze_s']:>10.2f} "
                  f"{r['analyze_without_s']:>10.2f} {r['pairs']:>12} {str(ok):>6}")
            if t == max(sizes):
                worst_s, worst_mb = max(worst_s, r["pass_s"]), max(worst_mb, r["pass_mb"])
            if not ok:
                print(f"  MISMATCH: expected {r['expected']} pairs, flags {r['flags']}")
    print(f"T = {max(sizes)}: mask pass at most {worst_s:.3f} s (target < 1 s), {worst_mb:.1f} MB extra "
          f"(target < 100 MB)")


if __name__ == "__main__":
    main(sys.argv[1:])
