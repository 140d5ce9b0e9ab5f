"""analyze(): functions closing over real models, errors that name their cause, and the fast
planning path (analyze(..., fast=True)) against the compiled analysis and FlopCounterMode."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

import graphmfu
from graphmfu.errors import GraphMFUError

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from examples.minimal_llama import Llama, LlamaConfig  # noqa: E402
from tests.models import ZOO  # noqa: E402

PATHS = [pytest.param(False, id="compiled"), pytest.param(True, id="fast")]


def analyze(*args, fast: bool = False, **kwargs):
    """graphmfu.analyze; ``fast`` passed only when set (the compiled path is the default)."""
    return graphmfu.analyze(*args, **kwargs, **({"fast": True} if fast else {}))


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(16, 32), nn.Linear(32, 8)

    def forward(self, x):
        return self.b(torch.relu(self.a(x)))


# x [4, 16] (no grad) -> a [16->32] -> relu -> b [32->8]
FORWARD = 2 * 4 * 16 * 32 + 2 * 4 * 32 * 8  # 4096 + 2048 = 6144
BACKWARD = (2 * 4 * 8 * 32 + 2 * 4 * 32 * 8  # b: grad input + grad weight = 4096
            + 2 * 4 * 16 * 32)  # a: grad weight only (x does not require grad) = 4096
TRAINING = FORWARD + BACKWARD  # 14336

GLOBAL_MODEL = Net()


def global_step(x):
    return GLOBAL_MODEL(x).sum()


class Trainer:
    def __init__(self):
        self.model = Net()

    def step(self, x):
        return self.model(x).sum()


def _state(model):
    return [(n, p, p.detach().clone(), p.grad) for n, p in model.named_parameters()]


def _unchanged(model, before):
    after = list(model.named_parameters())
    assert [n for n, _ in after] == [n for n, *_ in before]
    for (n, p), (_, p0, v0, g0) in zip(after, before):
        assert p is p0 and type(p) is nn.Parameter and p.device.type == "cpu", n
        assert torch.equal(p.detach(), v0) and p.grad is g0, n


@pytest.mark.parametrize("fast", PATHS)
@pytest.mark.parametrize("kind", ["closure", "global", "bound_method"])
def test_function_closing_over_a_real_model(kind, fast):
    """Used to fail: 'Please convert all Tensors to FakeTensors first' (blaming .item())."""
    if kind == "closure":
        model = Net()

        def step(x):
            return model(x).sum()
        prefix = ""
    elif kind == "global":
        model, step, prefix = GLOBAL_MODEL, global_step, "GLOBAL_MODEL."
    else:
        trainer = Trainer()
        model, step, prefix = trainer.model, trainer.step, "model."
    x = torch.randn(4, 16)
    before = _state(model)
    rep = analyze(step, x, training=True, device="cpu", fast=fast)
    _unchanged(model, before)  # the real weights are back, untouched, no grads
    fc = FlopCounterMode(display=False)
    with fc:
        step(x).backward()
    assert rep.totals["flops_dense"] == fc.get_total_flops() == TRAINING
    assert rep.phase("forward")["flops_dense"] == FORWARD and rep.phase("backward")["flops_dense"] == BACKWARD
    mods = {r["module"]: r["flops_dense"] for r in rep.by_module(None)}
    assert mods[prefix + "a"] == 3 * 2 * 4 * 16 * 32 - 2 * 4 * 16 * 32  # fw + grad weight: 8192
    assert mods[prefix + "b"] == 3 * 2 * 4 * 32 * 8  # fw + grad input + grad weight: 6144


@pytest.mark.parametrize("fast", PATHS)
def test_tied_closure_tensors_and_restore_on_error(fast):
    """A bare tensor in the closure is made fake too; the swap is undone when the trace fails."""
    model, scale = Net(), torch.full((8,), 2.0)

    def step(x):
        return (model(x) * scale).sum()

    before = _state(model)
    rep = analyze(step, torch.randn(4, 16), device="cpu", fast=fast)
    assert rep.totals["flops_dense"] == FORWARD
    assert step.__closure__[1].cell_contents is scale or step.__closure__[0].cell_contents is scale

    def bad(x):
        return model(x[:, :7]).sum()

    with pytest.raises(GraphMFUError):
        analyze(bad, torch.randn(4, 16), device="cpu", fast=fast)
    _unchanged(model, before)
    assert torch.equal(scale, torch.full((8,), 2.0)) and scale.device.type == "cpu"


@pytest.mark.parametrize("fast", PATHS)
def test_optimizer_step_is_one_clear_error(fast):
    model = Net()
    opt = torch.optim.AdamW(model.parameters())

    def step(x):
        loss = model(x).sum()
        loss.backward()
        opt.step()

    before = _state(model)
    with pytest.raises(GraphMFUError) as e:
        analyze(step, torch.randn(4, 16), training=True, device="cpu", fast=fast)
    msg = str(e.value)
    assert "\n" not in msg and "AdamW" in msg and "returns the loss" in msg
    _unchanged(model, before)
    assert not opt.state


@pytest.mark.parametrize("fast", PATHS)
def test_shape_error_names_the_real_cause(fast):
    """Used to say only 'TorchRuntimeError: RuntimeError when making fake tensor call' (the cause was
    in torch's log)."""
    with pytest.raises(GraphMFUError) as e:
        analyze(nn.Sequential(nn.Linear(16, 32)), torch.randn(4, 7), device="cpu", fast=fast)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("graphmfu")
    assert "RuntimeError" in msg and "[4, 7]" in msg and "[16, 32]" in msg, msg
    assert ".item()" not in msg  # not a data-dependent problem


# --------------------------------------------------------------------------- the fast path


@pytest.mark.parametrize("name,mode", [("mlp", "inference"), ("cnn", "training"), ("llama", "inference"),
                                       ("llama", "training"), ("encdec", "training")])
def test_fast_matches_compiled_matrix_flops_per_phase_and_module(name, mode):
    model, args = ZOO[name]()
    model.train(mode == "training")
    training = mode == "training"
    slow = graphmfu.analyze(model, *args, training=training, device="cpu")
    fast = graphmfu.analyze(model, *args, training=training, device="cpu", fast=True)
    assert {g["phase"] for g in fast.data["graphs"]} == {g["phase"] for g in slow.data["graphs"]}
    assert {g["source"] for g in fast.data["graphs"]} == {"analyze"}
    assert fast.totals["flops_dense"] == slow.totals["flops_dense"] > 0
    assert fast.totals["flops"] == slow.totals["flops"]
    for phase in ("forward", "backward") if training else ("inference",):
        assert fast.phase(phase)["flops_dense"] == slow.phase(phase)["flops_dense"], phase
    by = {r["module"]: r["flops_dense"] for r in slow.by_module(None) if r["flops_dense"]}
    assert {r["module"]: r["flops_dense"] for r in fast.by_module(None) if r["flops_dense"]} == by
    assert all(p.device.type == "cpu" for p in model.parameters())
    if name == "llama":  # SDPA as the CPU fused op (as the compiled analysis), not meta's bmm decomposition
        ops = {n["op"] for n in fast.nodes}
        assert "aten._scaled_dot_product_flash_attention_for_cpu.default" in ops and "aten.bmm.default" not in ops


def test_fast_llama_70b_width_matches_flop_counter_and_hand_formula():
    """Two Llama-3-70B layers on meta tensors, training: exact against FlopCounterMode and the formula."""
    T, d, hd, kv, f, V, L = 256, 8192, 128, 8, 28672, 128256, 2
    cfg = LlamaConfig(dim=d, layers=L, heads=64, kv_heads=kv, ffn=f, vocab=V, max_seq=T)
    with torch.device("meta"):
        model = Llama(cfg).to(torch.bfloat16)
    tokens = torch.zeros(1, T, dtype=torch.long, device="meta")
    rep = graphmfu.analyze(model, tokens, training=True, device="h100-sxm", fast=True)
    with FlopCounterMode(display=False) as fc:  # on meta SDPA is bmm: counted by FlopCounterMode
        model(tokens).sum().backward()
    gemm = L * (2 * T * d * (d + 2 * kv * hd + d) + 2 * T * d * 3 * f) + 2 * T * d * V  # q k v o, gate up down, head
    dense, causal = gemm + L * 4 * T * T * d, gemm + L * 4 * (T * (T + 1) // 2) * d  # attention: QK^T and PV
    assert rep.totals["flops_dense"] == fc.get_total_flops() == 3 * dense  # backward = 2x forward
    assert rep.totals["flops"] == 3 * causal
    mods = {r["module"] for r in rep.by_module(None)}
    assert {"layers.0.attn.q", "layers.1.mlp.down", "head", "embed"} <= mods
