"""On 2 GPUs over NCCL (issue 13): bench/multi_gpu.py run by torchrun, its results checked.

FSDP2 training step of a Llama-shaped 2-layer model with blocks compiled before fully_shard: every
rank's compiled-block FLOPs = the hand count, the eager recording of the step = the hand count of the
whole step, every all-gather payload = one FSDP group's parameter bytes and bus bytes = S(n-1)/n,
NCCL kernels measured (exposed communication rows with communication time); TP=2 prefill: per-rank
block matrix FLOPs = half the unsharded count, the row-wise all_reduces' bus bytes = 2(n-1)/n S."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.device_count() < 2,
                                 reason="needs 2 GPUs")]

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    out = Path(os.environ.get("OUT") or tmp_path_factory.mktemp("multi_gpu"))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", str(ROOT / "bench" / "multi_gpu.py"),
           "--out", str(out)]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=480,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    return json.loads((out / "multi_gpu.json").read_text()), (out / "multi_gpu.txt").read_text()


def test_fsdp2_compiled_blocks_and_collectives(bench):
    res, text = bench
    f = res["fsdp"]  # rank 0's row (each rank checked in the printed table too)
    assert f["graphs"] > 0, text
    assert f["flops"] == f["hand"], text
    assert f["eager_flops"] == f["eager_hand"], text
    assert f["eager_failures"] == []
    n = 2
    gathers = [c for c in f["comm"] if c["kind"] == "all_gather"]
    scatters = [c for c in f["comm"] if c["kind"] == "reduce_scatter"]
    assert gathers and scatters
    assert all(c["size"] in f["groups"] and c["bytes"] * n == c["size"] * (n - 1) for c in gathers)
    assert all(c["bytes"] * n == c["size"] * (n - 1) for c in scatters)
    whole = next(e for e in f["exposed"] if e["stage"] is None)
    assert whole["comm_kernels"] > 0 and whole["comm_s"] > 0 and 0 <= whole["exposed_s"] <= whole["comm_s"]


def test_tp_prefill_half_the_block_flops(bench):
    res, text = bench
    t = res.get("tp")
    assert t is not None, text
    assert t["block_flops"] * 2 == t["unsharded"] and t["block_flops"] == t["hand"]
    ars = [c for c in t["comm"] if c["kind"] == "all_reduce"]
    assert ars and all(c["size"] == t["act_bytes"] and c["bytes"] == c["size"] for c in ars)  # n=2: 2(n-1)/n = 1
    assert t["unknown"] == 0
