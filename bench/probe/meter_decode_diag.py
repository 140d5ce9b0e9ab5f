"""Where the meter's decode overhead goes (GPU): the same decode step plain, with the tagging class but
no meter work, with the meter (no per-call events), the meter with mask probes off, the full meter;
CPU time per step (perf_counter, no sync) beside GPU time (events around the block)."""
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
import graphmfu  # noqa: E402
from examples.generate_llama import Generator, StaticCache  # noqa: E402
from examples.minimal_llama import Llama, LlamaConfig  # noqa: E402
from examples.train_llama import PRESETS  # noqa: E402
from graphmfu import hostcopy  # noqa: E402
from graphmfu.registry import DEFAULT  # noqa: E402

cfg = LlamaConfig(**{**PRESETS["8b-2l"], "layers": 2}, max_seq=2056)
torch.manual_seed(0)
model = Llama(cfg).to("cuda", torch.bfloat16).eval()
gen = Generator(model, StaticCache(cfg, 8, 2048, "cuda", torch.bfloat16))
step = torch.compile(gen, backend=graphmfu.backend(mode="reduce-overhead"))
tok = torch.randint(0, cfg.vocab, (8, 1), device="cuda")
positions = torch.arange(2048, device="cuda")
i = [0]


def decode():
    i[0] = (i[0] + 1) % 1000
    torch.compiler.cudagraph_mark_step_begin()
    with torch.no_grad():
        step(tok, positions[1024 + i[0]:][:1])


for _ in range(10):
    decode()
torch.cuda.synchronize()


class Null:
    def call_begin(self, key, values):
        return None

    def call_end(self, token):
        pass


def block(n, wrap):
    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize()
    a.record()
    t0 = time.perf_counter()
    for _ in range(n):
        wrap()
    cpu = time.perf_counter() - t0
    b.record()
    b.synchronize()
    return a.elapsed_time(b) / 1e3 / n, cpu / n


def variants():
    m_full = graphmfu.meter(cuda=True)
    m_every = graphmfu.meter(cuda=True, graph_time=1)
    m_noev = graphmfu.meter(cuda=True, graph_time=0)
    null = Null()
    compiled = [r() for r in DEFAULT.tagger._compiled if r() is not None]
    saved = [c._graphmfu_probes for c in compiled]

    def with_meter(m):
        def f():
            with m.step(tokens=8):
                decode()
        return f

    def attached(f):
        def g():
            DEFAULT.tagger.attach(null)
            try:
                f()
            finally:
                DEFAULT.tagger.detach(null)
        return g

    def no_probes(f):
        def g():
            for c in compiled:
                c._graphmfu_probes = ()
            try:
                f()
            finally:
                for c, p in zip(compiled, saved):
                    c._graphmfu_probes = p
        return g

    def probe_only():
        vals = [c._graphmfu_probes for c in compiled]
        return vals

    def compute_stream(f):
        def g():
            hostcopy.SIDE_STREAM = False
            try:
                f()
            finally:
                hostcopy.SIDE_STREAM = True
        return g

    pool = [torch.empty(1, dtype=torch.int64, pin_memory=True) for _ in range(4)]
    evs = [torch.cuda.Event(enable_timing=True) for _ in range(4)]

    def with_events(k, copy=False):  # the bare stream operations the meter adds, without the meter
        def g():
            if copy:
                pool[i[0] % 4].copy_(positions[1024 + i[0]:][:1], non_blocking=True)
            if k > 1:
                evs[0].record()
            decode()
            if k > 0:
                evs[1].record()
        return g

    return {"plain": decode, "plain + 1 event": with_events(1), "plain + 2 events": with_events(2),
            "plain + 1 D2H copy": with_events(0, True), "plain + copy + 1 event": with_events(1, True),
            "tagging class, null meter": attached(decode),
            "meter, copies on compute stream": compute_stream(with_meter(m_full)),
            "meter, no graph events": with_meter(m_noev), "meter, probes off": no_probes(with_meter(m_full)),
            "meter, graph events every step": with_meter(m_every), "meter (default)": with_meter(m_full)}, saved


vs, saved = variants()
print("probes per compiled graph:", [[n for n, _ in p] for p in saved])
for p in saved:
    for n, fn in p:
        d = getattr(fn, "defer", None)
        if d is not None:
            print(f"mask subgraph of {n} (inputs {d.__defaults__[1]}, lead/tq/tk {d.__defaults__[2]}):\n{d.__defaults__[0].code}")
res = {k: [] for k in vs}
for r in range(5):
    for k, f in vs.items():
        res[k].append(block(200, f))
base = statistics.median(g for g, _ in res["plain"])
for k, xs in res.items():
    g = statistics.median(x[0] for x in xs)
    c = statistics.median(x[1] for x in xs)
    print(f"{k:32s} GPU/step {g * 1e3:8.4f} ms  ratio {g / base:6.3f}  CPU/step {c * 1e6:8.1f} us")

for p in saved:
    for n, fn in p:
        d = getattr(fn, "defer", None)
        st = getattr(d.__defaults__[0], "_graphmfu_numpy", None) if d is not None else None
        print(f"{n}: counted with {'NumPy' if st and st[0] is not None else 'torch'} on the host "
              f"(state {st and (st[0] is not None, st[1])})")

# where the default meter's CPU time goes, by phase: perf_counter around each piece (nested pieces are
# also inside their callers), microseconds per step over 3 x 200 steps
import collections  # noqa: E402

from graphmfu import _inductor  # noqa: E402

meter_cls = sys.modules["graphmfu.meter"].Meter
plan_cls = sys.modules["graphmfu.meter"].GraphPlan

spent = collections.Counter()


def timed(owner, name, label):
    orig = getattr(owner, name)

    def f(*a, **k):
        t0 = time.perf_counter()
        try:
            return orig(*a, **k)
        finally:
            spent[label] += time.perf_counter() - t0
    setattr(owner, name, f)
    return lambda: setattr(owner, name, orig)


masks_mod = sys.modules["graphmfu.rules.masks.probes"]  # the room whose probes call _host_count
undo = [timed(_inductor, "call_values", "call_values (sizes, probe defer: host copies)"),
        timed(hostcopy.HostCopies, "copy", "  host copy"),
        timed(meter_cls, "_drain", "drain (finishing steps)"),
        timed(meter_cls, "_finish", "  finish one step"),
        timed(masks_mod, "_host_count", "    mask count on the host"),
        timed(meter_cls, "cost", "    call cost (memoised per sizes)"),
        timed(plan_cls, "at", "      new sizes: plan.at"),
        timed(meter_cls, "row", "    row"),
        timed(meter_cls, "_mark", "events (record)"),
        timed(meter_cls, "call_begin", "call_begin")]
m_t = graphmfu.meter(cuda=True)
n_t = 0
for _ in range(3):
    t0 = time.perf_counter()
    for _ in range(200):
        with m_t.step(tokens=8):
            decode()
        n_t += 1
    spent["whole metered step (CPU, no sync)"] += time.perf_counter() - t0
m_t.records
for u in undo:
    u()
print("\nCPU time per step by phase (default meter):")
for k, v in spent.items():
    print(f"  {k:48s} {v / n_t * 1e6:8.1f} us")

if os.environ.get("PROFILE") == "1":  # where the meter's CPU time goes (cProfile over 200 metered steps)
    import cProfile
    import pstats

    m = graphmfu.meter(cuda=True)
    pr = cProfile.Profile()
    pr.enable()
    for _ in range(200):
        with m.step(tokens=8):
            decode()
    m.records
    pr.disable()
    pstats.Stats(pr).sort_stats("cumtime").print_stats(45)
