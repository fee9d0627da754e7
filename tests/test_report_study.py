"""`trainfer report STUDY_DIR` (issue 11, point 3): a tuning study's report.html, checked in headless
Chromium as the run report is (tests/test_report.py): the SVG charts render, the page makes no network
request, the history chart has a marker per trial (pruned and failed ones marked apart), importances
or a note saying why there are none, and a Pareto front only for two objectives. The best run of a
study carries the same charts in its own run report.

Two real studies on iris, made once per module through the API: a single-objective one (hyperband
pruning; one learning rate that diverges, so trials fail) and an accuracy-vs-FLOPs one.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import SRC, assert_user_error, run_main
from PIL import Image
from test_report import Node, chromium, console_problems, external_references, parse

import trainfer
from trainfer.errors import RunError

BASE = {"data": {"source": "iris"}, "train": {"epochs": 6, "batch_size": 16}}
# 1e30 diverges at once (a FAIL with its reason), 1e-5 learns nothing (pruned by hyperband at epoch 2).
SINGLE = {**BASE, "tune": {"train.lr": {"choice": [1e-5, 0.05, 1e30]}, "model.hidden": {"choice": [[8], [32]]}}}
MULTI = {**BASE, "tune": {"train.lr": {"log_uniform": [0.003, 0.05]}, "model.hidden": {"choice": [[4], [16], [64]]}}}
# bench's LoadGen runs, shortened (as tests/test_bench.py does): only the report's content is checked here.
SHORT_QUICK = {"min_duration_s": 0.1, "min_queries": 10, "offline_batches": [1, 8], "server_steps": 1,
               "coldstart_repeats": 1}
COLOURS = {"complete": (25, 113, 194), "pruned": (240, 140, 0), "failed": (224, 49, 49), "front": (47, 158, 68),
           "best": (112, 72, 232)}


@dataclass
class Rendered:
    dom: Node
    shot: Path
    stderr: str
    requests: list[str]


def page_requests(net_log: Path) -> list[str]:
    """URLs the page itself asked the network for, from Chromium's net log: requests whose network
    isolation key is the file:// page's (the browser's own update and account pings have other keys)."""
    log = json.loads(net_log.read_text())
    start = log["constants"]["logEventTypes"]["URL_REQUEST_START_JOB"]
    return [e["params"]["url"] for e in log["events"] if e["type"] == start
            and "file://" in str(e.get("params", {}).get("network_isolation_key", ""))]


def render(page: Path, tmp: Path, name: str) -> Rendered:
    """One headless Chromium run: the DOM as rendered, a 1200x3200 screenshot and the net log."""
    shot, net = tmp / f"{name}.png", tmp / f"{name}.netlog.json"
    res = chromium(page.resolve().as_uri(), tmp, name, f"--screenshot={shot}", "--window-size=1200,3200",
                   f"--log-net-log={net}", "--dump-dom")
    assert shot.is_file(), f"no screenshot of {page}\n{res.stderr[-3000:]}"
    return Rendered(parse(res.stdout), shot, res.stderr, page_requests(net))


@pytest.fixture(scope="module")
def single(tmp_path_factory: pytest.TempPathFactory) -> trainfer.Study:
    study = trainfer.tune(SINGLE, out=tmp_path_factory.mktemp("study") / "single", trials=3, pruner="hyperband")
    c = study.summary["counts"]
    # What the checks below need, so that none of them passes for want of a pruned or failed trial.
    assert c["COMPLETE"] >= 1 and c["PRUNED"] >= 1 and c["FAIL"] >= 1, c
    return study


@pytest.fixture(scope="module")
def multi(tmp_path_factory: pytest.TempPathFactory) -> trainfer.Study:
    study = trainfer.tune(MULTI, out=tmp_path_factory.mktemp("study") / "multi", trials=4,
                          objectives="accuracy,flops")
    assert study.summary["counts"]["COMPLETE"] >= 4 and study.summary["importances"], study.summary["counts"]
    return study


@pytest.fixture(scope="module")
def rendered(single, multi, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Rendered]:
    tmp = tmp_path_factory.mktemp("chromium")
    out = {}
    for name, study in (("single", single), ("multi", multi)):
        paths = trainfer.report(study.path)
        assert set(paths) == {"report"} and paths["report"] == study.path / "report.html", paths
        out[name] = render(paths["report"], tmp, name)
    return out


@pytest.fixture(scope="module")
def best_run_report(multi, tmp_path_factory: pytest.TempPathFactory) -> Rendered:
    """The run report of the study's best run (STUDY_DIR/best), benchmarked briefly."""
    from trainfer.benching import bench
    from trainfer.benching import inference as bench_inference

    with pytest.MonkeyPatch.context() as mp:
        for key, value in SHORT_QUICK.items():  # bench imported QUICK by name: patch the dict's entries
            mp.setitem(bench_inference.QUICK, key, value)
        bench(multi.best_run, quick=True)
    paths = trainfer.report(multi.best_run)
    return render(paths["report"], tmp_path_factory.mktemp("chromium-run"), "best")


def uses(doc: Node, gid: str) -> list[tuple[float, float]]:
    """(x, y) of every marker in the SVG group matplotlib wrote for the artist with this gid."""
    group = doc.by_id(gid)
    assert group is not None, f"no <g id={gid!r}> in the page"
    return [(float(n.attrs["x"]), float(n.attrs["y"])) for n in group.find_all("use")]


def assert_same_order(ys: list[float], values: list[float], what: str) -> None:
    """SVG y grows downwards: a higher value must sit higher, an equal one at the same height."""
    for i in range(len(values)):
        for j in range(len(values)):
            if values[i] > values[j] + 1e-12:
                assert ys[i] < ys[j] - 1e-6, f"{what}: value {values[i]} drawn below {values[j]}"
            elif abs(values[i] - values[j]) <= 1e-12:
                assert abs(ys[i] - ys[j]) < 1e-3, f"{what}: equal values {values[i]} drawn at different heights"


def last_value(trial: dict[str, Any]) -> float:
    steps = trial["intermediate"]
    return steps[max(steps, key=int)]


# ---- rendering -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["single", "multi"])
def test_study_report_renders_in_headless_chromium_with_no_request(rendered, name):
    r = rendered[name]
    with Image.open(r.shot) as img:
        img.load()
        assert img.size == (1200, 3200)
        colours = {rgb for _, rgb in img.convert("RGB").getcolors(maxcolors=1 << 24)}
    assert len(colours) > 50, "the screenshot is (nearly) blank"
    # the charts' own colours are on screen: the SVG was drawn, not just parsed
    expected = {"complete"} | ({"pruned", "failed"} if name == "single" else {"front", "best"})
    missing = [k for k in expected if COLOURS[k] not in colours]
    assert not missing, f"{name}: colours of {missing} are not on the screenshot"
    figures = r.dom.find_all("figure", "chart")
    assert figures, "no figure.chart in the rendered DOM"
    for fig in figures:
        svg = fig.find_all("svg")
        assert svg and len(list(svg[0].iter())) > 20, f"{fig.text.strip()[:40]!r}: no (or an empty) inline <svg>"
    assert r.requests == [], f"the page made network requests: {r.requests}"
    assert external_references(r.dom) == []
    assert console_problems(r.stderr) == [], "\n".join(console_problems(r.stderr))


def test_the_request_check_can_fail(tmp_path):
    page = tmp_path / "remote.html"
    page.write_text('<!doctype html><html><body><img src="http://127.0.0.1:9/x.png"><p>x</p></body></html>')
    assert render(page, tmp_path, "remote").requests == ["http://127.0.0.1:9/x.png"]


# ---- the charts, point by point -----------------------------------------------------------------------

@pytest.mark.parametrize("name", ["single", "multi"])
def test_history_has_a_marker_per_trial_in_its_state(rendered, single, multi, name):
    study = {"single": single, "multi": multi}[name]
    trials, dom = study.summary["trials"], rendered[name].dom
    done = [t for t in trials if t["state"] == "COMPLETE"]
    pruned = [t for t in trials if t["state"] == "PRUNED"]
    failed = [t for t in trials if t["state"] == "FAIL"]
    complete_at = uses(dom, "study-history-complete")
    assert len(complete_at) == len(done)
    if pruned:
        pruned_at = uses(dom, "study-history-pruned")
        assert len(pruned_at) == len(pruned)
        # a pruned trial sits at the last value it reported, on the same scale as the complete ones
        assert_same_order([y for _, y in complete_at + pruned_at],
                          [t["values"][0] for t in done] + [last_value(t) for t in pruned], "history")
    else:
        assert dom.by_id("study-history-pruned") is None
        assert_same_order([y for _, y in complete_at], [t["values"][0] for t in done], "history")
    if failed:
        failed_at = uses(dom, "study-history-failed")
        assert len(failed_at) == len(failed)
        lowest = max(y for _, y in complete_at + (pruned_at if pruned else []))
        assert all(y > lowest for _, y in failed_at), "failed trials must sit below every value"
    else:
        assert dom.by_id("study-history-failed") is None
    # x is the trial number: one linear map for every marker
    xs = dict(zip([t["number"] for t in done], [x for x, _ in complete_at], strict=True))
    xs.update(zip([t["number"] for t in pruned], [x for x, _ in (pruned_at if pruned else [])], strict=True))
    xs.update(zip([t["number"] for t in failed], [x for x, _ in (failed_at if failed else [])], strict=True))
    (n0, x0), (n1, x1) = sorted(xs.items())[0], sorted(xs.items())[-1]
    for n, x in xs.items():
        assert abs(x - (x0 + (x1 - x0) * (n - n0) / (n1 - n0))) < 0.01, f"trial {n} at x={x}"


def test_history_best_so_far_line_steps_up_at_each_new_best(rendered, multi):
    path = rendered["multi"].dom.by_id("study-history-best").find_all("path")[0].attrs["d"]
    ys = [float(y) for y in re.findall(r"[ML]\s*[-\d.]+\s+([-\d.]+)", path)]
    assert all(b <= a + 1e-6 for a, b in itertools.pairwise(ys)), f"best so far got worse: {ys}"
    best, levels = None, set()
    for t in sorted(multi.summary["trials"], key=lambda t: t["number"]):
        if t["state"] == "COMPLETE" and (best is None or t["values"][0] > best):
            best = t["values"][0]
            levels.add(best)
    assert len({round(y, 3) for y in ys}) == len(levels), (ys, levels)


def test_importances_are_bars_or_a_note_saying_too_few_trials(rendered, single, multi):
    dom = rendered["multi"].dom
    figure = dom.by_id("study-importances")
    assert figure is not None
    assert multi.summary["importance_method"] in figure.find_all("figcaption")[0].text
    bars = [n for n in figure.iter() if re.fullmatch(r"study-importance-bar-\d+", n.attrs.get("id") or "")]
    assert len(bars) == len(multi.summary["importances"]) and all(b.find_all("path") for b in bars)
    # each bar's length is its importance: one scale for all
    widths = []
    for bar in bars:
        xs = [float(x) for x in re.findall(r"[ML]\s*([-\d.]+)\s+[-\d.]+", bar.find_all("path")[0].attrs["d"])]
        widths.append(max(xs) - min(xs))
    values = sorted(multi.summary["importances"].values())
    scale = widths[-1] / values[-1]
    assert all(w == pytest.approx(v * scale, rel=0.02, abs=0.05) for w, v in zip(sorted(widths), values, strict=True))

    dom = rendered["single"].dom
    assert single.summary["importances"] == {}
    assert dom.by_id("study-importances") is None
    note = dom.by_id("study-importances-note")
    assert note is not None and "too few trials" in note.text
    assert f"this study has {single.summary['counts']['COMPLETE']}" in note.text


def test_pareto_front_only_for_two_objectives(rendered, multi):
    assert rendered["single"].dom.by_id("study-pareto") is None
    dom, s = rendered["multi"].dom, multi.summary
    assert dom.by_id("study-pareto") is not None
    done = [t for t in s["trials"] if t["state"] == "COMPLETE"]
    everything, front, star = uses(dom, "study-pareto-trials"), uses(dom, "study-pareto-front"), \
        uses(dom, "study-pareto-best")
    assert len(everything) == len(done) and len(front) == len(s["pareto"]) >= 1 and len(star) == 1
    # the front's markers are among the trials' markers, and the star is the most accurate front point
    for x, y in front:
        assert any(abs(x - a) < 0.01 and abs(y - b) < 0.01 for a, b in everything), (x, y)
    assert any(abs(star[0][0] - x) < 0.01 and abs(star[0][1] - y) < 0.01 for x, y in front)
    assert star[0][1] == pytest.approx(min(y for _, y in front), abs=0.01)
    assert s["best"]["number"] in {t["number"] for t in s["pareto"]}
    assert_same_order([y for _, y in everything], [t["values"][0] for t in done], "pareto accuracy")
    assert_same_order([-x for x, _ in everything], [t["values"][1] for t in done], "pareto cost")
    line = dom.by_id("study-pareto-line").find_all("path")
    assert line and line[0].attrs["d"].count("L") >= 2 * (len(s["pareto"]) - 1), "the front is not joined"


# ---- tables ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["single", "multi"])
def test_counts_and_top_trials_tables(rendered, single, multi, name):
    s, dom = {"single": single, "multi": multi}[name].summary, rendered[name].dom
    counts = {td.attrs["data-state"]: int(td.text) for td in dom.by_id("study-counts").find_all("td")}
    assert counts == {k: s["counts"][k] for k in counts} and counts["total"] == len(s["trials"])
    rows = dom.by_id("study-top").find_all("tbody")[0].find_all("tr")
    front = {t["number"] for t in s["pareto"]}
    done = sorted((t for t in s["trials"] if t["state"] == "COMPLETE"),
                  key=lambda t: (t["number"] not in front if front else False, -t["values"][0], t["number"]))
    assert [int(r.attrs["data-trial"]) for r in rows] == [t["number"] for t in done][:10]
    best_row = next(r for r in rows if int(r.attrs["data-trial"]) == s["best"]["number"])
    assert "★" in best_row.find_all("td")[0].text
    assert f"{s['best']['values'][0]:.4f}" in best_row.text
    failures = dom.by_id("study-failures")
    failed = [t for t in s["trials"] if t["state"] == "FAIL"]
    assert (failures is None) == (not failed)
    if failed:
        assert "training diverged" in failures.text


# ---- summary.json alone, the CLI, and the run report of the best run --------------------------------------

def test_report_needs_only_summary_json_no_optuna_no_torch(single, tmp_path):
    """Another machine with the `report` extra only: summary.json (and tune.json) copied, optuna and torch
    made unimportable, the CLI in a fresh process."""
    copy = tmp_path / "copied-study"
    copy.mkdir()
    for name in ("summary.json", "tune.json"):
        shutil.copy(single.path / name, copy / name)
    code = ("import sys; sys.modules['optuna'] = sys.modules['torch'] = None\n"
            "from trainfer.cli import main\nmain(['report', sys.argv[1], '--json'])")
    res = subprocess.run([sys.executable, "-c", code, str(copy)], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(SRC)})
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout.strip().splitlines()[-1]) == {"report": str(copy / "report.html")}
    doc = parse((copy / "report.html").read_text(encoding="utf-8"))
    assert len(uses(doc, "study-history-complete")) == single.summary["counts"]["COMPLETE"]


def test_report_cli_on_a_study_writes_one_page_where_asked(single, tmp_path, capsys):
    res = run_main(["report", single.path, "--out", tmp_path, "--json"], capsys).check()
    assert res.json() == {"report": str(tmp_path / "report.html")}
    assert (tmp_path / "report.html").is_file() and not (tmp_path / "infographic.png").exists()
    helped = run_main(["report", "--help"], capsys).check()
    assert "study directory" in helped.stdout and "run directory" in helped.stdout


def test_study_dir_without_summary_is_one_error_line(tmp_path, capsys):
    """Every trial failed, so `tune` wrote no summary.json: `report` says so in one line, writes nothing."""
    study = tmp_path / "all-failed"
    with pytest.raises(RunError, match="no trial of the study completed"):
        trainfer.tune({**BASE, "tune": {"train.lr": {"choice": [1e30]}}}, out=study, trials=1)
    assert (study / "tune.json").is_file() and not (study / "summary.json").exists()
    res = run_main(["report", study], capsys)
    line = assert_user_error(res, mentions=["summary.json"])
    assert "no trial" in line
    assert not (study / "report.html").exists()


def test_run_report_of_a_studys_best_run_has_the_study_charts(best_run_report, multi):
    dom = best_run_report.dom
    assert dom.by_id("ledger") is not None, "not a run report"
    section = dom.by_id("study")
    assert section is not None, "the run report of STUDY_DIR/best has no study section"
    for ident in ("study-history", "study-importances", "study-pareto"):
        assert section.by_id(ident) is not None, f"no #{ident} in the run report"
    assert len(uses(dom, "study-history-complete")) == multi.summary["counts"]["COMPLETE"]
    assert len(uses(dom, "study-pareto-front")) == len(multi.summary["pareto"])
    assert best_run_report.requests == [] and external_references(dom) == []
    assert console_problems(best_run_report.stderr) == []
