"""Planning a parallel layout on paper (graphmfu/parallel, ``graphmfu plan``): per-rank FLOPs, bus bytes, the
bubble and memory against hand counts; a DeepSeek-V3-shaped MoE's per-rank FLOPs against its active parameters
and its all-to-all bytes; one-line errors; assumptions that move the answer; the 405B shape in seconds."""
import time

import pytest
import torch
import torch.nn as nn

from graphmfu.cli import main
from graphmfu.errors import GraphMFUError
from graphmfu.parallel import Layout, bubble_fraction, bubble_ratio, fit, plan_parallel
from graphmfu.parallel.collectives import bus_bytes
from graphmfu.parallel.pipeline import in_flight

# tiny-llama (graphmfu/parallel/presets.py): vocab 1024, d 256, ffn 704, 8 layers, 8 heads of 32, 2 KV heads; T = 128
T, D, F, V, L = 128, 256, 704, 1024, 8
# one layer's forward matrix FLOPs at T = 128:
#   q, o: 2*128*256*256 = 16,777,216 each; k, v: 2*128*256*(2*32) = 4,194,304 each
#   gate, up, down: 2*128*256*704 = 46,137,344 each
#   attention, causal: QK^T and PV, 2 * pairs * 32 * 8 heads each = 4 * pairs * 256, pairs = 128*129/2 = 8,256
#                      -> 4 * 8,256 * 256 = 8,454,144
#   = 33,554,432 + 8,388,608 + 138,412,032 + 8,454,144 = 188,809,216; with the backward (2x) 566,427,648
LAYER = 3 * (2 * 16_777_216 + 2 * 4_194_304 + 3 * 46_137_344 + 8_454_144)
HEAD = 3 * 2 * T * D * V  # the head's GEMM forward + backward: 3 * 67,108,864 = 201,326,592
# one layer's parameters: q, o 256*256 = 65,536 each; k, v 256*64 = 16,384 each; gate/up/down 3*256*704 = 540,672;
# two RMSNorm weights 2*256 = 512 -> 705,024
LAYER_PARAMS = 2 * 65_536 + 2 * 16_384 + 540_672 + 512


@pytest.fixture(scope="module")
def tiny():
    # world 8 = tp 2 x pp 4 (dp 1), 4 microbatches of one 128-token sequence, sequence parallelism on (tp > 1)
    return plan_parallel("tiny-llama", world=8, tp=2, pp=4, seq=T, microbatches=4)


def test_per_rank_flops_under_tp_and_pp_equal_the_total_over_tp_times_pp(tiny):
    assert LAYER == 566_427_648 and HEAD == 201_326_592
    assert tiny.costs.total("flops", "dense") == LAYER
    p = tiny.best
    assert [s["layers"] for s in p.stages] == [2, 2, 2, 2]  # 8 layers over 4 stages
    m, tp, pp = 4, 2, 4
    # a middle stage: 2 layers x 566,427,648 x 4 microbatches / tp 2 = 2,265,710,592 = all layers' FLOPs / (tp*pp)
    assert p.stages[1]["flops"] == 2 * LAYER * m / tp == L * LAYER * m / (tp * pp) == 2_265_710_592
    # the last stage also runs the head: 2,265,710,592 + 201,326,592 * 4 / 2 = 2,668,363,776
    assert p.stages[-1]["flops"] == 2_265_710_592 + HEAD * m / tp == 2_668_363_776
    # every rank of a TP group does 1/tp: the stages sum to the step's FLOPs / tp (dp = 1)
    assert sum(s["flops"] for s in p.stages) == (L * LAYER + HEAD) * m / tp == p.flops / tp
    assert p.stage == 3  # the head's stage paces the pipeline


def test_bus_bytes_follow_nccl_tests():
    # all-reduce 2(n-1)/n, all-gather / reduce-scatter / all-to-all (n-1)/n, send 1 (n = 8, S = 800 bytes)
    assert bus_bytes("all_reduce", 800, 8) == 1400  # 2 * 7/8 * 800
    assert bus_bytes("all_gather", 800, 8) == bus_bytes("reduce_scatter", 800, 8) == 700  # 7/8 * 800
    assert bus_bytes("all_to_all", 800, 8) == 700
    assert bus_bytes("send", 800, 2) == 800
    from graphmfu.rules.collectives import bus_bytes as measured  # the rule measured collectives use
    for kind in ("all_reduce", "all_gather", "reduce_scatter", "all_to_all"):
        assert bus_bytes(kind, 4096, 4) == measured(kind, 4096, 4)


def _comm(p, dim, kind, what=""):
    rows = [c for c in p.comms if c["dim"] == dim and c["kind"] == kind and c["what"].startswith(what)]
    assert len(rows) == 1, (dim, kind, p.comms)
    return rows[0]


def test_tp_and_pp_collectives_by_hand(tiny):
    p = tiny.best  # paced by the last stage: its 2 layers and the head
    # TP with sequence parallelism: activations S = T * d * 2 bytes = 128 * 256 * 2 = 65,536; bus (n-1)/n = 32,768
    ag = _comm(p, "tp", "all_gather", "layer")
    assert ag["size"] == 65_536 and ag["n"] == 2 and ag["link"] == "nvlink4"
    # 6 all-gathers per layer and microbatch (2 fw, 2 bw, 2 weight-gradient re-gathers) x 2 layers x 4 microbatches
    assert ag["per_step"] == 48 and ag["bus_bytes_step"] == 48 * 32_768
    rs = _comm(p, "tp", "reduce_scatter", "layer")
    assert rs["per_step"] == 4 * 2 * 4 and rs["bus_bytes_step"] == 32 * 32_768
    # PP: the SP-sharded activations, 65,536 / 2 = 32,768 bytes, fw and bw at each chunk boundary: 2 x 4 microbatches
    send = _comm(p, "pp", "send")
    assert send["size"] == 32_768 and send["per_step"] == 8 and send["bus_bytes_step"] == 8 * 32_768


def test_dp_fsdp_hsdp_and_cp_collectives_by_hand():
    # the pacing (last) stage holds 2 layers, the head 1024 x 256 = 262,144 and the final norm 256, over tp 2:
    # (2 * 705,024 + 262,144 + 256) / 2 = 836,224 parameters per rank
    stage_params = (2 * LAYER_PARAMS + V * D + D) / 2
    assert stage_params == 836_224
    fsdp = plan_parallel("tiny-llama", world=16, tp=2, pp=4, dp=2, seq=T, microbatches=4).best
    assert fsdp.stage == 3
    ag, rs = _comm(fsdp, "dp", "all_gather"), _comm(fsdp, "dp", "reduce_scatter")
    # bf16 parameters: S = 836,224 * 2 = 1,672,448, bus (2-1)/2 of it; fp32 gradients: S = 3,344,896, bus half
    assert (ag["size"], ag["bus_bytes_step"]) == (1_672_448, 836_224)
    assert (rs["size"], rs["bus_bytes_step"]) == (3_344_896, 1_672_448)
    assert ag["link"] == "ib-ndr-400g"  # dp neighbours are tp*cp*pp = 8 ranks apart: another node
    ddp = plan_parallel("tiny-llama", world=16, tp=2, pp=4, dp=2, fsdp=1, seq=T, microbatches=4).best
    ar = _comm(ddp, "dp", "all_reduce")
    assert (ar["size"], ar["bus_bytes_step"]) == (3_344_896, 3_344_896)  # 2 * (2-1)/2 * S
    hsdp = plan_parallel("tiny-llama", world=32, tp=2, pp=4, dp=4, fsdp=2, seq=T, microbatches=4).best
    across = _comm(hsdp, "dp", "all_reduce")  # the shard (S / 2 = 1,672,448) all-reduced over 2 replicas
    assert (across["n"], across["size"], across["bus_bytes_step"]) == (2, 1_672_448, 1_672_448)
    cp = plan_parallel("tiny-llama", world=16, tp=2, cp=2, pp=4, seq=T, microbatches=4).best
    # K and V of the whole sequence: 128 tokens x (2 KV heads / tp 2 = 1) x (32 + 32) x 2 bytes = 16,384; bus 8,192
    kv = _comm(cp, "cp", "all_gather")
    assert (kv["size"], kv["per_step"], kv["bus_bytes_step"]) == (16_384, 2 * 2 * 4, 16 * 8_192)
    assert _comm(cp, "cp", "reduce_scatter")["per_step"] == 2 * 4  # dK, dV once per layer and microbatch


def test_bubble_formulas_and_the_predicted_bubble(tiny):
    assert bubble_fraction(4, 8) == 3 / 11 and bubble_ratio(4, 8) == 3 / 8  # 1F1B: (p-1)/(m+p-1), (p-1)/m
    assert bubble_fraction(4, 8, 2) == 3 / 19 and bubble_ratio(4, 8, 2) == 3 / 16  # interleaved v = 2
    assert bubble_fraction(16, 32, 8) == 15 / 271  # Llama 3's 8K layout: (16-1)/(8*32 + 16-1)
    p = tiny.best
    t_mb = p.stages[p.stage]["t_microbatch_s"]
    assert p.breakdown["bubble"] == pytest.approx(3 * t_mb)  # (p-1)/m of 4 microbatch-times = 3 microbatch-times
    v2 = tiny.replan()  # same costs
    inter = plan_parallel("tiny-llama", world=8, tp=2, pp=4, seq=T, microbatches=4, virtual_stages=2).best
    assert inter.breakdown["bubble"] == pytest.approx(inter.stages[inter.stage]["t_microbatch_s"] * 3 / 2)
    assert inter.breakdown["bubble"] < p.breakdown["bubble"] and v2.best.step_s == p.step_s
    # activations in flight: 1F1B min(m, p - rank); interleaved first stage p + (p-1)/v
    assert in_flight(4, 8) == 4 and in_flight(4, 2) == 2 and in_flight(4, 8, 1, 3) == 1
    assert in_flight(16, 32, 8) == 16 + 15 / 8


class Block(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.up, self.down = nn.Linear(d, 4 * d, bias=False), nn.Linear(4 * d, d, bias=False)

    def forward(self, x):
        return x + self.down(torch.relu(self.up(x)))


class Toy(nn.Module):
    def __init__(self, d=64, n=4):
        super().__init__()
        self.layers = nn.ModuleList(Block(d) for _ in range(n))

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        return x


def test_memory_by_hand():
    # 4 blocks of d 64 (fp32), input [2, 16, 64]: pp 2 stages of 2 blocks, 4 microbatches
    plan = plan_parallel(Toy(), torch.randn(2, 16, 64), world=2, pp=2, microbatches=4)
    # autograd keeps per block: up's input [2,16,64] fp32 = 8,192 B and relu's output [2,16,256] fp32 = 32,768 B
    # (down's input is that same tensor: kept once) -> 40,960 bytes
    assert set(plan.costs.saved.values()) == {40_960}
    first, last = plan.best.memory["stages"]
    # 2 blocks x 2 x 64 x 256 = 65,536 parameters per rank: bf16 131,072 B, fp32 gradients 262,144 B, Adam + fp32
    # master 12 B each = 786,432 B (one replica: nothing sharded)
    assert (first["params"], first["grads"], first["optimizer"]) == (131_072, 262_144, 786_432)
    # 1F1B: the first stage holds min(m, p) = 2 microbatches of its 2 blocks, the last 1
    assert first["activations_no_recompute"] == 40_960 * 2 * 2 == 163_840
    assert last["activations_no_recompute"] == 40_960 * 2 * 1
    # full recompute keeps each block's input (32 tokens x 64 x 4 B = 8,192) in flight, plus one block's activations
    assert first["activations_full_recompute"] == 8_192 * 2 * 2 + 40_960
    assert first["total"] == 131_072 + 262_144 + 786_432 + 163_840
    tl = plan_parallel("tiny-llama", world=8, tp=2, pp=4, seq=T, microbatches=4).best.memory["stages"][0]
    # tiny-llama's first stage: (2 layers x 705,024 + the embedding 1024 x 256) / tp 2 = 836,096 params, bf16
    assert tl["params"] == (2 * LAYER_PARAMS + V * D) / 2 * 2 == 1_672_192


def test_deepseek_v3_shaped_moe_per_rank_flops_and_all_to_all_by_hand():
    # DeepSeek-V3 (671B, 37B active): world 64 = ep 64 (= dp 64), one 256-token sequence per rank and step
    p = plan_parallel("deepseek-v3", world=64, ep=64, seq=256, microbatches=1).best
    # active matrix parameters, by hand:
    #   MLA attention per layer: q_a 7168*1536 = 11,010,048; q_b 1536*(128*192) = 37,748,736;
    #     kv_a 7168*(512+64) = 4,128,768; kv_b 512*(128*(128+128)) = 16,777,216; o 128*128*7168 = 117,440,512
    #     -> 187,105,280
    #   dense MLP (3 layers): 3*7168*18432 = 396,361,728
    #   MoE (58 layers): router 256*7168 = 1,835,008; shared expert 3*7168*2048 = 44,040,192;
    #     8 routed of 3*7168*2048 = 352,321,536 -> 398,196,736
    #   head 7168*129280 = 926,679,040
    attn, dense, moe, head = 187_105_280, 396_361_728, 398_196_736, 926_679_040
    active = 3 * (attn + dense) + 58 * (attn + moe) + head
    assert active == 36_624_596_992  # + the embedding's 0.93B and the norms = 37.6B active
    # per-rank GEMM FLOPs = 6 x tokens x active matrix parameters (forward 2, backward 4) = 56,255,380,979,712
    assert p.per_rank["gemm_flops"] == 6 * 256 * active == 56_255_380_979_712
    # attention, causal: 2 * pairs * 128 heads * (192 + 128) forward, pairs = 256*257/2 = 32,896; x3 x 61 layers
    assert p.per_rank["attention_flops"] == 3 * 61 * 2 * 32_896 * 128 * (192 + 128) == 493_155_778_560
    a2a = _comm(p, "ep", "all_to_all")
    # per direction: tokens x top_k x hidden x 2 bytes = 256 * 8 * 7168 * 2 = 29,360,128; bus (64-1)/64 of it
    assert a2a["size"] == 256 * 8 * 7168 * 2 == 29_360_128
    assert a2a["bus_bytes_step"] == 4 * 58 * 29_360_128 * 63 / 64  # dispatch + combine, fw + bw, 58 MoE layers


def test_a_bad_layout_is_one_clear_line(capsys):
    with pytest.raises(GraphMFUError) as e:
        plan_parallel("tiny-llama", world=8, tp=2, pp=2, dp=3, seq=T)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("graphmfu") and "2*1*2*3 = 12 != world 8" in msg
    with pytest.raises(GraphMFUError, match="tp=3 does not divide the 8 attention heads"):
        plan_parallel("tiny-llama", world=3, tp=3, seq=192)
    with pytest.raises(GraphMFUError, match="ep=2 but tiny-llama has no routed experts"):
        plan_parallel("tiny-llama", world=2, ep=2, seq=T)
    with pytest.raises(GraphMFUError, match="unknown model preset"):
        plan_parallel("llama9", world=8, seq=T)
    with pytest.raises(GraphMFUError, match="recompute"):
        Layout(8, recompute="some").validate()
    assert main(["plan", "--model", "tiny-llama", "--world", "8", "--tp", "2", "--pp", "2", "--dp", "3",
                 "--seq", "128"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "!= world 8" in err


def test_changing_an_assumption_changes_the_answer():
    big = plan_parallel("llama3-8b", world=16, tp=8, pp=2, seq=2048, microbatches=4)  # GEMMs large enough to be
    base = big.best  # compute-bound (tiny-llama's are memory-bound on an H100)
    slower = big.replan(gemm=0.4).best  # GEMMs at 40% of peak instead of 80.5% (calibrated)
    assert slower.step_s > base.step_s and slower.mfu < base.mfu
    assert big.replan(gemm=0.4).assumptions.status("gemm") == "given"
    hidden = big.replan(tp_overlap=1.0).best  # TP collectives fully under compute
    assert hidden.breakdown["tp"] == 0 < base.breakdown["tp"] and hidden.step_s < base.step_s
    assert big.replan(attention=0.1).best.breakdown["attention"] > base.breakdown["attention"]
    assert big.replan(nvlink=100.0).best.breakdown["tp"] > base.breakdown["tp"]  # a slower intra-node link
    dp = plan_parallel("tiny-llama", world=16, tp=2, pp=4, dp=2, seq=T, microbatches=4)
    assert dp.replan(internode=10.0).best.breakdown["dp"] > dp.best.breakdown["dp"]  # a 10 GB/s network
    assert dp.replan(internode="ib-hdr-200g").best.step_s > dp.best.step_s
    value, a = fit(big.costs, big.device, big.assumptions, base.layout, base.mfu_dense / 2)
    assert 0.05 < value < big.assumptions.gemm and a.status("gemm") == "calibrated"
    refit = big.replan(gemm=a.items["gemm"]).best
    assert refit.mfu_dense == pytest.approx(base.mfu_dense / 2, rel=1e-6)


def test_search_ranks_layouts_that_fit_first_and_the_cli_prints_the_table(capsys):
    plan = plan_parallel("tiny-llama", world=8, seq=T, microbatches=8, search=True)
    assert len(plan.rows) > 5
    fits = [r["fits"] for r in plan.rows]
    assert fits == sorted(fits, key=lambda f: f is False)
    ok = [r for r in plan.rows if r["fits"] is not False]
    assert [r["tokens_per_s"] for r in ok] == sorted((r["tokens_per_s"] for r in ok), reverse=True)
    # the global batch is kept: the given layout's dp 8 x 8 microbatches = 64 sequences of 128 tokens
    assert all(r["tokens_per_step"] == 64 * T for r in plan.rows)
    assert main(["plan", "--model", "tiny-llama", "--world", "8", "--tp", "2", "--pp", "2", "--seq", "128",
                 "--set", "gemm=0.7", "--internode", "roce-400g"]) == 0
    out = capsys.readouterr().out
    for words in ("layouts, ranked", "TP2 CP1 PP2 DP2", "gemm = 0.7 [given]", "roce-400g", "collectives per rank",
                  "memory per rank", "bubble"):
        assert words in out, words


def test_llama3_405b_plans_in_seconds():
    t0 = time.perf_counter()
    plan = plan_parallel("llama3-405b", world=8192, tp=8, pp=16, dp=64, seq=8192, microbatches=32,
                         virtual_stages=8, balance_ends=True, links="roce-400g")
    assert time.perf_counter() - t0 <= 10
    p = plan.best
    assert [s["layers"] for s in p.stages] == [7] + [8] * 14 + [7]  # 126 layers + embedding + head in 16 x 8 slots
    assert 0.2 < p.mfu_dense < 0.7 and p.memory["params"] > 0
    # 16M tokens per step: 64 replicas x 32 microbatches x 8192
    assert p.layout.tokens == 64 * 32 * 8192
