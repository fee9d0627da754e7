"""One timing harness, one environment record and one onnxruntime session factory (issue 10, point 32).

`optimize` built its sessions with its own options while the bundle's Predictor built others, so optimize
could time a session the shipped bundle does not use; benchmarks/_common.py re-implemented the timing
loop, the latency summary and the environment record with different rules (no rotation, other keys,
p90 dropped rather than None). Now each exists once, in trainfer, and the benchmarks import it.
"""

from __future__ import annotations

import ast
import importlib
import sys
from pathlib import Path

import numpy as np
import pytest

from trainfer import _env, _timing

REPO = Path(__file__).resolve().parents[1]
FACTORY = REPO / "src" / "trainfer" / "runtime" / "predictor.py"


def _python_files() -> list[Path]:
    return sorted([*(REPO / "src").rglob("*.py"), *(REPO / "benchmarks").glob("*.py")])


def _names_used(path: Path) -> set[str]:
    """Every attribute or name referenced in ``path`` (``ort.SessionOptions`` -> "SessionOptions")."""
    tree = ast.parse(path.read_text(), str(path))
    used = {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
    used |= {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
    used |= {a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) for a in n.names}
    return used


def test_one_onnxruntime_session_factory() -> None:
    """Only runtime.inference_session builds onnxruntime sessions: optimize's timings, its thread sweep, the
    export parity check, the Predictor and the benchmarks' 'bare' sessions all get the same options."""
    builders = {str(p.relative_to(REPO)) for p in _python_files()
                if {"SessionOptions", "InferenceSession"} & _names_used(p)}
    assert builders == {str(FACTORY.relative_to(REPO))}, builders


def test_optimize_and_the_bundle_run_the_same_session_options(digits_bundle: Path) -> None:
    """What optimize times (inference_session at its thread count) is what a loaded bundle runs."""
    import trainfer
    from trainfer.exporting import optimize as optimize_module
    from trainfer.runtime import inference_session

    assert optimize_module.inference_session is inference_session
    pred = trainfer.load(digits_bundle, threads=2)
    timed = inference_session(digits_bundle / "model.onnx", 2)
    fields = ("intra_op_num_threads", "inter_op_num_threads", "execution_mode", "graph_optimization_level",
              "log_severity_level")
    got, want = pred.session.get_session_options(), timed.get_session_options()
    assert {f: getattr(got, f) for f in fields} == {f: getattr(want, f) for f in fields}
    assert pred.session.get_providers() == timed.get_providers() == ["CPUExecutionProvider"]


@pytest.fixture
def common(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    sys.modules.pop("_common", None)
    return importlib.import_module("_common")


def test_benchmarks_use_trainfers_harness_and_environment(common) -> None:
    assert common.interleave is _timing.interleave
    assert common.summarize is _timing.summarize
    assert common.paired_ratio is _timing.paired_ratio
    env, ours = common.environment(3), _env.environment(3, repo=REPO)
    assert env.keys() == ours.keys() and env["threads"] == 3
    assert env["git_revision"] == ours["git_revision"] and env["versions"] == ours["versions"]
    # nothing in _common times or summarizes by itself any more
    own = _names_used(REPO / "benchmarks" / "_common.py")
    assert not {"perf_counter", "perf_counter_ns", "percentile", "getloadavg", "sched_getaffinity"} & own


def test_interleave_rotates_who_goes_first_and_meets_every_minimum() -> None:
    calls: list[str] = []
    fns = {name: (lambda n=name: calls.append(n)) for name in "abc"}
    m = _timing.interleave(fns, min_count=4, min_seconds=0.0, warmup=0, block=2, min_rounds=5)
    assert m.rounds == 5 and m.block == 2 and m.window_s > 0
    assert {k: len(v) for k, v in m.samples.items()} == {"a": 10, "b": 10, "c": 10}
    firsts = [calls[r * 6] for r in range(5)]  # 3 callables x block 2 per round
    assert firsts == ["a", "b", "c", "a", "b"]  # drift favours none
    assert all(np.all(v > 0) for v in m.samples.values())  # seconds per call


def test_summarize_reports_percentiles_only_from_enough_samples() -> None:
    few = _timing.summarize(np.full(63, 1e-3))
    assert few["latency_ms_p50"] == pytest.approx(1.0) and few["latency_ms_p90"] is None
    assert few["latency_ms_p99"] is None and few["samples"] == 63 and few["latency_ms_min"] == pytest.approx(1.0)
    enough = _timing.summarize(np.linspace(1e-3, 2e-3, 662))
    assert enough["latency_ms_p90"] == pytest.approx(1.9) and enough["latency_ms_p99"] == pytest.approx(1.99)
    assert _timing.summarize([])["samples"] == 0


def test_paired_ratio_pairs_the_blocks_of_each_round() -> None:
    # round 1: a twice as slow as b; round 2: both 10x slower (drift), a still twice as slow
    a = np.array([2, 2, 20, 20], dtype=float)
    b = np.array([1, 1, 10, 10], dtype=float)
    assert _timing.paired_ratio(a, b, block=2) == pytest.approx(2.0)
    assert list(_timing.per_round_ratios(a, b, block=2)) == [2.0, 2.0]


def test_optimize_times_as_many_rounds_as_the_selection_rule_needs(csv_run) -> None:
    # A slow model meets the call count and the window in a few rounds; select refuses fewer than
    # MIN_ROUNDS, so optimize would always keep onnx-fp32 ("cannot tell") for such models.
    import time

    from trainfer._timing import MIN_ROUNDS
    from trainfer.exporting import graph_inputs
    from trainfer.exporting.optimize import _latency

    class Slow:  # a session whose every call takes 2 ms
        def get_outputs(self) -> list[object]:
            return []

        def run(self, _outputs: object, _feed: object) -> None:
            time.sleep(0.002)

    X = csv_run.load_split("val")[0]  # raw rows: optimize times whole graphs, as bundles run them
    X_std, _ = graph_inputs(csv_run.features, X)
    block = 2
    samples = _latency({"a": Slow(), "b": Slow()}, csv_run, X, X_std, 1, 1,
                       {"min_count": 1, "min_seconds": 0.0, "block": block, "warmup": 0})
    assert len(samples["a"]) // block >= MIN_ROUNDS and len(samples["b"]) == len(samples["a"]), len(samples["a"])
