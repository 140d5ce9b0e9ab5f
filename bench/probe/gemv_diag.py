"""What Inductor's coordinate-descent decomposition leaves of a batch-1 GEMM on CUDA (mode="max-autotune"):
the post-grad nodes with their original_aten, and what graphmfu counts for them (issue 21 item 1).

    python bench/probe/gemv_diag.py
"""
import torch

import graphmfu
from graphmfu import _inductor

lin = torch.nn.Linear(1024, 2816, bias=False).to("cuda", torch.bfloat16)
x = torch.randn(1, 1024, device="cuda", dtype=torch.bfloat16)


def show(gm, ex):
    def on_graph(g, ex, kw, kernels, compiled):
        for n in g.graph.nodes:
            if n.op == "call_function":
                v = n.meta.get("val")
                print(f"  {n.name:28s} {str(n.target):45s} orig={n.meta.get('original_aten')} "
                      f"{tuple(v.shape) if hasattr(v, 'shape') else ''} {getattr(v, 'dtype', '')}")
        print("  kernels:", [k["name"] for k in kernels])
    return _inductor.compile_with_inner_hook(gm, ex, on_graph, _inductor.mode_config("max-autotune"))


with torch.no_grad():
    torch.compile(lin, backend=show)(x)
    torch._dynamo.reset()
    graphmfu.reset()
    torch.compile(lin, backend=graphmfu.backend(mode="max-autotune"))(x)
rep = graphmfu.report()
print("graphmfu flops", rep.totals["flops"], "hand", 2 * 1024 * 2816, "decomposed nodes",
      rep.coverage()["decomposed_matmul"])
for n in rep.nodes:
    print(f"  {n['name']:24s} {n['op']:34s} flops={n['flops']} vec={n['vector_flops']} {n.get('flags', '')}")
