"""`trainfer bench`: bench.json contents, LoadGen validity, FLOPs ratio, energy methods, cold start (issue 5).

The digits MLP run is benchmarked once per session with the default quick settings
(tests/_bench_fixtures.py); most tests only read that record. The bundle-alone bench shortens the
quick settings (its results need not be VALID) and fakes a RAPL counter to see the method travel.
"""

from __future__ import annotations

import glob
import itertools
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from _bench_fixtures import QUICK_DEFAULT, dotted, get_bench, get_bench_file, get_bundle, get_run
from conftest import assert_user_error, run_main

from trainfer import _energy
from trainfer._energy import ESTIMATE_WATTS_PER_CORE, EnergyMeter, detect_method

SHORT_QUICK = {"min_duration_s": 0.1, "min_queries": 10, "offline_batches": [1, 8], "server_steps": 1,
               "coldstart_repeats": 1}


@pytest.fixture(scope="module")
def record(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return get_bench(tmp_path_factory)


@pytest.fixture(scope="module")
def bundle_variant(record: dict[str, Any]) -> dict[str, Any]:
    return record["inference"]["variants"][record["inference"]["bundle_key"]]


# ---- bench.json ------------------------------------------------------------------------------------

def test_bench_json_is_written_into_the_run_and_matches_the_record(tmp_path_factory, record):
    on_disk = get_bench_file(tmp_path_factory)
    assert on_disk == json.loads(json.dumps(record)), "RUN/bench.json differs from the record bench() returned"
    assert record["kind"] == "run" and record["mode"] == "quick"
    assert record["run"] == str(get_run(tmp_path_factory).path)


def test_bench_json_has_the_required_figures(record):
    for key in ("training.flops_per_sample", "inference.flops_per_sample", "training.samples_per_s"):
        value = dotted(record, key)
        assert isinstance(value, (int, float)) and value > 0, f"{key} = {value!r}"
    variants = record["inference"]["variants"]
    assert record["inference"]["bundle_key"] == "bundle:onnx-fp32"
    assert set(variants) == {"bundle:onnx-fp32", "torch-eager"}, sorted(variants)
    for name, v in variants.items():
        for key in ("latency_ms_p50", "latency_ms_p90", "throughput_per_s"):
            assert isinstance(v[key], (int, float)) and v[key] > 0, f"{name}.{key} = {v[key]!r}"
        assert v["latency_ms_p50"] <= v["latency_ms_p90"], name


def test_bench_json_has_an_environment_record(record):
    env = record["env"]
    assert isinstance(env["cpu_model"], str) and env["cpu_model"]
    assert isinstance(env["cores"], int) and env["cores"] >= 1
    assert isinstance(env["threads"], int) and env["threads"] >= 1
    assert env["threads"] == record["inference"]["threads"]
    assert {"torch", "onnxruntime", "numpy", "mlcommons-loadgen"} <= set(env["versions"])
    assert all(env["versions"][n] for n in ("torch", "onnxruntime", "numpy", "mlcommons-loadgen")), env["versions"]
    assert "git_revision" in env  # None outside a git checkout; here a 40-hex revision
    if shutil.which("git") and (Path(__file__).resolve().parents[1] / ".git").exists():
        assert isinstance(env["git_revision"], str) and len(env["git_revision"]) == 40, env["git_revision"]


# ---- acceptance 3: LoadGen VALID on the bundle, default quick settings -------------------------------

def test_loadgen_single_stream_and_every_offline_batch_are_valid_on_the_bundle(bundle_variant):
    single = bundle_variant["single_stream"]
    assert single["scenario"] == "SingleStream"
    assert single["validity"] == "VALID", single
    offline = bundle_variant["offline"]
    assert [o["batch_size"] for o in offline] == QUICK_DEFAULT["offline_batches"]
    invalid = [o for o in offline if o["validity"] != "VALID"]
    assert not invalid, f"Offline INVALID at batch sizes {[o['batch_size'] for o in invalid]}: {invalid}"
    assert all(o["scenario"] == "Offline" and o["throughput_per_s"] for o in offline)
    # the headline figures come from those runs
    assert bundle_variant["latency_ms_p50"] == single["latency_ms_p50"]
    assert bundle_variant["latency_ms_p90"] == single["latency_ms_p90"]
    assert bundle_variant["throughput_per_s"] == max(o["throughput_per_s"] for o in offline)


def test_offline_runs_are_sized_to_their_min_duration(record):
    """LoadGen's expected QPS is a sizing hint: too low and the run is INVALID, too high and a "1 s" quick
    run lasts many times that. An Offline run is one query, so its p99 latency is about its duration."""
    min_s = QUICK_DEFAULT["min_duration_s"]
    problems = []
    for name, v in record["inference"]["variants"].items():
        for o in v["offline"]:
            duration_s = o["latency_ms_p99"] / 1e3
            if o["validity"] != "VALID":
                problems.append(f"{name} batch {o['batch_size']}: {o['validity']} "
                                f"(min duration met: {o['min_duration_met']})")
            if duration_s > 10 * min_s:  # gross mis-sizing (it was 3-108x); a busy machine adds some
                problems.append(f"{name} batch {o['batch_size']}: ran {duration_s:.1f} s for a {min_s:g} s minimum")
    assert not problems, "Offline sizing:\n" + "\n".join(problems)


# ---- acceptance 4: FLOPs ----------------------------------------------------------------------------

def test_training_to_inference_flops_ratio_is_reported_and_plausible(tmp_path_factory, record):
    t = record["training"]
    ratio = t["flops_ratio_train_to_inference"]
    assert 2.3 <= ratio <= 3.2, f"train/inference FLOPs ratio {ratio} for the digits MLP"
    assert ratio == pytest.approx(t["flops_per_sample"] / t["forward_flops_per_sample"])
    # an fp32 bundle computes exactly the trained model's forward pass
    assert record["inference"]["flops_per_sample"] == t["forward_flops_per_sample"]
    # the digits MLP (64 -> 256 -> 128 -> 10 as shipped), 2 FLOPs per multiply-add: forward one matmul per
    # layer; backward the weight gradients of every layer and the input gradients of all but the first
    dims = [64, *get_run(tmp_path_factory).recipe.model.hidden, 10]
    macs = [a * b for a, b in itertools.pairwise(dims)]
    assert t["forward_flops_per_sample"] == 2 * sum(macs)
    assert t["flops_per_sample"] == 2 * sum(macs) * 2 + 2 * sum(macs[1:])


# ---- acceptance 5: every energy figure carries its method --------------------------------------------

def _readable_rapl_zones() -> list[str]:
    """What trainfer._energy counts as readable: top-level intel-rapl:N zones with an integer energy_uj."""
    zones = []
    for z in sorted(glob.glob("/sys/class/powercap/intel-rapl:*")):
        if Path(z).name.count(":") != 1:
            continue
        try:
            int((Path(z) / "energy_uj").read_text())
        except (OSError, ValueError):
            continue
        zones.append(z)
    return zones


def _energy_blocks(record: dict[str, Any], run_summary: dict[str, Any]) -> dict[str, dict[str, Any]]:
    blocks = {f"energy.{k}": v for k, v in record["energy"].items()}
    blocks.update({f"inference.variants.{k}.energy": v["energy"] for k, v in record["inference"]["variants"].items()})
    blocks["summary.json energy"] = run_summary["energy"]
    return blocks


def test_every_energy_figure_carries_its_method(tmp_path_factory, record):
    expected = "rapl" if _readable_rapl_zones() else "estimated"
    assert set(record["energy"]) == {"training_j", "training_j_per_sample", "inference_j_per_prediction",
                                     "break_even_predictions"}
    for key, entry in record["energy"].items():
        assert "value" in entry and "method" in entry, f"energy.{key} lacks value or method: {entry}"
        assert isinstance(entry["value"], (int, float)) and entry["value"] > 0, f"energy.{key}: {entry}"
        assert entry["method"] == expected, f"energy.{key}: {entry['method']!r}, expected {expected!r}"
    summary = get_run(tmp_path_factory).summary
    for where, block in _energy_blocks(record, summary).items():
        assert block.get("method") == expected, f"{where}: method {block.get('method')!r}, expected {expected!r}"
        if expected == "estimated" and "assumption" in block:
            assert "W per" in (block["assumption"] or ""), f"{where}: an estimate must state its assumption"
    for name, v in record["inference"]["variants"].items():
        e = v["energy"]
        assert e["joules"] > 0 and e["predictions"] > 0, name
        assert e["j_per_prediction"] == pytest.approx(e["joules"] / e["predictions"]), name
    e = record["energy"]
    assert e["inference_j_per_prediction"]["value"] == record["inference"]["variants"]["bundle:onnx-fp32"][
        "energy"]["j_per_prediction"]
    assert e["training_j"]["value"] == summary["energy"]["joules"]
    assert e["training_j_per_sample"]["value"] == pytest.approx(e["training_j"]["value"]
                                                                / record["training"]["samples_seen"])
    assert e["break_even_predictions"]["value"] == pytest.approx(e["training_j"]["value"]
                                                                 / e["inference_j_per_prediction"]["value"])


def test_energy_detection_follows_rapl_readability():
    assert detect_method() == ("rapl" if _readable_rapl_zones() else "estimated")


def _burn_cpu(seconds: float = 0.05) -> None:
    import time

    end = time.process_time() + seconds
    while time.process_time() < end:
        pass


def test_energy_estimate_when_no_counter_is_readable(monkeypatch, tmp_path):
    monkeypatch.setattr(_energy, "_RAPL", str(tmp_path / "nothing-here" / "intel-rapl:*"))
    assert detect_method() == "estimated"
    with EnergyMeter() as meter:
        _burn_cpu()
    rec = meter.record()
    assert rec["method"] == "estimated"
    assert f"{ESTIMATE_WATTS_PER_CORE:g} W per" in rec["assumption"]
    assert rec["cpu_s"] > 0
    assert rec["joules"] == pytest.approx(rec["cpu_s"] * ESTIMATE_WATTS_PER_CORE)


def _fake_rapl(root: Path) -> dict[str, Path]:
    """Two readable package zones, a sub-zone (inside its package's total: must be ignored) and a zone
    whose counter does not parse (must be skipped)."""
    files = {}
    for zone, uj in (("intel-rapl:0", "1000000"), ("intel-rapl:1", "5000000"), ("intel-rapl:0:0", "7000000"),
                     ("intel-rapl:2", "not a number")):
        (root / zone).mkdir(parents=True)
        (root / zone / "energy_uj").write_text(uj + "\n")
        files[zone] = root / zone / "energy_uj"
    return files


def test_energy_rapl_counters_give_joules_from_the_counter_difference(monkeypatch, tmp_path):
    files = _fake_rapl(tmp_path)
    monkeypatch.setattr(_energy, "_RAPL", str(tmp_path / "intel-rapl:*"))
    assert detect_method() == "rapl"
    with EnergyMeter() as meter:
        files["intel-rapl:0"].write_text("3500000\n")  # +2.5 J
        files["intel-rapl:1"].write_text("5500000\n")  # +0.5 J
        files["intel-rapl:0:0"].write_text("99000000\n")  # a sub-zone: already in intel-rapl:0
    rec = meter.record()
    assert rec["method"] == "rapl" and rec["assumption"] is None
    assert rec["joules"] == pytest.approx(3.0)
    # a counter that wrapped within the window: no figure rather than a negative one
    with EnergyMeter() as meter:
        files["intel-rapl:0"].write_text("10\n")
    assert meter.joules == 0.0


# ---- bench on a bundle alone --------------------------------------------------------------------------

def test_bench_on_a_bundle_alone_writes_beside_it_with_no_training(monkeypatch, tmp_path, tmp_path_factory):
    import trainfer
    from trainfer.benching import bench
    from trainfer.benching import inference as bench_inference

    bundle = Path(shutil.copytree(get_bundle(tmp_path_factory), tmp_path / "digits-bundle"))
    files_before = sorted(p.name for p in bundle.iterdir())
    # bench() imported QUICK by name: patch the shared dict's entries, not the module attribute
    for key, value in SHORT_QUICK.items():
        monkeypatch.setitem(bench_inference.QUICK, key, value)
    # a fake RAPL counter, so the method recorded must come from detection (not a constant)
    _fake_rapl(tmp_path / "powercap")
    monkeypatch.setattr(_energy, "_RAPL", str(tmp_path / "powercap" / "intel-rapl:*"))

    rec = bench(bundle, quick=True)

    written = tmp_path / "digits-bundle.bench.json"
    assert written.is_file(), sorted(p.name for p in tmp_path.iterdir())
    assert json.loads(written.read_text()) == json.loads(json.dumps(rec))
    assert sorted(p.name for p in bundle.iterdir()) == files_before, "bench wrote inside the (hashed) bundle"
    trainfer.load(bundle)  # still verifies
    assert rec["kind"] == "bundle" and rec["run"] is None
    assert rec["training"] is None
    assert rec["inference"]["flops_per_sample"] is None
    assert list(rec["inference"]["variants"]) == ["bundle:onnx-fp32"]
    assert [o["batch_size"] for o in rec["inference"]["variants"]["bundle:onnx-fp32"]["offline"]] == [1, 8]
    assert set(rec["inference"]["cold_start"]) == {"bundle"}
    assert rec["inference"]["cold_start"]["bundle"]["torch_imported"] is False
    assert set(rec["energy"]) == {"inference_j_per_prediction"}
    per_pred = rec["energy"]["inference_j_per_prediction"]
    assert per_pred["method"] == "rapl" and per_pred["value"] == 0.0  # the fake counter never moved
    assert rec["inference"]["variants"]["bundle:onnx-fp32"]["energy"]["method"] == "rapl"


# ---- cold start -----------------------------------------------------------------------------------------

def test_cold_start_of_the_bundle_does_not_import_torch_and_uses_less_memory(record):
    cs = record["inference"]["cold_start"]
    bundle, torch_side = cs["bundle"], cs["torch"]
    assert "error" not in bundle and "error" not in torch_side, cs
    assert bundle["torch_imported"] is False
    assert torch_side["torch_imported"] is True
    assert 0 < bundle["peak_rss_mb"] < torch_side["peak_rss_mb"], cs
    assert bundle["time_to_first_prediction_s"] > 0 and bundle["repeats"] == QUICK_DEFAULT["coldstart_repeats"]


# ---- CLI errors -----------------------------------------------------------------------------------------

def test_bench_cli_on_a_path_that_is_neither_run_nor_bundle_exits_2(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    a_file = tmp_path / "rows.csv"
    a_file.write_text("a,b\n1,2\n")
    for target in (empty, a_file, tmp_path / "missing"):
        line = assert_user_error(run_main(["bench", target, "--quick"], capsys))
        assert str(target) in line, line
    assert not list(tmp_path.glob("*bench.json")), "a failed bench wrote a bench.json"


def test_run_cli_with_a_missing_recipe_exits_2(tmp_path, capsys):
    assert_user_error(run_main(["run", tmp_path / "nope.yaml", "--out", tmp_path / "out"], capsys),
                      out=tmp_path / "out")
