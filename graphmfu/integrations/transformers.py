"""The meter in transformers' Trainer, and one step (and stage) per forward of ``generate()``.

    from graphmfu.integrations.transformers import GraphMFUCallback
    model.compile(backend=graphmfu.backend)          # or backend="graphmfu" (registered on import)
    trainer = Trainer(model, args, ..., callbacks=[GraphMFUCallback(tokens_per_step=batch * seq)])

Compile the model yourself (``TrainingArguments(torch_compile_backend=...)`` accepts only the backend
names accelerate lists), or let ``graphmfu.capture_all()`` route the compile the Trainer makes
(``torch_compile=True``).  Each training step is a meter step; each Trainer log gets ``graphmfu/mfu``,
``graphmfu/tflops`` ... of the last finished step.  ``callback.meter`` holds every row.

``generate()``: with a static cache on a GPU, transformers compiles the model's forward for the decode steps
itself (Inductor, ``mode="reduce-overhead"``) and its prefill runs the model as it is.  Under
``graphmfu.capture_all()`` that compile goes through graphmfu (compile the model with graphmfu too for the
prefill).  ``generate(model, ..., meter=m)`` runs ``model.generate`` with one meter step per forward: the
prefill, then each decode step, each at its own cache position (and, under ``graphmfu.profile()``, the
stages ``prefill`` and ``decode``)::

    out = graphmfu.integrations.transformers.generate(model, ids, meter=m, max_new_tokens=32)
    m.records  # [prefill row, decode row, decode row, ...]
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


class StepPerForward(_tf.LogitsProcessor):
    """A logits processor that closes the meter step of the forward that produced these scores and opens the
    next (generate() calls it once per forward, after the forward), and moves the profile stage from
    ``prefill`` (the first forward) to ``decode`` (every later one, one stage occurrence)."""

    def __init__(self, meter=None, stages: bool = True):
        self.meter, self.stages = meter, stages
        self._step = self._stage = self._state = None
        self.forwards = 0

    def open(self, tokens: int | None) -> None:
        from graphmfu.stage import stage

        if self.stages and self.forwards <= 1:
            self._close_stage()
            self._stage = stage("prefill" if self.forwards == 0 else "decode")
            self._stage.__enter__()
        if self.meter is not None:
            self._step = self.meter.step(tokens=tokens)
            self._state = self._step.__enter__()

    def close_step(self) -> None:
        step, self._step, self._state = self._step, None, None
        if step is not None:
            step.__exit__(None, None, None)

    def _close_stage(self) -> None:
        st, self._stage = self._stage, None
        if st is not None:
            st.__exit__(None, None, None)

    def close(self) -> None:
        self.close_step()
        self._close_stage()

    def __call__(self, input_ids, scores):
        self.close_step()
        self.forwards += 1
        self.open(int(input_ids.shape[0]))
        return scores


def generate(model, *args, meter=None, stages: bool = True, **kwargs):
    """``model.generate(*args, **kwargs)`` with one ``meter`` step (and, with ``stages``, one ``graphmfu.stage``:
    ``prefill``, then ``decode``) per forward.  Each step's ``tokens`` is the batch size (one new token per
    sequence).  The step after the last forward (no forward in it) is not recorded."""
    from graphmfu.errors import GraphMFUError

    if "logits_processor" in kwargs and not isinstance(kwargs["logits_processor"], (list, _tf.LogitsProcessorList)):
        raise GraphMFUError("generate(..., logits_processor=...) takes a list (a LogitsProcessorList): graphmfu adds "
                            "its per-forward step to it")
    per = StepPerForward(meter, stages)
    procs = _tf.LogitsProcessorList([*(kwargs.pop("logits_processor", None) or []), per])
    batch = args[0].shape[0] if args and hasattr(args[0], "shape") else kwargs.get("input_ids").shape[0]
    per.open(int(batch))
    try:
        return model.generate(*args, logits_processor=procs, **kwargs)
    finally:
        if per._state is not None:  # the step opened after the last forward ran no forward: not recorded
            per._state.discard = True
        per.close()
