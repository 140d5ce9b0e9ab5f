"""Host microseconds of EngineSteps' own per-step work (prepare and step wrapping) on stand-in engine objects:
the engine's prepare and compute are stubs, so only graphmfu's part is timed (CPU or GPU host; on the GPU the
meter's events go to a side stream).

    python bench/probe/cb_wrap_micro.py [--cuda] [--requests 8]
"""
import argparse
import sys
import time
from pathlib import Path
from types import SimpleNamespace as NS

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch  # noqa: E402

import graphmfu  # noqa: E402
from graphmfu.integrations import continuous_batching as cbm  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cuda", action="store_true")
    ap.add_argument("--requests", type=int, default=8)
    ap.add_argument("--steps", type=int, default=5000)
    a = ap.parse_args()
    from transformers.generation.continuous_batching import input_outputs, model_runner

    ios, runner_cls = input_outputs.ContinuousBatchingIOs, model_runner.ModelRunner
    saved = ios.prepare_batch_tensors, runner_cls.compute_batch, getattr(ios, "_get_num_sequences", None)
    x = torch.zeros(16, device="cuda" if a.cuda else "cpu")
    stream = torch.cuda.Stream() if a.cuda else None

    def compute(runner, model, batch_data, *args, **kw):
        x.add_(1)
    ios.prepare_batch_tensors = lambda io, *args, **kw: None
    runner_cls.compute_batch = compute
    ios._get_num_sequences = lambda io, use_padding=False: 16
    cache = NS(get_seqlens_k=lambda past, q: {"full_attention": past + q})
    io = ios.__new__(ios)
    io.cache = cache
    runner = runner_cls.__new__(runner_cls)
    runner.inputs_and_outputs = NS(compute_stream=stream, use_block_table=False)
    runner._get_forward_fn = lambda use_block_table=False: (compute, False)
    model = NS(config=NS(num_attention_heads=16, num_key_value_heads=16, hidden_size=1024, num_hidden_layers=2,
                         vocab_size=32000, _attn_implementation="sdpa"), dtype=torch.bfloat16)
    reqs = [NS(state=NS(position_offset=100 + i, request_id=f"req_{i}", initial_tokens=list(range(50))),
               query_length=1, has_new_token=True) for i in range(a.requests)]
    try:
        for label, m in (("bare", None), ("EngineSteps(meter=None)", "none"), ("EngineSteps(meter)", "meter")):
            ctx = None if m is None else cbm.EngineSteps(meter=graphmfu.meter(cuda=a.cuda) if m == "meter" else None)
            if ctx is not None:
                ctx.__enter__()
            best, tp = float("inf"), 0.0
            clock = time.perf_counter
            for _ in range(3):
                t = clock()
                prep = 0.0
                for _ in range(a.steps):
                    t0 = clock()
                    ios.prepare_batch_tensors(io, reqs, None, False, 16 * a.requests // 8, 0, True)
                    prep += clock() - t0
                    runner_cls.compute_batch(runner, model, None)
                dt = (clock() - t) / a.steps * 1e6
                if dt < best:
                    best, tp = dt, prep / a.steps * 1e6
            if ctx is not None:
                ctx.__exit__(None, None, None)
                if m == "meter":
                    assert len(ctx.meter.records) == 3 * a.steps
            print(f"  {label:28s} {best:7.1f} us per step (prepare + compute; prepare {tp:.1f})")
    finally:
        ios.prepare_batch_tensors, runner_cls.compute_batch = saved[:2]
        if saved[2] is not None:
            ios._get_num_sequences = saved[2]


if __name__ == "__main__":
    main()
