"""Frameworks that compile for you (issue 20): graphs compiled outside graphmfu are named, never silent;
``graphmfu.capture_all()`` routes every torch.compile through graphmfu; transformers' generate() counted per
forward.  CPU: generate() compiles on the CPU only with ``CompileConfig._compile_all_devices`` (on a GPU with a
static cache it does by default).

Hand counts (the tiny Llama below: hidden 64, 4 heads of 16, MLP 128, 2 layers, vocabulary 256): per token
the layers cost 2 * (4 * 64*64 + 3 * 64*128) * 2 = 163840 matrix FLOPs, the head 2*64*256 = 32768 per
position it computes (generate() asks for the last position's logits only); attention 2 layers x 4 heads x
64 FLOPs per kept (query, key) pair."""
from __future__ import annotations

import os

import pytest
import torch
import torch.nn as nn

import graphmfu
from graphmfu.errors import GraphMFUError
from graphmfu.registry import Registry

os.environ.setdefault("HF_HUB_OFFLINE", "1")

LAYERS_PER_TOKEN = 2 * (4 * 64 * 64 + 3 * 64 * 128) * 2
HEAD = 2 * 64 * 256
PAIR = 2 * 4 * 64  # 2 layers x 4 heads x (2*16 + 2*16)
assert LAYERS_PER_TOKEN == 163840


class Two(nn.Module):
    def __init__(self, d=128):
        super().__init__()
        self.a, self.b = nn.Linear(d, d), nn.Linear(d, d)

    def forward(self, x):
        return self.b(self.a(x).relu())


def f(x):
    return (x @ x.T).softmax(-1)


# --------------------------------------------------------------------------- capture_all


def test_capture_all_routes_three_compile_sites_and_keeps_outputs(fresh):
    """torch.compile of a module, of a function (with a mode), and nn.Module.compile: three graphmfu graphs;
    outputs bit for bit those of plain Inductor; a non-Inductor backend is left alone and named."""
    torch.manual_seed(0)
    m1, m2, x = Two(), Two(), torch.randn(16, 128)
    with torch.no_grad():
        plain = (torch.compile(m1)(x), torch.compile(f, mode="max-autotune-no-cudagraphs")(x))
        torch._dynamo.reset()
        plain_m2 = torch.compile(m2)(x)
        torch._dynamo.reset()
        original = torch.compile
        with pytest.warns(RuntimeWarning, match="backend='aot_eager'.* is not Inductor and is left alone"):
            with graphmfu.capture_all() as cap:
                a = torch.compile(m1)(x)
                b = torch.compile(f, mode="max-autotune-no-cudagraphs")(x)
                m2.compile()
                c = m2(x)
                torch.compile(lambda y: y * 2, backend="aot_eager")(x)
        assert torch.compile is original  # restored
    assert torch.equal(a, plain[0]) and torch.equal(b, plain[1]) and torch.equal(c, plain_m2)
    assert [r["what"] for r in cap.routed] == ["Two", "f", "Two.__call__"]
    assert [r["mode"] for r in cap.routed] == [None, "max-autotune-no-cudagraphs", None]
    assert all(r["caller"].startswith("tests/test_frameworks.py:") for r in cap.routed)
    assert [e["backend"] for e in cap.left_alone] == ["aot_eager"]
    graphs = graphmfu.report().record.graphs
    assert len(graphs) == 3
    # Two: 2 * 16 * 128 * 128 per Linear; f: 2 * 16 * 128 * 16
    assert sorted(sum(n.cost.flops for n in g.nodes if n.cost) for g in graphs) == \
        sorted([2 * 2 * 16 * 128 * 128, 2 * 16 * 128 * 16, 2 * 2 * 16 * 128 * 128])


def test_capture_all_catches_a_wrapper_made_before_it(fresh):
    early = torch.compile(f)  # Inductor's wrapper exists before capture_all; it compiles at its first call
    with graphmfu.capture_all() as cap:
        early(torch.randn(8, 32))
    assert len(graphmfu.report().record.graphs) == 1
    assert cap.routed[0]["what"].startswith("(a torch.compile made before")


def test_two_captures_at_once_is_an_error(fresh):
    with graphmfu.capture_all():
        with pytest.raises(GraphMFUError, match="already on"):
            graphmfu.capture_all()


# --------------------------------------------------------------------------- foreign graphs, never silent


def test_profile_names_plain_inductor_kernels_as_foreign_with_their_share(fresh):
    torch.manual_seed(0)
    ours, plain, x = torch.compile(Two(), backend=graphmfu.backend), torch.compile(Two()), torch.randn(64, 128)
    with torch.no_grad():
        ours(x), plain(x)
        with graphmfu.profile() as p, graphmfu.stage("s"):
            for _ in range(3):
                ours(x)
                plain(x)
    rep = p.report()
    cov = rep.coverage()
    foreign = [u for u in cov["unattributed_kernels"] if u["where"] == "compiled outside graphmfu"]
    assert foreign and foreign[0]["count"] == 3  # one entry per call of the plain graph (CPU: its range)
    assert cov["foreign_share"] == pytest.approx(sum(u["time_s"] for u in foreign) /
                                                 rep.data["timing"]["device_kernel_time_s"])
    assert 0 < cov["foreign_share"] < 1
    first = rep.data["notes"][0]
    assert f"{cov['foreign_share']:.1%} of the kernel time" in first and "compiled outside graphmfu" in first
    assert "tests/test_frameworks.py:" in first and "graphmfu.capture_all()" in first  # the caller, the fix
    assert rep.summary().splitlines()[0].startswith("note: ")  # said first
    assert rep.stages[0]["foreign_s"] == pytest.approx(sum(u["time_s"] for u in foreign))


def test_profile_of_only_foreign_graphs_says_why(fresh):
    plain, x = torch.compile(Two()), torch.randn(8, 128)
    with torch.no_grad():
        plain(x)
        with graphmfu.profile() as p:
            plain(x)
    with pytest.raises(GraphMFUError, match="compiled outside graphmfu .*, so nothing could be counted.*capture_all"):
        p.report()


def test_meter_step_with_foreign_graphs_is_flagged_and_said_first():
    reg = Registry()
    ours, plain = torch.compile(Two(), backend=graphmfu.Backend(registry=reg)), torch.compile(Two())
    x = torch.randn(8, 128)
    meter = graphmfu.meter(registry=reg)
    with torch.no_grad():
        ours(x), plain(x)
        for fns in ((ours,), (ours, plain), (plain, plain)):
            with meter.step(tokens=8):
                for fn in fns:
                    fn(x)
    rows = meter.records
    assert [r["foreign_calls"] for r in rows] == [0, 1, 2]
    assert [r["flags"] for r in rows] == [[], ["foreign_graphs"], ["no_graphs", "foreign_graphs"]]
    assert [r["flops"] for r in rows] == [2 * 2 * 8 * 128 * 128, 2 * 2 * 8 * 128 * 128, 0]
    assert "2 graph call(s) compiled outside graphmfu ran in this step" in rows[2]["note"]
    assert "graphmfu.capture_all()" in rows[2]["note"]
    assert meter.summary().startswith("! 2 of 3 step(s) ran graphs compiled outside graphmfu (steps 1, 2")


# --------------------------------------------------------------------------- transformers' generate()


def _llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=128)
    torch.manual_seed(0)
    return LlamaForCausalLM(cfg).eval()


def _inputs():
    ids = torch.randint(1, 256, (2, 12), generator=torch.Generator().manual_seed(0))
    am = torch.ones(2, 12, dtype=torch.long)
    am[0, :3] = 0  # left padding 3 in row 0
    return ids, am


def _kwargs(am):
    from transformers.generation.configuration_utils import CompileConfig

    cc = CompileConfig()
    cc._compile_all_devices = True  # generate() compiles on the CPU as it does on a GPU
    return dict(max_new_tokens=5, do_sample=False, pad_token_id=0, cache_implementation="static",
                compile_config=cc, attention_mask=am)


# prefill: 24 positions (row 0's 3 pads are computed too) through the layers, the head at the last of each row;
# causal pairs: row 0's 9 real tokens 9*10/2 = 45 (its pads attend to nothing), row 1's 12 tokens 78: 123
PREFILL = 2 * 12 * LAYERS_PER_TOKEN + 2 * HEAD + 123 * PAIR
# decode step k (k = 1..4; position 11 + k): row 0 sees keys 3..11+k (9 + k), row 1 keys 0..11+k (12 + k)
DECODE = [2 * LAYERS_PER_TOKEN + 2 * HEAD + (21 + 2 * k) * PAIR for k in range(1, 5)]
assert PREFILL == 4060672 and DECODE == [404992, 406016, 407040, 408064]


def test_generate_without_graphmfu_compile_is_named_with_its_fix(fresh):
    """No capture_all: generate() compiles the decode steps itself with Inductor.  The meter and the profile say
    which caller compiled them and how to route it (capture_all, or compile_config with graphmfu's backend)."""
    m, (ids, am) = _llama(), _inputs()
    kw = _kwargs(am)
    meter = graphmfu.meter()
    with torch.no_grad():
        m.generate(ids, **kw)
        with meter.step(tokens=10):
            m.generate(ids, **kw)
    row, = meter.records
    assert row["foreign_calls"] == 4 and "foreign_graphs" in row["flags"]  # the 4 decode steps
    assert "transformers/modeling_utils.py" in row["note"] and "get_compiled_call" in row["note"]
    assert "compile_config=CompileConfig(backend=graphmfu.backend)" in row["note"]


def test_generate_with_a_graphmfu_forward_counts_every_forward_at_its_position(fresh):
    """The issue's script: model.forward compiled with graphmfu, generate() with a static cache (which compiles
    again, with Inductor, around it: that outer compile gets no graph).  Prefill and each decode step are counted
    at their own cache position and padding, per forward (integrations.transformers.generate), in the meter and
    under profile(); the tokens are those of the plain model."""
    from graphmfu.integrations import transformers as gt

    m, (ids, am) = _llama(), _inputs()
    kw = _kwargs(am)
    plain = {k: v for k, v in kw.items() if k != "compile_config"}
    with torch.no_grad():
        reference = m.generate(ids, **plain)
        m.forward = torch.compile(m.forward, backend=graphmfu.backend)
        m.generate(ids, **kw)
        meter = graphmfu.meter()
        out = gt.generate(m, ids, meter=meter, **kw)
        with graphmfu.profile() as p:
            gt.generate(m, ids, **kw)
    assert torch.equal(out, reference)
    rows = meter.records
    assert [r["flops"] for r in rows] == [PREFILL, *DECODE]
    assert [r["attention_flops"] for r in rows] == [123 * PAIR, *[(21 + 2 * k) * PAIR for k in range(1, 5)]]
    assert [r["tokens"] for r in rows] == [2] * 5 and all(not r["flags"] for r in rows)
    st = {s["name"]: s for s in p.report().stages}
    assert st["prefill"]["flops"] == PREFILL and st["decode"]["flops"] == sum(DECODE) == 1626112
    assert p.report().coverage()["time_attributed_in_graphs"] == 1.0


def test_generate_under_capture_all_counts_the_decode_steps(fresh):
    """capture_all(): generate()'s own compile (Inductor, mode reduce-overhead) goes through graphmfu; the prefill
    runs the plain model (eager, not counted: the profile says what ran outside the graphs)."""
    m, (ids, am) = _llama(), _inputs()
    kw = _kwargs(am)
    with torch.no_grad(), graphmfu.capture_all() as cap:
        m.generate(ids, **kw)
        meter = graphmfu.meter()
        with meter.step(tokens=10):
            m.generate(ids, **kw)
    assert cap.routed[0]["what"] == "LlamaForCausalLM.__call__" and cap.routed[0]["mode"] == "reduce-overhead"
    assert "transformers/modeling_utils.py" in cap.routed[0]["caller"]
    row, = meter.records
    assert row["flops"] == sum(DECODE) and row["graph_calls"] == 4 and row["foreign_calls"] == 0
