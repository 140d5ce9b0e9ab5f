"""Host copies of a graph call's small inputs, for counts made later on the host (the meter's mask
probes, rules/masks.py): queued without waiting for the device, and off the compute stream.

On a GPU each copy goes into a pinned buffer from a pool (no allocation per call) on a side stream
that waits for the compute stream's work so far (the input's value at the call: one event on the
compute stream) while the compute stream does not wait for the copy.  A device-to-host copy queued on
the compute stream between two CUDA-graph replays costs the step ~1.5% of a 0.6 ms decode step on an
H200; an event costs ~0.3% (bench/probe/meter_decode_diag.py; ``SIDE_STREAM = False`` puts copies on
the compute stream).  The input's memory is kept from reuse until the copy has run
(``record_stream``); an event after the copy says when it is readable.  ``Copy.land`` (the meter, once
the step has finished) moves the value to ordinary host memory and gives the buffer and events back to
their pools.  The probes of one call share the copy of an input they both read.  One ``HostCopies``
per probed graph."""
from __future__ import annotations

import torch

SIDE_STREAM = True  # False: copies on the compute stream


class Copy:
    """A host tensor being filled.  ``wait()``: the tensor (after its event, if it has one);
    ``land()``: once the copy has completed, its value in ordinary host memory and the pinned buffer
    and the events back to their pools."""
    __slots__ = ("value", "event", "owner", "events")

    def __init__(self, value, event=None, owner=None, events=()):
        self.value, self.event, self.owner, self.events = value, event, owner, events

    def wait(self):
        if self.event is not None:
            self.event.synchronize()
            self.event = None
        return self.value

    def land(self) -> None:
        self.wait()
        if self.owner is not None:
            buf, self.value = self.value, self.value.clone()
            self.owner._give_back(buf, self.events)
            self.owner, self.events = None, ()


class HostCopies:
    def __init__(self):
        self._streams: dict = {}
        self._call = None  # the inputs list of the call being served (held: its id cannot be reused)
        self._made: dict = {}
        self._pinned: dict = {}  # (shape, dtype) -> pinned buffers free for a copy
        self._events: list = []  # free events

    def of(self, inputs, i: int) -> Copy:
        """The host copy of ``inputs[i]`` for this call (made once per call and input)."""
        if self._call is not inputs:
            self._call, self._made = inputs, {}
        c = self._made.get(i)
        if c is None:
            c = self._made[i] = self.copy(inputs[i])
        return c

    def _event(self):
        return self._events.pop() if self._events else torch.cuda.Event()

    def _give_back(self, buf, events) -> None:
        self._pinned.setdefault((tuple(buf.shape), buf.dtype), []).append(buf)
        self._events.extend(events)

    def copy(self, x) -> Copy:
        if not isinstance(x, torch.Tensor):
            return Copy(x)
        x = x.detach()
        if x.device.type != "cuda":
            return Copy(x.clone() if x.device.type == "cpu" else x.to("cpu"))
        free = self._pinned.get((tuple(x.shape), x.dtype))
        buf = free.pop() if free else torch.empty(x.shape, dtype=x.dtype, pin_memory=True)
        if not SIDE_STREAM:
            buf.copy_(x, non_blocking=True)  # readable once later work on the stream has completed
            return Copy(buf, None, self)
        side = self._streams.get(x.device)
        if side is None:
            side = self._streams[x.device] = torch.cuda.Stream(x.device)
        ready, done = self._event(), self._event()
        ready.record(torch.cuda.current_stream(x.device))
        side.wait_event(ready)
        with torch.cuda.stream(side):
            buf.copy_(x, non_blocking=True)
        done.record(side)
        x.record_stream(side)
        return Copy(buf, done, self, (ready, done))


__all__ = ["HostCopies", "Copy", "SIDE_STREAM"]
