"""One meter step (and profile stage) per engine step of transformers' continuous batching.

    with graphmfu.capture_all():                         # the engine's torch.compile goes through graphmfu
        steps = graphmfu.integrations.continuous_batching.EngineSteps(meter=m)
        with steps:
            out = model.generate_batch(prompts, generation_config=gc, continuous_batching_config=
                                       ContinuousBatchingConfig(default_compile_level=1))
    m.records   # one row per engine step: prefill / decode tokens, requests, context, FLOPs, MFU, MBU ...

``generate_batch`` (and the continuous-batching manager) packs the requests of each step into one batch
(some prefilling a chunk of their prompt, the others decoding one token) and runs the model's forward on a
background thread.  ``EngineSteps`` reads the engine's own bookkeeping as each batch is prepared
(``ContinuousBatchingIOs.prepare_batch_tensors``: each request's query tokens ``q``, the tokens already in
its cache ``past`` and the keys it attends to ``k``) and opens a meter step on that thread around the batch's
compute (``ModelRunner.compute_batch``, on the engine's compute stream: the step's events time its work).
Each row gets:

* ``prefill_tokens``, ``decode_tokens`` (a request's tokens before the end of its prompt are prefill),
  ``requests``, ``new_tokens`` (the step's ``tokens``: the requests that get a token),
  ``context_tokens`` (Σ k over the requests, per full-attention layer), ``kv_bytes_read`` (each layer
  reads the K and V of its ``k`` tokens per request, in the cache's dtype);
* FLOPs of the graphs that ran, with attention at each request's own context (the engine's block-diagonal
  causal mask is read per call) and — when the engine padded the batch (it does under torch.compile and
  CUDA graphs: query tokens to ``q_padding_interval_size``, logits rows to the padded sequences) — the
  padded rows' products left out of ``flops`` (``flops_executed``, ``padding_flops``, ``padded_tokens``
  say what ran: :mod:`graphmfu.padding`);
* a note and a flag for what cannot be counted: a step run eagerly (no compile config: nothing compiled),
  a CUDA graph replayed by the engine (``use_cuda_graph``), attention run outside every graph.

Warm-up batches (the engine's ``__warmup_*`` requests) are not steps.  ``steps.batches`` keeps the
bookkeeping of every step (also without a meter).
"""
from __future__ import annotations

import collections
import threading
from typing import NamedTuple

import torch

from graphmfu import _inductor
from graphmfu.errors import GraphMFUError
from graphmfu.integrations import require
from graphmfu.padding import Padding

_tf = require("transformers", "transformers")
_active_lock = threading.Lock()
# ContinuousBatchingIOs.prepare_batch_tensors's arguments after self (transformers 5.17 and 5.23)
_PREPARE_ARGS = ("requests_in_batch", "logits_processors", "use_decode_fast_path", "num_q_tokens", "max_kv_read",
                 "use_padding")
_active: list = []  # the EngineSteps whose patches are in place (at most one: the engine's classes are global)


class Request(NamedTuple):
    """One request's part of an engine step (a tuple: made for every request of every step)."""
    id: str
    past: int  # tokens already in its cache
    q: int  # tokens it computes in this step
    k: dict  # layer type -> keys it attends to (past + q for full attention; a sliding window caps it)
    prefill: int  # of ``q``, tokens of its prompt
    new_token: bool  # this step produces its next token

    @property
    def decode(self) -> int:
        return self.q - self.prefill


class Batch:
    """One engine step as the engine prepared it.  The engine's thread pays for what is made here, so a step
    prepared by the engine keeps each request's numbers as plain tuples (``raw``: id, past, q, prompt length,
    new token) and makes its :class:`Request` rows only when something reads them; a batch made from rows keeps
    the same tuples of them (prompt length None), so the sums read one form."""
    __slots__ = ("_requests", "_raw", "_cache", "num_q_tokens", "sequences", "padded", "q_tokens", "new_tokens")

    def __init__(self, requests: tuple, num_q_tokens: int | None, sequences: int, padded: bool, *, raw: tuple = (),
                 cache=None):
        self._requests = requests if requests or not raw else None
        self._raw = raw or tuple((r.id, r.past, r.q, None, r.new_token) for r in requests)
        self._cache = cache
        self.q_tokens = sum(r[2] for r in self._raw)  # query tokens of the requests themselves
        self.new_tokens = sum(1 for r in self._raw if r[4])  # requests that get their next token
        # query tokens the forward runs (padded when the engine pads; None: the requests' own)
        self.num_q_tokens = self.q_tokens if num_q_tokens is None else int(num_q_tokens)
        self.sequences = sequences  # logits rows the forward runs (padded sequences when the engine pads)
        self.padded = padded  # the engine padded this batch (torch.compile or CUDA graphs)

    @property
    def requests(self) -> tuple:
        if self._requests is None:
            self._requests = tuple(_request_of(self._cache, *r) for r in self._raw)
        return self._requests

    def past_q(self):
        """(past, q) of each request."""
        return ((r[1], r[2]) for r in self._raw)

    def __repr__(self) -> str:
        return (f"Batch({len(self.requests)} requests, num_q_tokens={self.num_q_tokens}, sequences={self.sequences}, "
                f"padded={self.padded})")

    @property
    def warmup(self) -> bool:
        return any(str(r[0]).startswith("__warmup") for r in self._raw)

    @property
    def kind(self) -> str:
        pre = sum(r.prefill for r in self.requests)
        dec = sum(r.decode for r in self.requests)
        return "mixed" if pre and dec else ("prefill" if pre else "decode")


def _seqlens_k(cache, past: int, q: int) -> dict:
    """Keys each layer type attends to for a request (the engine's own function: 5.17 and 5.23 spell it
    differently)."""
    try:
        if hasattr(cache, "get_seqlens_k"):  # transformers 5.17
            return {lt: int(v) for lt, v in cache.get_seqlens_k(past, q).items()}
        allocators = getattr(cache, "cache_allocators", None)  # transformers 5.23
        if allocators:
            return {lt: int(a.get_seqlen_k(past, q)) for lt, a in allocators.items()}
    except Exception:  # noqa: BLE001 - full attention's keys then
        pass
    return {"full_attention": past + q}


def _raw(fs) -> tuple:
    """What a step must keep of one request, read as the engine prepares the batch (its state moves on after
    the step): (id, past, q, prompt length, new token)."""
    st = fs.state
    return (st.request_id, st.position_offset, fs.query_length, len(getattr(st, "initial_tokens", None) or ()),
            fs.has_new_token)


def _request_of(cache, rid, past, q, prompt, new_token) -> Request:
    past, q = int(past), int(q)
    prefill = max(0, min(past + q, prompt) - past)
    return Request(str(rid), past, q, _seqlens_k(cache, past, q), prefill, bool(new_token))


def _layers_by_type(config) -> dict:
    types = getattr(config, "layer_types", None)
    if types:
        return dict(collections.Counter(types))
    return {"full_attention": int(getattr(config, "num_hidden_layers", 0) or 0)}


def _attention_outside(model) -> str | None:
    """The attention implementation when it runs outside every compiled graph (transformers marks its paged
    eager attention ``@torch.compiler.disable``)."""
    impl = getattr(getattr(model, "config", None), "_attn_implementation", None)
    if not impl:
        return None
    try:
        from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

        fn = ALL_ATTENTION_FUNCTIONS.get(impl) if hasattr(ALL_ATTENTION_FUNCTIONS, "get") else \
            ALL_ATTENTION_FUNCTIONS[impl]
    except Exception:  # noqa: BLE001
        return None
    return impl if getattr(fn, "_torchdynamo_disable", False) else None


EAGER_NOTE = ("transformers' continuous batching ran this step's forward eagerly (no compile config): nothing "
              "was compiled, so nothing is counted; pass ContinuousBatchingConfig(default_compile_level=1) (or "
              "varlen_compile_config / decode_compile_config) and run it under graphmfu.capture_all() (or with "
              "CompileConfig(backend=graphmfu.backend))")
CUDA_GRAPH_NOTE = ("transformers replayed a CUDA graph it captured for this step (ContinuousBatchingConfig("
                   "use_cuda_graph=...)): a replay runs no compiled graph, so graphmfu counts only the capture; "
                   "pass use_cuda_graph=False to count every step")
ATTENTION_NOTE = ("this model's attention ({impl}) runs outside every compiled graph (transformers marks it "
                  "@torch.compiler.disable): its FLOPs are not counted; use attn_implementation='sdpa'")

UNREADABLE_NOTE = ("graphmfu could not read a batch of transformers' continuous batching ({err}): the engine ran "
                   "on, but those engine steps have no meter row or stage; this transformers version is not one "
                   "EngineSteps knows (5.17, 5.23): please report it")
PADDING_NOTE = ("transformers' continuous batching padded its batches (query tokens to q_padding_interval_size, "
                "logits rows to the padded sequences): profile() counts the work that ran, padded rows included; "
                "the meter's engine-step rows (EngineSteps(meter=...)) leave the padded rows' products out of "
                "'flops' and show them as 'padding_flops'")


def _pairs(past: int, q: int, window: int | None) -> int:
    """(query, key) pairs the engine's mask keeps for a request computing ``q`` tokens after ``past`` cached
    ones: each query at position t sees keys up to t (``utils.build_attention_mask``: causal, bottom-right),
    the last ``window`` of them in a sliding layer."""
    if window is None:
        return q * past + q * (q + 1) // 2  # sum of t + 1 for t in past .. past + q - 1
    a, b = past + 1, past + q  # min(v, window) summed over v = a .. b
    c = min(b, window)
    under = (a + c) * (c - a + 1) // 2 if c >= a else 0
    return under + window * max(0, b - max(a, window + 1) + 1)


class PairCounts:
    """The pairs the engine's attention masks keep, from its own sequence lengths, given to the meter in place
    of a per-call probe of the mask (``_inductor.counts_from``: a probe costs a few small kernels per call).
    Trusted per probe only once checked: at its first ``checks`` calls with different counts the probe runs
    and is read (a synchronisation), and its value must be a whole multiple of one layer type's kept pairs,
    the same multiple each time (the heads the mask broadcasts to); otherwise the probe keeps running."""

    def __init__(self, checks: int = 2):
        self.checks = checks
        self._batch, self._windows, self._kept = None, {}, None  # the step being computed; .kept: layer type -> pairs
        self.trusted: dict = {}  # probe name -> (layer type, multiple)
        self._seen: dict = {}  # probe name -> [(kept, candidates)]
        self.refused: set = set()

    def begin(self, b: "Batch", windows: dict) -> None:
        self._batch, self._windows, self._kept = b, windows, None  # summed when a probe first asks

    @property
    def kept(self) -> dict:
        if self._kept is None:
            b = self._batch
            self._kept = {lt: sum(_pairs(p, q, w) for p, q in b.past_q()) for lt, w in self._windows.items()} \
                if b is not None else {}
        return self._kept

    def __call__(self, name, probe, inputs):
        got = self.trusted.get(name)
        if got is not None:
            return got[1] * self.kept.get(got[0], 0)
        if name in self.refused:
            return None
        value = int(probe(inputs))  # checked against the mask itself (a synchronisation, a few calls only)
        cands = {(lt, value // k) for lt, k in self.kept.items() if k and value > 0 and value % k == 0}
        seen = self._seen.setdefault(name, [])
        if seen and tuple(self.kept.values()) == seen[-1][0]:
            return value  # the same counts as the last check: no new evidence
        cands = cands & seen[-1][1] if seen else cands
        seen.append((tuple(self.kept.values()), cands))
        if not cands:
            self.refused.add(name)
        elif len(seen) >= self.checks and len(cands) == 1:
            self.trusted[name] = next(iter(cands))
        return value


class EngineSteps:
    """Engine steps of transformers' continuous batching as meter steps (and ``graphmfu.stage``s: ``prefill``,
    ``decode`` or ``mixed``, under ``graphmfu.profile()``).  A context manager; one at a time."""

    def __init__(self, meter=None, stages: bool = True):
        self.meter, self.stages = meter, stages
        self.batches: list[Batch] = []  # every step (warm-up batches excluded)
        self._queue: collections.deque = collections.deque()  # prepared, not yet computed
        self._saved: list = []
        self._models: dict = {}  # id(model) -> what the rows need of it
        self._hold = None
        self._forwards: dict = {}  # (id(runner), block table) -> compiled | eager | cuda_graph
        self._padding_said = self._unreadable_said = False
        self.pairs = PairCounts()  # the masks' kept pairs from the engine's lengths, once checked

    # ------------------------------------------------------------------ patches
    def __enter__(self) -> "EngineSteps":
        from transformers.generation.continuous_batching import input_outputs, model_runner

        with _active_lock:
            if _active:
                raise GraphMFUError("graphmfu.integrations.continuous_batching.EngineSteps is already on: the "
                                    "engine's classes are global, one EngineSteps at a time (close the other first)")
            _active.append(self)
        self._queue.clear()  # entered again (a server's next session): a batch prepared but never run is gone
        ios, runner = input_outputs.ContinuousBatchingIOs, model_runner.ModelRunner
        prepare, compute = ios.prepare_batch_tensors, runner.compute_batch
        self._saved = [(ios, "prepare_batch_tensors", prepare), (runner, "compute_batch", compute)]
        me = self

        def prepare_batch_tensors(io, *args, **kwargs):
            try:
                a = dict(zip(_PREPARE_ARGS, args), **kwargs)
                raw = tuple(map(_raw, a["requests_in_batch"]))
            except Exception as e:  # noqa: BLE001 - an engine we cannot read still serves: its step goes unmetered
                a = raw = None
                me._unreadable(e)
            out = prepare(io, *args, **kwargs)
            if raw is None:
                me._queue.append(None)
                return out
            padding = bool(a.get("use_padding", False))
            try:
                seqs = int(io._get_num_sequences(use_padding=padding))
            except Exception:  # noqa: BLE001
                seqs = len(raw)
            me._queue.append(Batch((), a.get("num_q_tokens"), seqs, padding, raw=raw, cache=getattr(io, "cache", None)))
            return out

        def compute_batch(runner_, model, batch_data, *args, **kwargs):
            b = me._queue.popleft() if me._queue else None
            if b is None or b.warmup:
                return compute(runner_, model, batch_data, *args, **kwargs)
            me.batches.append(b)
            if me.meter is None and not (me.stages and _inductor.profiler_running()):
                return compute(runner_, model, batch_data, *args, **kwargs)
            return me._measured(compute, runner_, model, batch_data, b, args, kwargs)

        ios.prepare_batch_tensors = prepare_batch_tensors
        runner.compute_batch = compute_batch
        self._hold = self.meter.hold() if self.meter is not None else None
        if self._hold is not None:  # the hooks stay in place from step to step (one step is a few ms)
            self._hold.__enter__()
        return self

    def __exit__(self, *exc) -> bool:
        if self._hold is not None:
            self._hold.__exit__(None, None, None)
            self._hold = None
        for owner, name, fn in self._saved:
            setattr(owner, name, fn)
        self._saved = []
        with _active_lock:
            if self in _active:
                _active.remove(self)
        return False

    def _registry(self):
        """Where the notes go: the meter's registry, else graphmfu's."""
        from graphmfu.registry import DEFAULT

        return self.meter.registry if self.meter is not None else DEFAULT

    def _unreadable(self, e: BaseException) -> None:
        """The engine's batch could not be read (a transformers version with other names): said once; the
        engine runs on, those steps unmetered."""
        if not self._unreadable_said:
            reg = self._registry()
            msg = UNREADABLE_NOTE.format(err=f"{type(e).__name__}: {e}")
            reg.note(msg)
            reg.warn_once("continuous_batching_unreadable", "graphmfu: " + msg)
            self._unreadable_said = True

    # ------------------------------------------------------------------ one step
    def _measured(self, compute, runner, model, batch_data, b: Batch, args, kwargs):
        """The engine's compute of batch ``b`` as a meter step (and a profile stage): what runs per step is
        kept small (the facts are derived when the row is read: :class:`EngineStep`; the meter's step opened
        and closed without context managers: one engine step is a few milliseconds of host time)."""
        if b.padded and b.num_q_tokens != b.q_tokens and not self._padding_said:
            self._registry().note(PADDING_NOTE)
            self._padding_said = True
        if self.stages and _inductor.profiler_running():  # a stage is read by profile() only
            from graphmfu.stage import stage

            with stage(b.kind):
                return self._metered(compute, runner, model, batch_data, b, args, kwargs)
        return self._metered(compute, runner, model, batch_data, b, args, kwargs)

    def _metered(self, compute, runner, model, batch_data, b: Batch, args, kwargs):
        m = self.meter
        if m is None:
            return compute(runner, model, batch_data, *args, **kwargs)
        stream = getattr(runner.inputs_and_outputs, "compute_stream", None)  # the step's events go there
        st = m.begin(tokens=b.new_tokens or None, stream=stream)
        try:
            facts = self._model(model)
            st.extra = {"engine": EngineStep(b, facts["layers"], facts["kv_token_bytes"], self._forward(runner),
                                             facts["attention_outside"])}
            if b.padded and (b.num_q_tokens != b.q_tokens or b.sequences != b.new_tokens):
                st.padding = Padding((b.num_q_tokens, b.q_tokens), (b.sequences, b.new_tokens), facts["vocab"])
            self.pairs.begin(b, facts["windows"])
            prev = _inductor.swap_counts(self.pairs)
            try:
                out = compute(runner, model, batch_data, *args, **kwargs)
            finally:
                _inductor.swap_counts(prev)
        except BaseException:
            m.abort(st)  # every begin is closed: the next step can open
            raise
        m.end(st, stream)
        return out

    def _forward(self, runner) -> str:
        """How the runner runs this step's forward: "compiled", "eager" or "cuda_graph" (memoized per runner
        and path)."""
        ub = bool(getattr(runner.inputs_and_outputs, "use_block_table", False))
        key = (id(runner), ub)
        got = self._forwards.get(key)
        if got is None:
            try:
                fn, cuda_graph = runner._get_forward_fn(use_block_table=ub)
                plain = getattr(fn, "__func__", None) is getattr(type(runner), "_forward_process_and_sample", object())
                got = "cuda_graph" if cuda_graph else ("eager" if plain else "compiled")
            except Exception:  # noqa: BLE001 - an engine without these names: say nothing
                got = "compiled"
            self._forwards[key] = got
        return got

    def _model(self, model) -> dict:
        """What the rows need of the model, read once per model."""
        got = self._models.get(id(model))
        if got is None:
            config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
            heads = int(getattr(config, "num_attention_heads", 0) or 0)
            kv_heads = int(getattr(config, "num_key_value_heads", None) or heads)
            head_dim = int(getattr(config, "head_dim", None) or (config.hidden_size // max(heads, 1)))
            from graphmfu.cost import itemsize

            layers = _layers_by_type(config)
            got = self._models[id(model)] = {
                "layers": tuple(sorted(layers.items())),
                # K and V of one token in one layer
                "kv_token_bytes": 2 * kv_heads * head_dim * itemsize(getattr(model, "dtype", torch.float32)),
                "vocab": int(getattr(config, "vocab_size", 0) or 0) or None,
                "attention_outside": _attention_outside(model),
                "windows": {lt: (getattr(config, "sliding_window", None) if lt == "sliding_attention" else None)
                            for lt in layers}}
        return got


class EngineStep(NamedTuple):
    """What a meter row knows of one engine step (``Step.extra["engine"]``), derived when the row is read."""
    batch: Batch
    layers: tuple  # ((layer type, layers of that type), ...)
    kv_token_bytes: int  # K and V bytes of one cached token in one layer
    forward: str  # compiled | eager | cuda_graph
    attention_outside: str | None  # the attention implementation when it runs outside every graph

    def fields(self) -> dict:
        b = self.batch
        context = {lt: sum(r.k.get(lt, r.past + r.q) for r in b.requests) for lt, _ in self.layers}
        out = {"engine_step": b.kind, "requests": len(b.requests), "prefill_tokens": sum(r.prefill for r in b.requests),
               "decode_tokens": sum(r.decode for r in b.requests), "new_tokens": b.new_tokens,
               "context_tokens": context.get("full_attention", sum(context.values())),
               "kv_bytes_read": sum(n * context[lt] * self.kv_token_bytes for lt, n in self.layers),
               "notes": [], "flags": []}
        if self.forward == "eager":
            out["notes"].append(EAGER_NOTE)
            out["flags"].append("eager_engine")
        elif self.forward == "cuda_graph":
            out["notes"].append(CUDA_GRAPH_NOTE)
            out["flags"].append("engine_cuda_graph")
        if self.attention_outside:
            out["notes"].append(ATTENTION_NOTE.format(impl=self.attention_outside))
            out["flags"].append("attention_outside_graphs")
        return out


def generate_batch(model, inputs, *, meter=None, stages: bool = True, **kwargs):
    """``model.generate_batch(inputs, **kwargs)`` with one meter step per engine step (see
    :class:`EngineSteps`); returns its result."""
    with EngineSteps(meter, stages):
        return model.generate_batch(inputs, **kwargs)


__all__ = ["EngineSteps", "EngineStep", "PairCounts", "Batch", "Request", "generate_batch"]
