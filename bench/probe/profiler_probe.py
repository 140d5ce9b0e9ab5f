"""Probe (kept for reference): what torch.profiler and ncu report for an Inductor-compiled model on CUDA,
in default mode and under CUDA graphs.  Writes JSON dumps for designing the timing join."""
import json, os, sys
import torch, torch.nn as nn
from torch.profiler import profile, ProfilerActivity, record_function

out_dir = os.environ.get("OUT", "/tmp")
mode = sys.argv[1] if len(sys.argv) > 1 else "default"


class M(nn.Module):
    def __init__(s):
        super().__init__(); s.a = nn.Linear(1024, 4096); s.b = nn.Linear(4096, 1024)
    def forward(s, x):
        return s.b(torch.relu(s.a(x))).softmax(-1)


m = M().cuda().half()
x = torch.randn(512, 1024, device="cuda", dtype=torch.half)
cm = torch.compile(m, mode=None if mode == "default" else mode)
with torch.no_grad():
    for _ in range(3):
        cm(x)
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        with record_function("graphmfu::stage probe"):
            torch.cuda.nvtx.range_push("BENCHMARK")
            cm(x)
            torch.cuda.nvtx.range_pop()
        torch.cuda.synchronize()
fe = []
for e in prof.events():
    fe.append(dict(id=e.id, name=e.name, dev=str(e.device_type), start=e.time_range.start, end=e.time_range.end,
                   parent=e.cpu_parent.id if e.cpu_parent else None, kernels=[(k.name, k.duration) for k in e.kernels],
                   dtt=getattr(e, "device_time_total", None), corr=getattr(e, "correlation_id", None)))
ke = []
for e in prof.profiler.kineto_results.events():
    ke.append(dict(name=e.name(), dev=str(e.device_type()), start=e.start_ns(), dur=e.duration_ns(),
                   corr=e.correlation_id(), linked=e.linked_correlation_id(), tid=e.start_thread_id(),
                   dev_index=e.device_index(), res=e.device_resource_id()))
json.dump({"function_events": fe, "kineto": ke}, open(f"{out_dir}/probe_{mode}.json", "w"), indent=0)
print(mode, "function events", len(fe), "kineto", len(ke))
for e in ke:
    print(f"  {e['dev']:18s} {e['name'][:70]:70s} start={e['start']} dur={e['dur']} corr={e['corr']} linked={e['linked']}")
