"""Collectives, per-rank records and the gathered world report, on 2 CPU ranks over gloo.

One spawn (2 processes, file:// rendezvous) runs every multi-rank scenario; each rank writes what it
saw to JSON and the tests below check it against hand counts:

* a compiled model with a functional all_reduce inside its graph (graphmfu.backend), profiled:
  rank 0's gathered report holds both ranks, world FLOPs = 2 x rank FLOPs, the all_reduce's bus bytes
  = 2(n-1)/n * S by hand;
* the same records gathered over a second process group, each rank claiming its own host (two
  "nodes" on one machine): the link is inter-node, priced at the given inter-node bandwidth;
* FSDP2 (fully_shard over gloo), blocks compiled before sharding as torchtitan does: per-rank
  training FLOPs = the hand count; the eager recording of the same step sees FSDP2's all-gathers and
  reduce-scatters with bus bytes = parameter bytes x (n-1)/n.

Pure parts (bus-byte factors for n > 2, exposed communication from intervals) are tested without
processes.
"""
from __future__ import annotations

import dataclasses
import json
import os
import sys
import tempfile

import pytest
import torch
import torch.nn as nn

from bench.parallel_cpu import D as NET_D, Net  # two blocks of Linear(32, 128) + Linear(128, 32), as in the DDP/HSDP tests

dist = torch.distributed
pytestmark = pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()),
                                reason="needs torch.distributed with gloo")

WORLD = 2
D, T = 32, 4  # FSDP2 model width and tokens
assert NET_D == D


class AllReduceNet(nn.Module):
    """y = relu(all_reduce(x @ W^T)): one matmul and one functional collective in one graph."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(16, 4, bias=False)

    def forward(self, x):
        from torch.distributed import _functional_collectives as funcol

        return torch.relu(funcol.all_reduce(self.lin(x), "sum", dist.group.WORLD))


def _worker(rank, world, init_file, out_dir):
    os.environ.update(LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world))  # as torchrun sets them
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    import graphmfu
    from graphmfu import eager
    from graphmfu.capture import Backend
    from graphmfu.gather import gather
    from graphmfu.registry import Registry
    from graphmfu.world import WorldReport

    torch.manual_seed(0)
    res = {}
    try:
        # 1. a functional all_reduce inside a compiled graph
        reg = Registry()
        model = torch.compile(AllReduceNet(), backend=Backend(registry=reg))
        x = torch.randn(8, 16)
        with torch.no_grad():
            model(x)
            with graphmfu.ProfileSession(registry=reg) as p, graphmfu.stage("step"):
                model(x)
        rep = p.report(device="h100-sxm")
        if not rep.record.timing.exposed_comm:  # until ProfileSession.record() runs overlap.exposed (requested)
            from graphmfu import overlap

            rep.record.timing.exposed_comm = overlap.exposed([(t[0], t[1]) for t in p._traces])
        res["rank_flops"] = rep.totals["flops"]
        res["record"] = {"rank": rep.record.rank, "world_size": rep.record.world_size,
                         "local_rank": rep.record.local_rank, "device": rep.record.device}
        res["unknown"] = rep.coverage()["nodes_unknown"]
        w = gather(rep)
        res["gather_none"] = w is None
        if w is not None:
            path = os.path.join(out_dir, "world.json")
            w.save(path)
            back = WorldReport.load(path)
            res["world"] = {"ranks": [r["rank"] for r in w.ranks], "totals": w.totals,
                            "collectives": w.collectives, "stages": w.stages,
                            "exposed": [r["exposed_comm"] for r in w.ranks],
                            "roundtrip": back.totals == w.totals and back.collectives == w.collectives,
                            "text": w.table()}
        # 2. two process groups standing in for two nodes: each rank its own host, gathered on rank 1
        two = dataclasses.replace(rep.record, host=f"node{rank}", local_world_size=1)
        g2 = dist.new_group([0, 1], backend="gloo")
        w2 = gather(graphmfu.Report(two, rep.device), dst=1, group=g2)
        res["two_nodes_none"] = w2 is None
        from graphmfu.cost import TensorSpec, ensure_builtin_rules

        ensure_builtin_rules()
        sub = sys.modules["graphmfu.rules.collectives"].comm_of(
            torch.ops._c10d_functional.all_reduce.default, [TensorSpec((8, 4), torch.float32), "sum", g2.group_name])
        res["subgroup_comm"] = dataclasses.asdict(sub)
        if w2 is not None:
            w2 = w2.on(internode_gbps=25)
            res["two_nodes"] = {"hosts": w2.totals["hosts"], "collectives": w2.collectives}
        # 3. FSDP2, blocks compiled before sharding (torchtitan's order), one training step profiled
        from torch.distributed.fsdp import fully_shard

        reg3 = Registry()
        net = Net()
        for i, blk in enumerate(net.layers):
            net.layers.register_module(str(i), torch.compile(blk, backend=Backend(registry=reg3), fullgraph=True))
        for blk in net.layers:
            fully_shard(blk)
        fully_shard(net)
        xs = torch.randn(T, D)
        net(xs).sum().backward()
        with graphmfu.ProfileSession(registry=reg3) as p3, graphmfu.stage("train"):
            net(xs).sum().backward()
        rep3 = p3.report(device="h100-sxm")
        res["fsdp_graphs"] = len(rep3.record.graphs)
        res["fsdp_stage_flops"] = {s["name"]: s["flops"] for s in rep3.stages}
        # the same step recorded eagerly (uncompiled FSDP2 model): its collectives
        torch.manual_seed(0)
        eag = Net()
        for blk in eag.layers:
            fully_shard(blk)
        fully_shard(eag)
        eag(xs).sum().backward()
        reg4 = Registry()
        g = eager.record(eag, lambda: eag(xs).sum().backward(), "train", reg4, "cpu")
        res["eager_failures"] = reg4.failures
        res["eager_flops"] = graphmfu.Report(reg4.record(), rep.device).totals["flops"]
        res["eager_comm"] = [dataclasses.asdict(n.comm) for n in g.nodes if n.comm is not None]
        res["eager_unknown"] = sorted({n.op for n in g.nodes if n.cost is None})
    except Exception as e:  # noqa: BLE001 - reported to the test
        import traceback

        res["error"] = f"{type(e).__name__}: {e}\n{traceback.format_exc()}"
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump(res, f, default=str)
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def ranks():
    import torch.multiprocessing as mp

    out = tempfile.mkdtemp(prefix="graphmfu-dist-")
    init = os.path.join(out, "init")
    mp.spawn(_worker, args=(WORLD, init, out), nprocs=WORLD, join=True)
    res = []
    for r in range(WORLD):
        with open(os.path.join(out, f"rank{r}.json")) as f:
            res.append(json.load(f))
    for r in res:
        assert "error" not in r, r["error"]
    return res


# --------------------------------------------------------------------------- multi-rank


def test_records_carry_rank_and_local_device(ranks):
    for r, res in enumerate(ranks):
        assert res["record"] == {"rank": r, "world_size": WORLD, "local_rank": r, "device": "cpu"}
        assert res["unknown"] == 0  # the collective and its wait have rules


def test_gather_collects_every_rank_on_dst_only(ranks):
    assert [r["gather_none"] for r in ranks] == [False, True]
    w = ranks[0]["world"]
    assert w["ranks"] == [0, 1]
    assert w["roundtrip"]


def test_world_flops_are_the_sum_of_rank_flops(ranks):
    # x[8,16] @ W^T[16,4]: 2*8*16*4 = 1024 matrix FLOPs per rank; two ranks: 2048
    assert [r["rank_flops"] for r in ranks] == [1024, 1024]
    assert ranks[0]["world"]["totals"]["flops"] == 2 * 1024


def test_all_reduce_bus_bytes_by_hand(ranks):
    (c,) = ranks[0]["world"]["collectives"]
    # S = the [8,4] fp32 buffer = 8*4*4 = 128 B; all_reduce bus bytes 2(n-1)/n * S = 2*1/2*128 = 128
    assert (c["kind"], c["group_size"], c["size"], c["comm_bytes"], c["count"]) == ("all_reduce", 2, 128, 128, 1)
    # one host, an H100's NVLink: 450 GB/s per direction; t_min = 128 / 450e9
    assert (c["link"], c["link_gbps"]) == ("nvlink", 450.0)
    assert c["t_min_s"] == pytest.approx(128 / 450e9, rel=1e-12)
    assert ranks[0]["world"]["totals"]["comm_bytes"] == 2 * 128  # both ranks' bus bytes


def test_world_stage_rows(ranks):
    (s,) = ranks[0]["world"]["stages"]
    assert s["name"] == "step" and s["ranks"] == 2
    assert s["span_max_s"] >= s["span_min_s"] > 0 and s["straggler"] in (0, 1)
    assert 0 <= s["spread"] <= 1
    for rows in ranks[0]["world"]["exposed"]:
        assert {r["stage"] for r in rows} == {None, "step"}
        for r in rows:
            assert r["compute_s"] > 0 and 0 <= r["exposed_s"] <= r["comm_s"]


def test_cpu_collective_events_are_measured(ranks):
    for rows in ranks[0]["world"]["exposed"]:
        whole = next(r for r in rows if r["stage"] is None)
        assert whole["comm_kernels"] >= 1 and whole["comm_s"] > 0


def test_world_stage_flops_include_the_matmul_before_the_collective(ranks):
    (s,) = ranks[0]["world"]["stages"]
    assert s["flops"] == 2 * 1024  # each rank's 1024 mm FLOPs, in the profiled stage


def test_two_process_groups_as_two_nodes(ranks):
    assert [r["two_nodes_none"] for r in ranks] == [True, False]
    t = ranks[1]["two_nodes"]
    assert t["hosts"] == 2
    (c,) = t["collectives"]
    # the group spans both "hosts": inter-node link at the 25 GB/s given; t_min = 128 B / 25e9 B/s
    assert (c["link"], c["link_gbps"]) == ("internode", 25.0)
    assert c["t_min_s"] == pytest.approx(128 / 25e9, rel=1e-12)


def test_subgroup_names_resolve(ranks):
    for r in ranks:
        c = r["subgroup_comm"]
        # [8,4] fp32 = 128 B over the 2-rank subgroup: bus 2*1/2*128 = 128
        assert (c["group_size"], c["bytes"], c["ranks"]) == (2, 128, [0, 1])


def test_fsdp2_compiled_blocks_flops_by_hand(ranks):
    # per block: forward a (T x D x 4D) + b (T x 4D x D) = 2*4*32*128 * 2 = 65536; two blocks 131072.
    # backward: block 1 (its input needs grad) dW + dX for both = 2 * 65536 = 131072; block 0 (input x
    # needs no grad): dW_a, dW_b and dX_b only = 3 * 32768 = 98304.  Total 131072 + 131072 + 98304 = 360448
    for r in ranks:
        assert r["fsdp_graphs"] > 0, "FSDP2 with per-block compile produced no graph"
        assert r["fsdp_stage_flops"]["train"] == 360448
        assert r["eager_flops"] == 360448  # the eager recording of the same step counts the same work


def test_fsdp2_collectives_bus_bytes_by_hand(ranks):
    for r in ranks:
        assert r["eager_failures"] == []
        comm = r["eager_comm"]
        gathers = [c for c in comm if c["kind"] == "all_gather"]
        scatters = [c for c in comm if c["kind"] == "reduce_scatter"]
        # one block's parameters: (32*128 + 128*32) fp32 = 8192 * 4 B = 32768 B, gathered whole (S) per
        # all-gather and reduce-scattered whole per block; bus bytes = S * (n-1)/n = 16384
        assert {(c["size"], c["bytes"], c["group_size"]) for c in gathers + scatters} == {(32768, 16384, 2)}
        # all-gathers: 2 blocks in forward, re-gathered in backward (resharded after forward) = 4;
        # reduce-scatters: one per block = 2
        assert (len(gathers), len(scatters)) == (4, 2)
        assert "fsdp.all_gather_copy_in.default" not in r["eager_unknown"]


# --------------------------------------------------------------------------- pure


def _collectives():
    from graphmfu.cost import ensure_builtin_rules

    ensure_builtin_rules()
    return sys.modules["graphmfu.rules.collectives"]


@pytest.mark.parametrize("kind,size,n,expected", [
    ("all_reduce", 96, 3, 128),  # 2*(3-1)/3 * 96 = 128
    ("all_reduce", 100, 4, 150),  # 2*3/4 * 100 = 150
    ("all_reduce", 64, 8, 112),  # 2*7/8 * 64 = 112
    ("all_gather", 96, 3, 64),  # (3-1)/3 * 96 = 64
    ("reduce_scatter", 800, 8, 700),  # 7/8 * 800 = 700
    ("all_to_all", 100, 4, 75),  # 3/4 * 100 = 75
    ("broadcast", 100, 4, 100),  # factor 1
    ("all_reduce", 10, 3, 40 / 3),  # 2*2/3 * 10: not an integer, kept exact as a float
])
def test_bus_bytes_factors(kind, size, n, expected):
    assert _collectives().bus_bytes(kind, size, n) == pytest.approx(expected, rel=1e-15)


def test_comm_from_functional_args_without_a_process_group():
    from graphmfu.cost import TensorSpec

    c = _collectives()
    # all_gather_into_tensor(input [4, 8] bf16, group_size=4, "g"): S = 4 * 64 B = 256; bus = 3/4 * 256 = 192
    ag = c.comm_of(torch.ops._c10d_functional.all_gather_into_tensor.default,
                   [TensorSpec((4, 8), torch.bfloat16), 4, "g"])
    assert (ag.kind, ag.size, ag.bytes, ag.group_size) == ("all_gather", 256, 192, 4)
    # reduce_scatter_tensor(input [8, 8] fp32, "sum", 4, "g"): S = 256 B; bus = 3/4 * 256 = 192
    rs = c.comm_of(torch.ops._c10d_functional.reduce_scatter_tensor.default,
                   [TensorSpec((8, 8), torch.float32), "sum", 4, "g"])
    assert (rs.kind, rs.size, rs.bytes) == ("reduce_scatter", 256, 192)
    # all_to_all_single with 4 splits: n = 4; S = 16*4 = 64 B; bus = 3/4 * 64 = 48
    a2a = c.comm_of(torch.ops._c10d_functional.all_to_all_single.default,
                    [TensorSpec((16,), torch.float32), [4, 4, 4, 4], [4, 4, 4, 4], "g"])
    assert (a2a.kind, a2a.bytes, a2a.group_size) == ("all_to_all", 48, 4)
    # all_reduce on a group name nobody can resolve here: bytes unknown, never silently zero
    ar = c.comm_of(torch.ops._c10d_functional.all_reduce.default, [TensorSpec((4,), torch.float32), "sum", "nope"])
    assert (ar.kind, ar.size, ar.bytes, ar.group_size) == ("all_reduce", 16, None, None)


def test_every_functional_collective_has_a_rule():
    from graphmfu.cost import REGISTRY

    c = _collectives()
    for ns in ("_c10d_functional", "_c10d_functional_autograd"):
        for name in c.FUNCTIONAL + ["wait_tensor"]:
            op = getattr(getattr(torch.ops, ns), name, None) if hasattr(getattr(torch.ops, ns), name) else None
            if op is not None:
                assert REGISTRY.lookup(op) is not None, f"{ns}.{name}"
    assert REGISTRY.info(torch.ops._c10d_functional.wait_tensor.default).no_kernel


@dataclasses.dataclass
class _M:  # a measured kernel as overlap.exposed reads it (join.Measured's fields)
    name: str
    start_us: float
    end_us: float
    launch_start_us: float = 0.0
    stage: str | None = None


def test_exposed_comm_from_intervals_by_hand():
    from graphmfu import overlap

    ks = [_M("ncclDevKernel_AllGather_RING_LL", 0, 10, stage="fwd"),  # comm 0-10
          _M("gemm", 2, 6, stage="fwd"),  # compute 2-6 overlaps it: exposed 0-2 and 6-10 = 6
          _M("ncclDevKernel_ReduceScatter", 20, 30, stage="bwd"),  # comm 20-30
          _M("gemm", 15, 35, stage="bwd"),  # fully covered: exposed 0
          _M("triton_poi", 40, 45, stage="bwd/opt")]  # nested stage: compute only
    rows = {r["stage"]: r for r in overlap.exposed([(ks, [{"name": "fwd"}, {"name": "bwd"}, {"name": "bwd/opt"}])])}
    assert rows["fwd"]["comm_s"] == pytest.approx(10e-6) and rows["fwd"]["exposed_s"] == pytest.approx(6e-6)
    assert rows["fwd"]["compute_s"] == pytest.approx(4e-6)
    assert rows["bwd"]["comm_s"] == pytest.approx(10e-6) and rows["bwd"]["exposed_s"] == 0
    assert rows["bwd"]["compute_s"] == pytest.approx(25e-6)  # 15-35 and 40-45 (nested stage rolls up)
    assert rows[None]["exposed_s"] == pytest.approx(6e-6) and rows["bwd/opt"]["comm_s"] == 0
    # the stage comes from the launch when a kernel carries none (join.stage_of's rule)
    late = [_M("nccl_x", 0, 4, launch_start_us=5)]
    (_, s) = overlap.exposed([(late, [{"name": "s", "start_us": 0, "end_us": 10}])])
    assert s["stage"] == "s" and s["exposed_s"] == pytest.approx(4e-6)


def test_links_from_placement():
    from graphmfu.hardware.links import links_for, same_host

    h200 = links_for("h200")
    assert (h200.nvlink_gbps, h200.pcie_gbps, h200.internode_gbps) == (450.0, 64.0, 50.0)
    assert h200.link(True) == "nvlink" and h200.link(False) == "internode"
    assert links_for("l4").link(True) == "pcie"  # no NVLink on an L4
    assert links_for("h200", internode_gbps=12.5).internode_gbps == 12.5
    assert same_host([0, 1], {0: "a", 1: "a"}) and not same_host([0, 1], {0: "a", 1: "b"})
    assert same_host([4, 7], None, local_world_size=4) and not same_host([3, 4], None, local_world_size=4)


def test_comm_survives_the_record_json_round_trip():
    from graphmfu.record import Comm, GraphRecord, OpRecord, Record

    op = OpRecord(0, "forward", 0, "ar", "_c10d_functional.all_reduce.default", "", [], [], None,
                  comm=Comm("all_reduce", 128, 128, 2, "0", [0, 1]))
    rec = Record([GraphRecord(0, "k:0", "forward", None, "cpu", [op], {}, "backend")], device="cuda:1")
    back = Record.from_dict(json.loads(json.dumps(rec.to_dict())))
    assert back == rec
    old = rec.to_dict()
    for key in ("local_rank", "local_world_size", "device"):
        old.pop(key)
    del old["graphs"][0]["nodes"][0]["comm"]  # a record written before collectives: still loads
    assert Record.from_dict(old).graphs[0].nodes[0].comm is None


def test_fsdp_eager_note_only_when_fsdp_ran_without_graphs():
    from graphmfu import overlap

    names = ["FSDP::pre_forward (layers.0)", "aten::mm", "nccl:_all_gather_base"]
    assert overlap.fsdp_eager_note(names, graph_calls=0) == overlap.FSDP_EAGER_NOTE
    assert overlap.fsdp_eager_note(names, graph_calls=3) is None  # graphs ran: nothing to say
    assert overlap.fsdp_eager_note(["aten::mm"], graph_calls=0) is None  # no FSDP: the usual message
