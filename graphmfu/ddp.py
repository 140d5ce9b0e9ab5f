"""DDP's gradient all-reduce, counted: ``graphmfu.ddp.watch(ddp_model)``.

``DistributedDataParallel`` all-reduces the gradients bucket by bucket from its C++ reducer, during the
backward and outside every compiled graph (``DDP(torch.compile(model))`` and ``torch.compile(DDP(model))``
alike), so no graph holds those collectives: a profile measures their time (``c10d::allreduce_`` ops, NCCL
kernels, the exposed-communication rows) and says that their bus bytes are not counted
(``overlap.outside_comm_note``), but nothing has their size.

``watch`` registers a DDP communication hook (``DistributedDataParallel.register_comm_hook``, public API) that
does what DDP does without one — divide the bucket by the group size, all-reduce it (sum) asynchronously — and
makes each bucket a one-op graph of the registry (source ``ddp``, phase backward): op
``c10d.allreduce_.default`` on the bucket's flat gradient buffer, costed by the same rule as every collective
(rules/collectives.py: local DRAM traffic, and ``comm``: all_reduce, S = the bucket's bytes, NCCL-tests bus
bytes 2(n-1)/n x S over DDP's process group).  Its module is the longest common module path of the bucket's
parameters.  While a profile session of the registry runs, the all-reduce runs inside the graph's call range
(``graphmfu::graph <key>``), so the join gives each bucket its measured ``c10d::allreduce_`` op (CPU) or the
collective kernel it launched (GPU), as it does for a compiled graph's kernels; ``WorldReport.collectives``
then lists them with count, payload, bus bytes, link and measured time.

The record holds the buckets of the latest backward: DDP rebuilds its buckets once, after the first
iteration (in the order the gradients became ready); graphs of a layout that a later backward no longer used
are retired (a profile that saw them run adopts them back, as for any graph).  The division by the group size
is DDP's averaging (an eager ``div_`` outside the graphs, as without the hook).  DDP takes one comm hook: a
model with a hook of its own (compression, PowerSGD) cannot be watched (an error says so), since its payload
is not the bucket.
"""
from __future__ import annotations

import contextlib
import threading

import torch

from graphmfu import _inductor
from graphmfu.cost import TensorSpec, ensure_builtin_rules
from graphmfu.errors import GraphMFUError
from graphmfu.kernels import common_module
from graphmfu.nodes import apply_rule, shapes
from graphmfu.record import GraphRecord, KernelRecord, OpRecord
from graphmfu.registry import DEFAULT, Registry

SOURCE = "ddp"
NOTE = ("DDP: the gradient all-reduce runs outside the compiled graphs; each bucket is one graph (source 'ddp', op "
        "c10d.allreduce_ on the bucket's gradients), counted through a DDP comm hook (graphmfu.ddp.watch)")


def _module_names(ddp) -> dict:
    """id(parameter) -> its module's path in the user's model (a compiled module's wrapper level left out)."""
    return {id(p): _inductor.uncompiled_name(name).rpartition(".")[0] for name, p in ddp.module.named_parameters()}


class DDPComm:
    """The comm hook of one DDP model and the bucket graphs it put in ``registry`` (``graphs``: key -> graph)."""

    def __init__(self, ddp, registry: Registry | None = None):
        dist = torch.distributed
        ddp = _inductor.uncompiled(ddp)  # torch.compile(DDP(model)): the DDP module inside
        if not isinstance(ddp, torch.nn.parallel.DistributedDataParallel):
            raise GraphMFUError(f"graphmfu.ddp.watch takes a torch.nn.parallel.DistributedDataParallel model (or "
                                f"torch.compile of one), got {type(ddp).__name__}")
        self.registry = registry or DEFAULT
        self.group = getattr(ddp, "process_group", None) or dist.group.WORLD
        self.device = str(next((p.device.type for p in ddp.parameters()), "cpu"))
        self.graphs: dict[str, GraphRecord] = {}
        self._by_bucket: dict = {}  # (index, numel, dtype, module) -> key
        self._names = _module_names(ddp)
        self._pass: list[str] = []  # keys of the backward under way
        self._current: set = set()  # keys of the last complete backward
        self._lock = threading.Lock()
        self.buckets = 0  # all-reduces run through the hook
        ensure_builtin_rules()
        try:
            ddp.register_comm_hook(self.group, self._hook)
        except RuntimeError as e:
            raise GraphMFUError(f"graphmfu.ddp.watch: DDP refused the comm hook ({e}); DDP takes one hook, and a "
                                f"model with its own (compression, PowerSGD) sends other bytes than its buckets: "
                                f"not counted") from None
        self.registry.note(NOTE)

    # ---------------------------------------------------------------- the hook (DDP's autograd thread)
    def _hook(self, group, bucket):
        dist = torch.distributed
        buf = bucket.buffer()
        key = self._graph(bucket, buf)
        buf.div_(group.size())  # DDP's averaging, as its own all-reduce does
        # in a profile session the all-reduce is this graph's call
        with (torch.profiler.record_function(_inductor.CALL_RANGE + key) if self.registry.tagger.active
              else contextlib.nullcontext()):
            work = dist.all_reduce(buf, group=group, async_op=True)
        self.buckets += 1
        if bucket.is_last():
            self._end_pass()
        return work.get_future().then(lambda fut: fut.value()[0])

    def _graph(self, bucket, buf) -> str:
        paths = [self._names.get(id(p), "") for p in bucket.parameters()]
        module = common_module(paths) if all(paths) else ""  # a parameter of the root: the bucket is the root's
        sig = (bucket.index(), buf.numel(), buf.dtype, module)
        with self._lock:
            key = self._by_bucket.get(sig)
            if key is None:
                g = self._record(buf, module)
                key = self._by_bucket[sig] = g.key
                self.graphs[key] = g
                self.registry.add(g)
            self._pass.append(key)
            return key

    def _record(self, buf, module: str) -> GraphRecord:
        """One bucket's all-reduce as a one-op graph, costed by rules/collectives.py."""
        import sys

        coll = sys.modules["graphmfu.rules.collectives"]
        op = torch.ops.c10d.allreduce_.default
        spec = [TensorSpec(tuple(buf.shape), buf.dtype)]
        cost = apply_rule(op, (spec, self.group), {}, (spec, None))
        gid = self.registry.next_id()
        node = OpRecord(gid, "backward", 0, "allreduce", "c10d.allreduce_.default", module, shapes(spec), shapes(spec),
                        cost, output_bytes=cost.bytes_written)
        coll.attach(node, coll.comm_of(op, [spec, self.group]))
        kernel = KernelRecord(gid, 0, "c10d::allreduce_", "c10d::allreduce_", True, [node.name], module, "backward",
                              cost, bytes_nodes=cost.bytes)
        return GraphRecord(gid, self.registry.key(gid), "backward", None, self.device, [node], {}, SOURCE, [kernel])

    def _end_pass(self) -> None:
        """A backward's last bucket: graphs of a bucket layout this backward no longer used are retired."""
        with self._lock:
            done, self._pass = set(self._pass), []
            stale = (self._current - done) if self._current else set()
            self._current = done
        if stale:
            self.registry.retire(stale)
            self.registry.note("DDP rebuilt its gradient buckets (after its first iteration): the record holds the "
                               "buckets of the latest backward")


def watch(ddp, registry: Registry | None = None) -> DDPComm:
    """Count ``ddp``'s gradient all-reduces (bucket by bucket, outside the compiled graphs) into ``registry``
    (default: graphmfu's): reports, profiles and ``graphmfu.gather``'s world view then list them with their bus
    bytes, and profiles join each to its measured op or kernel.  Call once, after wrapping the model in DDP."""
    return DDPComm(ddp, registry)


__all__ = ["watch", "DDPComm", "SOURCE", "NOTE"]
