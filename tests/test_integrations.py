"""The meter's adapters: transformers' Trainer (callback; the model compiled with ``backend="graphmfu"``) and
Lightning (callback).  Model: a two-layer MLP d=16 -> h=32 -> d on batches of B=4 rows, MSE loss.
Matrix FLOPs per training step by hand: forward 2 products of 2*B*d*h; backward the two weight
gradients and the second layer's input gradient (the first layer's input needs none): 3 more;
5 * 2*4*16*32 = 20480."""
from __future__ import annotations

import pytest
import torch

import graphmfu
from graphmfu.registry import DEFAULT

B, D, H = 4, 16, 32
STEP_FLOPS = 5 * 2 * B * D * H
assert STEP_FLOPS == 20480


class MLP(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = torch.nn.Linear(D, H), torch.nn.Linear(H, D)

    def forward(self, x, labels=None):
        y = self.fc2(torch.relu(self.fc1(x)))
        return {"loss": torch.nn.functional.mse_loss(y, labels), "logits": y}


class Rows(torch.utils.data.Dataset):
    def __len__(self):
        return 64

    def __getitem__(self, i):
        g = torch.Generator().manual_seed(i)
        return {"x": torch.randn(D, generator=g), "labels": torch.randn(D, generator=g)}


def test_transformers_trainer_callback(tmp_path):
    pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    from transformers import Trainer, TrainingArguments

    from graphmfu.integrations.transformers import GraphMFUCallback

    graphmfu.reset()
    cb = GraphMFUCallback(tokens_per_step=B)
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=B, max_steps=4, logging_steps=1,
                             report_to=[], save_strategy="no",
                             use_cpu=True, disable_tqdm=True, dataloader_num_workers=0)
    logs = []

    class Keep(GraphMFUCallback.__mro__[1]):  # a plain TrainerCallback that keeps every log
        def on_log(self, args, state, control, logs_=None, **kw):
            logs.append(dict(kw.get("logs") or logs_ or {}))

    model = MLP()
    model.compile(backend="graphmfu")  # the name the integration registers
    trainer = Trainer(model=model, args=args, train_dataset=Rows(), callbacks=[cb, Keep()])
    trainer.train()
    rows = cb.meter.records
    assert len(rows) == 4
    assert all(r["graph_calls"] >= 2 for r in rows)  # the compiled forward and backward ran in every step
    assert [r["flops"] for r in rows[1:]] == [STEP_FLOPS] * 3, [r["flops"] for r in rows]
    assert rows[-1]["training"] and rows[-1]["tokens"] == B
    assert any("graphmfu/mfu" in entry for entry in logs), logs
    assert DEFAULT.graphs  # the named backend compiled into the default registry


def test_lightning_callback():
    L = pytest.importorskip("lightning.pytorch")
    from graphmfu.integrations.lightning import GraphMFUCallback

    class Module(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = MLP()
            self.compiled = torch.compile(self.net, backend=graphmfu.backend)

        def training_step(self, batch, i):
            return self.compiled(batch["x"], batch["labels"])["loss"]

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.01)

    graphmfu.reset()
    cb = GraphMFUCallback(tokens_per_step=B)
    trainer = L.Trainer(max_steps=4, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[cb])
    trainer.fit(Module(), torch.utils.data.DataLoader(Rows(), batch_size=B))
    rows = cb.meter.records
    assert len(rows) == 4
    assert [r["flops"] for r in rows[1:]] == [STEP_FLOPS] * 3, [r["flops"] for r in rows]
    assert cb.meter.params == 2 * D * H + H + D  # weights and biases, nothing excluded
    assert "graphmfu/mfu" in trainer.callback_metrics


def test_missing_framework_is_one_line(monkeypatch):
    import sys

    from graphmfu.errors import GraphMFUError
    from graphmfu.integrations import require

    monkeypatch.setitem(sys.modules, "not_installed_fw", None)
    with pytest.raises(GraphMFUError, match="pip install not-a-real-extra"):
        require("not_installed_fw", "not-a-real-extra")


def test_backend_survives_lightning_copying_compile_arguments():
    """Lightning patches torch.compile to deep-copy its arguments; a Backend (a handle on its registry,
    which holds a lock) is its own copy."""
    import copy

    from graphmfu.registry import Registry

    b = graphmfu.Backend(registry=Registry())
    assert copy.deepcopy({"backend": b})["backend"] is b and copy.copy(b) is b
