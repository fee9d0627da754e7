"""Shared, cached outputs for the bench and report tests (test_bench.py, test_report.py).

The digits MLP of examples/digits.yaml (5 epochs) is trained once, benchmarked once with the default
``quick=True`` settings (LoadGen needs real durations: about a minute on 2 cores) and reported once
per test session, whichever module asks first; every test then reads those outputs. Nothing here may
modify them: tests that need to change something work on copies.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import os
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")  # tiny models on a small shared machine

REPO = Path(__file__).resolve().parents[1]
DIGITS_RECIPE = REPO / "examples" / "digits.yaml"
DIGITS_OVERRIDES = ["train.epochs=5"]  # the digits MLP as shipped ([256, 128]), trained briefly

# The quick settings as shipped, snapshot at import (before any test patches them): the LoadGen-VALID
# acceptance is about these, so the shared bench refuses to run under anything else.
from trainfer.benching.inference import QUICK as _QUICK  # noqa: E402

QUICK_DEFAULT: dict[str, Any] = copy.deepcopy(_QUICK)

_cache: dict[str, Any] = {}


def _root(factory: pytest.TempPathFactory) -> Path:
    if "root" not in _cache:
        _cache["root"] = factory.mktemp("bench")
    return _cache["root"]


def get_run(factory: pytest.TempPathFactory):
    """The trained digits run (a trainfer Run), cached for the session."""
    if "run" not in _cache:
        from trainfer.training import train

        _cache["run"] = train(DIGITS_RECIPE, out=_root(factory) / "digits", overrides=DIGITS_OVERRIDES,
                              seed=0, quiet=True)
    return _cache["run"]


def get_bench(factory: pytest.TempPathFactory) -> dict[str, Any]:
    """``trainfer.bench(run, quick=True)`` once, with the default quick settings; the returned record."""
    if "bench" not in _cache:
        from trainfer.benching import bench
        from trainfer.benching.inference import QUICK

        assert QUICK == QUICK_DEFAULT, f"the shared bench must use the default quick settings, not {QUICK}"
        _cache["bench"] = bench(get_run(factory).path, quick=True)
    return _cache["bench"]


def get_bench_file(factory: pytest.TempPathFactory) -> dict[str, Any]:
    """bench.json as written on disk (what the report reads)."""
    get_bench(factory)
    return json.loads((get_run(factory).path / "bench.json").read_text())


def get_report(factory: pytest.TempPathFactory) -> dict[str, Path]:
    """``trainfer report RUN --json`` once, in this process: {"report": ..., "infographic": ...} as printed
    (the printed object itself is ``get_report_printed``)."""
    if "report" not in _cache:
        from trainfer.cli import main

        get_bench(factory)
        argv = ["report", str(get_run(factory).path), "--json"]
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            try:
                main(argv)
            except SystemExit as exc:
                assert exc.code in (0, None), f"`trainfer {' '.join(argv)}` exited {exc.code}:\n{buf.getvalue()}"
        lines = [line for line in buf.getvalue().splitlines() if line.strip()]
        assert lines, f"`trainfer {' '.join(argv)}` printed nothing"
        _cache["report_printed"] = json.loads(lines[-1])
        _cache["report"] = {k: Path(v) for k, v in _cache["report_printed"].items()}
    return _cache["report"]


def get_report_printed(factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The JSON object `trainfer report --json` printed as its last stdout line."""
    get_report(factory)
    return _cache["report_printed"]


def get_bundle(factory: pytest.TempPathFactory) -> Path:
    """An onnx-fp32 bundle exported from the digits run (never modify it in place; copy it)."""
    if "bundle" not in _cache:
        from trainfer.exporting import export

        _cache["bundle"] = Path(export(get_run(factory), _root(factory) / "digits-bundle"))
    return _cache["bundle"]


def dotted(record: dict[str, Any], key: str) -> Any:
    """record["a"]["b"] for "a.b", failing (not None) when a part is missing."""
    node: Any = record
    for part in key.split("."):
        assert isinstance(node, dict) and part in node, f"{key!r}: no {part!r} in bench.json"
        node = node[part]
    return node
