"""The meter across ranks (gloo, 2 processes): every N steps one all-reduce gives world numbers.

Each rank trains a compiled Linear(16 -> 32, no bias) on its own batch: rank r has B_r = 2 + 2r rows
(2 and 4).  Matrix FLOPs per step: forward 2*B*16*32 and the weight gradient 2*B*16*32 (the input needs
no gradient) = 2048*B: 4096 on rank 0, 8192 on rank 1.  Over a window of 2 steps the world has
2 * (4096 + 8192) = 24576 FLOPs."""
from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank(rank: int, world: int, port: int, out: str) -> None:
    import json

    import graphmfu
    from graphmfu.registry import Registry

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        reg = Registry()
        lin = torch.nn.Linear(16, 32, bias=False)
        f = torch.compile(lin, backend=graphmfu.Backend(registry=reg))
        meter = graphmfu.meter(registry=reg, world_every=2, cuda=False)
        b = 2 + 2 * rank
        for _ in range(4):
            x = torch.randn(b, 16)
            with meter.step(tokens=b):
                f(x).sum().backward()
        with open(os.path.join(out, f"rank{rank}.json"), "w") as fh:
            json.dump(meter.records, fh)
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not built in")
def test_world_numbers_every_n_steps(tmp_path):
    import json

    mp.spawn(_rank, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    rows = [json.load(open(tmp_path / f"rank{r}.json")) for r in range(2)]
    assert [r["flops"] for r in rows[0]] == [4096] * 4 and [r["flops"] for r in rows[1]] == [8192] * 4
    for rank_rows in rows:
        assert "world_mfu" not in rank_rows[0] and "world_mfu" not in rank_rows[2]  # only every 2nd step
        for i in (1, 3):
            r = rank_rows[i]
            assert r["world_size"] == 2 and r["world_steps"] == 2
            assert r["world_flops"] == 2 * (4096 + 8192)
            # both ranks get the same world numbers
            assert r["world_mfu"] == rows[0][i]["world_mfu"]
            # world MFU = sum of matrix time at peak / sum of step times over ranks and the window
            steps = [rows[k][j] for k in range(2) for j in (i - 1, i)]
            t_matrix = sum(s["mfu"] * s["step_s"] for s in steps)
            assert r["world_mfu"] == pytest.approx(t_matrix / sum(s["step_s"] for s in steps), rel=1e-12)
            assert r["world_tokens_per_s"] == pytest.approx(2 * (2 + 4) / (sum(s["step_s"] for s in steps) / 2))
