"""Costs and the rule registry.

Conventions (stated once, here; docs/conventions.md repeats them for users):

* 1 fused multiply-add = 2 FLOPs.  An ``m x k @ k x n`` product is ``2*m*n*k``.
* **Matrix FLOPs** (``flops``) are the work of matrix units: mm/bmm/addmm/
  baddbmm/_scaled_mm, convolutions, and the two products of attention
  (``Q @ K^T`` and ``P @ V``).  They are the MFU numerator and what
  ``torch.utils.flop_counter.FlopCounterMode`` and 6ND count.
* **Vector FLOPs** (``vector_flops``) are everything else that computes:
  pointwise ops, reductions, softmax, norms, the bias add of ``addmm``.
  Per-element counts live in ``rules/pointwise.py``; a transcendental
  (exp, log, tanh, erf, sin, rsqrt, sqrt, ...) counts 1 FLOP per element (one
  special-function instruction); composite activations count their parts
  (sigmoid = exp + add + div = 3, silu = sigmoid + mul = 4, gelu(erf) = 5 ...).
* Matrix and vector FLOPs are kept **by dtype** of the operands
  (``bf16``, ``fp16``, ``fp32``, ``fp64``, ``fp8``, ``int8``, ``int``, ``bool``),
  so the roofline divides each by the peak of the unit that does it.
* **Attention** reports ``flops_dense`` (every score of ``Tq x Tk`` computed) and
  ``flops`` (effective: a causal mask counts only the lower triangle, a sliding
  window only its band).  For every other op the two are equal.
  Attention backward = 4 products (dV, dP, dQ, dK) = 2x forward.  The flash
  backward's recomputation of ``Q @ K^T`` is recompute (HFU), not model work,
  and is not counted; FlopCounterMode counts it (5 products, 2.5x forward), so
  on attention backward the two differ by exactly that product.
* **Bytes** are unique DRAM traffic, a lower bound: every tensor input read once
  plus every output written once.  Views (view, reshape, t, permute, expand,
  as_strided, slice, ...) move 0 bytes.  Fusion (kernel-level bytes) is a later
  stage of the pipeline, not a rule's business.
* Sizes may be Python ints or sympy expressions (dynamic shapes); a rule is
  plain arithmetic and works for both.

A rule is a small pure function registered on ATen ops with ``@rule(...)``.
It receives the op's arguments with tensors replaced by :class:`TensorSpec`
(shape + dtype), the outputs as ``out=`` and returns a :class:`Cost`.
"""
from __future__ import annotations

import dataclasses
import functools
import importlib.util
import math
import os
import sys
import threading
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import torch

from graphmfu import _inductor
from graphmfu.errors import GraphMFUError
from graphmfu.hardware.dtypes import torch_dtype_names

# --------------------------------------------------------------------------- dtypes

def dtype_name(dtype: torch.dtype | None) -> str:
    """Short name of a dtype as used in costs and the hardware table (``hardware/dtypes.csv``)."""
    if dtype is None:
        return "fp32"
    name = torch_dtype_names().get(dtype)
    if name is not None:
        return name
    return "int" if not dtype.is_floating_point else "fp32"


def itemsize(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype, device="meta").element_size()


# --------------------------------------------------------------------------- tensors


@dataclasses.dataclass(frozen=True)
class TensorSpec:
    """Shape and dtype of a tensor; sizes are ints or sympy expressions."""

    shape: tuple
    dtype: torch.dtype

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def numel(self):
        return prod(self.shape)

    @property
    def itemsize(self) -> int:
        return _itemsize_cached(self.dtype)

    @property
    def nbytes(self):
        return self.numel * self.itemsize

    def __repr__(self) -> str:
        return f"{dtype_name(self.dtype)}{list(self.shape)}"


@functools.lru_cache(maxsize=None)
def _itemsize_cached(dtype: torch.dtype) -> int:
    return itemsize(dtype)


def prod(xs: Iterable) -> Any:
    out = 1
    for x in xs:
        out = out * x
    return out


def tensors(obj) -> list[TensorSpec]:
    """Every TensorSpec inside obj (nested lists/tuples/dicts), in order."""
    if isinstance(obj, TensorSpec):
        return [obj]
    if isinstance(obj, (list, tuple)):
        return [t for o in obj for t in tensors(o)]
    if isinstance(obj, dict):
        return [t for o in obj.values() for t in tensors(o)]
    return []


def nbytes(obj) -> Any:
    """Bytes of every tensor inside obj."""
    return sum((t.nbytes for t in tensors(obj)), 0)


def io_bytes(ins, out) -> tuple:
    """(bytes read, bytes written): every tensor in ``ins`` read once, every tensor in ``out`` written once."""
    return nbytes(ins), nbytes(out)


@dataclasses.dataclass(frozen=True)
class Subgraph:
    """A graph passed to a higher-order op (a ``cond`` branch, an ``invoke_subgraph`` body): its cost
    by the same rules (recomputed forward nodes excluded), and the ops in it that have no rule."""

    cost: "Cost"
    unknown: tuple = ()


# --------------------------------------------------------------------------- Cost


def _merge(a: tuple, b: tuple) -> tuple:
    if not a:
        return b
    if not b:
        return a
    d = dict(a)
    for k, v in b:
        d[k] = d.get(k, 0) + v
    return tuple(sorted(d.items()))


def _sum_keys(part: tuple) -> tuple:
    d: dict = {}
    for k, v in part:
        d[k] = d.get(k, 0) + v
    return tuple(sorted(d.items()))


def _norm(m: Mapping | None) -> tuple:
    if not m:
        return ()
    return tuple(sorted((k, v) for k, v in m.items() if not _is_zero(v)))


def _is_zero(v) -> bool:
    try:
        return bool(v == 0)
    except TypeError:
        return False


@dataclasses.dataclass(frozen=True)
class Cost:
    """What one op (or a sum of ops) needs: FLOPs by unit and dtype, and bytes.

    ``matrix``/``matrix_dense``/``vector`` are sorted ``(dtype, flops)`` tuples.
    Build with :meth:`Cost.of`; add with ``+``.
    """

    matrix: tuple = ()
    matrix_dense: tuple = ()
    vector: tuple = ()
    bytes_read: Any = 0
    bytes_written: Any = 0

    @classmethod
    def of(
        cls,
        matrix: Mapping | None = None,
        *,
        dense: Mapping | None = None,
        vector: Mapping | None = None,
        read: Any = 0,
        written: Any = 0,
    ) -> "Cost":
        """``dense`` defaults to ``matrix`` (only attention makes them differ)."""
        m = _norm(matrix)
        return cls(m, _norm(dense) if dense is not None else m, _norm(vector), read, written)

    # totals -------------------------------------------------------------
    @property
    def flops(self):
        return sum((v for _, v in self.matrix), 0)

    @property
    def flops_dense(self):
        return sum((v for _, v in self.matrix_dense), 0)

    @property
    def vector_flops(self):
        return sum((v for _, v in self.vector), 0)

    @property
    def bytes(self):
        return self.bytes_read + self.bytes_written

    def __add__(self, other: "Cost") -> "Cost":
        if not isinstance(other, Cost):
            return NotImplemented
        return Cost(
            _merge(self.matrix, other.matrix),
            _merge(self.matrix_dense, other.matrix_dense),
            _merge(self.vector, other.vector),
            self.bytes_read + other.bytes_read,
            self.bytes_written + other.bytes_written,
        )

    def __radd__(self, other):
        if other == 0:
            return self
        return NotImplemented

    # symbolic -----------------------------------------------------------
    def _values(self):
        for part in (self.matrix, self.matrix_dense, self.vector):
            for _, v in part:
                yield v
        yield self.bytes_read
        yield self.bytes_written

    @property
    def is_symbolic(self) -> bool:
        return any(not isinstance(v, (int, float)) for v in self._values())

    def map(self, fn: Callable[[Any], Any]) -> "Cost":
        def mp(part):
            return tuple((k, fn(v)) for k, v in part)

        return Cost(mp(self.matrix), mp(self.matrix_dense), mp(self.vector),
                    fn(self.bytes_read), fn(self.bytes_written))

    def evaluate(self, hints: Mapping) -> "Cost":
        """Replace symbols by ints (``hints``: sympy Symbol -> int)."""
        return self.map(lambda v: evaluate(v, hints))

    def relabel(self, names: Mapping[str, str]) -> "Cost":
        """Matrix FLOPs of dtype ``k`` counted as ``names[k]`` (fp32 products run as tf32)."""
        def rl(part):
            return _sum_keys(tuple((names.get(k, k), v) for k, v in part))
        return Cost(rl(self.matrix), rl(self.matrix_dense), self.vector, self.bytes_read, self.bytes_written)

    def formulas(self) -> dict:
        """``to_dict`` with every value as a string formula of the size symbols (dynamic shapes)."""
        d = self.to_dict()
        return {k: ({dt: str(v) for dt, v in d[k].items()} if isinstance(d[k], dict) else str(d[k])) for k in d}

    def to_dict(self) -> dict:
        """The JSON form (ints; symbolic costs are stored evaluated, their formula beside them)."""
        return {"matrix": dict(self.matrix), "dense": dict(self.matrix_dense), "vector": dict(self.vector),
                "read": self.bytes_read, "written": self.bytes_written}

    @classmethod
    def from_dict(cls, d: Mapping) -> "Cost":
        return cls(tuple(sorted(d["matrix"].items())), tuple(sorted(d["dense"].items())),
                   tuple(sorted(d["vector"].items())), d["read"], d["written"])

    def as_strings(self) -> dict:
        return {
            "flops": str(self.flops),
            "flops_dense": str(self.flops_dense),
            "vector_flops": str(self.vector_flops),
            "bytes_read": str(self.bytes_read),
            "bytes_written": str(self.bytes_written),
        }


ZERO = Cost()


@functools.lru_cache(maxsize=4096)
@functools.lru_cache(maxsize=4096)
def _formula(text: str):
    """A formula's text parsed once (costs are evaluated per call: the parse is the slow part)."""
    import sympy

    return sympy.sympify(text)


def symbolic_cost(formulas: Mapping) -> Cost:
    """``Cost.formulas()`` output back as a Cost of sympy expressions (to add and re-evaluate)."""
    def part(k):
        return tuple(sorted((dt, _formula(v)) for dt, v in formulas[k].items()))
    return Cost(part("matrix"), part("dense"), part("vector"), _formula(formulas["read"]),
                _formula(formulas["written"]))


def cost_from_formulas(formulas: Mapping, sizes: Mapping[str, int]) -> Cost:
    """The Cost of ``Cost.formulas()`` output for one call's size symbol values (``{"s0": 24}``)."""
    def ev(text):
        return _evaluate_text(text, sizes)

    return Cost(*(tuple(sorted((dt, ev(v)) for dt, v in formulas[k].items())) for k in ("matrix", "dense", "vector")),
                ev(formulas["read"]), ev(formulas["written"]))


@functools.lru_cache(maxsize=4096)
def _polynomial(text: str):
    """A formula as ``(symbol names, [(exponents, Fraction coefficient)])`` when it is a polynomial with
    rational coefficients (evaluated per call in exact integer arithmetic, no sympy); a constant as
    ``((), value)``; None otherwise (evaluated through sympy)."""
    from fractions import Fraction

    import sympy

    e = _formula(text)
    syms = sorted(e.free_symbols, key=str)
    if not syms:
        return (), e
    try:
        poly = sympy.Poly(e, *syms)
        terms = []
        for mon, c in poly.terms():
            if not c.is_Rational:
                return None
            terms.append((tuple(mon), Fraction(int(c.p), int(c.q))))
    except sympy.PolynomialError:
        return None
    return tuple(str(x) for x in syms), terms


@functools.lru_cache(maxsize=4096)
def _compiled(text: str):
    """A polynomial formula compiled to Python integer arithmetic: ``f(sizes) -> int`` (a float when a
    rational coefficient leaves a remainder); a constant as itself; None when not a polynomial.  Exact:
    the coefficients are brought to one denominator, the numerator is an integer sum."""
    import math

    fast = _polynomial(text)
    if fast is None:
        return None
    names, terms = fast
    if not names:
        try:
            return int(terms) if terms.is_integer else float(terms)
        except TypeError:
            return None
    den = 1
    for _, c in terms:
        den = den * c.denominator // math.gcd(den, c.denominator)
    parts = []
    for mon, c in terms:
        factors = [str(int(c * den))] + [f"v{i}" if k == 1 else f"v{i}**{k}" for i, k in enumerate(mon) if k]
        parts.append("*".join(factors))
    head = "".join(f"    v{i} = int(sizes[{n!r}])\n" for i, n in enumerate(names))
    body = " + ".join(parts) or "0"
    ret = "n" if den == 1 else f"(n // {den} if n % {den} == 0 else n / {den})"
    src = f"def f(sizes):\n{head}    n = {body}\n    return {ret}\n"
    env: dict = {}
    exec(compile(src, f"<graphmfu formula {text[:60]}>", "exec"), env)  # noqa: S102 - our own polynomial text
    f = env["f"]
    f.names = names
    return f


def _evaluate_text(text: str, sizes: Mapping[str, int]):
    fast = _compiled(text)
    if fast is not None:
        if not callable(fast):
            return fast
        try:
            return fast(sizes)
        except KeyError:
            missing = sorted(n for n in fast.names if n not in sizes)
            raise GraphMFUError(f"no value for symbols {missing} in {text}") from None
    import sympy

    subs = {sympy.Symbol(k): int(v) for k, v in sizes.items()}
    r = sympy.sympify(_formula(text).xreplace(subs))  # a bare Symbol comes back as a plain int
    try:
        return int(r) if r.is_integer else float(r)
    except TypeError as e:  # free symbols left
        raise GraphMFUError(f"no value for symbols {sorted(map(str, r.free_symbols))} in {text}") from e


def dim_at(d, subs: Mapping):
    """A shape entry as a record stores it (an int, or a formula's text: a dynamic graph's size) at the symbol
    values ``subs`` (sympy Symbol -> int)."""
    return evaluate(_formula(d), subs) if isinstance(d, str) else d


def evaluate(v, hints: Mapping):
    if isinstance(v, (int, float)):
        return v
    if hasattr(v, "xreplace"):
        import sympy

        r = sympy.sympify(v.xreplace(hints))  # a bare Symbol comes back as a plain int
        try:
            return int(r) if r.is_integer else float(r)
        except TypeError as e:  # free symbols left
            raise GraphMFUError(f"no value for symbols {sorted(map(str, r.free_symbols))} in {v}") from e
    return int(v)


# --------------------------------------------------------------------------- registry


@dataclasses.dataclass(frozen=True)
class Rule:
    fn: Callable[..., Cost]
    origin: str  # "module:function"

    def __call__(self, *args, **kwargs) -> Cost:
        return self.fn(*args, **kwargs)


@dataclasses.dataclass(frozen=True)
class Flag:
    """A property of a node worth saying in the report (e.g. attention counted dense because its mask is
    not visible).  ``note`` goes on each flagged node; ``summary`` (with ``{n}``) into the report's
    notes; coverage counts flagged nodes under ``name``."""
    name: str
    note: str
    summary: str


@dataclasses.dataclass(frozen=True)
class OpInfo:
    """What graphmfu knows about an op besides its cost, declared beside its rule (``rules/``)."""
    view: bool = False  # metadata only: moves no bytes, launches no kernel, never a store
    no_kernel: bool = False  # launches no kernel of its own (allocation, composite wrappers)
    gather: bool = False  # reads only the picked elements of its first argument (a table)
    flag: str | None = None  # a Flag name every node of this op carries
    split_bytes: Callable | None = None  # (node, kernels_of, me, tensor_bytes, inputs) -> (written, not read):
    # bytes of one kernel when Inductor lowers one node of this op into several kernels
    values: Callable | None = None  # (args, kwargs, cost) -> (cost, [Flag]): the cost refined from the real
    # argument values a recorder sees (eager: an attention mask's kept pairs); flags when values are not real


class RuleRegistry:
    """ATen op (overload or packet) -> Rule, plus what is known of each op (``OpInfo``), the report
    flags and the graph passes the rule files declare.  Duplicate registration is an error."""

    def __init__(self):
        self._rules: dict[Any, Rule] = {}
        self._info: dict[Any, OpInfo] = {}
        self._names: dict[str, OpInfo] = {}  # "namespace::name" (the profiler's op name) -> info
        self.flags: dict[str, Flag] = {}
        self.graph_passes: list[Callable] = []

    def declare(self, op, **info) -> None:
        """Declare what is known of ``op`` (OpInfo fields); merges with earlier declarations."""
        _check_op(op)
        key = getattr(op, "overloadpacket", op)
        merged = OpInfo(**{**dataclasses.asdict(self._info.get(key, OpInfo())), **info})
        self._info[key] = merged
        self._names[event_name(op_name(key))] = merged

    def info(self, target) -> OpInfo:
        """What is known of an op (an overload, packet, or the profiler's ``aten::name``)."""
        if isinstance(target, str):
            return self._names.get(target, _NO_INFO)
        return self._info.get(getattr(target, "overloadpacket", target), _NO_INFO)

    def flag(self, name: str, note: str, summary: str) -> Flag:
        if name in self.flags:
            raise GraphMFUError(f"report flag {name!r} is declared twice")
        self.flags[name] = f = Flag(name, note, summary)
        return f

    def graph_pass(self, fn: Callable) -> Callable:
        """Register ``fn(gm, records)``: runs after the rules on every captured graph (e.g. to flag
        attention that survives only in decomposed form)."""
        self.graph_passes.append(fn)
        return fn

    def register(self, op, fn: Callable[..., Cost], *, override: bool = False) -> None:
        _check_op(op)
        key = op
        if key in self._rules and not override:
            old = self._rules[key]
            raise GraphMFUError(
                f"a rule for {op_name(op)} is already registered ({old.origin}); "
                f"pass override=True to replace it"
            )
        self._rules[key] = Rule(fn, f"{fn.__module__}:{getattr(fn, '__qualname__', fn)}")

    def register_library(self, rules: Mapping[str, Callable]) -> list:
        """Register ``{"namespace::op": rule}`` for the ops that exist now (a library defines its custom
        ops when it is imported); idempotent; returns the names registered by this call."""
        done = []
        for name, fn in rules.items():
            ns, op = name.split("::")
            try:
                packet = getattr(getattr(torch.ops, ns), op)
            except (AttributeError, RuntimeError):  # not defined (yet)
                continue
            if self.lookup(packet) is not None:
                continue
            fn.__qualname__ = f"{fn.__name__}[{name}]"
            self.register(packet, fn)
            done.append(name)
        return done

    def lookup(self, target) -> Rule | None:
        r = self._rules.get(target)
        if r is None:
            packet = getattr(target, "overloadpacket", None)
            if packet is not None:
                r = self._rules.get(packet)
        return r

    def __contains__(self, op) -> bool:
        return self.lookup(op) is not None

    def ops(self) -> list:
        return list(self._rules)


_NO_INFO = OpInfo()


def _check_op(op) -> None:
    if not _inductor.is_op(op):
        raise GraphMFUError(
            f"rule() takes ATen ops such as torch.ops.aten.mm or torch.ops.mylib.op, got {op!r}"
        )


def op_name(op) -> str:
    """The ATen overload name as torch prints it: ``aten.mm.default`` (``higher_order.cond``)."""
    kind = _inductor.op_kind(op)
    if kind in ("overload", "packet"):
        return str(op)
    if kind == "higher_order":
        return f"higher_order.{op.name()}"
    return getattr(op, "__name__", str(op))


@functools.lru_cache(maxsize=None)
def event_name(op: str) -> str:
    """The profiler's name of an op: ``aten.mm.default`` -> ``aten::mm``."""
    parts = op.split(".")
    return f"{parts[0]}::{parts[1]}" if len(parts) >= 2 else op


REGISTRY = RuleRegistry()


def rule(*ops, override: bool = False):
    """Register the decorated function as the cost rule of ``ops``.

    >>> @graphmfu.rule(torch.ops.mylib.fused_gemm)
    ... def fused_gemm(a, b, *, out):
    ...     m, k = a.shape; n = b.shape[1]
    ...     return Cost.of({dtype_name(a.dtype): 2 * m * n * k}, read=a.nbytes + b.nbytes, written=out.nbytes)
    """
    if not ops:
        raise GraphMFUError("rule() needs at least one op, e.g. @graphmfu.rule(torch.ops.mylib.op)")
    for op in ops:
        _check_op(op)

    def deco(fn):
        for op in ops:
            REGISTRY.register(op, fn, override=override)
        return fn

    return deco


def table_rule(rows: Mapping[Any, Any], make: Callable[[Any], Callable[..., Cost]]) -> None:
    """Register one rule per table row: ``make(value)`` builds the function."""
    for op, value in rows.items():
        fn = make(value)
        fn.__qualname__ = f"{make.__name__}[{op_name(op)}]"
        REGISTRY.register(op, fn)


# --------------------------------------------------------------------------- loading


def builtin_rules_dir() -> Path:
    """``rules/`` of the source tree, or ``graphmfu/rules`` inside a wheel."""
    here = Path(__file__).resolve().parent
    for cand in (here / "rules", here.parent / "rules"):
        if (cand / "matmul.py").is_file():
            return cand
    raise GraphMFUError(f"graphmfu's rules/ folder is missing (looked beside {here}); reinstall graphmfu")


_loaded: set[str] = set()


def _load_file(path: Path, modname: str) -> None:
    """Import ``path`` as ``modname``: a .py file, or a folder with an ``__init__.py`` as a package (its
    modules import each other relatively, as ``modname.<module>``)."""
    if path.is_dir():
        spec = importlib.util.spec_from_file_location(modname, path / "__init__.py",
                                                      submodule_search_locations=[str(path)])
    else:
        spec = importlib.util.spec_from_file_location(modname, path)
    if spec is None or spec.loader is None:  # importlib finds no loader for a name not ending .py
        raise GraphMFUError(f"rules file {path} is not a Python file: give a .py file that defines rules with "
                            f"@graphmfu.rule (to load_rules / GRAPHMFU_RULES)")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[modname] = mod

    def _unload():  # a failed import leaves nothing behind, the modules of its package neither
        for name in [n for n in sys.modules if n == modname or n.startswith(modname + ".")]:
            sys.modules.pop(name, None)

    try:
        spec.loader.exec_module(mod)
    except GraphMFUError:
        _unload()
        raise
    except Exception as e:
        _unload()
        raise GraphMFUError(
            f"could not import rules file {path}: {type(e).__name__}: {e} (fix the file, or remove it from "
            f"GRAPHMFU_RULES / load_rules())"
        ) from None


_load_lock = threading.RLock()


def ensure_builtin_rules() -> None:
    """Load rules/ (and GRAPHMFU_RULES files) once; marked loaded only when all loaded."""
    if "builtin" in _loaded:
        return
    with _load_lock:
        if "builtin" in _loaded or "builtin-loading" in _loaded:
            return
        _loaded.add("builtin-loading")
        try:
            from graphmfu._inductor import define_inductor_prims

            define_inductor_prims()
            d = builtin_rules_dir()
            # rule files (name.py) and rule packages (name/__init__.py), in the order of their names
            found = [*d.glob("*.py"), *(p.parent for p in d.glob("*/__init__.py"))]
            for f in sorted(found, key=lambda f: f.stem):
                if not f.name.startswith("_") and f"graphmfu.rules.{f.stem}" not in sys.modules:
                    _load_file(f, f"graphmfu.rules.{f.stem}")
            _loaded.add("builtin")
        finally:
            _loaded.discard("builtin-loading")
        for p in os.environ.get("GRAPHMFU_RULES", "").split(os.pathsep):
            if p:
                load_rules(p)


def load_rules(path: str | os.PathLike) -> None:
    """Import a user rules file (a .py using ``@graphmfu.rule``). Idempotent per path."""
    ensure_builtin_rules()
    p = Path(path).expanduser().resolve()
    if str(p) in _loaded:
        return
    if not p.is_file():
        raise GraphMFUError(f"rules file {path} does not exist (check the path given to load_rules / GRAPHMFU_RULES)")
    if p.suffix != ".py":
        raise GraphMFUError(f"rules file {path} is not a Python file: give a .py file that defines rules with "
                            f"@graphmfu.rule (to load_rules / GRAPHMFU_RULES)")
    _loaded.add(str(p))  # before the import: a rules file that loads itself does not recurse
    try:
        _load_file(p, f"graphmfu_user_rules_{abs(hash(str(p)))}")
    except BaseException:
        _loaded.discard(str(p))  # failed: a later call (after the fix) imports it again
        raise


def ceil_div(a, b):
    if isinstance(a, int) and isinstance(b, int):
        return -(-a // b)
    import sympy

    return sympy.ceiling(sympy.sympify(a) / b)


__all__ = [
    "Cost", "TensorSpec", "ZERO", "REGISTRY", "rule", "table_rule", "load_rules", "dtype_name",
    "tensors", "nbytes", "io_bytes", "prod", "op_name", "event_name", "ceil_div", "math", "OpInfo", "Flag",
    "Subgraph",
]
