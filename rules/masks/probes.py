"""Per call: the real mask (profile(), the meter).  ``Probes`` gives an SDPA whose mask depends on inputs
(or on a dynamic graph's sizes) a symbol ``pairs_<mask node>`` and a probe that re-runs the graph's small
mask subgraph on each call's real inputs and counts what it keeps: on the device at the call, or (the
meter) from host copies of the inputs when the step is done (``_host_count``: NumPy through
rules/host_eval.py, checked against torch on the host, ``_on_host``)."""
from __future__ import annotations

import math
import sys

import torch

from graphmfu import _inductor
from graphmfu.cost import Cost, op_name
from graphmfu.hostcopy import HostCopies
from graphmfu.rules.masks.count import MaskCount, kept_total
from graphmfu.rules.masks.reader import _int_of
from graphmfu.rules.masks.sdpa import INPUTS, UNRECOGNISED, UPPER_BOUND, _attention_module, _mask_arg, _q_k, with_pairs


_HEAVY = ("mm", "bmm", "addmm", "baddbmm", "matmul", "convolution", "_scaled_dot_product", "_flash_attention",
          "_efficient_attention", "_grouped_mm", "_scaled_mm")
_MAX_PROBE_NODES = 300


class Probes:
    """Input-dependent masks of one graph, counted per call.  The node's cost keeps the kept pairs as a
    symbol ``pairs_<mask node>`` (its hint: the count known without values, dense or the size-only
    bound); a probe ``fn(inputs) -> int`` runs the graph's small mask subgraph on a call's real inputs
    and counts what it keeps.  ``attach`` leaves ``[(symbol, hint, fn)]`` on the GraphModule as
    ``_graphmfu_probes`` for the capture layer (capture.py), which tags compiled calls with them."""

    def __init__(self, gm):
        self.gm = gm
        self.items: list = []  # (symbol, hint, fn)
        self.by_key: dict = {}
        self._placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
        self._sizes = None
        self._copies = HostCopies()  # the mask inputs' host copies, shared by the probes of one call

    def attach(self) -> None:
        try:
            self.gm._graphmfu_probes = list(self.items)
        except (AttributeError, TypeError):
            pass

    # --------------------------------------------------------------- the mask's subgraph
    def _subgraph(self, mask_node, finish=None):
        """The graph's nodes that compute ``mask_node`` (a node, or a list of nodes) copied into a module of
        their own, and which inputs it takes; None when that reaches a heavy op or too many nodes.  The
        module returns ``mask_node``, or what ``finish(graph, env)`` adds (``env``: original node -> copy)."""
        roots = list(mask_node) if isinstance(mask_node, (list, tuple)) else [mask_node]
        need, stack = set(), list(roots)
        while stack:
            n = stack.pop()
            if n in need:
                continue
            need.add(n)
            if len(need) > _MAX_PROBE_NODES:
                return None
            if n.op == "call_function":
                name = op_name(n.target)
                if any(name.split(".")[1 if name.startswith(("aten.", "prims.")) else 0].startswith(h)
                       for h in _HEAVY):
                    return None  # not a mask computation worth re-running per call
            elif n.op not in ("placeholder", "get_attr"):
                return None
            stack.extend(n.all_input_nodes)
        g = torch.fx.Graph()
        env, used = {}, []
        index = {n: i for i, n in enumerate(self._placeholders)}
        for n in self.gm.graph.nodes:
            if n not in need:
                continue
            if n.op == "placeholder":
                env[n] = g.placeholder(n.name)
                used.append(index[n])
            else:
                env[n] = g.node_copy(n, lambda a: env[a])
        g.output(finish(g, env) if finish is not None else env[roots[0]])
        return torch.fx.GraphModule(self.gm, g), used

    def _size_reader(self):
        """[(input index, dim or None, symbol)] of the graph's size symbols (as capture's size_args)."""
        if self._sizes is None:
            out = _inductor.size_symbols(self.gm)
            self._sizes = out
        return self._sizes

    def _ints(self, exprs, inputs):
        """Sizes (ints or sympy expressions of the graph's symbols) for one call."""
        if all(isinstance(e, int) for e in exprs):
            return exprs
        subs = {}
        for i, d, sym in self._size_reader():
            x = inputs[i]
            subs[sym] = int(x if d is None else x.shape[d])
        return [int(e) if isinstance(e, int) else int(e.xreplace(subs)) for e in exprs]

    # --------------------------------------------------------------- one SDPA node
    def per_call(self, rec, node, spec, mc: MaskCount) -> bool:
        """Give SDPA ``node`` (record ``rec``) a per-call pair count; False when its mask cannot be probed."""
        mask = _mask_arg(node, spec)
        qv, kv = _q_k(node, spec)
        lead_e, tq_e, tk_e = dims_of((*qv.shape[:-2], qv.shape[-2], kv.shape[-2]))
        hint = mc.pairs * math.prod(_int_of(s) for s in qv.shape[:-2])
        name = self.probe(mask.name, lambda: self._subgraph(mask), (lead_e, tq_e, tk_e), hint, node.name)
        if name is None:
            return False
        self._symbolic_cost(rec, node, spec, mc, name, lead_e, tq_e, tk_e)
        return True

    def probe(self, stem: str, build, dims: tuple, hint: int, owner: str) -> str | None:
        """The symbol of a per-call count of the mask ``stem`` names: ``build()`` gives its subgraph
        ``(module, used inputs)`` (None: it cannot be probed), which returns a mask (bool: True kept; float,
        additive: above MASKED_AT kept) that broadcasts to ``dims`` = (leading entries, Tq, Tk), each an int
        or a formula of the graph's size symbols; ``hint`` is the count without values.  The same mask
        computed again (per layer: the same subgraph over the same inputs) shares one symbol."""
        key = (stem, *map(str, dims))
        name = self.by_key.get(key)
        if name is not None:
            return name
        sub = build()
        if sub is None:
            return None
        module, used = sub
        same = (_signature(module), tuple(used), *key[1:])  # the same mask computed twice (per layer)
        name = self.by_key.get(same)
        if name is not None:
            self.by_key[key] = name
            return name
        name = f"pairs_{stem}" if not any(k[0] == stem for k in self.by_key) else f"pairs_{stem}_{owner}"

        def probe(inputs, module=module, used=used, dims=dims, hint=hint):
            try:
                lead, tq, tk = self._ints(list(dims), inputs)
                with torch.no_grad(), _probe_range():  # the count's own ops too: graphmfu's, not the model's
                    return kept_total(module(*[inputs[i] for i in used]), lead, tq, tk)
            except Exception:  # noqa: BLE001 - never break the call: the count without values
                return hint

        def defer(inputs, module=module, used=used, dims=dims, hint=hint):
            """No waiting for the device (the meter): the sizes now, host copies of the mask's inputs
            queued, the count on the host when the step is done.  None when the inputs are large
            (a 4-D mask: then the probe counts on the device at the call)."""
            xs = [inputs[i] for i in used]
            if sum(x.numel() * x.element_size() for x in xs if isinstance(x, torch.Tensor)) > _DEFER_BYTES:
                return None
            lead, tq, tk = self._ints(list(dims), inputs)
            copies = [self._copies.of(inputs, i) for i in used]  # (no profile runs: no probe range)

            def finish():
                try:
                    return _host_count(module, [c.wait() for c in copies], lead, tq, tk)
                except Exception:  # noqa: BLE001 - the count without values
                    return hint

            def land():  # the step is done: the copies' values to ordinary memory, counted later
                for c in copies:
                    c.land()
            finish.land = land
            return finish

        probe.defer = defer
        self.by_key[key] = self.by_key[same] = name
        self.items.append((name, hint, probe))
        return name

    @staticmethod
    def _symbolic_cost(rec, node, spec, mc, name, lead_e, tq_e, tk_e) -> None:
        import sympy

        from graphmfu.cost import symbolic_cost

        att = _attention_module()
        per_score = getattr(att, "VECTOR_PER_SCORE", 5)
        base = symbolic_cost(rec.sym) if rec.sym else rec.cost
        pairs = sympy.Symbol(name)
        dense = lead_e * tq_e * tk_e
        matrix = {k: sympy.simplify(sympy.sympify(v) / dense) * pairs for k, v in base.matrix_dense}
        vector = dict(base.vector)
        if len(vector) == 1:
            (k, v), = vector.items()
            vector[k] = sympy.expand(v - per_score * (dense - pairs))
        sym = Cost.of(matrix, dense=dict(base.matrix_dense), vector=vector, read=base.bytes_read,
                      written=base.bytes_written)
        qv, _ = _q_k(node, spec)
        bh = math.prod(_int_of(s) for s in qv.shape[:-2])
        tq, tk = _int_of(qv.shape[-2]), _int_of(_q_k(node, spec)[1].shape[-2])
        rec.cost = with_pairs(rec.cost, bh, tq, tk, mc.pairs)
        rec.sym, rec.cost_expr = sym.formulas(), sym.as_strings()
        where = (f"counted per call from the real mask {_mask_arg(node, spec).name} under profile() (symbol "
                 f"{name}; without values: {mc.pairs * bh})")
        if not mc.unknown:  # a size-only mask of a dynamic graph: exact at the compile-time sizes
            rec.note = "; ".join(filter(None, (rec.note, f"attn_mask pairs exact at the compile-time sizes, {where}")))
            return
        kinds = {k for k, _ in mc.unknown}
        rec.flag(UPPER_BOUND if mc.pairs < mc.dense else INPUTS if kinds == {"inputs"} else UNRECOGNISED)
        details = sorted({f"{k}: {d}" for k, d in mc.unknown})
        rec.note = f"{rec.note} ({'; '.join(details[:3])}); {where}"


def _signature(module) -> tuple:
    """A mask subgraph's structure with node names replaced by positions (two copies of one mask
    computation, e.g. one per layer, have the same signature)."""
    pos = {n: i for i, n in enumerate(module.graph.nodes)}

    def arg(a):
        if isinstance(a, torch.fx.Node):
            return ("node", pos[a])
        if isinstance(a, (list, tuple)):
            return tuple(arg(x) for x in a)
        if isinstance(a, dict):
            return tuple(sorted((k, arg(v)) for k, v in a.items()))
        return repr(a)

    return tuple((n.op, str(n.target) if n.op != "placeholder" else "", arg(n.args), arg(n.kwargs))
                 for n in module.graph.nodes)


# a mask's inputs copied to the host per call when they are at most this large; above it the count is made
# on the device at the call (a few small kernels, 8 bytes read when the step is done).  A host copy costs
# its bytes twice on the host (the copy, then the move out of the pinned pool when the step lands):
# transformers' continuous batching passes a [1, 1, 64, 4160] bf16 mask per decode step (532 KB), whose
# copies took 0.4 ms of a 3 ms engine step on an H200 (bench/probe/cb_cost_diag.py); a padding mask
# [batch, T] of int64 is a few KB.
_DEFER_BYTES = 64 << 10


def _on_host(module):
    """``module`` (a mask subgraph) made to run on host tensors: device arguments and constants on the
    host (memoised on the module)."""
    host = getattr(module, "_graphmfu_host", None)
    if host is not None:
        return host
    import copy

    host = copy.deepcopy(module)
    for n in host.graph.nodes:
        if "device" in n.kwargs:
            n.kwargs = {**n.kwargs, "device": torch.device("cpu")}
        if n.op == "get_attr":
            obj = host
            *path, last = n.target.split(".")
            for p in path:
                obj = getattr(obj, p)
            v = getattr(obj, last)
            if isinstance(v, torch.Tensor):
                setattr(obj, last, v.cpu())
    host.recompile()
    module._graphmfu_host = host
    return host


_NUMPY_CHECKS = 3  # the first calls of each mask subgraph are counted with NumPy and with torch, and compared


def _host_count(module, copies, lead: int, tq: int, tk: int) -> int:
    """The pairs a mask subgraph keeps on host copies of its inputs: with NumPy (rules/host_eval.py, a
    few microseconds) once its first ``_NUMPY_CHECKS`` calls have given torch's count; with torch on the
    host when NumPy cannot evaluate it or ever disagreed."""
    he = sys.modules.get("graphmfu.rules.host_eval")
    state = module.__dict__.get("_graphmfu_numpy")  # [numpy fn or None, checks left]
    if state is None:
        state = module._graphmfu_numpy = [he.numpy_fn(module) if he is not None else None, _NUMPY_CHECKS]
    fn, n = state[0], None
    if fn is not None:
        try:
            n = kept_total(fn(*copies), lead, tq, tk)
        except Exception:  # noqa: BLE001 - torch counts it
            state[0] = None
        if n is not None and state[1] <= 0:
            return n
    with torch.no_grad():
        ref = int(kept_total(_on_host(module)(*copies), lead, tq, tk))
    if state[0] is not None:
        state[1] -= 1
        if n != ref:  # NumPy's evaluation differs from torch's: torch from now on
            state[0] = None
    return ref


def _guarded(fn, hint):
    def probe(inputs):
        try:
            return fn(inputs)
        except Exception:  # noqa: BLE001 - never break the call: the count without values
            return hint
    return probe


PROBE_RANGE = _inductor.PROBE_RANGE


def _probe_range():
    """The profiler range around a probe's own ops (graphmfu's overhead, not the model's work: the join
    leaves them out); nothing when no profiler runs (the meter alone: a range costs two ops per call)."""
    if not _inductor.profiler_running():
        import contextlib

        return contextlib.nullcontext()
    return torch.profiler.record_function(_inductor.PROBE_RANGE)


def dims_of(sizes) -> tuple:
    """(leading entries, Tq, Tk) of an attention's score shape ``(*lead, Tq, Tk)``: ints, or sympy formulas
    of the graph's size symbols."""
    import sympy

    exprs = [_sym_or_int(x) for x in sizes]
    lead = sympy.Mul(*exprs[:-2]) if len(exprs) > 2 else 1
    lead = int(lead) if getattr(lead, "is_Integer", False) or isinstance(lead, int) else lead
    return lead, exprs[-2], exprs[-1]


def _sym_or_int(x):
    if isinstance(x, torch.SymInt):
        e = _inductor.sym_value(x)
        return int(e) if getattr(e, "is_Integer", False) else e
    return int(x)
