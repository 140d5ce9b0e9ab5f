"""A failed Dynamo compile marks its frame "skip" for every later call of that code object: analyze()
must not leave such marks, and where frames run eagerly anyway (the user's own failed compile left the
marks) their ops must be counted and named, never silently dropped.

The failing model: a custom op whose backward reads ``offs.tolist()`` (as transformers 5.17's fp32 MoE
experts did).  AOTAutograd traces that backward on fake tensors -> DataDependentOutputException, which
Dynamo turns into a graph break that skips the frame (``FrameAction.SKIP``, applied to the code).

Every analysis here is the compiled-graph path (``fast=False``): Dynamo's marks are what is tested."""
from __future__ import annotations

import contextlib

import pytest
import torch
import torch.nn as nn
from torch._dynamo.testing import CompileCounter

import graphmfu
from graphmfu import _inductor
from graphmfu.errors import GraphMFUError

D, B = 8, 4
# Block: one Linear without bias on a (B, D) input -> aten.mm (B, D) @ (D, D): 2 * B * D * D = 2*4*8*8 = 512
MM = 2 * B * D * D


@torch.library.custom_op("graphmfu_test_failed::twice", mutates_args=())
def twice(x: torch.Tensor, offs: torch.Tensor) -> torch.Tensor:
    return x * 2


@twice.register_fake
def _(x, offs):
    return torch.empty_like(x)


def _setup(ctx, inputs, output):
    ctx.save_for_backward(inputs[1])


def _backward(ctx, grad):
    (offs,) = ctx.saved_tensors
    offs.tolist()  # data-dependent: fake tensors have no values
    return grad * 2, None


twice.register_autograd(_backward, setup_context=_setup)


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(D, D, bias=False)
        self.register_buffer("offs", torch.tensor([1, 2]))

    def forward(self, x):
        return twice(self.lin(x), self.offs)


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.b = Block()

    def forward(self, x):
        return self.b(x)


def flops(report) -> int:
    return sum(int(n.cost.flops) for g in report.record.graphs for n in g.nodes if n.cost is not None)


def vector(report) -> int:
    return sum(int(n.cost.vector_flops) for g in report.record.graphs for n in g.nodes if n.cost is not None)


def outside_lines(report) -> list[str]:
    return [f for f in report.record.failures if "ran outside the compiled graphs" in f]


def _fail_training():
    """The training analysis fails loudly (the backward's data-dependent read)."""
    with pytest.raises(GraphMFUError, match="reads tensor values"):
        graphmfu.analyze(Net(), torch.randn(B, D, requires_grad=True), training=True, device="cpu",
                         fast=False)


def test_failed_analysis_leaves_no_skip_marks(fresh):
    before = graphmfu.analyze(Net(), torch.randn(B, D), device="cpu", fast=False)
    assert [g.source for g in before.record.graphs] == ["analyze"] and flops(before) == MM
    _fail_training()  # compiles Net.forward and Block.forward again (codes seen before) and fails
    after = graphmfu.analyze(Net(), torch.randn(B, D), device="cpu", fast=False)
    assert [g.source for g in after.record.graphs] == ["analyze"], after.record.failures
    assert flops(after) == MM  # 512, as before the failure
    assert after.record.failures == []
    # the user's own torch.compile of the same classes still compiles a graph (the mm and the custom op)
    cnt = CompileCounter()
    torch.compile(Net(), backend=cnt)(torch.randn(B, D))
    assert cnt.frame_count == 1 and cnt.op_count == 2


def test_failed_first_analysis_leaves_no_skip_marks(fresh):
    """The same when the failing analysis is the first to show Dynamo these codes (reset, not restored)."""
    _fail_training()
    after = graphmfu.analyze(Net(), torch.randn(B, D), device="cpu", fast=False)
    assert [g.source for g in after.record.graphs] == ["analyze"] and flops(after) == MM
    cnt = CompileCounter()
    torch.compile(Net(), backend=cnt)(torch.randn(B, D))
    assert cnt.frame_count == 1


def test_marks_would_undercount_silently_without_the_reset(fresh, monkeypatch):
    """The premise of the test above, and the second guard: with the reset off, the failed analysis leaves
    Net.forward and Block.forward skipped; the next analysis runs them eagerly on fake tensors, and those ops
    are counted (one eager graph) and named in the failures instead of a silent zero."""
    monkeypatch.setattr(_inductor, "no_dynamo_marks", contextlib.nullcontext)
    _fail_training()
    with pytest.warns(RuntimeWarning, match="ran outside the compiled graphs"):
        after = graphmfu.analyze(Net(), torch.randn(B, D), device="cpu", fast=False)
    assert [g.source for g in after.record.graphs] == ["eager"]
    assert flops(after) == MM  # the eager aten.mm: 512
    (line,) = outside_lines(after)
    assert f"1 aten.mm.default, 1 graphmfu_test_failed.twice.default; {MM:,} FLOPs plus 1 op(s) with no rule" in line
    assert "module(s) b, b.lin" in line


def test_users_failed_compile_is_counted_and_named(fresh):
    """The user's own compile failed (aot_eager cannot trace the backward either) and left the marks: the
    analysis cannot compile those frames; their ops, forward and backward, are counted eagerly and named."""
    from torch._subclasses.fake_tensor import DataDependentOutputException

    class Lin(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(D, D, bias=False)

        def forward(self, x):
            return self.lin(x).relu()

    def failing(gm, example_inputs):  # as AOTAutograd failing on a data-dependent read
        raise DataDependentOutputException(torch.ops.aten._local_scalar_dense.default)

    torch.compile(Lin(), backend=failing)(torch.randn(B, D))  # Dynamo falls back to eager and skips the frame
    with pytest.warns(RuntimeWarning, match="ran outside the compiled graphs"):
        r = graphmfu.analyze(Lin(), torch.randn(B, D, requires_grad=True), training=True, device="cpu",
                             fast=False)
    assert [g.source for g in r.record.graphs] == ["eager"]
    # forward x @ W^T: 512; backward dX = dY @ W: 512, dW = dY^T @ X: 512 -> 3 * 512 = 1536
    assert flops(r) == 3 * MM
    # relu and its threshold_backward: one vector FLOP per element each, 2 * B * D = 64
    (line,) = outside_lines(r)
    assert (f"3 aten.mm.default, 1 aten.relu.default, 1 aten.threshold_backward.default; {3 * MM:,} FLOPs, "
            f"{2 * B * D} vector FLOPs in module(s) lin") in line
    phases = sorted(n.phase for g in r.record.graphs for n in g.nodes if n.op == "aten.mm.default")
    assert phases == ["backward", "backward", "forward"]
    assert vector(r) == 2 * B * D
    # the same matrix FLOPs as the compiled analysis of the same model once the marks are gone (its vector
    # FLOPs differ: Inductor's decompositions turn threshold_backward into le + where, 3 * B * D = 96)
    torch._dynamo.reset()
    compiled = graphmfu.analyze(Lin(), torch.randn(B, D, requires_grad=True), training=True, device="cpu",
                                fast=False)
    assert {g.source for g in compiled.record.graphs} == {"analyze"} and compiled.record.failures == []
    assert flops(compiled) == flops(r) == 3 * MM


def test_clean_analysis_has_no_outside_line(fresh):
    """Glue between graphs (AOTAutograd's wrappers; the autograd engine summing the gradients of x and W,
    each used by both graphs of a graph break) is not reported: no eager graph, no failure."""

    class Broken(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(D, D, bias=False)

        def forward(self, x):
            y = self.lin(x)
            torch._dynamo.graph_break()
            return self.lin(y) + x

    r = graphmfu.analyze(Broken(), torch.randn(B, D, requires_grad=True), training=True, device="cpu",
                         fast=False)
    assert [g.source for g in r.record.graphs] == ["analyze"] * 4 and r.record.failures == []
    # forward 2 mm; backward per graph dW and dX: 4 mm -> 6 * 512
    assert flops(r) == 6 * MM


def test_graph_reused_by_layers_is_named(fresh):
    """A graph break inside a layer: Dynamo compiles the layer's first graph once and runs it for both layers.
    Each call is counted, the second under its own layer's module paths, and the report says so."""

    class Layer(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(D, D, bias=False)

        def forward(self, x):
            x = self.lin(x)
            torch._dynamo.graph_break()
            return x.relu()

    class Stack(nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = nn.ModuleList([Layer(), Layer()])

        def forward(self, x):
            for layer in self.layers:
                x = layer(x)
            return x

    r = graphmfu.analyze(Stack(), torch.randn(B, D), device="cpu", fast=False)
    # issue 21: every call is counted (it was counted once, the other call's FLOPs only named): 2 * 512
    assert flops(r) == 2 * MM
    assert not [f for f in r.record.failures if "ran 2 times" in f]
    lines = [n for n in r.data["notes"] if "ran 2 times in the analysed call" in n]
    assert len(lines) == 2 and all("each call is counted" in n for n in lines)
    # graph 0: the mm, 512 FLOPs for the second call, which ran in layers.1
    assert any(f"({MM:,} FLOPs) with their own module paths (layers.0, layers.1)" in n for n in lines), lines
    mm = [n for n in r.nodes if n["op"] == "aten.mm.default"]
    assert sorted(n["module"] for n in mm) == ["layers.0.lin", "layers.1.lin"]