"""The house: one record, views derived from (record, device), sessions as objects, and the
structure rules (no import cycles, private torch APIs only in the _inductor package)."""
import ast
import threading
from pathlib import Path

import networkx as nx
import pytest
import torch
import torch.nn as nn

import graphmfu
from graphmfu.capture import Backend
from graphmfu.registry import Registry

ROOT = Path(__file__).resolve().parents[1]


class Tiny(nn.Module):
    def __init__(self, d=64):
        super().__init__()
        self.a, self.b = nn.Linear(d, 2 * d), nn.Linear(2 * d, d)

    def forward(self, x):
        return self.b(torch.relu(self.a(x))).softmax(-1)


class Other(nn.Module):
    def __init__(self):
        super().__init__()
        self.c = nn.Linear(32, 48)

    def forward(self, x):
        return torch.tanh(self.c(x)) * 3


@pytest.fixture
def timed(fresh):
    m, x = Tiny(), torch.randn(32, 64)
    cm = torch.compile(m, backend=graphmfu.backend)
    with torch.no_grad():
        cm(x)
        with graphmfu.profile() as p, graphmfu.stage("infer"):
            for _ in range(2):
                cm(x)
    return p


def _utilisation(rep):
    return ([(k["name"], k["stage"], k["mfu"], k["mbu"], k["sol"], k["bound"], k["t_min_s"]) for k in rep.kernels],
            [(s["name"], s["mfu"], s["mbu"], s["mfu_busy"]) for s in rep.stages],
            [(n["name"], n["bound"], n["t_min_s"], n["ridge"]) for n in rep.nodes])


@pytest.mark.parametrize("target", ["b200", "h100-sxm", "a100-80gb"])
def test_saved_report_replaced_on_another_device_equals_direct(timed, tmp_path, target):
    direct = timed.report(device=target)
    measured_here = timed.report(device="h200")
    back = graphmfu.Report.load(measured_here.save(tmp_path / "r.json"))
    moved = back.on(target)
    assert moved.device == direct.device
    assert _utilisation(moved) == _utilisation(direct)
    # the kernels are the same measurement: time unchanged, MFU scales with the peak
    k_d = {(k["graph"], k["index"], k["stage"]): k for k in direct.kernels}
    for k in measured_here.kernels:
        if k["t_matrix_s"]:
            ratio = graphmfu.get_device("h200").matrix_tflops("fp32") / graphmfu.get_device(target).matrix_tflops("fp32")
            assert k_d[(k["graph"], k["index"], k["stage"])]["mfu"] == pytest.approx(k["mfu"] * ratio, rel=1e-12)


def test_saved_document_holds_the_record_and_derives_the_rest(timed, tmp_path):
    rep = timed.report(device="h100-sxm")
    doc = rep.to_dict()
    rec = doc["record"]
    text = str(rec)
    for derived in ("'mfu'", "'mbu'", "'sol'", "'t_min_s'", "'bound'", "'ridge'"):
        assert derived not in text, derived  # the record is device-free
    assert rec["timing"]["launches"] and all("time_s" in r for r in rec["timing"]["launches"])


def test_unknown_suffix_is_one_clear_error(timed, tmp_path):
    rep = timed.report()
    with pytest.raises(graphmfu.GraphMFUError, match="unknown file ending"):
        rep.save(tmp_path / "r.xlsx")
    k = rep.save(tmp_path / "r.kernels.csv").read_text().splitlines()
    assert len(k) == 1 + len(rep.kernels) and k[0].startswith("name,")
    assert "per stage" not in rep.save(tmp_path / "r.md").read_text() and "## stages" in (tmp_path / "r.md").read_text()


def test_two_profile_sessions_one_after_another_do_not_mix(fresh):
    a, b = Tiny(), Other()
    xa, xb = torch.randn(8, 64), torch.randn(8, 32)
    ca, cb = torch.compile(a, backend=graphmfu.backend), torch.compile(b, backend=graphmfu.backend)
    with torch.no_grad():
        ca(xa), cb(xb)
        ga = {g.id for g in graphmfu.registry.DEFAULT.graphs if any(n.module == "a" for n in g.nodes)}
        with graphmfu.profile() as p1:
            for _ in range(3):
                ca(xa)
        with graphmfu.profile() as p2:
            for _ in range(2):
                cb(xb)
    r1, r2 = p1.report(), p2.report()
    assert {k["graph"] for k in r1.kernels} == ga and {k["calls"] for k in r1.kernels} == {3}
    assert not {k["graph"] for k in r2.kernels} & ga and {k["calls"] for k in r2.kernels} == {2}
    assert r1.stages == [] and r2.coverage()["time_attributed"] == 1.0


def test_reset_never_joins_old_graphs_to_new_ones(fresh):
    """After reset() new graphs restart at id 0.  A model compiled (warmed up) before the reset can still
    be profiled: its graph is adopted under a new id; it must never be joined to the new model's graph 0
    (it used to be: a stage showed 1.05M FLOPs and 22% MFU; true 65,536), nor be refused."""
    old, new = Tiny(), Other()
    xo, xn = torch.randn(8, 64), torch.randn(8, 32)
    co = torch.compile(old, backend=graphmfu.backend)
    with torch.no_grad():
        co(xo)
        graphmfu.reset()
        assert graphmfu.registry.DEFAULT.graphs == []
        cn = torch.compile(new, backend=graphmfu.backend)
        cn(xn)
        with graphmfu.profile() as p, graphmfu.stage("s"):
            co(xo)
            cn(xn)
    rep = p.report()
    # old: a [8,64]x[64,128] and a [8,128]x[128,64] GEMM, 2*8*64*128 each = 131072 each; new: 2*8*32*48 = 24576
    assert rep.stages[0]["flops"] == 2 * 131072 + 24576
    by_graph = {}
    for k in rep.kernels:
        by_graph.setdefault(k["graph"], set()).add(k["module"])
    assert len(by_graph) == 2  # the old model's graph (adopted) and the new one's
    assert all(not (mods & {"a", "b"} and "c" in mods) for mods in by_graph.values())
    assert rep.coverage()["time_attributed"] == 1.0
    assert len({g["id"] for g in rep.data["graphs"]}) == len(rep.data["graphs"])  # ids stay unique


def _traced(model, x):
    return torch.fx.symbolic_trace(model), [x]


def test_a_compile_in_another_thread_never_records_into_this_threads_kernel_list():
    """While this thread is inside a compile's kernel hook, another thread compiles a different graph
    through the backend: each compile records exactly its own kernels.  (The previous hook patched
    module globals for the duration of a compile, so the other thread's kernels landed in this list.)
    Inductor 2.11 itself cannot run two compiles at once (its config patcher is process-wide), so the
    other compile runs while this one is open rather than in the same instant."""
    from graphmfu import _inductor

    torch._dynamo.reset()
    m, x = Other(), torch.randn(16, 32)
    alone = Registry()
    with torch.no_grad():
        Backend(registry=alone)(*_traced(m, x))
    expected = [[k.name for k in g.kernels] for g in alone.graphs]
    assert expected and expected[0]
    other, errors = Registry(), []

    def work():
        try:
            with torch.no_grad():
                Backend(registry=other)(*_traced(m, x))
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    with _inductor.kernel_hook() as mine:
        t = threading.Thread(target=work)
        t.start()
        t.join()
    assert not errors, errors
    assert mine == []
    assert [[k.name for k in g.kernels] for g in other.graphs] == expected


def test_eager_recording_writes_nothing_into_the_users_autograd_graph():
    from graphmfu import eager

    m, x = Tiny(), torch.randn(4, 64, requires_grad=True)
    out = []
    g = eager.record(m, lambda: out.append(m(x)), "s", Registry(), "cpu")
    node = out[0].grad_fn
    seen = set()
    while node is not None and node not in seen:
        seen.add(node)
        assert dict(node.metadata) == {}, node.metadata
        node = node.next_functions[0][0] if node.next_functions else None
    assert g is not None and any(op.module == "a" for op in g.nodes)


# --------------------------------------------------------------------------- structure


def _imports(path: Path, pkg_modules: set) -> set:
    """graphmfu modules imported by ``path``, at module level and inside functions alike (an import inside
    a function still closes a circle: it only hides it)."""
    tree = ast.parse(path.read_text())
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("graphmfu"):
            for a in node.names:
                sub = f"{node.module}.{a.name}"
                out.add(sub if sub in pkg_modules else node.module)
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("graphmfu")}
    return out


def _package_modules() -> dict:
    """Every module of the package, the rule files (``rules/``, shipped as ``graphmfu.rules``) included."""
    mods = {}
    for p in (ROOT / "graphmfu").rglob("*.py"):
        rel = p.relative_to(ROOT).with_suffix("")
        name = ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)
        mods[name] = p
    for p in (ROOT / "rules").rglob("*.py"):
        rel = p.relative_to(ROOT / "rules").with_suffix("")
        parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
        mods[".".join(("graphmfu", "rules", *parts))] = p
    return mods


def test_no_import_cycles_and_no_names_from_the_package_init():
    mods = _package_modules()
    g = nx.DiGraph()
    for name, path in mods.items():
        for dep in _imports(path, set(mods)):
            if name != "graphmfu" and dep == "graphmfu":
                raise AssertionError(f"{name} imports a name from graphmfu/__init__.py")
            if dep in mods and dep != name and name != "graphmfu":
                g.add_edge(name, dep)
    cycles = list(nx.simple_cycles(g))
    assert not cycles, cycles
    # _inductor is the leaf package every private torch API lives in: its rooms import nothing of graphmfu's
    # outside it, and none imports the package's __init__ (the __init__ imports only its rooms)
    inductor = {name: path for name, path in mods.items() if name.startswith("graphmfu._inductor.")}
    assert inductor, "graphmfu/_inductor/ has no rooms"
    for name, path in {"graphmfu._inductor": mods["graphmfu._inductor"], **inductor}.items():
        deps = _imports(path, set(mods))
        assert not [d for d in deps if d.startswith("graphmfu") and d not in inductor], (name, sorted(deps))


def test_private_torch_apis_only_in_inductor_module():
    import re

    bad = []
    inductor = ROOT / "graphmfu" / "_inductor"
    for base in ("graphmfu", "rules"):
        for p in (ROOT / base).rglob("*.py"):
            if inductor in p.parents:
                continue
            for i, line in enumerate(p.read_text().splitlines(), 1):
                if re.search(r"torch\._[A-Za-z]", line) or re.search(r"\._(schema|parameters|buffers)\b", line):
                    bad.append(f"{p.relative_to(ROOT)}:{i}: {line.strip()}")
    assert not bad, bad


def test_view_ops_declared_once_in_rules():
    import re

    hits = []
    for base in ("graphmfu", "rules"):
        for p in (ROOT / base).rglob("*.py"):
            src = p.read_text()
            if re.search(r"[\"']_reshape_alias[\"']|\|_reshape_alias\|", src):
                hits.append(p.name)
    assert hits == ["memory.py"], hits
