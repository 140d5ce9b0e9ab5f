"""On CUDA: every GPU kernel of a compiled model's call is joined to the kernel map (CUPTI launch
correlation), stage FLOPs equal the static totals, and CUDA-graph replays are joined by order."""
import pytest
import torch

import graphmfu
from examples.minimal_llama import Llama, LlamaConfig

pytestmark = pytest.mark.gpu


def _model():
    torch.manual_seed(0)
    return Llama(LlamaConfig(dim=512, layers=2, heads=8, kv_heads=2, ffn=1376, vocab=4096)).to("cuda", torch.bfloat16)


@pytest.mark.parametrize("mode", [None, "reduce-overhead"])
def test_cuda_join(fresh, mode):
    model = _model()
    tokens = torch.randint(0, 4096, (1, 256), device="cuda")
    cm = torch.compile(model, backend=graphmfu.backend(mode=mode))
    with torch.no_grad():
        for _ in range(3):
            cm(tokens)
        static = graphmfu.report().totals
        with graphmfu.profile() as p, graphmfu.stage("infer"):
            for _ in range(2):
                cm(tokens)
    rep = p.report()
    st = rep.stages[0]
    assert st["flops"] == 2 * static["flops"] and st["vector_flops"] == 2 * static["vector_flops"]
    joined = {h for k in rep.kernels for h in k["joined_by"]}
    if mode is None:
        assert rep.coverage()["time_attributed"] > 0.999, rep.coverage()["unattributed_kernels"]
        assert joined <= {"name", "op"}
    else:
        assert joined == {"order"}
        # CUDA-graph input copies are not graph nodes: they are listed, everything else joined
        assert rep.coverage()["time_attributed"] > 0.9, rep.coverage()["unattributed_kernels"]
    assert 0 < st["mfu"] < 1 and 0 < st["mbu"] < 1 and st["busy_s"] <= st["span_s"]
