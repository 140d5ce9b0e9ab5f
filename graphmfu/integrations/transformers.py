"""The meter in transformers' Trainer.

    from graphmfu.integrations.transformers import GraphMFUCallback
    model.compile(backend=graphmfu.backend)          # or backend="graphmfu" (registered on import)
    trainer = Trainer(model, args, ..., callbacks=[GraphMFUCallback(tokens_per_step=batch * seq)])

Compile the model yourself (``TrainingArguments(torch_compile_backend=...)`` accepts only the backend
names accelerate lists).  Each training step is a meter step; each Trainer log gets ``graphmfu/mfu``,
``graphmfu/tflops`` ... of the last finished step.  ``callback.meter`` holds every row.
"""
from __future__ import annotations

from graphmfu.integrations import StepScope, logged, require

_tf = require("transformers", "transformers")


def register_backend(name: str = "graphmfu") -> None:
    """Make ``torch.compile(backend="graphmfu")`` work."""
    from graphmfu import _inductor
    from graphmfu.capture import backend

    _inductor.register_backend(name, backend)


register_backend()


class GraphMFUCallback(_tf.TrainerCallback):
    """A meter step around every Trainer step; its numbers in the Trainer's logs."""

    def __init__(self, meter=None, tokens_per_step: int | None = None, **meter_kwargs):
        from graphmfu.meter import meter as make_meter

        self.meter = meter if meter is not None else make_meter(**meter_kwargs)
        self.tokens_per_step = tokens_per_step
        self._scope = StepScope(self.meter)

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if self.meter.params is None and model is not None:
            from graphmfu.params import active_params

            try:
                self.meter.params = active_params(model)
            except Exception:  # noqa: BLE001 - N is optional (then no 6ND column)
                pass

    def on_step_begin(self, args, state, control, **kwargs):
        self._scope.begin(tokens=self.tokens_per_step)

    def on_step_end(self, args, state, control, **kwargs):
        self._scope.end()

    def on_log(self, args, state, control, logs=None, **kwargs):
        last = self.meter.latest()  # finished steps only: logging never waits for the GPU
        if logs is not None and last:
            logs.update(logged(last))

    def on_train_end(self, args, state, control, **kwargs):
        self._scope.end()
