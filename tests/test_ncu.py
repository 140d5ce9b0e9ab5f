"""graphmfu.ncu: an 'ncu --csv --page raw' export (tests/data/ncu_raw_small.csv: the column names and
units ncu prints, bench/ncu_validate.py's metrics) joined to a timed record, checked by hand."""
import pytest

import graphmfu
from graphmfu import ncu
from graphmfu.cost import Cost
from graphmfu.errors import GraphMFUError
from graphmfu.join import Measured
from graphmfu.record import GraphRecord, KernelRecord, Record, Timing

from pathlib import Path

CSV = Path(__file__).parent / "data" / "ncu_raw_small.csv"
DEV = graphmfu.DeviceSpec(name="test-gpu", peaks_tflops={"bf16": 1000.0}, dram_gbps=5000.0, source="test")
PREFILL_MM = 2 * 512 * 4096 * 4096  # x[512, 4096] @ W[4096, 4096]: 17,179,869,184
DECODE_MM = 2 * 1 * 4096 * 4096  # x[1, 4096] @ W: 33,554,432
SPLITK = "void cublasLt::splitKreduce_kernel<32, 16, int, float, __nv_bfloat16, float, false>(cublasLt::cublasSplitKParams<float>)"


def _k(g, i, name, cost, module, extern=False):
    return KernelRecord(graph=g, index=i, name=name, site=name, extern=extern, nodes=[f"n{i}"], module=module,
                        phase="inference", cost=cost)


def _record():
    g0 = [_k(0, 0, "triton_red_fused_embedding_0", Cost.of(vector={"fp32": 1000}, read=4_000_000, written=2_000_000), ""),
          _k(0, 1, "extern_kernels.mm", Cost.of(matrix={"bf16": PREFILL_MM}, read=512 * 4096 * 2 + 4096 * 4096 * 2,
                                                 written=512 * 4096 * 2), "layers.0.attn.q", True),
          _k(0, 2, "triton_poi_fused_silu_1", Cost.of(vector={"fp32": 5000}, read=8_000_000, written=4_000_000), "mlp")]
    g1 = [_k(1, 0, "triton_red_fused_embedding_0", Cost.of(vector={"fp32": 10}, read=8192, written=8192), ""),
          _k(1, 1, "extern_kernels.mm", Cost.of(matrix={"bf16": DECODE_MM}, read=8192 + 4096 * 4096 * 2, written=8192),
             "layers.0.attn.q", True)]
    graphs = [GraphRecord(id=i, key=f"u:{i}", phase="inference", aot_id=i, device="cuda", nodes=[], hints={},
                          source="backend", kernels=ks) for i, ks in enumerate((g0, g1))]

    def row(g, k, stage, names, launches):
        return {"graph": g, "kernel": k, "stage": stage, "sizes": None, "calls": 1, "launches": launches,
                "time_s": 1e-5, "gpu_kernels": names, "joined_by": ["name"]}

    launches = [row(0, 0, "BENCHMARK/prefill", ["triton_red_fused_embedding_0"], 1),
                row(0, 1, "BENCHMARK/prefill", ["nvjet_tst_256x128_64x4_1x2_h_bz_coopA_NNT"], 1),
                row(0, 2, "BENCHMARK/prefill", ["triton_poi_fused_silu_1"], 1),
                row(1, 0, "BENCHMARK/decode", ["triton_red_fused_embedding_0"], 1),
                # a memset (ncu does not profile it), the split-K GEMM and its reduce: 3 launches, 2 ncu kernels
                row(1, 1, "BENCHMARK/decode", ["Memset (Device)", "nvjet_tst_64x8_64x16_4x1_v_bz_splitK_TNT", SPLITK], 3)]
    return Record(graphs=graphs, timing=Timing(cuda=True, launches=launches))


def test_parse_units_and_columns():
    rows = ncu.parse(CSV)
    assert [r["id"] for r in rows] == list(range(7))
    mm = rows[1]
    assert mm["tensor_ops"] == PREFILL_MM  # the sparsity_on column is left out (it would double it)
    assert mm["dram_read"] == 37_769_000 and mm["dram_write"] == 1_720_000  # 1,720 Kbyte
    assert mm["l2_write"] == 131_072 * 32 == 4_194_304  # sectors of 32 bytes
    assert mm["time_s"] == pytest.approx(25_000e-9, rel=1e-12)
    assert mm["nvtx"].startswith("<default>:BENCHMARK/prefill")


def _rows(t):
    return {(r["graph"], r["index"]): r for r in t.rows}


def _check(t):
    r = _rows(t)
    assert set(r) == {(0, 0), (0, 1), (0, 2), (1, 0), (1, 1)}
    assert [u["id"] for u in t.unmatched] == [3]  # the eager argmax between the two graphs
    p = r[(0, 1)]
    assert p["padding"] == 0.0 and p["hw_flops"] == PREFILL_MM
    assert p["hfu"] == pytest.approx(PREFILL_MM / (1000e12 * 25e-6), rel=1e-12)  # 0.68719476736
    unique = 512 * 4096 * 2 * 2 + 4096 * 4096 * 2  # 41,943,040
    assert p["bytes"] == unique
    assert p["dram_ratio"] == pytest.approx((37_769_000 + 1_720_000) / unique, rel=1e-12)  # 0.94149...
    assert p["moved_ratio"] == pytest.approx((37_769_000 + 4_194_304) / unique, rel=1e-12)  # 1.00048...
    d = r[(1, 1)]
    assert d["ncu_kernels"] == 2 and d["stage"] == "BENCHMARK/decode"
    assert d["padding"] == 7.0  # 268,435,456 hardware / 33,554,432 model: M=1 padded to 8 rows
    assert d["hfu"] == pytest.approx(268_435_456 / (1000e12 * (15_600 + 2_000) * 1e-9), rel=1e-12)  # 0.01525...
    assert d["l2_write"] == (1280 + 256) * 32 and d["ncu_time_s"] == pytest.approx(17.6e-6, rel=1e-12)
    e = r[(0, 2)]  # a fused kernel whose output stays in L2: DRAM write 0, L2 write = bytes written
    assert e["dram_write"] == 0 and e["l2_write"] == e["bytes_written"] == 4_000_000 and e["padding"] is None
    assert e["moved_ratio"] == 1.0


def test_join_by_alignment_from_a_record():
    # both graphs start with a kernel named triton_red_fused_embedding_0: the next kernels decide
    _check(ncu.join(_record(), CSV, device=DEV))


def test_join_by_order_with_measured(tmp_path):
    def m(name, t, g=None, k=None):
        return Measured(name, t, t + 1, "", t, graph=g, kernel=k, call=0 if g is not None else None,
                        stage=None if g is None else ("BENCHMARK/prefill" if g == 0 else "BENCHMARK/decode"))

    ms = [m("triton_red_fused_embedding_0", 0, 0, 0), m("nvjet_tst_256x128_64x4_1x2_h_bz_coopA_NNT", 1, 0, 1),
          m("triton_poi_fused_silu_1", 2, 0, 2), m("void at::native::reduce_kernel<512, 1>(T3)", 3),
          m("triton_red_fused_embedding_0", 4, 1, 0), m("Memset (Device)", 5, 1, 1),
          m("nvjet_tst_64x8_64x16_4x1_v_bz_splitK_TNT", 6, 1, 1), m(SPLITK, 7, 1, 1)]
    _check(ncu.join(_record(), CSV, device=DEV, measured=ms))


def test_saved_report_and_main(tmp_path, capsys):
    rep = graphmfu.Report(_record(), DEV)
    path = rep.save(tmp_path / "r.json")
    assert ncu.main([str(path), str(CSV), "--json", str(tmp_path / "rows.json")]) == 0
    out = capsys.readouterr().out
    assert "7.0000" in out and "1 ncu kernel(s) matched no graph kernel" in out
    assert (tmp_path / "rows.json").exists()


def test_errors_are_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.csv"
    bad.write_text("Kernel,Time\nfoo,1\n")
    with pytest.raises(GraphMFUError, match="not an 'ncu --csv --page raw' export"):
        ncu.join(_record(), bad, device=DEV)
    cut = tmp_path / "cut.csv"
    cut.write_text("\n".join(CSV.read_text().splitlines()[:5]) + '\n"5","4242"\n')
    with pytest.raises(GraphMFUError, match="line 6 has 2 fields"):
        ncu.parse(cut)
    other = tmp_path / "other.csv"
    other.write_text(CSV.read_text().replace("triton_", "cutlass_").replace("nvjet", "sm90_xmma"))
    with pytest.raises(GraphMFUError, match="none of the 7 kernels"):
        ncu.join(_record(), other, device=DEV)
    with pytest.raises(GraphMFUError, match="no measured kernels"):
        ncu.join(Record(graphs=_record().graphs), CSV, device=DEV)
    assert ncu.main([str(tmp_path / "r.json"), str(bad)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("graphmfu ncu: error:") and err.count("\n") == 1
