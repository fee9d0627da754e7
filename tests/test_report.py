"""`trainfer report`: report.html in headless Chromium, its numbers against bench.json, the infographic,
and the CLI contract (issue 5, acceptance 2 and 6).

The report is written once per session from the shared quick bench of the digits run
(tests/_bench_fixtures.py). Chromium is required (CI installs it): without it these tests fail.
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
from decimal import Decimal
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from _bench_fixtures import dotted, get_bench_file, get_report, get_report_printed, get_run
from conftest import assert_user_error, run_main
from PIL import Image

LEDGER_ROWS = ["Definition and purpose", "Computational load", "Time required", "Hardware used",
               "Data requirement", "Output", "Energy", "Memory", "Privacy budget"]
CHROMIUM_TIMEOUT_S = 90


@pytest.fixture(scope="module")
def bench_json(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return get_bench_file(tmp_path_factory)


@pytest.fixture(scope="module")
def paths(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return get_report(tmp_path_factory)


@pytest.fixture(scope="module")
def page(paths: dict[str, Path]) -> str:
    return paths["report"].read_text(encoding="utf-8")


# ---- a minimal DOM, from the standard library's HTML parser -------------------------------------------

VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}


class Node:
    def __init__(self, tag: str, attrs: dict[str, str | None], parent: Node | None) -> None:
        self.tag, self.attrs, self.parent = tag, attrs, parent
        self.content: list[str | Node] = []  # text and child elements, in document order

    @property
    def children(self) -> list[Node]:
        return [c for c in self.content if isinstance(c, Node)]

    @property
    def text(self) -> str:
        return "".join(c if isinstance(c, str) else c.text for c in self.content)

    def classes(self) -> set[str]:
        return set((self.attrs.get("class") or "").split())

    def iter(self):
        yield self
        for c in self.children:
            yield from c.iter()

    def find_all(self, tag: str, cls: str | None = None) -> list[Node]:
        return [n for n in self.iter() if n.tag == tag and (cls is None or cls in n.classes())]

    def by_id(self, ident: str) -> Node | None:
        return next((n for n in self.iter() if n.attrs.get("id") == ident), None)


class _Builder(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = Node("#document", {}, None)
        self.cur = self.root

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        node = Node(tag, dict(attrs), self.cur)
        self.cur.content.append(node)
        if tag not in VOID:
            self.cur = node

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.cur.content.append(Node(tag, dict(attrs), self.cur))

    def handle_endtag(self, tag: str) -> None:
        node = self.cur
        while node is not None and node.tag != tag:
            node = node.parent
        if node is not None and node.parent is not None:
            self.cur = node.parent

    def handle_data(self, data: str) -> None:
        self.cur.content.append(data)


def parse(text: str) -> Node:
    b = _Builder()
    b.feed(text)
    b.close()
    return b.root


def ledger_labels(doc: Node) -> list[str]:
    ledger = doc.by_id("ledger")
    assert ledger is not None and ledger.tag == "table", "no table#ledger"
    body = ledger.find_all("tbody")
    assert body, "table#ledger has no tbody"
    return [tr.find_all("th")[0].text.strip() for tr in body[0].find_all("tr")]


def assert_report_structure(doc: Node, where: str) -> None:
    assert ledger_labels(doc) == LEDGER_ROWS, f"{where}: ledger rows {ledger_labels(doc)}"
    for tr in doc.by_id("ledger").find_all("tbody")[0].find_all("tr"):
        cells = tr.find_all("td")
        assert len(cells) == 2 and all(c.text.strip() for c in cells), f"{where}: empty ledger cell in {tr.text!r}"
    figures = doc.find_all("figure", "chart")
    assert len(figures) >= 3, f"{where}: {len(figures)} figure.chart"
    for fig in figures:
        svgs = fig.find_all("svg")
        assert svgs, f"{where}: figure.chart {fig.text.strip()[:40]!r} has no inline <svg>"
        assert len(list(svgs[0].iter())) > 20, f"{where}: the chart's <svg> is nearly empty"
        assert fig.find_all("figcaption"), where


def external_references(doc: Node) -> list[str]:
    """Anything the page would load: src/href/xlink:href not inline (data:) or in-page (#), stylesheets,
    script files, url(...) in style."""
    bad = []
    for n in doc.iter():
        for attr in ("src", "href", "xlink:href", "srcset", "poster", "data"):
            v = (n.attrs.get(attr) or "").strip()
            if v and not (v.startswith("#") or v.startswith("data:")):
                bad.append(f"<{n.tag} {attr}={v!r}>")
        if n.tag == "link" and "stylesheet" in (n.attrs.get("rel") or "").lower():
            bad.append("<link rel=stylesheet>")
        if n.tag == "script" and "src" in n.attrs:
            bad.append("<script src>")
        if n.tag == "style" or "style" in n.attrs:
            css = n.text if n.tag == "style" else (n.attrs.get("style") or "")
            urls = re.findall(r"url\(\s*['\"]?([^)'\"]+)", css)
            bad += [f"url({u})" for u in urls if not u.startswith(("#", "data:"))]
            bad += ["@import" for _ in re.findall(r"@import", css)]
    return bad


# ---- Chromium --------------------------------------------------------------------------------------------

def chromium_binary() -> str:
    for name in (os.environ.get("TRAINFER_CHROMIUM"), "chromium", "chromium-browser", "google-chrome-stable",
                 "google-chrome"):
        if name and shutil.which(name):
            return shutil.which(name)
    pytest.fail("headless Chromium is required for the report tests and was not found on PATH "
                "(tried chromium, chromium-browser, google-chrome; or set TRAINFER_CHROMIUM). "
                "Install it: apt-get install chromium. CI installs it; these tests do not skip.")


def chromium(url: str, tmp_path: Path, name: str, *action: str) -> subprocess.CompletedProcess:
    profile = tmp_path / f"profile-{name}"
    args = [chromium_binary(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--no-first-run", "--disable-component-update", "--disable-sync", f"--user-data-dir={profile}",
            "--enable-logging=stderr", "--v=0", *action, url]
    try:
        res = subprocess.run(args, capture_output=True, text=True, timeout=CHROMIUM_TIMEOUT_S)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"chromium did not finish in {CHROMIUM_TIMEOUT_S} s: {args}\n{exc.stderr}")
    assert res.returncode == 0, f"chromium exited {res.returncode}: {args}\n{res.stderr[-3000:]}"
    return res


# Chromium (--enable-logging=stderr) prints every page console message, errors and uncaught exceptions
# included, as `[pid:tid:time:INFO:CONSOLE:1] "message", source: URL (line)` (older builds:
# `INFO:CONSOLE(1)`, some `ERROR:CONSOLE`). The level is not reliable, and the report runs no script at
# all, so any console line counts. Failed file loads are not printed at --v=0: external_references()
# covers those (nothing in the rendered DOM loads anything).
CONSOLE_LINE = re.compile(r"^\[[^\]]*:CONSOLE\b|\bUncaught\b|ERROR:CONSOLE|Failed to load resource")


def console_problems(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if CONSOLE_LINE.search(line)]


def test_console_detector_catches_page_errors(tmp_path):
    """The console check below must be able to fail: a page with a console.error and an uncaught
    exception is caught, a page without script is not."""
    boom = tmp_path / "boom.html"
    boom.write_text('<!doctype html><html><body><p>boom</p><script>console.error("boom")</script>'
                    "<script>notDefinedAnywhere()</script></body></html>")
    clean = tmp_path / "clean.html"
    clean.write_text("<!doctype html><html><body><p>nothing to see</p></body></html>")
    res = chromium(boom.as_uri(), tmp_path, "boom", "--dump-dom")
    problems = console_problems(res.stderr)
    assert any('"boom"' in p for p in problems), f"console.error not detected; stderr:\n{res.stderr[-3000:]}"
    assert any("Uncaught" in p and "notDefinedAnywhere" in p for p in problems), res.stderr[-3000:]
    res = chromium(clean.as_uri(), tmp_path, "clean", "--dump-dom")
    assert console_problems(res.stderr) == [], res.stderr[-3000:]
    assert "nothing to see" in res.stdout


def test_report_renders_in_headless_chromium(paths, tmp_path):
    url = paths["report"].resolve().as_uri()
    shot = tmp_path / "report.png"
    res_shot = chromium(url, tmp_path, "shot", f"--screenshot={shot}", "--window-size=1200,3000")
    res_dom = chromium(url, tmp_path, "dom", "--dump-dom")

    assert shot.is_file(), f"no screenshot written\n{res_shot.stderr[-3000:]}"
    with Image.open(shot) as img:
        img.load()
        assert img.format == "PNG"
        assert img.size == (1200, 3000)
        colours = img.convert("RGB").getcolors(maxcolors=1 << 20)
        assert colours is None or len(colours) > 50, "the screenshot is (nearly) blank"

    doc = parse(res_dom.stdout)
    assert_report_structure(doc, "rendered DOM")
    assert doc.find_all("span", "num"), "no measured numbers in the rendered DOM"
    assert external_references(doc) == [], "the rendered page loads external resources"
    for res in (res_shot, res_dom):
        assert console_problems(res.stderr) == [], "console output while rendering report.html:\n" + "\n".join(
            console_problems(res.stderr))


def test_report_html_is_self_contained(page):
    doc = parse(page)
    assert_report_structure(doc, "report.html")
    assert external_references(doc) == []
    assert not re.search(r"""(?:src|href)\s*=\s*["']?\s*(?:https?:)?//""", page, re.I), "external URL in src/href"
    assert not re.search(r"<link[^>]*stylesheet", page, re.I)
    assert not re.search(r"<script[^>]*\bsrc\s*=", page, re.I)
    assert "@import" not in page


def test_report_provenance_names_the_measured_bundle(page, bench_json):
    """bench.json must identify the bundle it measured after bench returns: the report lists its files'
    sha256 and the manifest self-hash (here bench exported the run to a temporary bundle itself)."""
    doc = parse(page)
    provenance = doc.by_id("provenance")
    assert provenance is not None
    assert "manifest self-hash" in provenance.text, (
        f"report.html names no bundle hashes; bench.json's bundle is {bench_json['bundle']!r} "
        f"(exists: {Path(bench_json['bundle']).exists()})")
    assert "model.onnx sha256" in provenance.text


def test_infographic_is_a_1600x900_png(paths):
    with Image.open(paths["infographic"]) as img:
        img.load()
        assert img.format == "PNG"
        assert img.size == (1600, 900)
        colours = img.convert("RGB").getcolors(maxcolors=1 << 20)
        assert colours is None or len(colours) > 20, "the infographic is blank"


# ---- acceptance 6: the numbers in report.html are those in bench.json ------------------------------------

SI = {"T": 1e12, "G": 1e9, "M": 1e6, "k": 1e3, "m": 1e-3, "µ": 1e-6, "n": 1e-9}
SCALED_UNITS = {"FLOP", "/s", "J"}
PLAIN_UNITS = {"": 1.0, "x": 1.0, "µs": 1e-3, "ms": 1.0, "s": 1.0, "min": 60.0, "MB": 1.0, "thread": 1.0,
               "threads": 1.0}
NUMBER = re.compile(r"^(-?[\d,]*\.?\d+(?:e[+-]?\d+)?)\s*(.*)$")


def displayed_number(text: str) -> tuple[float, float]:
    """'20.2 kFLOP' -> (20200.0, 50.0): the shown value in the key's units and half its last shown digit."""
    m = NUMBER.match(text.strip())
    assert m, f"not a number: {text!r}"
    digits, unit = m.group(1).replace(",", ""), m.group(2).strip()
    if unit in PLAIN_UNITS:
        factor = PLAIN_UNITS[unit]
    elif unit[:1] in SI and unit[1:] in SCALED_UNITS:
        factor = SI[unit[0]]
    elif unit in SCALED_UNITS:
        factor = 1.0
    else:
        raise AssertionError(f"unknown unit {unit!r} in {text!r}")
    d = Decimal(digits)
    half_ulp = 0.5 * 10.0 ** d.as_tuple().exponent
    return float(d) * factor, half_ulp * factor


class _Spans(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.spans: list[dict[str, Any]] = []
        self._open: dict[str, Any] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "span" and "num" in (a.get("class") or "").split():
            assert self._open is None, "nested span.num"
            self._open = {"key": a.get("data-key"), "value": a.get("data-value"), "text": ""}

    def handle_data(self, data: str) -> None:
        if self._open is not None:
            self._open["text"] += data

    def handle_endtag(self, tag: str) -> None:
        if tag == "span" and self._open is not None:
            self.spans.append(self._open)
            self._open = None


def number_spans(page: str) -> list[dict[str, Any]]:
    p = _Spans()
    p.feed(page)
    p.close()
    return p.spans


def test_every_number_in_the_report_is_the_one_in_bench_json(page, bench_json):
    from trainfer.reporting.ledger import rows

    spans = number_spans(page)
    assert spans, "no span.num in report.html"
    for s in spans:
        assert s["key"] and s["value"] is not None, f"span.num without data-key/data-value: {s}"
        value = json.loads(s["value"])
        assert value == dotted(bench_json, s["key"]), f"{s['key']}: report {value!r} != bench.json"
        if value is None:
            assert s["text"] == "—", s
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            shown, tol = displayed_number(s["text"])
            assert abs(shown - value) <= tol * 1.0001 + 1e-12, (
                f"{s['key']}: shows {s['text']!r} ({shown}) for {value!r}")
        else:
            assert s["text"] == str(value), s

    # in order, each one the ledger's own formatter applied to the bench.json value
    expected = [(part[0], part[1](dotted(bench_json, part[0])))
                for _label, train_cell, infer_cell in rows(bench_json, bench_json["inference"]["bundle_key"])
                for part in (*train_cell, *infer_cell) if not isinstance(part, str)]
    assert [(s["key"], s["text"]) for s in spans] == expected

    bundle = f"inference.variants.{bench_json['inference']['bundle_key']}"
    required = {"training.flops_per_sample", "inference.flops_per_sample", "training.samples_per_s",
                f"{bundle}.latency_ms_p50", f"{bundle}.latency_ms_p90", "energy.training_j.value",
                "energy.inference_j_per_prediction.value", "energy.break_even_predictions.value"}
    missing = required - {s["key"] for s in spans}
    assert not missing, f"report.html does not show {sorted(missing)}"
    for key in required:
        assert isinstance(dotted(bench_json, key), (int, float)), f"{key} is not measured: {dotted(bench_json, key)}"


def test_estimated_energy_is_labelled_in_the_report(page, bench_json):
    doc = parse(page)
    energy_row = next(tr for tr in doc.by_id("ledger").find_all("tr") if tr.find_all("th")[0].text == "Energy")
    train_cell, infer_cell = (c.text for c in energy_row.find_all("td"))
    assert f"({bench_json['energy']['training_j']['method']})" in train_cell, train_cell
    assert f"({bench_json['energy']['inference_j_per_prediction']['method']})" in infer_cell, infer_cell


def test_displayed_number_reads_the_formatters():
    from trainfer.reporting.fmt import count, duration_ms, seconds, si

    assert displayed_number(si(20224, "FLOP")) == (pytest.approx(20200.0), pytest.approx(50.0))
    assert displayed_number(si(4.63e-5, "J"))[0] == pytest.approx(4.63e-5)
    assert duration_ms(0.018197) == "18.2 µs"
    assert displayed_number(duration_ms(0.018197))[0] == pytest.approx(0.0182)
    assert displayed_number(duration_ms(3.14159))[0] == pytest.approx(3.14)
    assert displayed_number(count(1, "thread")) == (1.0, 0.5)
    assert displayed_number(seconds(300))[0] == pytest.approx(300)
    assert displayed_number("17,272") == (17272.0, 0.5)


def test_report_and_infographic_read_sub_ms_times_in_us(page, bench_json, tmp_path, monkeypatch):
    """Issue 10.28: "0.01132 ms" hides the figure in zeros; the report and the infographic say "11.3 µs"."""
    import matplotlib.figure

    from trainfer.reporting.fmt import count, duration_ms
    from trainfer.reporting.infographic import draw

    bundle = bench_json["inference"]["variants"][bench_json["inference"]["bundle_key"]]
    text = html.unescape(re.sub(r"<[^>]+>", "", page))
    assert duration_ms(bundle["latency_ms_p50"]) in text
    assert count(bench_json["inference"]["threads"], "thread") + " (onnxruntime" in text
    assert not re.search(r"\b0\.\d+ ?ms\b", text), re.search(r".{60}\b0\.\d+ ?ms\b", text)
    shown: list[str] = []
    real_text = matplotlib.figure.Figure.text
    monkeypatch.setattr(matplotlib.figure.Figure, "text",
                        lambda self, x, y, s, *a, **k: shown.append(str(s)) or real_text(self, x, y, s, *a, **k))
    draw(bench_json, "title", tmp_path / "infographic.png")
    latency = next(t for t in shown if t.startswith("p50 "))
    assert latency == (f"p50 {duration_ms(bundle['latency_ms_p50'])}, p90 {duration_ms(bundle['latency_ms_p90'])}")
    assert not any(re.search(r"\b0\.\d+ ?ms\b", t) for t in shown), shown


# ---- CLI -----------------------------------------------------------------------------------------------

def test_report_cli_json_prints_the_two_paths(tmp_path_factory, paths):
    """The shared report is made by `trainfer report RUN --json` (see _bench_fixtures.get_report)."""
    printed = get_report_printed(tmp_path_factory)
    run = get_run(tmp_path_factory).path
    assert set(printed) == {"report", "infographic"}, printed
    assert Path(printed["report"]) == run / "report.html" and Path(printed["report"]).is_file()
    assert Path(printed["infographic"]) == run / "infographic.png" and Path(printed["infographic"]).is_file()


def test_report_cli_without_bench_json_names_trainfer_bench(tmp_path_factory, paths, tmp_path, capsys):
    run = get_run(tmp_path_factory).path
    copy = Path(shutil.copytree(run, tmp_path / "run", ignore=shutil.ignore_patterns(
        "bench.json", "report.html", "infographic.png")))
    res = run_main(["report", copy], capsys)
    assert_user_error(res)
    assert "trainfer bench" in res.stderr, res.stderr
    assert not (copy / "report.html").exists() and not (copy / "infographic.png").exists()


def test_report_escapes_text(page):
    """Every number's data-value is a JSON document after HTML unescaping (quotes in strings are escaped)."""
    for raw in re.findall(r'data-value="([^"]*)"', page):
        json.loads(html.unescape(raw))


def test_external_reference_check_can_fail():
    doc = parse('<html><head><link rel="stylesheet" href="site.css"><script src="x.js"></script>'
                '<style>body { background: url("https://example.com/bg.png") }</style></head>'
                '<body><img src="http://example.com/a.png"><svg><use xlink:href="#ok"></use></svg>'
                '<img src="data:image/png;base64,AAAA"></body></html>')
    found = external_references(doc)
    assert "<link rel=stylesheet>" in found and "<script src>" in found, found
    assert any("http://example.com/a.png" in f for f in found), found
    assert any("https://example.com/bg.png" in f for f in found), found
    assert not any("#ok" in f or "data:" in f for f in found), found
