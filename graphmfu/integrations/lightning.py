"""The meter in Lightning.

    from graphmfu.integrations.lightning import GraphMFUCallback
    trainer = L.Trainer(callbacks=[GraphMFUCallback(tokens_per_step=batch * seq)])

Compile the LightningModule's model with ``torch.compile(model, backend=graphmfu.backend)``.  Each
training batch is a meter step; the last finished step's ``graphmfu/mfu`` ... go to ``pl_module.log``.
"""
from __future__ import annotations

from graphmfu.integrations import StepScope, logged, require

_L = require("lightning.pytorch", "lightning")


class GraphMFUCallback(_L.Callback):
    """A meter step around every training batch; its numbers logged through the LightningModule."""

    def __init__(self, meter=None, tokens_per_step: int | None = None, **meter_kwargs):
        from graphmfu.meter import meter as make_meter

        super().__init__()
        self.meter = meter if meter is not None else make_meter(**meter_kwargs)
        self.tokens_per_step = tokens_per_step
        self._scope = StepScope(self.meter)

    def on_train_start(self, trainer, pl_module):
        if self.meter.params is None:
            from graphmfu.params import active_params

            try:
                self.meter.params = active_params(pl_module)
            except Exception:  # noqa: BLE001 - N is optional (then no 6ND column)
                pass

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self._scope.begin(tokens=self.tokens_per_step)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self._scope.end()
        last = self.meter.latest()  # finished steps only: logging never waits for the GPU
        if last:
            pl_module.log_dict(logged(last), on_step=True, on_epoch=False)

    def on_train_end(self, trainer, pl_module):
        self._scope.end()
