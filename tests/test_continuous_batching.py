"""transformers' continuous batching (generate_batch), one meter row per engine step (issue 20, part 4).

A tiny Llama (vocab 256, d 64, FFN 128, 2 layers, 4 heads = 4 KV heads, head_dim 16, fp32), prompts of 5, 3
and 10 tokens, 4 new tokens each, greedy; the engine compiles its step (``default_compile_level=1``: Inductor,
``dynamic=True``) and pads every batch to 64 query tokens.  Hand count per engine step:

* per token:   2 layers x 2 x (4*64*64 + 3*64*128) = 163,840 (q/k/v/o, gate/up/down);
* per new token (the LM head on its logits row): 2*64*256 = 32,768;
* attention:   per request, pairs = q*k - q*(q-1)/2 (causal within its block, keys up to its position),
  4 FLOPs per pair and head_dim (Q@K^T and P@V: 2*16 each) x 4 heads x 2 layers = 512 per pair;
* the rotary table's K=1 product is a mul on the CPU (no matrix FLOPs here; on the GPU: hd per query row).

Step 1 (prefill, 18 tokens, 3 new tokens): 18*163,840 + 3*32,768 + 512*(15 + 6 + 55) = 3,086,336.
Step 2 (decode, 3 tokens, keys 6/4/11): 3*163,840 + 3*32,768 + 512*21 = 600,576.
"""
import pytest
import torch

import graphmfu

transformers = pytest.importorskip("transformers")
pytest.importorskip("transformers.generation.continuous_batching")

PROMPTS = [[1, 2, 3, 4, 5], [6, 7, 8], [9, 10, 11, 12, 13, 14, 15, 16, 17, 18]]
PER_TOKEN, PER_LOGIT, PER_PAIR = 163_840, 32_768, 512


def _model(attn="sdpa"):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=128)
    cfg._attn_implementation = attn
    torch.manual_seed(0)
    return LlamaForCausalLM(cfg).eval()


def _run(model, level, meter, new=4):
    from transformers import GenerationConfig
    from transformers.generation.configuration_utils import ContinuousBatchingConfig

    from graphmfu.integrations.continuous_batching import EngineSteps

    fields = ContinuousBatchingConfig.__dataclass_fields__
    size = {"page_size": 16} if "page_size" in fields else {"block_size": 16}
    cbc = ContinuousBatchingConfig(num_blocks=16, max_batch_tokens=64, default_compile_level=level, **size)
    gc = GenerationConfig(max_new_tokens=new, do_sample=False, eos_token_id=-1, pad_token_id=0)
    steps = EngineSteps(meter=meter)
    with steps, torch.no_grad():
        out = model.generate_batch(PROMPTS, generation_config=gc, continuous_batching_config=cbc, progress_bar=False)
    return steps, out


def _hand(b) -> int:
    pairs = sum(r.q * r.k["full_attention"] - r.q * (r.q - 1) // 2 for r in b.requests)
    return PER_TOKEN * b.q_tokens + PER_LOGIT * b.new_tokens + PER_PAIR * pairs


def test_each_engine_step_counts_its_own_tokens_and_context_without_the_padding(fresh):
    meter = graphmfu.meter()
    with graphmfu.capture_all():
        steps, out = _run(_model(), 1, meter)
    rows = meter.records
    assert [len(v.generated_tokens) for v in out.values()] == [4, 4, 4]
    assert len(rows) == len(steps.batches) == 4
    b0, b1 = steps.batches[:2]
    # the engine's bookkeeping: one packed prefill of 5 + 3 + 10 tokens, then one token per request
    assert sorted((r.past, r.q, r.k["full_attention"], r.prefill) for r in b0.requests) == \
        [(0, 3, 3, 3), (0, 5, 5, 5), (0, 10, 10, 10)]
    assert b0.q_tokens == 18 and b0.num_q_tokens == 64 and b0.kind == "prefill"
    assert b1.q_tokens == 3 and b1.kind == "decode" and sorted(r.k["full_attention"] for r in b1.requests) == [4, 6, 11]
    assert rows[0]["flops"] == 3_086_336 == _hand(b0)  # 18*163,840 + 3*32,768 + 512*(15+6+55)
    assert rows[1]["flops"] == 600_576 == _hand(b1)  # 3*163,840 + 3*32,768 + 512*(6+4+11)
    for r, b in zip(rows, steps.batches):
        assert r["flops"] == _hand(b), (r["step"], r["flops"], _hand(b))
        # what ran: 64 padded query rows through every projection (the attention's padded rows keep nothing)
        assert r["flops_executed"] - r["flops"] == PER_TOKEN * (64 - b.q_tokens) == r["padding_flops"]
        assert r["padded_tokens"] == 64 - b.q_tokens
        assert r["prefill_tokens"] + r["decode_tokens"] == b.q_tokens and r["new_tokens"] == 3
        # K and V of every key of every request, 2 layers, 4 KV heads x 16 x 4 bytes
        assert r["kv_bytes_read"] == 2 * sum(x.k["full_attention"] for x in b.requests) * 2 * 4 * 16 * 4
        assert r["flags"] == [] and r["tokens"] == 3
    assert rows[0]["attention_flops"] == PER_PAIR * (15 + 6 + 55)
    # the mask's kept pairs come from the engine's lengths once two probes agreed: 4 heads x the kept pairs
    assert list(steps.pairs.trusted.values()) == [("full_attention", 4)] and not steps.pairs.refused
    text = meter.summary()
    assert "prefill" in text and "padding" in text
    assert any("padded its batches" in n for n in graphmfu.report().data["notes"])


def test_an_engine_that_compiles_nothing_says_why(fresh):
    meter = graphmfu.meter()
    steps, _ = _run(_model(), 0, meter)
    rows = meter.records
    assert rows and all(r["flags"] == ["no_graphs", "eager_engine"] for r in rows)
    assert all(r["note"].startswith("transformers' continuous batching ran this step's forward eagerly") for r in rows)
    assert "default_compile_level=1" in rows[0]["note"] and "capture_all" in rows[0]["note"]
    assert "forward eagerly" in meter.summary().splitlines()[0]
    assert rows[0]["prefill_tokens"] == 18 and rows[0]["decode_tokens"] == 0  # the bookkeeping still holds


def test_attention_run_outside_every_graph_is_flagged_with_its_fix(fresh):
    from graphmfu.integrations.continuous_batching import ATTENTION_NOTE, _attention_outside

    model = _model("eager")
    meter = graphmfu.meter()
    with graphmfu.capture_all():
        steps, _ = _run(model, 1, meter, new=2)
    rows = meter.records
    impl = "paged|eager"  # transformers runs "eager" as its paged eager attention under continuous batching
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    if not getattr(ALL_ATTENTION_FUNCTIONS[impl], "_torchdynamo_disable", False):
        pytest.skip("this transformers compiles its paged eager attention: nothing outside the graphs to flag")
    assert all("attention_outside_graphs" in r["flags"] for r in rows)
    assert ATTENTION_NOTE.format(impl=impl) in rows[0]["note"]
    assert all(r["attention_flops"] == 0 for r in rows)
    b = steps.batches[0]
    assert rows[0]["flops"] == PER_TOKEN * b.q_tokens + PER_LOGIT * b.new_tokens  # the linears, exactly
    assert meter.summary().splitlines()[0].startswith("! 2 of 2 step(s) flagged attention_outside_graphs")
    assert _attention_outside(model) in (None, impl)  # restored to "eager" after the run


def test_one_engine_steps_at_a_time():
    from graphmfu.errors import GraphMFUError
    from graphmfu.integrations.continuous_batching import EngineSteps

    with EngineSteps():
        with pytest.raises(GraphMFUError, match="one EngineSteps at a time"):
            EngineSteps().__enter__()


def test_padding_leaves_out_exactly_the_padded_rows_products():
    """padding.padded_cost on hand-made nodes: a projection over 64 rows of which 18 are real, the LM head
    over 8 padded logits rows of which 3 are real, an attention op (never scaled) and an elementwise op."""
    from graphmfu.cost import Cost
    from graphmfu.padding import Padding, live_fraction, minus, padded_cost
    from graphmfu.record import GraphRecord, OpRecord

    def node(i, op, out_shape, flops):
        return OpRecord(0, "inference", i, f"n{i}", op, "", [], [[out_shape, "float32"]],
                        Cost.of({"float32": flops}, vector={"float32": 1}, read=10, written=10))

    proj = node(0, "aten.mm.default", [64, 128], 2 * 64 * 64 * 128)
    head = node(1, "aten.mm.default", [8, 256], 2 * 8 * 64 * 256)
    att = node(2, "aten._scaled_dot_product_flash_attention_for_cpu.default", [1, 4, 64, 16], 999)
    add = node(3, "aten.add.Tensor", [64, 128], 0)
    g = GraphRecord(0, "k", "inference", None, "cpu", [proj, head, att, add], {}, "backend")
    p = Padding((64, 18), (8, 3), 256)
    assert live_fraction(proj, {}, p, False) == (18, 64)
    assert live_fraction(head, {}, p, False) == (3, 8)
    assert live_fraction(att, {}, p, True) is None and live_fraction(add, {}, p, False) is None
    pad = padded_cost(g, {}, p, lambda n: n is att)
    assert pad.flops == 2 * 46 * 64 * 128 + 2 * 5 * 64 * 256  # the 46 padded tokens, the 5 padded logits rows
    total = sum((n.cost for n in g.nodes), Cost())
    useful = minus(total, pad)
    assert useful.flops == 2 * 18 * 64 * 128 + 2 * 3 * 64 * 256 + 999
    assert useful.bytes == total.bytes and useful.vector_flops == total.vector_flops


def test_meter_hold_keeps_the_hooks_and_counts_the_same(fresh):
    f = torch.compile(lambda x: x @ x, backend=graphmfu.backend)
    x = torch.randn(8, 8)
    f(x)
    m = graphmfu.meter()
    with m.hold():
        for _ in range(3):
            with m.step(tokens=8):
                f(x)
        f(x)  # between steps: not counted
    with m.step(tokens=8):
        f(x)
    assert [r["flops"] for r in m.records] == [2 * 8 * 8 * 8] * 4
    assert [r["graph_calls"] for r in m.records] == [1] * 4


def test_a_replayed_cuda_graph_is_named_with_its_fix():
    """CUDA graphs need a GPU: the detection (the runner's own choice of forward) and the row's words, on a
    stand-in runner."""
    from graphmfu.integrations.continuous_batching import CUDA_GRAPH_NOTE, Batch, EngineStep, EngineSteps, Request

    class IO:
        use_block_table = False

    class Runner:
        inputs_and_outputs = IO()

        def _forward_process_and_sample(self):
            pass

        def _get_forward_fn(self, use_block_table):
            return self._forward_process_and_sample, True  # plain forward, captured and replayed

    steps = EngineSteps()
    assert steps._forward(Runner()) == "cuda_graph"
    b = Batch((Request("r", 10, 1, {"full_attention": 11}, 0, True),), 1, 1, False)
    fields = EngineStep(b, (("full_attention", 2),), 2 * 4 * 16 * 2, "cuda_graph", None).fields()
    assert fields["flags"] == ["engine_cuda_graph"] and fields["notes"] == [CUDA_GRAPH_NOTE]
    assert "use_cuda_graph=False" in CUDA_GRAPH_NOTE
    assert fields["kv_bytes_read"] == 2 * 11 * 2 * 4 * 16 * 2  # 2 layers x 11 keys x K,V x 4 heads x 16 x bf16
    assert fields["engine_step"] == "decode" and fields["decode_tokens"] == 1


def test_pair_counts_trust_only_what_the_mask_confirmed():
    """PairCounts: trusted after two checks with different counts (the probe read each time); a probe whose
    value is no whole multiple of the kept pairs is refused and keeps running."""
    from graphmfu.integrations.continuous_batching import Batch, PairCounts, Request, _pairs

    assert _pairs(0, 5, None) == 15 and _pairs(10, 1, None) == 11 and _pairs(3, 4, None) == 4 * 3 + 10
    assert _pairs(6, 3, 4) == 4 + 4 + 4 and _pairs(0, 3, 4) == 1 + 2 + 3  # a 4-wide sliding window
    windows = {"full_attention": None}
    prefill = Batch((Request("a", 0, 5, {}, 5, True), Request("b", 0, 3, {}, 3, True)), 8, 2, False)
    decode = Batch((Request("a", 5, 1, {}, 0, True), Request("b", 3, 1, {}, 0, True)), 2, 2, False)
    ran = []

    def probe(heads, counts):
        def fn(inputs):  # what the mask would give: heads x the kept pairs (+ an error to plant)
            ran.append(1)
            return heads * counts.kept["full_attention"] + inputs
        return fn

    pc = PairCounts()
    pc.begin(prefill, windows)
    assert pc("p", probe(8, pc), 0) == 8 * (15 + 6)  # checked: read from the mask
    pc.begin(decode, windows)
    assert pc("p", probe(8, pc), 0) == 8 * (6 + 4)  # checked again, different counts: trusted
    assert pc.trusted == {"p": ("full_attention", 8)} and len(ran) == 2
    assert pc("p", probe(8, pc), 0) == 8 * 10 and len(ran) == 2  # now from the lengths: the probe does not run
    wrong = PairCounts()
    wrong.begin(prefill, windows)
    assert wrong("q", probe(8, wrong), 5) == 8 * 21 + 5  # not a multiple of 21: refused
    assert "q" in wrong.refused and wrong("q", probe(8, wrong), 5) is None  # the probe runs (call_values)


def test_an_engine_step_that_raises_is_closed_and_not_recorded():
    """The engine's step opens and closes the meter's step itself (Meter.begin/end/abort, no context manager):
    a compute that raises leaves the meter closed, counted in ``raised``, and the next step records."""
    from graphmfu.integrations.continuous_batching import Batch, EngineSteps, Request

    class IO:
        compute_stream = None

    class Runner:
        inputs_and_outputs = IO()

    m = graphmfu.meter(cuda=False)
    steps = EngineSteps(meter=m)
    facts = {"layers": (("full_attention", 2),), "kv_token_bytes": 256, "attention_outside": None, "vocab": 100,
             "windows": {"full_attention": None}}
    steps._model = lambda model: facts
    steps._forward = lambda runner: "compiled"
    b = Batch((Request("r", 10, 1, {"full_attention": 11}, 0, True),), 1, 1, False)

    def boom(*a, **k):
        raise RuntimeError("engine failed")

    with pytest.raises(RuntimeError, match="engine failed"):
        steps._measured(boom, Runner(), None, None, b, (), {})
    assert m.raised == 1 and m._open is None and m.records == []
    assert steps._measured(lambda *a, **k: "ok", Runner(), None, None, b, (), {}) == "ok"
    (row,) = m.records
    assert row["tokens"] == 1 and row["engine_step"] == "decode" and row["context_tokens"] == 11


def test_a_batch_kept_as_raw_numbers_reads_as_its_requests():
    """The engine's thread keeps each request as plain numbers (id, past, q, prompt length, new token) and the
    Request rows are made when read: the same rows, sums, kind and pairs as a batch made from the rows, the
    keys from the engine's own cache function (a 4-wide sliding layer here) at read time."""
    from graphmfu.integrations.continuous_batching import Batch, PairCounts, Request

    class Cache:  # transformers 5.17's spelling: keys per layer type for (past, q)
        def get_seqlens_k(self, past, q):
            return {"full_attention": past + q, "sliding_attention": min(past + q, 4)}

    raw = (("a", 0, 5, 5, True), ("b", 3, 1, 3, True), ("c", 4, 3, 6, False))
    b = Batch((), 16, 3, True, raw=raw, cache=Cache())
    rows = (Request("a", 0, 5, {"full_attention": 5, "sliding_attention": 4}, 5, True),
            Request("b", 3, 1, {"full_attention": 4, "sliding_attention": 4}, 0, True),
            Request("c", 4, 3, {"full_attention": 7, "sliding_attention": 4}, 2, False))
    made = Batch(rows, 16, 3, True)
    assert b._requests is None and b.q_tokens == 9 and b.new_tokens == 2 and b._requests is None  # sums, no rows
    assert b.requests == rows and b.kind == made.kind == "mixed" and not b.warmup
    assert (made.q_tokens, made.new_tokens) == (9, 2)
    kept = []
    for batch in (Batch((), 16, 3, True, raw=raw, cache=Cache()), made):
        pc = PairCounts()
        pc.begin(batch, {"full_attention": None, "sliding_attention": 4})
        kept.append(pc.kept)
    # full: 15 + (4) + (5+6+7); sliding 4: (1+2+3+4+4) + 4 + (4+4+4)
    assert kept[0] == kept[1] == {"full_attention": 15 + 4 + 18, "sliding_attention": 14 + 4 + 12}
    assert Batch((), 1, 1, False, raw=(("__warmup_0", 0, 1, 1, True),)).warmup


def test_an_engine_batch_that_cannot_be_read_runs_unmetered_and_says_so(monkeypatch):
    """A transformers version whose batch EngineSteps cannot read (here: a request with no ``state``): the
    engine's own prepare and compute still run, that step has no row, and one warning and note say why."""
    from transformers.generation.continuous_batching import input_outputs, model_runner

    from graphmfu.integrations.continuous_batching import EngineSteps, UNREADABLE_NOTE

    ran = []
    monkeypatch.setattr(input_outputs.ContinuousBatchingIOs, "prepare_batch_tensors",
                        lambda io, *a, **k: ran.append("prepare") or "prepared")
    monkeypatch.setattr(model_runner.ModelRunner, "compute_batch",
                        lambda runner, model, batch_data, *a, **k: ran.append("compute") or "computed")
    io = input_outputs.ContinuousBatchingIOs.__new__(input_outputs.ContinuousBatchingIOs)
    runner = model_runner.ModelRunner.__new__(model_runner.ModelRunner)
    m = graphmfu.meter(cuda=False, registry=graphmfu.Registry())  # its own registry: a fresh warn-once
    with pytest.warns(RuntimeWarning, match="could not read a batch"):
        with EngineSteps(meter=m) as steps:
            assert input_outputs.ContinuousBatchingIOs.prepare_batch_tensors(io, [object()], None, False, 4) == \
                "prepared"
            assert model_runner.ModelRunner.compute_batch(runner, None, None) == "computed"
    assert ran == ["prepare", "compute"] and steps.batches == [] and m.records == []
    note = UNREADABLE_NOTE.format(err="AttributeError: 'object' object has no attribute 'state'")
    assert note in m.registry.notes and "EngineSteps knows (5.17, 5.23)" in note
