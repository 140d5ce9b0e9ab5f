"""On a CUDA GPU (run through the device tool): the backend compiles the demo model in bf16 to the
same outputs as plain torch.compile, and the report names the GPU's datasheet peaks."""
import pytest
import torch

import graphmfu
from examples.minimal_llama import Llama, LlamaConfig
from graphmfu.hardware import lookup

pytestmark = pytest.mark.gpu


@pytest.fixture
def model():
    torch.manual_seed(0)
    cfg = LlamaConfig(dim=512, layers=2, heads=8, kv_heads=2, ffn=1376, vocab=4096)
    return Llama(cfg).to(device="cuda", dtype=torch.bfloat16)


def test_same_outputs_as_plain_compile_bf16(model, fresh):
    tokens = torch.randint(0, 4096, (2, 256), device="cuda")
    with torch.no_grad():
        ref = torch.compile(model)(tokens)
        torch._dynamo.reset()
        out = torch.compile(model, backend=graphmfu.backend)(tokens)
    assert torch.equal(out, ref), (out.float() - ref.float()).abs().max()
    rep = graphmfu.report()
    name = torch.cuda.get_device_name()
    assert rep.data["device"]["name"] == name
    assert rep.data["device"]["peaks"]["bf16"] == lookup(name).peaks_tflops["bf16"]
    attn = [n for n in rep.nodes if "scaled_dot_product" in n["op"]]
    assert len(attn) == 2
    b, h, t, d = 2, 8, 256, 64
    assert attn[0]["flops_dense"] == 4 * b * h * t * t * d  # QK^T + PV, every score
    assert attn[0]["flops"] == 4 * b * h * (t * (t + 1) // 2) * d  # causal lower triangle
    assert rep.coverage()["nodes_unknown"] == 0


def test_training_step_on_cuda(model, fresh):
    tokens = torch.randint(0, 4096, (1, 128), device="cuda")
    out = torch.compile(model, backend=graphmfu.backend)(tokens)
    out.float().pow(2).mean().backward()
    assert model.head.weight.grad is not None
    rep = graphmfu.report()
    assert rep.phase("backward")["flops"] > 1.9 * rep.phase("forward")["flops"]
    assert rep.coverage()["nodes_unknown"] == 0
