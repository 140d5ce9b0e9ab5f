"""Does a deferred mask probe run on the host? (GPU diagnostic) Prints the host subgraph's code, the
device of its result and the time of finish()."""
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
import graphmfu  # noqa: E402
from examples.generate_llama import Generator, StaticCache  # noqa: E402
from examples.minimal_llama import Llama, LlamaConfig  # noqa: E402
from graphmfu import _inductor  # noqa: E402
from graphmfu.registry import DEFAULT  # noqa: E402

dev = "cuda" if torch.cuda.is_available() else "cpu"
from examples.train_llama import PRESETS  # noqa: E402

big = os.environ.get("BIG") == "1"
cfg = LlamaConfig(**({**PRESETS["8b-2l"]} if big else dict(dim=64, layers=2, heads=4, kv_heads=2, ffn=128,
                                                              vocab=100)), max_seq=2056)
dt = torch.bfloat16 if big else torch.float32
m = Llama(cfg).to(dev, dt).eval()
gen = Generator(m, StaticCache(cfg, 8 if big else 1, 2048, dev, dt))
f = torch.compile(gen, backend=graphmfu.backend(mode=os.environ.get("MODE") or None))
tok = torch.zeros(8 if big else 1, 1, dtype=torch.long, device=dev)
with torch.no_grad():
    for p in (5, 6, 7):
        torch.compiler.cudagraph_mark_step_begin()
        f(tok, torch.tensor([p], device=dev))
seen = {}


class M:
    def call_begin(self, key, values):
        seen[key] = values

    def call_end(self, t):
        pass


mm = M()
DEFAULT.tagger.attach(mm)
with torch.no_grad():
    torch.compiler.cudagraph_mark_step_begin()
    f(tok, torch.tensor([8], device=dev))
DEFAULT.tagger.detach(mm)
if dev == "cuda":
    torch.cuda.synchronize()
print("calls seen:", {k: (list(v) if v else v) for k, v in seen.items()})
for k, v in seen.items():
    for n, d in (v or {}).items():
        if isinstance(d, _inductor.Deferred):
            fin = d.finish
            cl = {c.cell_contents.__class__.__name__: c.cell_contents for c in (fin.__closure__ or ())}
            print(n, "closure:", {a: (type(b).__name__) for a, b in cl.items()})
            for c in fin.__closure__ or ():
                x = c.cell_contents
                if isinstance(x, list):
                    print("copies:", [(t.device, t.is_pinned() if hasattr(t, "is_pinned") else None) for t in x
                                      if isinstance(t, torch.Tensor)])
                if isinstance(x, torch.fx.GraphModule):
                    from graphmfu.rules.masks import _on_host
                    h = _on_host(x)
                    print(h.code)
            t = time.perf_counter()
            for _ in range(50):
                r = fin()
            print(n, "->", r, getattr(r, "device", None), f"{(time.perf_counter() - t) / 50 * 1e6:.1f} us per finish")
