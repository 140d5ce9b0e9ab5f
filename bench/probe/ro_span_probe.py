"""Probe: per decode call under mode="reduce-overhead", the device timeline graphmfu sees (stage CPU
start, when the device was free, first kernel, last kernel end) against the CUDA events of the call."""
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples"))
import graphmfu  # noqa: E402
from graphmfu.join import join  # noqa: E402
from minimal_llama import graphmfu_compare  # noqa: E402

mode = sys.argv[1] if len(sys.argv) > 1 else "reduce-overhead"
setup = graphmfu_compare(["--dim", "4096", "--ffn", "11008", "--heads", "32", "--kv-heads", "32", "--layers", "2",
                          "--vocab", "32000", "--seq", "512", "--device", "cuda", "--decode"])
m = torch.compile(setup["model"], backend=graphmfu.backend(mode=mode))
args = setup["stages"]["decode"]
with torch.no_grad():
    for _ in range(20):
        m(*args)
    torch.cuda.synchronize()
    evs = []
    with graphmfu.profile() as p:
        for _ in range(5):
            with graphmfu.stage("decode"):
                a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                a.record()
                m(*args)
                b.record()
                evs.append((a, b))
torch.cuda.synchronize()
graphs = {g.id: g for g in graphmfu.registry.DEFAULT.graphs}
measured, stages, notes = join(p.prof, list(graphs.values()), cuda=True)
ms = sorted(measured, key=lambda x: x.start_us)
for i, (occ, (a, b)) in enumerate(zip(sorted(stages, key=lambda s: s["start_us"]), evs)):
    ins = [x for x in ms if occ["start_us"] <= x.launch_start_us <= occ["end_us"]]
    before = [x for x in ms if x.launch_start_us < occ["start_us"]]
    free = max((x.end_us for x in before), default=None)
    first, last = min(x.start_us for x in ins), max(x.end_us for x in ins)
    print(f"call {i}: cpu {occ['start_us']:.1f}-{occ['end_us']:.1f} free {free} first {first:.1f} last {last:.1f} "
          f"span(first..last) {last - first:.1f} us, event {a.elapsed_time(b) * 1e3:.1f} us, n {len(ins)}")
    for x in ins[:3] + ins[-3:]:
        print(f"    {x.name[:50]:50s} launch {x.launch_start_us:.1f} start {x.start_us:.1f} end {x.end_us:.1f} op {x.launch_op}")
print(notes)
