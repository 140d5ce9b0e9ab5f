"""Real models (issue 10, part 4): tiny transformers models built from configs with random weights
(tests/hf_models.py: 2 layers, hidden 64, 4 heads, vocabulary 256, batch 2, sequence 32), through
``graphmfu.analyze`` (inference for all, a training step ``loss.backward()`` for the decoders) and,
for a subset, through ``torch.compile(backend=graphmfu.backend)``.

Per model: no failed graph, no op without a rule, dense matrix FLOPs = FlopCounterMode's total
(less the CPU SDPA nodes it counts as 0, each checked against FlopCounterMode's own GPU formula),
MoE experts by hand (FlopCounterMode sees none of the routed experts: on CPU they run as
``transformers::grouped_mm_fallback`` / ``torch._grouped_mm``, for which it has no formula), and the
attention nodes' dense and effective FLOPs against the hand count of the (query, key) pairs each
mask keeps.

Effective attention (flops / flops_dense of the attention nodes, inference, per layer; T = 32,
dense 1024 pairs per sequence; rules/masks.py reads attn_mask graphs):
  llama qwen2 qwen3 mixtral qwen3_moe gpt2: is_causal=True SDPA, 528/1024 pairs.
  mistral (window 8: 36 + 24*8 = 228 pairs): mask tensor read, 228.
  gemma3 layer 0 (window 8): 228, layer 1 (is_causal): 528.
  whisper (decoder self causal, encoder and cross dense), clip (text causal, vision dense), vit.
  gemma2 (eager attention: bmm, *scale, /cap, tanh, *cap, + mask, softmax, bmm) and deepseek_v3 (MLA,
    Dqk 24 != Dv 16: the CPU SDPA takes the math path, bmm + softmax): the mask added to the scores is
    read, 228 / 528 (the backward's matmuls of the same module likewise).
  t5: where(causal, position_bias, finfo.min) in the decoder (136 of 256), position_bias alone in the
    encoder (dense): a bias read from a table keeps its pairs.
  bert (padding: sequence 2 has 20 real tokens): the mask is an input, so analyze() counts 2 * 1024
    (flagged mask_inputs, the note says it is counted per call); under profile() each call is counted
    from its real mask: 1024 + 32*20 = 1664.
"""
from __future__ import annotations

import copy
import functools
import importlib.util
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402
import torch._inductor.config  # noqa: E402, F401 - FAST_CODEGEN below
from torch.utils import flop_counter as fcm  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

transformers = pytest.importorskip("transformers")

import graphmfu  # noqa: E402
from graphmfu.cost import ensure_builtin_rules  # noqa: E402


def _load(name):
    spec = importlib.util.spec_from_file_location(f"graphmfu_tests_{name}", ROOT / "tests" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


H = _load("hf_models")

# transformers defines its MoE custom ops (transformers::grouped_mm_fallback[_backward]) when
# transformers.integrations.moe is imported; rules/matmul.py registers their rules if they exist
# when the rules load.  In this session other test modules may have loaded the rules first: register
# the late ones now (a library imported after graphmfu loaded its rules needs this call).
import transformers.integrations.moe  # noqa: E402, F401

ensure_builtin_rules()
sys.modules["graphmfu.rules.matmul"].register_library_ops()

pytestmark = pytest.mark.filterwarnings("ignore")

SDPA_FWD = "aten._scaled_dot_product_flash_attention_for_cpu.default"
SDPA_BWD = "aten._scaled_dot_product_flash_attention_for_cpu_backward.default"
UNCOUNTED = (SDPA_FWD, SDPA_BWD)  # FlopCounterMode has no formula for the CPU flash SDPA: counts 0
EXPERT_OPS = ("transformers.grouped_mm_fallback.default", "transformers.grouped_mm_fallback_backward.default",
              "aten._grouped_mm.default")

MODELS = list(H.MODELS)
TRAINED = ["llama", "mistral", "qwen2", "qwen3", "gemma2", "gemma3", "mixtral", "qwen3_moe", "deepseek_v3", "gpt2"]
CASES = [(m, False) for m in MODELS] + [(m, True) for m in TRAINED]
MOE = ["mixtral", "qwen3_moe", "deepseek_v3"]
# transformers 5.17 (the GPU machine's) gives its fp32 expert fallback (transformers::grouped_mm_fallback)
# a Python backward that loops over offs.tolist(): no torch.compile backend can trace that training step
# (aot_eager fails the same way: a data-dependent aten._local_scalar_dense); later transformers (5.23 here)
# run that loop inside a custom op, transformers::grouped_mm_fallback_backward, which graphmfu counts.
MOE_BACKWARD_TRACEABLE = hasattr(torch.ops.transformers, "grouped_mm_fallback_backward")
MOE_BACKWARD_REASON = (f"transformers {transformers.__version__}: the fp32 MoE experts' backward reads offs.tolist() "
                       f"in Python (no transformers::grouped_mm_fallback_backward): torch.compile cannot trace it "
                       f"(test_untraceable_moe_backward_fails_loudly checks the error)")


def _untraceable(name, training):
    if training and name in MOE and not MOE_BACKWARD_TRACEABLE:
        pytest.skip(MOE_BACKWARD_REASON)


def _id(name, training):
    return f"{name}-{'train' if training else 'infer'}"


def _params(cases, marks=None):
    marks = marks or {}
    return [pytest.param(n, t, marks=marks.get(n, ()), id=_id(n, t)) for n, t in cases]


@functools.lru_cache(maxsize=None)
def case(name):
    try:
        return H.MODELS[name]()
    except Exception as e:  # noqa: BLE001 - the one reason a model is skipped
        pytest.skip(f"transformers {transformers.__version__} cannot build {name} on CPU: {type(e).__name__}: {e}")


def _inputs(name, training):
    x = dict(case(name).inputs)
    if not training:
        x.pop("labels", None)
    return x


@functools.lru_cache(maxsize=None)
def analysis(name, training):
    """graphmfu.analyze once per (model, mode); training: LossOf(model), i.e. loss.backward()."""
    _untraceable(name, training)
    model = case(name).model
    target = H.LossOf(model) if training else model
    return graphmfu.analyze(target, **_inputs(name, training), training=training, device="cpu")


@functools.lru_cache(maxsize=None)
def reference(name, training):
    """FlopCounterMode's total over the eager model (same inputs, same step)."""
    model, x = case(name).model, _inputs(name, training)
    fc = FlopCounterMode(display=False)
    if training:
        with fc:
            model(**x).loss.backward()
        model.zero_grad(set_to_none=True)
    else:
        with torch.no_grad(), fc:
            model(**x)
    return fc.get_total_flops()


def _module(node, training):
    m = node["module"]  # training traces LossOf(model): strip its "model." prefix
    return m.split(".", 1)[1] if training and m.startswith("model.") else m


def _sum(nodes, key="flops_dense"):
    return sum(n[key] for n in nodes)


def _experts(rep):
    return [n for n in rep.nodes if n["op"] in EXPERT_OPS]


# --------------------------------------------------------------------------- hand counts


def causal(t):
    return t * (t + 1) // 2  # query i sees keys 0..i


def window(t, w):
    # HF sliding window: key j visible from query i iff i - w < j <= i: rows 0..w-1 see 1..w keys
    return w * (w + 1) // 2 + (t - w) * w


def attention_hand(name):
    """{attention module: (pairs kept summed over the batch, dense pairs summed over the batch,
    query heads, Dqk, Dv)} for one forward."""
    B, T, NH, D = H.B, H.T, H.NH, 16
    c = case(name)
    if name in ("llama", "qwen2", "qwen3", "mixtral", "qwen3_moe", "gpt2", "mistral", "gemma2", "gemma3",
                "deepseek_v3"):
        mod = "transformer.h.{}.attn" if name == "gpt2" else "model.layers.{}.self_attn"
        windows = c.info.get("window", [None] * H.L)
        dqk, dv = (24, 16) if name == "deepseek_v3" else (D, D)  # MLA: 16 nope + 8 rope; v 16
        return {mod.format(i): (B * (window(T, w) if w else causal(T)), B * T * T, NH, dqk, dv)
                for i, w in enumerate(windows)}
    if name == "bert":  # padding: every query sees the real keys of its sequence
        kept = sum(T * n for n in c.info["pad_lengths"])  # 32*32 + 32*20 = 1664
        return {f"encoder.layer.{i}.attention.self": (kept, B * T * T, NH, D, D) for i in range(H.L)}
    if name in ("t5", "whisper"):
        te, td = c.info["t_enc"], c.info["t_dec"]
        if name == "t5":
            enc, dec, cross = "encoder.block.{}.layer.0.SelfAttention", "decoder.block.{}.layer.0.SelfAttention", \
                "decoder.block.{}.layer.1.EncDecAttention"
        else:
            enc, dec, cross = ("model.encoder.layers.{}.self_attn", "model.decoder.layers.{}.self_attn",
                               "model.decoder.layers.{}.encoder_attn")
        out = {}
        for i in range(H.L):
            out[enc.format(i)] = (B * te * te, B * te * te, NH, D, D)
            out[dec.format(i)] = (B * causal(td), B * td * td, NH, D, D)
            out[cross.format(i)] = (B * td * te, B * td * te, NH, D, D)
        return out
    if name == "vit":
        n = c.info["tokens"]  # 16 patches + CLS = 17
        return {f"layers.{i}.attention": (B * n * n, B * n * n, NH, D, D) for i in range(H.L)}
    if name == "clip":
        n, t = c.info["tokens"], c.info["t_text"]
        out = {f"vision_model.encoder.layers.{i}.self_attn": (B * n * n, B * n * n, NH, D, D) for i in range(H.L)}
        out.update({f"text_model.encoder.layers.{i}.self_attn": (B * causal(t), B * t * t, NH, D, D)
                    for i in range(H.L)})
        return out
    return {}


def attention_flops(pairs, hq, dqk, dv, training):
    # per pair and query head: Q@K^T 2*Dqk + P@V 2*Dv; backward 4 products = 2x forward
    return (3 if training else 1) * hq * pairs * (2 * dqk + 2 * dv)


def attention_nodes(rep, training, modules):
    """{module: [nodes]}: the SDPA nodes, and the bmm nodes inside the attention ``modules`` (attention
    in decomposed form: eager attention, or SDPA's math fallback)."""
    out = {}
    for n in rep.nodes:
        mod = _module(n, training)
        if n["op"] in UNCOUNTED or (n["op"] == "aten.bmm.default" and mod in modules):
            out.setdefault(mod, []).append(n)
    return out


def moe_hand(name, training):
    """{moe block module: matrix FLOPs} by hand: router 2*N*H*E, routed experts N*k*(2*H*2F + 2*F*H)
    (gate and up fused, then down), shared experts N*6*H*Fs; N = B*T tokens; training 3x (backward 2x)."""
    info = case(name).info
    n, h, e, k, f, fs = H.B * H.T, H.H, info["experts"], info["topk"], info["ff_expert"], info["shared_ff"]
    per_block = 2 * n * h * e + n * k * 6 * h * f + n * 6 * h * fs
    first = info.get("dense_layers", 0)
    return {f"model.layers.{i}.mlp": (3 if training else 1) * per_block for i in range(first, H.L)}


def routed_hand(name, training):
    info = case(name).info
    n, k = H.B * H.T, info["topk"]
    # 64 tokens x 2 experts x (2*64*192 + 2*96*64) = 128 * 36864 = 4718592 per MoE layer
    return (3 if training else 1) * info["moe_layers"] * n * k * 6 * H.H * info["ff_expert"]


# --------------------------------------------------------------------------- analyze: coverage


@pytest.mark.parametrize("name,training", _params(CASES))
def test_no_failed_graph_no_unknown_op(name, training):
    cov = analysis(name, training).coverage()
    assert cov["graphs_failed"] == [], cov["graphs_failed"]
    assert cov["unknown_ops"] == [], f"{_id(name, training)}: ops without a rule: {cov['unknown_ops']}"
    phases = {g["phase"] for g in analysis(name, training).data["graphs"]}
    assert phases == ({"forward", "backward"} if training else {"inference"}), phases


# --------------------------------------------------------------------------- analyze: dense FLOPs


@pytest.mark.parametrize("name,training", _params(CASES))
def test_dense_flops_match_flop_counter(name, training):
    """graphmfu's dense matrix FLOPs = FlopCounterMode's + the CPU SDPA nodes it counts as 0 + the
    routed MoE experts it does not see (checked by hand in test_moe_experts_by_hand)."""
    rep = analysis(name, training)
    total = rep.totals["flops_dense"]
    uncounted = _sum(n for n in rep.nodes if n["op"] in UNCOUNTED)
    experts = _sum(_experts(rep))
    ref = reference(name, training)
    assert ref > 0 and total > 0
    assert (total - uncounted - experts) == pytest.approx(ref, rel=1e-3), (total, uncounted, experts, ref)
    if name in MOE:
        assert experts == routed_hand(name, training) > 0
    else:
        assert experts == 0


@pytest.mark.parametrize("name,training", _params(CASES))
def test_sdpa_nodes_match_flop_counter_formula(name, training):
    """The CPU SDPA nodes FlopCounterMode skips, against its formula for the GPU variants (K/V heads
    expanded to the query heads: GQA costs by query heads); backward = 2x forward (tests/test_crosscheck.py:
    FlopCounterMode's backward also counts the recomputed Q@K^T, graphmfu's convention does not)."""
    rep = analysis(name, training)
    for n in rep.nodes:
        if n["op"] not in UNCOUNTED:
            continue
        q, k, v = (list(s[0]) for s in n["inputs"][(1 if n["op"] == SDPA_BWD else 0):][:3])
        kx, vx = (k[0], q[1], k[2], k[3]), (v[0], q[1], v[2], v[3])
        want = fcm.sdpa_flop_count(q, kx, vx) * (2 if n["op"] == SDPA_BWD else 1)
        assert n["flops_dense"] == want, (n["module"], q, k, v)
        assert n["flops"] <= n["flops_dense"]


# --------------------------------------------------------------------------- MoE by hand


@pytest.mark.parametrize("name,training", _params([(m, t) for m in MOE for t in (False, True)]))
def test_moe_experts_by_hand(name, training):
    """Active experts only: tokens x top-k routed experts (+ shared experts, + the router)."""
    rep = analysis(name, training)
    hand = moe_hand(name, training)
    got = {}
    for n in rep.nodes:
        mod = _module(n, training)
        for block in hand:
            if mod == block or mod.startswith(block + "."):
                got[block] = got.get(block, 0) + n["flops_dense"]
    assert got == hand
    assert _sum(_experts(rep)) == routed_hand(name, training)



@pytest.mark.skipif(MOE_BACKWARD_TRACEABLE, reason="this transformers traces the fp32 MoE backward")
def test_untraceable_moe_backward_fails_loudly(fresh):
    """Where the experts' backward cannot be traced (transformers 5.17), analyze() raises one clear line
    naming the data-dependent read, instead of a report missing the experts' backward."""
    with pytest.raises(graphmfu.GraphMFUError, match="reads tensor values"):
        graphmfu.analyze(H.LossOf(case("mixtral").model), **_inputs("mixtral", True), training=True, device="cpu")
    # a failed trace leaves no Dynamo skip marks (_inductor.no_dynamo_marks; tests/test_failed_compile.py)


@pytest.mark.parametrize("training", [False, True], ids=["infer", "train"])
def test_moe_bf16_experts_run_as_grouped_mm(training):
    """In bf16 transformers' experts call torch._grouped_mm under torch.compile (the GPU path): the same
    active-expert count, now on aten._grouped_mm (its backward: grouped mms of 2x the forward)."""
    c = case("mixtral")
    model = H.LossOf(c.model) if training else c.model
    model = copy.deepcopy(model).to(torch.bfloat16)
    rep = graphmfu.analyze(model, **_inputs("mixtral", training), training=training, device="cpu")
    cov = rep.coverage()
    assert cov["graphs_failed"] == [] and cov["unknown_ops"] == []
    grouped = [n for n in rep.nodes if n["op"] == "aten._grouped_mm.default"]
    assert grouped and all(n["flops_by_dtype"].keys() == {"bf16"} for n in grouped)
    assert _sum(grouped) == routed_hand("mixtral", training)  # 9437184 (x3 training)

# --------------------------------------------------------------------------- attention


ATTENTION_CASES = [(m, t) for m, t in CASES if m not in ("convnext", "resnet")]


@pytest.mark.parametrize("name,training", _params(ATTENTION_CASES))
def test_attention_dense_by_hand(name, training):
    rep = analysis(name, training)
    spec = attention_hand(name)
    got = {m: _sum(ns) for m, ns in attention_nodes(rep, training, spec).items()}
    hand = {m: attention_flops(dense, hq, dqk, dv, training) for m, (_, dense, hq, dqk, dv) in spec.items()}
    assert got == hand


@pytest.mark.parametrize("name,training", _params(ATTENTION_CASES))
def test_attention_effective_by_hand(name, training):
    """Effective FLOPs: only the (query, key) pairs the mask keeps (causal, sliding window, T5's causal
    mask around its relative bias, decomposed attention's added mask).  BERT's padding mask is an input:
    analyze() has no values, so it is counted dense, flagged and says it is counted per call
    (test_bert_padding_counted_per_call checks the per-call count)."""
    rep = analysis(name, training)
    spec = attention_hand(name)
    nodes = attention_nodes(rep, training, spec)
    got = {m: _sum(ns, "flops") for m, ns in nodes.items()}
    if name == "bert":
        spec = {m: (dense, dense, hq, dqk, dv) for m, (_, dense, hq, dqk, dv) in spec.items()}
        assert all("mask_inputs" in n["flags"] and "per call" in n["note"] for ns in nodes.values() for n in ns)
    hand = {m: attention_flops(kept, hq, dqk, dv, training) for m, (kept, _, hq, dqk, dv) in spec.items()}
    assert got == hand


DECOMPOSED = [(m, t) for m in ("gemma2", "deepseek_v3") for t in (False, True)]


@pytest.mark.parametrize("name,training", _params(DECOMPOSED, {}))
def test_decomposed_attention_mask_is_read(name, training):
    """Attention that survives only as bmm + softmax (gemma2's eager softcap attention, deepseek's math
    SDPA): the mask added to the scores is read, so the flag is replaced by a note on every softmax
    (one per layer, forward and backward) and nothing is left flagged."""
    rep = analysis(name, training)
    assert rep.coverage()["decomposed_attention"] == 0
    notes = [n for n in rep.nodes if "decomposed attention: mask read" in n.get("note", "")]
    assert len(notes) == H.L
    # the counts themselves are checked by test_attention_effective_by_hand


# --------------------------------------------------------------------------- the backend path

# Inductor's CPU codegen is the slow part (10-40 s a model on 2 cores): one model of each kind by
# default; GRAPHMFU_TEST_ALL_BACKENDS=1 runs every case through the backend (about 10 minutes).
BACKEND = ([("llama", True), ("qwen3_moe", True), ("deepseek_v3", False), ("bert", False)]
           if not os.environ.get("GRAPHMFU_TEST_ALL_BACKENDS") else CASES)
# scalar C++ kernels compiled in this process: a third less compile time; the FX graphs graphmfu
# counts are the same (vectorisation is a codegen choice made after them)
FAST_CODEGEN = {"cpp.vec_isa_ok": False, "compile_threads": 1}


@pytest.mark.parametrize("name,training", _params(BACKEND))
def test_backend_matches_analyze(fresh, name, training):
    _untraceable(name, training)
    model, x = case(name).model, _inputs(name, training)
    compiled = torch.compile(model, backend=fresh.backend)
    with torch._inductor.config.patch(FAST_CODEGEN):
        if training:
            compiled(**x).loss.backward()
            model.zero_grad(set_to_none=True)
        else:
            with torch.no_grad():
                compiled(**x)
    rep = fresh.report()
    cov = rep.coverage()
    assert cov["graphs_failed"] == [], cov["graphs_failed"]
    assert cov["unknown_ops"] == [], cov["unknown_ops"]
    assert {g["source"] for g in rep.data["graphs"]} == {"backend"}
    an = analysis(name, training)
    for key in ("flops_dense", "flops"):
        assert rep.totals[key] == an.totals[key], key
    assert _sum(_experts(rep)) == _sum(_experts(an))
    uncounted = _sum(n for n in rep.nodes if n["op"] in UNCOUNTED)
    assert rep.totals["flops_dense"] - uncounted - _sum(_experts(rep)) == pytest.approx(reference(name, training),
                                                                                       rel=1e-3)


def test_bert_padding_counted_per_call(fresh):
    """BERT's padding mask is an input: analyze() counts it dense (flagged, the note names the mask);
    under graphmfu.profile() each call is counted from its real mask: two calls with different padding."""
    model, x = case("bert").model, _inputs("bert", False)
    cm = torch.compile(model, backend=fresh.backend)
    short = x["attention_mask"].clone()
    short[0, 24:] = 0  # call 2: sequences of 24 and 20 real tokens
    with torch.no_grad(), torch._inductor.config.patch(FAST_CODEGEN):
        cm(**x)
        with fresh.profile() as p:
            cm(**x)
            cm(**{**x, "attention_mask": short})
    rep = p.report()
    per_pair = H.NH * (2 * 16 + 2 * 16)  # 4 heads x (Q@K^T 2*16 + P@V 2*16) = 256 per (query, key) pair
    # every query row sees its sequence's real keys: call 1 32*32 + 32*20 = 1664, call 2 32*24 + 32*20 = 1408
    hand = [sum(H.T * n for n in lengths) * per_pair for lengths in ((32, 20), (24, 20))]
    assert hand == [1664 * 256, 1408 * 256]
    sdpa = [k for k in rep.kernels if k["name"].startswith("torch.ops.aten._scaled_dot_product")]
    assert len(sdpa) == H.L and all(k["calls"] == 2 for k in sdpa)
    assert sum(k["flops"] for k in sdpa) == H.L * sum(hand)
    static = [n for n in rep.nodes if n["op"] == SDPA_FWD]
    assert all(n["flops"] == n["flops_dense"] and "mask_inputs" in n["flags"] and "per call" in n["note"]
               for n in static)
