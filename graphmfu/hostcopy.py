"""Host copies of a graph call's small inputs, for counts made later on the host (the meter's mask
probes, rules/masks.py): queued without waiting for the device, and off the compute stream.

On a GPU each copy runs on a side stream that waits for the compute stream's work so far (the input's
value at the call) while the compute stream does not wait for the copy: the model's step gains no
device time.  The input's memory is kept from reuse until the copy has run (``record_stream``); an event
after the copy says when the host copy is readable (``Copy.wait``).  The probes of one call share the
copy of an input they both read.  One ``HostCopies`` per probed graph (state in an object)."""
from __future__ import annotations

import torch

SIDE_STREAM = True  # False: copies on the compute stream (bench/probe/meter_decode_diag.py compares both)


class Copy:
    """A host tensor being filled; ``wait()`` returns it once the copy has landed."""
    __slots__ = ("value", "event")

    def __init__(self, value, event=None):
        self.value, self.event = value, event

    def wait(self):
        if self.event is not None:
            self.event.synchronize()
            self.event = None
        return self.value


class HostCopies:
    def __init__(self):
        self._streams: dict = {}
        self._call = None  # the inputs list of the call being served (held: its id cannot be reused)
        self._made: dict = {}

    def of(self, inputs, i: int) -> Copy:
        """The host copy of ``inputs[i]`` for this call (made once per call and input)."""
        if self._call is not inputs:
            self._call, self._made = inputs, {}
        c = self._made.get(i)
        if c is None:
            c = self._made[i] = self.copy(inputs[i])
        return c

    def copy(self, x) -> Copy:
        if not isinstance(x, torch.Tensor):
            return Copy(x)
        x = x.detach()
        if x.device.type != "cuda":
            return Copy(x.clone() if x.device.type == "cpu" else x.to("cpu"))
        if not SIDE_STREAM:
            out = x.to("cpu", non_blocking=True)
            ev = torch.cuda.Event()
            ev.record()
            return Copy(out, ev)
        side = self._streams.get(x.device)
        if side is None:
            side = self._streams[x.device] = torch.cuda.Stream(x.device)
        side.wait_stream(torch.cuda.current_stream(x.device))
        with torch.cuda.stream(side):
            out = x.to("cpu", non_blocking=True)
            ev = torch.cuda.Event()
            ev.record(side)
        x.record_stream(side)
        return Copy(out, ev)


__all__ = ["HostCopies", "Copy", "SIDE_STREAM"]
