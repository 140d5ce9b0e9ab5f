"""The HTML report (issue 12): one self-contained page whose numbers are the report's.  The page is parsed
with html.parser: every number cell carries its exact value (data-v), which must equal the report's field,
and its text must be that value as the text tables format it.  Headless Chromium (when installed) loads the
page offline and the interactive roofline renders."""
import shutil
import subprocess
from html.parser import HTMLParser

import pytest
import torch

import graphmfu
from tests.models import UpDown
from graphmfu.render import ms, num, pct

M, D, H = 32, 64, 128


def Tiny():
    return UpDown(D, H)


class Page(HTMLParser):
    """Tables by id -> rows (data-row) -> {data-k: (data-v, text)}; module-tree rows; external resources."""

    def __init__(self):
        super().__init__()
        self.tables, self.tree, self.external, self.sections = {}, {}, [], []
        self._table = self._row = self._cell = None
        self._text = ""

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag in ("script", "link", "img", "iframe") and any(
                str(a.get(k, "")).startswith(("http:", "https:", "//")) for k in ("src", "href")):
            self.external.append((tag, a))
        if tag == "section":
            self.sections.append(a.get("id"))
        if tag == "table":
            self._table = self.tables.setdefault(a.get("id"), {})
        elif tag == "tr" and self._table is not None and "data-row" in a:
            self._row = self._table.setdefault(a["data-row"], {})
        elif tag == "td" and self._row is not None and "data-k" in a:
            self._cell, self._text = (a["data-k"], a.get("data-v")), ""
        elif tag == "div" and "data-module" in a:
            self.tree[a["data-module"]] = float(a["data-v"])

    def handle_data(self, data):
        if self._cell is not None:
            self._text += data

    def handle_endtag(self, tag):
        if tag == "td" and self._cell is not None:
            k, v = self._cell
            self._row[k] = (None if v is None or v == "None" else float(v), self._text)
            self._cell = None
        elif tag == "tr":
            self._row = None
        elif tag == "table":
            self._table = None


@pytest.fixture(scope="module")
def timed():
    torch._dynamo.reset()
    graphmfu.reset()
    torch.manual_seed(0)
    m, x = Tiny(), torch.randn(M, D)
    cm = torch.compile(m, backend=graphmfu.backend)
    with torch.no_grad():
        cm(x)
        with graphmfu.profile() as p:
            for _ in range(2):
                with graphmfu.stage("outer"), graphmfu.stage("inner"):
                    cm(x)
    rep = p.report()
    graphmfu.reset()
    torch._dynamo.reset()
    return rep


def _parse(path) -> Page:
    page = Page()
    page.feed(path.read_text())
    return page


def test_report_page_numbers_are_the_reports(timed, tmp_path):
    path = timed.save(tmp_path / "r.html")
    page = _parse(path)
    assert page.external == []  # self-contained: nothing fetched from the network
    assert {"summary", "stages", "roofline", "modules", "kernels", "static", "coverage"} <= set(page.sections)
    # stages: every field, exact, and shown as the text tables show it
    stages = page.tables["stages-table"]
    assert set(stages) == {"outer", "outer/inner"}
    for s in timed.stages:
        row = stages[s["name"]]
        for k in ("calls", "span_s", "busy_s", "idle_share", "flops", "vector_flops", "bytes", "mfu", "mfu_busy",
                  "mbu", "memory_bound_share"):
            assert row[k][0] == s[k], k
        assert row["span_s"][1] == ms(s["span_s"]) and row["mfu"][1] == pct(s["mfu"])
        assert row["flops"][1] == num(s["flops"]) and row["bytes"][1] == num(s["bytes"], "B")
    # the matrix FLOPs of the stage are the hand count: two calls of two M x D x H products
    assert stages["outer"]["flops"][0] == 2 * 2 * (2 * M * D * H)
    # kernels: the top rows in order
    kernels = page.tables["kernels-table"]
    assert len(kernels) == len(timed.kernels)
    for i, k in enumerate(timed.kernels):
        row = kernels[str(i)]
        for f in ("calls", "time_s", "flops", "bytes", "intensity", "mfu", "mbu", "sol"):
            assert row[f][0] == k[f], (i, f)
        assert row["sol"][1] == pct(k["sol"])
    # static table: by module at depth 2
    static = page.tables["static-table"]
    for r in timed.by_module(2):
        row = static[r["module"]]
        assert row["flops"][0] == r["flops"] and row["t_min_s"][0] == r["t_min_s"]
        assert row["bytes"][0] == r["bytes_read"] + r["bytes_written"]
    # module tree: measured time per module, and each branch's own share is its time minus its children's
    times = {r["module"]: r["time_s"] for r in timed.data["module_times"]}
    for mod, t in times.items():
        assert page.tree[mod] == t
    own = page.tree.get("#own", 0.0)
    assert own == pytest.approx(times[""] - times["up"] - times["down"], abs=1e-15)


def test_static_and_comparison_pages(tmp_path):
    static = graphmfu.analyze(Tiny(), torch.randn(M, D))
    page = _parse(static.save(tmp_path / "s.html"))
    assert page.external == [] and "stages" not in page.sections and "kernels" not in page.sections
    assert page.tree[""] == static.data["modules"][0]["t_min_s"]  # static: the tree shows roofline t_min
    assert page.tables["static-table"]["up"]["flops"][0] == 2 * M * D * H
    cmp = graphmfu.compare(Tiny(), stages={"fwd": (torch.randn(M, D),)}, warmup=1, iters=1, clean=False)
    torch._dynamo.reset()
    text = cmp.save(tmp_path / "c.html").read_text()
    page = _parse(tmp_path / "c.html")
    assert page.external == [] and "roofline" in page.sections and "stages" in page.sections
    assert "fwd" in text
    try:
        import plotly  # noqa: F401
        assert "Plotly.newPlot" in text
    except ImportError:
        assert "pip install" in text  # the roofline's place says what to install


def test_show_html_from_a_saved_report(timed, tmp_path, capsys):
    from graphmfu.cli import main

    r = timed.save(tmp_path / "r.json")
    assert main(["show", str(r), "--html", str(tmp_path / "page.html")]) == 0
    page = _parse(tmp_path / "page.html")
    assert page.tables["stages-table"]["outer"]["flops"][0] == timed.stages[0]["flops"]
    assert "HTML written" in capsys.readouterr().out


@pytest.mark.skipif(shutil.which("chromium") is None, reason="needs Debian's chromium (apt-get install chromium)")
def test_page_renders_offline_in_headless_chromium(timed, tmp_path):
    pytest.importorskip("plotly")
    path = timed.save(tmp_path / "r.html")
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=5000", "--dump-dom"]
    dom = subprocess.run(["chromium", *flags, path.as_uri()], capture_output=True, text=True, timeout=120).stdout
    assert 'class="main-svg"' in dom  # plotly ran: its SVG exists in the rendered DOM
    assert "Top" in dom and "outer/inner" in dom
