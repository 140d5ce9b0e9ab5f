"""Parallel layouts measured on gloo ranks on the CPU (issue 19, part 2): DDP, expert parallelism, HSDP on a 2-D
mesh, and the meter's world numbers on an FSDP2 loop, each against the hand count.

Two spawns run bench/parallel_cpu.py's workers (the models live there; the bench prints the same numbers as a
table): 2 ranks for DDP, EP and the FSDP2 meter loop, 4 ranks for HSDP (2 replicas x 2 shards).  Every golden
value below is arithmetic on the models' shapes, written beside it:

* Net: 2 blocks of Linear(32 -> 128) and Linear(128 -> 32), no bias, fp32, 4 rows per rank: 16,384 parameters
  = 65,536 B (32,768 B per block).  One training step: forward 4 products of 2*4*32*128 = 32,768 FLOPs each
  = 131,072; backward dW and dX of the second block's two linears (4 x 32,768) and of the first block dW, dW and
  dX of its second linear only (the input needs no gradient: 3 x 32,768) = 229,376; total 360,448.
* MoE: 16 tokens per rank, hidden 32, 4 SwiGLU experts of FFN 64 (2 per rank), top-2, capacity 16*2/4 = 8 per
  expert and rank: the expert products run on 2 x 8 slots x 2 local experts = 32 = 16 x 2 token-slots per rank.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

dist = torch.distributed
pytestmark = pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()),
                                reason="needs torch.distributed with gloo")

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench import parallel_cpu as bench  # noqa: E402


def _ok(results):
    for r in results:
        assert "error" not in r, r["error"]
    return results


@pytest.fixture(scope="module")
def two():
    return _ok(bench.spawn(2, ("ddp", "ep", "meter")))


@pytest.fixture(scope="module")
def four():
    return _ok(bench.spawn(4, ("hsdp",)))


def _of(comm, kind):
    return [c for c in comm if c["kind"] == kind]


# --------------------------------------------------------------------------- DDP


def test_ddp_of_a_compiled_model_flops_by_hand(two):
    for r in two:
        d = r["ddp"]
        assert d["flops"] == 360_448  # Net's training step (module docstring)
        assert d["stages"] == {"train": 360_448}  # the profiled step's graph calls, measured
        assert d["unknown"] == 0
    w = two[0]["ddp"]["world"]
    assert w["totals"]["flops"] == 2 * 360_448  # world = the sum of the 2 ranks
    assert w["stages"] == [{"name": "train", "ranks": 2, "flops": 2 * 360_448}]
    assert two[1]["ddp"]["world"] is None  # gathered on rank 0 only


def test_ddp_bucketed_all_reduce_bus_bytes_by_hand(two):
    for r in two:
        d = r["ddp"]
        (ar,) = d["comm"]  # the compiled graphs hold no collective: the one here is the hook's bucket graph
        assert ar["source"] == "ddp"
        # one bucket (DDP's default 25 MiB cap) = every gradient: 16,384 fp32 = 65,536 B; all_reduce bus bytes
        # 2(n-1)/n * S = 2*1/2 * 65,536 = 65,536
        assert (ar["kind"], ar["op"], ar["phase"]) == ("all_reduce", "c10d.allreduce_.default", "backward")
        assert (ar["size"], ar["bytes"], ar["group_size"], ar["ranks"]) == (65_536, 65_536, 2, [0, 1])
        assert ar["module"] == "layers"  # both blocks' parameters: their common module
        # joined to the profile: the bucket's measured c10d::allreduce_ op (its call range's child)
        assert [k["name"] for k in d["joined"]] == ["c10d::allreduce_"] and d["joined"][0]["time_s"] > 0
        assert d["hook_calls"] == 2  # one bucket per backward, 2 backwards since watch()
        assert any(n.startswith("DDP: the gradient all-reduce runs outside the compiled graphs") for n in d["notes"])
        assert d["roundtrip"]  # saved and loaded: same totals and collectives, the summary renders
    (c,) = two[0]["ddp"]["world"]["collectives"]
    assert (c["kind"], c["group_size"], c["link"], c["count"], c["size"], c["comm_bytes"]) == \
        ("all_reduce", 2, "nvlink", 1, 65_536, 65_536)
    assert c["time_s"] > 0  # measured (on gloo: the enqueuing op's CPU time)
    assert two[0]["ddp"]["world"]["totals"]["comm_bytes"] == 2 * 65_536  # both ranks


def test_ddp_all_reduce_not_watched_is_said_not_omitted(two):
    for r in two:
        u = r["ddp"]["unwatched"]
        assert u["comm"] == []  # no record holds DDP's all-reduce without the hook
        (note,) = [n for n in u["notes"] if "outside graphmfu's graphs" in n]
        assert "c10d::allreduce_ x1" in note and "bus bytes are not in this record" in note
        assert "graphmfu.ddp.watch" in note


def test_ddp_buckets_follow_ddps_rebuild_and_average_like_ddp(two):
    for r in two:
        b = r["ddp"]["buckets"]
        # first backward: DDP's first bucket cap is 1 MiB, so all 65,536 B in one bucket (bus 2*1/2 * S)
        assert [(c["module"], c["size"], c["bytes"]) for c in b["first"]] == [("layers", 65_536, 65_536)]
        # rebuilt after it at the 32 KiB cap, in the order gradients become ready: one block per bucket, 32,768 B
        # each (2 x 32 x 128 x 4 B), bus 2*1/2 * 32,768; the first layout is retired from the record
        assert [(c["module"], c["size"], c["bytes"]) for c in b["rebuilt"]] == [
            ("layers.1", 32_768, 32_768), ("layers.0", 32_768, 32_768)]
        assert b["hook_calls"] == 1 + 2 + 2 + 2  # 4 backwards: 1 bucket, then 2 each
        assert any("rebuilt its gradient buckets" in n for n in b["notes"])
        assert b["grads_are_the_mean"]  # the hook's all-reduce averages as DDP's own does


def test_ddp_matches_plan_parallel():
    p = bench.plan_net(2, 1)  # DDP: dp 2, no sharding, fp32 gradients reduced
    assert p["flops"] == 360_448
    assert p["all_reduce"] == {"count": 1, "size": 65_536, "bus": 65_536, "n": 2}


# --------------------------------------------------------------------------- expert parallelism


def test_ep_flops_by_hand(two):
    for r in two:
        e = r["ep"]
        assert e["same_as_eager"] and e["unknown"] == 0
        assert e["graphs"] == ["backward", "forward"]  # one compiled graph each way, the all-to-alls inside
        # forward: active experts 16 tokens x top-2 x 2 x 3 products x 32 x 64 = 393,216, router 2*16*32*4 = 4,096
        assert e["forward"] == 393_216 + 4_096
        # backward: dX and dW of the 3 expert products and of the router (the input needs grad): 2 x forward
        assert e["backward"] == 2 * (393_216 + 4_096)
        assert e["flops"] == e["stages"]["train"] == 3 * 397_312  # 1,191,936, the profiled step measured
    assert two[0]["ep"]["world"]["totals"]["flops"] == 2 * 1_191_936


def test_ep_all_to_all_bytes_by_hand(two):
    for r in two:
        a2a = _of(r["ep"]["comm"], "all_to_all")
        # dispatch + combine, forward + backward; each S = 16 tokens x top-2 x 32 hidden x 4 B = 4,096 per direction,
        # bus (n-1)/n * S = 2,048
        assert sorted(c["phase"] for c in a2a) == ["backward", "backward", "forward", "forward"]
        assert {(c["size"], c["bytes"], c["group_size"]) for c in a2a} == {(4_096, 2_048, 2)}
    (c,) = two[0]["ep"]["world"]["collectives"]
    assert (c["kind"], c["count"], c["size"], c["comm_bytes"]) == ("all_to_all", 4, 4 * 4_096, 4 * 2_048)


def test_ep_matches_the_plans_collective_model():
    # what plan_parallel adds per MoE layer and microbatch: 4 all-to-alls of tokens x top_k x hidden x dtype bytes
    assert bench.plan_ep(2) == {"kind": "all_to_all", "n": 2, "size": 4_096, "count": 4, "bus": 2_048}


# --------------------------------------------------------------------------- HSDP, 2 x 2 mesh


def test_hsdp_flops_and_collective_bytes_by_hand(four):
    for rank, r in enumerate(four):
        h = r["hsdp"]
        assert h["failures"] == [] and h["flops"] == 360_448  # each replica its own 4 rows: Net's step
        shard, replica = [rank // 2 * 2, rank // 2 * 2 + 1], [rank % 2, rank % 2 + 2]
        ag, rs, ar = (_of(h["comm"], k) for k in ("all_gather", "reduce_scatter", "all_reduce"))
        # all-gather in the shard group: one block's parameters 32,768 B gathered (S), bus (2-1)/2 * S = 16,384;
        # 2 blocks forward + 2 re-gathered for backward (resharded after forward)
        assert len(ag) == 4 and {(c["size"], c["bytes"], c["group_size"]) for c in ag} == {(32_768, 16_384, 2)}
        # reduce-scatter of each block's gradients (S = 32,768, the input) in the shard group: bus 16,384
        assert len(rs) == 2 and {(c["size"], c["bytes"], c["group_size"]) for c in rs} == {(32_768, 16_384, 2)}
        # all-reduce of each block's gradient shard (32,768 / 2 = 16,384 B) across the 2 replicas: 2*1/2 * S
        assert len(ar) == 2 and {(c["size"], c["bytes"], c["group_size"]) for c in ar} == {(16_384, 16_384, 2)}
        assert {tuple(c["ranks"]) for c in ag + rs} == {tuple(shard)}
        assert {tuple(c["ranks"]) for c in ar} == {tuple(replica)}
    t = four[0]["hsdp"]["world"]["totals"]
    assert t["flops"] == 4 * 360_448
    assert t["comm_bytes"] == 4 * (4 * 16_384 + 2 * 16_384 + 2 * 16_384)  # 4 ranks x 131,072


def test_hsdp_matches_plan_parallel(four):
    p = bench.plan_net(4, 2)  # dp 4 as 2 replicas of a 2-way FSDP shard, resharded after forward, fp32
    assert p["flops"] == 360_448
    h = four[0]["hsdp"]["comm"]
    for kind, size, bus in (("all_gather", 4 * 32_768, 4 * 16_384), ("reduce_scatter", 2 * 32_768, 2 * 16_384),
                            ("all_reduce", 2 * 16_384, 2 * 16_384)):
        # the plan counts the whole model's parameters per collective, FSDP2 one block at a time: same totals
        assert (p[kind]["size"], p[kind]["bus"]) == (size, bus)
        assert (sum(c["size"] for c in _of(h, kind)), sum(c["bytes"] for c in _of(h, kind))) == (size, bus)


# --------------------------------------------------------------------------- the meter on an FSDP2 loop


def test_meter_world_numbers_on_an_fsdp2_loop(two):
    r0, r1 = (r["meter"]["rows"] for r in two)
    # compiled blocks, 4 rows on rank 0 and 8 on rank 1: Net's step is 90,112 FLOPs per row
    assert [x["flops"] for x in r0] == [360_448] * 4 and [x["flops"] for x in r1] == [720_896] * 4
    peak = two[0]["meter"]["peak_fp32"]
    for i in (1, 3):  # world_every=2: the 2nd and 4th rows
        window = [r0[i - 1], r0[i], r1[i - 1], r1[i]]
        for rows in (r0, r1):
            w = rows[i]
            assert (w["world_size"], w["world_steps"]) == (2, 2)
            assert w["world_flops"] == 2 * (360_448 + 720_896)  # 2 steps x the sum of the ranks
            # world MFU = the window's matrix time at the fp32 peak / its summed step time, over both ranks
            t_matrix = sum(x["flops"] for x in window) / peak
            assert w["world_mfu"] == pytest.approx(t_matrix / sum(x["step_s"] for x in window), rel=1e-9)
        assert r0[i]["world_mfu"] == r1[i]["world_mfu"]
    assert "world_flops" not in r0[0] and "world_flops" not in r0[2]


# --------------------------------------------------------------------------- pure


def test_outside_comm_note_names_collectives_no_record_holds():
    from dataclasses import dataclass

    from graphmfu import overlap

    @dataclass
    class M:
        name: str
        where: str
        launch_op: str = ""
        op: object = None

    ms = [M("c10d::allreduce_", "outside graphs"), M("c10d::allreduce_", "outside graphs"),
          M("ncclDevKernel_AllGather_RING_LL", "outside graphs", "c10d::_allgather_base_"),
          M("c10d::broadcast_", "inside graph"), M("aten::mm", "outside graphs")]
    note = overlap.outside_comm_note(ms)
    assert note.startswith("3 collective call(s) ran outside graphmfu's graphs (c10d::allreduce_ x2, "
                           "ncclDevKernel_AllGather_RING_LL x1)")
    # a collective the record holds (an eager recording that did not join) is not said to be missing
    assert overlap.outside_comm_note(ms, {"c10d::allreduce_", "c10d::_allgather_base_"}) is None
    assert overlap.outside_comm_note(ms[3:]) is None
