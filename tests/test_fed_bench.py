"""`trainfer bench` and `trainfer report` on a federated run (issue 13: "each path ends in an ordinary run
directory, so ... bench and report work on its result unchanged").

A federated run's metrics.jsonl has one line per round (round_s, bytes each way, clients replied), not per epoch:
bench once died on it with ``KeyError: 'samples_per_s'``. One small federation (iris, 2 clients, 2 rounds, on
Flower's simulation engine) is run, benchmarked with short LoadGen settings and reported once for the module.
"""

from __future__ import annotations

import contextlib
import html
import io
import json
import re
from pathlib import Path
from typing import Any

import pytest
from _bench_fixtures import dotted
from conftest import assert_user_error, run_main

# LoadGen settings short enough for a test (the shipped quick settings are test_bench.py's business)
SHORT_QUICK = {"min_duration_s": 0.1, "min_queries": 10, "offline_batches": [1, 8], "server_steps": 1,
               "coldstart_repeats": 1}
TARGET = 0.5  # a validation accuracy the federation reaches within its 2 rounds (3 classes: chance is 1/3)


def _cli(argv: list[str]) -> tuple[int, str, str]:
    """``trainfer.cli.main(argv)`` in this process (a module fixture has no capsys): (exit code, stdout, stderr)."""
    from trainfer.cli import main

    out, err = io.StringIO(), io.StringIO()
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main([str(a) for a in argv])
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The federated run, its bench (CLI, --quick --target-accuracy) and its report (CLI)."""
    from sklearn.datasets import load_iris

    import trainfer
    from trainfer.benching import inference as bench_inference

    work = tmp_path_factory.mktemp("fedbench")
    csv = work / "iris.csv"
    load_iris(as_frame=True).frame.to_csv(csv, index=False)
    run = trainfer.federate(data=str(csv), target="target", model="mlp", clients=2, rounds=2, out=work / "run")
    with pytest.MonkeyPatch.context() as mp:
        for key, value in SHORT_QUICK.items():  # bench() imported QUICK by name: patch the dict's entries
            mp.setitem(bench_inference.QUICK, key, value)
        bench = _cli(["bench", run.path, "--quick", "--target-accuracy", TARGET])
    report = _cli(["report", run.path, "--json"])
    return {"run": run.path, "bench": bench, "report": report}


def _lines(run: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x.strip()]


def test_bench_on_a_federated_run_writes_its_rounds_clients_and_bytes(fed: dict[str, Any]) -> None:
    code, out, err = fed["bench"]
    assert code == 0 and "Traceback" not in err, f"bench exited {code}\n{out}\n{err}"
    run = fed["run"]
    summary = json.loads((run / "summary.json").read_text())
    lines = _lines(run)
    tr = json.loads((run / "bench.json").read_text())["training"]
    f = tr["federated"]
    assert tr["kind"] == "federated"
    assert f["clients"] == summary["federated"]["clients"] == 2 and f["rounds"] == len(lines) == 2
    assert [r["round_s"] for r in f["per_round"]] == [x["round_s"] for x in lines]
    assert [r["bytes_sent"] for r in f["per_round"]] == [x["bytes_sent"] for x in lines]
    assert f["bytes_sent"] == summary["federated"]["bytes_sent"] == sum(x["bytes_sent"] for x in lines) > 0
    assert f["bytes_total"] == f["bytes_sent"] + f["bytes_received"]
    assert f["round_s_median"] == lines[1]["round_s"] and f["round_s_first"] == lines[0]["round_s"]
    # every client replied every round: rows trained = all client rows x local epochs, each round
    rows = sum(summary["federated"]["client_rows"]) * summary["federated"]["local_epochs"]
    assert [r["rows_trained"] for r in f["per_round"]] == [rows, rows]
    assert tr["samples_seen"] == f["rows_trained"] == 2 * rows
    assert tr["total_flops"] == tr["flops_per_sample"] * 2 * rows > 0
    assert tr["wall_s"] == summary["timings"]["total_s"] and tr["loop_s"] == summary["timings"]["rounds_s"]
    # one machine's figures are left out, not faked from the wrong lines, and bench.json says why
    for key in ("samples_per_s", "step_ms", "achieved_flops_per_s", "peak_rss_mb"):
        assert tr[key] is None and "federated" in tr["omitted"][key], key
    energy = json.loads((run / "bench.json").read_text())["energy"]
    assert energy["training_j"]["value"] is None and energy["training_j_per_sample"]["value"] is None
    # time-to-target from the rounds' own wall clock, not from epochs
    ttt = tr["time_to_target"]
    first = next(i for i, x in enumerate(lines) if x["val_accuracy"] >= TARGET)
    assert ttt["reached"] and ttt["round"] == lines[first]["round"]
    assert ttt["seconds"] == pytest.approx(sum(x["round_s"] for x in lines[:first + 1]))
    assert "federated" in out and "MB exchanged" in out  # the terminal table


def test_report_ledger_says_how_the_federated_run_was_trained(fed: dict[str, Any]) -> None:
    code, out, err = fed["report"]
    assert code == 0 and "Traceback" not in err, f"report exited {code}\n{out}\n{err}"
    paths = json.loads(out.splitlines()[-1])
    page = Path(paths["report"]).read_text(encoding="utf-8")
    assert Path(paths["infographic"]).stat().st_size > 0
    bench = json.loads((fed["run"] / "bench.json").read_text())
    ledger = page[page.index('<table id="ledger"'):]
    ledger = ledger[:ledger.index("</table>")]
    rows = {html.unescape(re.sub(r"<[^>]+>", "", th)): html.unescape(re.sub(r"<[^>]+>", "", td))
            for th, td in re.findall(r"<tr><th>(.*?)</th><td>(.*?)</td><td>", ledger, re.S)}
    mb = bench["training"]["federated"]["bytes_total"] / 1e6
    assert rows["Time required"].startswith("Training: federated, 2 clients x 2 rounds"), rows["Time required"]
    assert "samples/s" not in rows["Time required"].replace("No samples/s", "")
    assert f"{mb:.2f} MB exchanged" in rows["Communication"]
    assert rows["Energy"].startswith("not measured") and rows["Memory"].startswith("not measured")
    assert "not trained with DP" in rows["Privacy budget"]
    # every figure in the page is bench.json's own value under the key it names
    for key, value in re.findall(r'data-key="([^"]+)" data-value="([^"]*)"', page):
        assert json.loads(html.unescape(value)) == dotted(bench, key), key


def test_bench_seeds_on_a_federated_run_is_refused_before_measuring(fed: dict[str, Any], tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    before = (fed["run"] / "bench.json").read_bytes()
    res = run_main(["bench", fed["run"], "--quick", "--target-accuracy", TARGET, "--seeds", "3"], capsys)
    assert_user_error(res, mentions=["--seeds", "federated"])
    assert (fed["run"] / "bench.json").read_bytes() == before  # nothing rewritten
