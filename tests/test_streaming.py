"""Data larger than memory (data/streaming.py): the streamed path gives what the in-memory path gives.

The tables here are small; the record batches, fit chunks and shuffle windows are made small too (module
constants set for the in-process runs), so a few hundred rows cross every boundary the streamed path has:
several record batches, several merged moment chunks, and the windowed chunk shuffle of the epoch order.
"""

from __future__ import annotations

import json
import math
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import assert_user_error, make_mixed_frame, read_summary, run_main
from safetensors.numpy import load_file

import trainfer
import trainfer.data.streaming as streaming
import trainfer.features.tabular as tabular
import trainfer.training.batches as batches
from trainfer.errors import DataError
from trainfer.training import train

SMALL = {"BATCH_ROWS": 64, "CSV_BLOCK_BYTES": 2048, "FIT_CHUNK": 50, "CHUNK": 16, "WINDOW": 4}


@pytest.fixture(scope="module")
def small_boundaries():
    """Record batches of 64 rows (CSV: 2 KiB blocks), moments merged every 50 rows, windows of 4 x 16 rows."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(streaming, "BATCH_ROWS", SMALL["BATCH_ROWS"])
        mp.setattr(streaming, "CSV_BLOCK_BYTES", SMALL["CSV_BLOCK_BYTES"])
        mp.setattr(streaming, "FIT_CHUNK", SMALL["FIT_CHUNK"])
        mp.setattr(tabular, "FIT_CHUNK", SMALL["FIT_CHUNK"])
        mp.setattr(batches, "CHUNK", SMALL["CHUNK"])
        mp.setattr(batches, "WINDOW", SMALL["WINDOW"])
        yield


@pytest.fixture(scope="module")
def tables(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The same mixed table (string labels, a categorical column, missing values) as Parquet and CSV."""
    root = tmp_path_factory.mktemp("stream")
    frame = make_mixed_frame(n=600, seed=4)
    frame.to_parquet(root / "animals.parquet")
    frame.to_csv(root / "animals.csv", index=False)
    return {"parquet": root / "animals.parquet", "csv": root / "animals.csv"}


def _recipe(source: Path, streaming_mode: bool | str, **extra: object) -> dict:
    return {"seed": 5, "data": {"source": str(source), "target": "label", "streaming": streaming_mode, **extra},
            "model": {"name": "mlp", "hidden": [32]},
            "train": {"epochs": 3, "batch_size": 24, "patience": None, "threads": 1}}


@pytest.fixture(scope="module")
def pairs(tables: dict[str, Path], small_boundaries: None, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Per format: an in-memory run, a forced streaming run, and an auto run above a tiny threshold."""
    root = tmp_path_factory.mktemp("runs")
    out = {}
    for fmt, path in tables.items():
        out[fmt] = {
            "memory": train(_recipe(path, False), out=root / f"{fmt}-memory", quiet=True).path,
            "forced": train(_recipe(path, True), out=root / f"{fmt}-forced", quiet=True).path,
            "auto": train(_recipe(path, "auto", streaming_threshold_mb=0.001), out=root / f"{fmt}-auto",
                          quiet=True).path,
        }
    return out


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_streamed_run_equals_in_memory_run(pairs: dict, fmt: str) -> None:
    runs = pairs[fmt]
    memory = read_summary(runs["memory"])
    assert memory["data"]["streamed"] is False
    assert len(read_summary(runs["memory"])["samples"]) == 3
    for kind in ("forced", "auto"):
        streamed = read_summary(runs[kind])
        assert streamed["data"]["streamed"] is True, kind
        for split in ("train", "val", "test"):
            assert streamed[split] == memory[split], (kind, split)
        assert streamed["data"]["fingerprint"] == memory["data"]["fingerprint"]
        # the same fitted preprocessing (exact moments and counts; the median fill from a full reservoir)
        assert (runs[kind] / "features.json").read_text() == (runs["memory"] / "features.json").read_text()
        got, want = load_file(runs[kind] / "model.safetensors"), load_file(runs["memory"] / "model.safetensors")
        assert got.keys() == want.keys() and all(np.array_equal(got[k], want[k]) for k in want)
        assert (runs[kind] / "metrics.jsonl").read_text().count("\n") == 3
    assert memory["test"]["accuracy"] > 0.7  # it learned something: equal runs of a broken loop would also match


def test_streamed_run_leaves_no_cache_behind(pairs: dict) -> None:
    import os
    import tempfile

    assert not list(Path(tempfile.gettempdir()).glob(f"trainfer-stream-{os.getpid()}-*"))


def test_streamed_run_exports_to_a_bundle(pairs: dict, tmp_path: Path) -> None:
    bundle = trainfer.export(pairs["parquet"]["forced"], tmp_path / "bundle")
    model = trainfer.load(bundle)
    frame = make_mixed_frame(n=600, seed=4)
    reference = trainfer.Run.load(pairs["parquet"]["memory"]).predict(frame.drop(columns=["label"]).head(50))
    assert list(model.predict(frame.drop(columns=["label"]).head(50))) == list(reference)


def test_windowed_order_is_served_by_the_streaming_reader(small_boundaries: None, tmp_path: Path) -> None:
    """Above CHUNK * WINDOW rows the order is the windowed chunk shuffle; the reader's batches are the rows that
    the in-memory batches take, for every rank of a world of 3 (together: the single-process batch)."""
    import torch

    n = 16 * 4 * 3 + 7  # three full windows and a short one, the last chunk partial
    X = np.arange(n * 2, dtype=np.float32).reshape(n, 2)
    y = np.arange(n, dtype=np.int64)
    folder = streaming.CacheFolder()
    try:
        cache = streaming.RowCache(folder.path / "x.f32", 2)
        cache.append(X[:100])
        cache.append(X[100:])
        cache.done()
        order = batches.epoch_order(n, 9, 2)
        assert sorted(order.tolist()) == list(range(n))
        assert not torch.equal(order, batches.epoch_order(n, 9, 3))
        assert torch.equal(order, batches.epoch_order(n, 9, 2))
        cpu = torch.device("cpu")
        for world in (1, 3):
            for rank in range(world):
                mem = list(batches.InMemoryBatches(X, y, 10, 9, cpu, False, rank, world).epoch(2))
                got = list(batches.StreamingBatches(cache, y, 10, 9, cpu, False, rank, world).epoch(2))
                assert len(mem) == len(got) == batches.steps_in_epoch(n, 10)
                for (xm, ym), (xs, ys) in zip(mem, got, strict=True):
                    assert torch.equal(xm, xs) and torch.equal(ym, ys)
        cache.close()
    finally:
        folder.close()
    assert not folder.path.exists()


def test_bad_value_in_a_later_csv_batch_names_the_file_row(small_boundaries: None, tmp_path: Path) -> None:
    frame = make_mixed_frame(n=400, seed=1)
    frame["x1"] = frame["x1"].astype(object)
    frame.loc[350, "x1"] = "oops"  # far past the first 2 KiB block, which typed x1 as numbers
    path = tmp_path / "late.csv"
    frame.to_csv(path, index=False)
    with pytest.raises(DataError) as info:
        train(_recipe(path, True), out=tmp_path / "run", quiet=True)
    assert "late.csv data row 351" in str(info.value) and "'x1'" in str(info.value) and "oops" in str(info.value)
    assert not (tmp_path / "run").exists()


def test_bad_value_in_a_later_parquet_batch_fails_the_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Default batch sizes, through the CLI: an infinity at row 70,000 (the second record batch)."""
    import pandas as pd

    rng = np.random.default_rng(0)
    n = 70_010
    frame = pd.DataFrame({"a": rng.normal(size=n), "b": rng.normal(size=n), "label": rng.integers(0, 2, n)})
    frame.loc[69_999, "b"] = np.inf
    path = tmp_path / "big.parquet"
    frame.to_parquet(path)
    out = tmp_path / "run"
    result = run_main(["train", "--data", path, "--target", "label", "--epochs", "1", "--out", out,
                       "--set", "data.streaming=true", "--set", "model.hidden=[8]"], capsys)
    line = assert_user_error(result, out, mentions=["big.parquet row 70000", "'b'", "infinite"])
    assert "trainfer-stream" not in line


@pytest.mark.parametrize(("override", "mentions"), [
    ("data.streaming=maybe", ["data.streaming", "true, false or auto"]),
    ("data.streaming=1", ["data.streaming", "true, false or auto"]),
    ("data.streaming_threshold_mb=0", ["data.streaming_threshold_mb", "greater than 0"]),
    ("data.streaming_threshold_mb=-5", ["data.streaming_threshold_mb"]),
    ("data.streaming_threshold_mb=nan", ["data.streaming_threshold_mb"]),
    ("data.streaming_threshold_mb=lots", ["data.streaming_threshold_mb"]),
    ("train.workers=-1", ["train.workers", "greater than or equal to 0"]),
    ("train.workers=1.5", ["train.workers", "whole number"]),
    ("train.workers=true", ["train.workers", "whole number"]),
    ("train.workers=1000", ["train.workers"]),
])
def test_bad_streaming_settings(override: str, mentions: list[str], tmp_path: Path,
                                capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    result = run_main(["train", "--data", "iris", "--epochs", "1", "--out", out, "--set", override], capsys)
    assert_user_error(result, out, mentions=mentions)


def test_streaming_refused_where_it_cannot_apply(tables: dict[str, Path], tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    builtin = run_main(["train", "--data", "iris", "--epochs", "1", "--out", out, "--set", "data.streaming=true"],
                       capsys)
    assert_user_error(builtin, out, mentions=["data.streaming=true", "iris"])
    private = run_main(["train", "--data", tables["parquet"], "--target", "label", "--epochs", "1", "--out", out,
                        "--set", "data.streaming=true", "--dp-epsilon", "3"], capsys)
    assert_user_error(private, out, mentions=["privacy", "in memory"])
    missing = run_main(["train", "--data", tmp_path / "nope.parquet", "--target", "label", "--epochs", "1",
                        "--out", out, "--set", "data.streaming=true"], capsys)
    assert_user_error(missing, out, mentions=["nope.parquet"])


def test_reservoir_median_above_its_size_is_seeded_and_close(tmp_path: Path) -> None:
    import pandas as pd

    rng = np.random.default_rng(3)
    n = streaming.RESERVOIR + 20_000
    x = rng.exponential(size=n)  # skewed: a poor estimate would show
    x[rng.random(n) < 0.1] = np.nan
    path = tmp_path / "skew.parquet"
    pd.DataFrame({"x": x, "label": rng.integers(0, 2, n)}).to_parquet(path)
    from trainfer.config import build_recipe
    from trainfer.data import prepare

    cfg = build_recipe(_recipe(path, True)).data
    fills = []
    for seed in (1, 1):
        data = prepare(cfg, seed)
        try:
            fills.append(data.features.inputs.columns[0]["fill"])
            train_x = x[data.split.train]
            exact = float(np.median(train_x[np.isfinite(train_x)]))
        finally:
            data.close()
        assert math.isclose(fills[-1], exact, rel_tol=0.02), (fills[-1], exact)
    assert fills[0] == fills[1]  # seeded: the same sample each time


def _state_epoch(run: Path) -> int:
    try:
        return int(json.loads((run / "checkpoints" / "state.json").read_text())["epoch"])
    except (FileNotFoundError, ValueError, KeyError):
        return 0


def test_killed_streamed_run_resumes_bitwise(tmp_path: Path) -> None:
    """SIGKILL after the checkpoint of epoch 2, --resume: the weights equal an uninterrupted run's, bit for bit."""
    import os
    import signal
    import tempfile
    import time

    import pandas as pd
    from conftest import CLI_TIMEOUT_S, finish_cli, start_cli

    rng = np.random.default_rng(7)
    n = 6000
    x = rng.normal(size=(n, 8))
    frame = pd.DataFrame(x, columns=[f"f{i}" for i in range(8)]).assign(label=(x[:, 0] + x[:, 1] > 0).astype(int))
    path = tmp_path / "rows.parquet"
    frame.to_parquet(path)
    epochs = 6
    args = ["train", "--data", path, "--target", "label", "--epochs", epochs, "--seed", 2,
            "--set", "data.streaming_threshold_mb=0.001", "--set", "train.patience=null",
            "--set", "train.batch_size=16", "--set", "model.hidden=[32]", "--set", "train.threads=1"]
    killed, reference = tmp_path / "killed", tmp_path / "reference"
    ref = start_cli([*args, "--out", reference])
    proc = start_cli([*args, "--out", killed])
    deadline = time.monotonic() + CLI_TIMEOUT_S
    try:
        while _state_epoch(killed) < 2:
            assert proc.poll() is None, f"the run ended before epoch 2 could be interrupted: {proc.stderr.read()}"
            assert time.monotonic() < deadline, "no checkpoint of epoch 2 in time"
            time.sleep(0.01)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    at = _state_epoch(killed)
    assert 2 <= at < epochs and not (killed / "summary.json").exists()
    resumed = finish_cli(start_cli([*args, "--out", killed, "--resume"]), args)
    assert resumed.returncode == 0, resumed.stderr
    done = finish_cli(ref, args)
    assert done.returncode == 0, done.stderr
    assert read_summary(killed)["data"]["streamed"] is True
    got, want = load_file(killed / "model.safetensors"), load_file(reference / "model.safetensors")
    assert got.keys() == want.keys() and all(np.array_equal(got[k], want[k]) for k in want)
    assert read_summary(killed)["test"] == read_summary(reference)["test"]
    # the killed process could not remove its row cache; the resumed run removed it
    assert not list(Path(tempfile.gettempdir()).glob(f"trainfer-stream-{proc.pid}-*"))


def test_streamed_image_folder_with_workers_equals_in_memory(tmp_path: Path) -> None:
    from conftest import write_image_folder

    root = write_image_folder(tmp_path / "shapes", per_class=12, size=12)
    recipe = {"seed": 3, "data": {"source": str(root), "image_size": 12},
              "model": {"name": "cnn", "channels": [4, 8]},
              "train": {"epochs": 2, "batch_size": 8, "patience": None, "threads": 1}}
    memory = train({**recipe, "data": {**recipe["data"], "streaming": False}}, out=tmp_path / "memory", quiet=True)
    streamed = train({**recipe, "data": {**recipe["data"], "streaming": True},
                      "train": {**recipe["train"], "workers": 2}}, out=tmp_path / "streamed", quiet=True)
    a, b = read_summary(memory.path), read_summary(streamed.path)
    assert b["data"]["streamed"] is True and a["data"]["streamed"] is False
    assert a["data"]["fingerprint"] == b["data"]["fingerprint"]
    assert (memory.path / "features.json").read_text() == (streamed.path / "features.json").read_text()
    for split in ("train", "val", "test"):
        assert a[split] == b[split], split
    got, want = load_file(streamed.path / "model.safetensors"), load_file(memory.path / "model.safetensors")
    assert all(np.array_equal(got[k], want[k]) for k in want)


def test_corrupt_image_in_a_streamed_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from conftest import write_image_folder

    root = write_image_folder(tmp_path / "shapes", per_class=6, size=8)
    bad = sorted((root / sorted(p.name for p in root.iterdir())[1]).iterdir())[-1]
    bad.write_bytes(b"not a png")
    out = tmp_path / "run"
    result = run_main(["train", "--data", root, "--epochs", "1", "--out", out, "--set", "data.streaming=true",
                       "--set", "train.workers=2"], capsys)
    assert_user_error(result, out, mentions=[bad.name])


def _cli(args: list[str], env: dict[str, str], **kw: object) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "trainfer.cli", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)


def _env(tmp: Path) -> dict[str, str]:
    src = str(Path(trainfer.__file__).parents[1])
    return {**os.environ, "PYTHONPATH": src, "TMPDIR": str(tmp)}


def test_sigterm_mid_epoch_removes_the_row_cache_and_keeps_the_checkpoint(tmp_path: Path) -> None:
    """SIGTERM (kill, `timeout`, a scheduler) ended a streamed run at once: its row caches stayed in the temp
    folder until some later streamed run. It now stops as Ctrl-C does: exit 143, one line, caches removed."""
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(rng.standard_normal((40_000, 8)), columns=[f"x{i}" for i in range(8)])
    frame["label"] = np.where(frame["x0"] > 0, "yes", "no")
    frame.to_parquet(tmp_path / "t.parquet")
    temp = tmp_path / "temp"
    temp.mkdir()
    run = tmp_path / "run"
    proc = _cli(["train", "--data", str(tmp_path / "t.parquet"), "--target", "label", "--model", "mlp", "--epochs",
                 "500", "--out", str(run), "--set", "data.streaming=true", "--set", "train.batch_size=64",
                 "--set", "train.threads=1", "--set", "train.patience=null", "--quiet"], _env(temp))
    deadline = time.monotonic() + 60
    while not (run / "checkpoints" / "state.json").is_file() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert next(p.name for p in temp.iterdir()).startswith("trainfer-stream-")
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert err.startswith("error: terminated") and "Traceback" not in err, err
    assert list(temp.iterdir()) == []
    state = json.loads((run / "checkpoints" / "state.json").read_text())
    assert (run / "checkpoints" / f"epoch-{state['epoch']:04d}.safetensors").is_file()


def test_full_temp_disk_names_the_row_cache_folder_and_tmpdir(tmp_path: Path) -> None:
    """A temp folder without room for the row cache said `cannot write RUN: no space` and told the user to choose
    another --out, which was not the full disk. (A file-size limit stands in for the full disk: EFBIG.)"""
    rng = np.random.default_rng(1)
    frame = pd.DataFrame(rng.standard_normal((4000, 16)), columns=[f"x{i}" for i in range(16)])
    frame["label"] = np.where(frame["x0"] > 0, "yes", "no")
    frame.to_parquet(tmp_path / "t.parquet")
    temp = tmp_path / "temp"
    temp.mkdir()

    def limit() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
        resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024))

    proc = _cli(["train", "--data", str(tmp_path / "t.parquet"), "--target", "label", "--model", "mlp", "--epochs",
                 "1", "--out", str(tmp_path / "run"), "--set", "data.streaming=true", "--quiet"], _env(temp),
                preexec_fn=limit)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 2, err
    lines = err.strip().splitlines()
    assert lines[0].startswith(f"error: cannot write the streaming row cache in {temp}"), err
    assert "TMPDIR" in err and "--out" not in err
    assert list(temp.iterdir()) == [] and not (tmp_path / "run").exists()


def test_workers_on_rows_that_are_not_streamed_images_are_said_to_be_unused(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # train.workers decode streamed image folders; on a table (in memory or streamed) they would be a silent no-op
    r = run_main(["train", "--data", "iris", "--model", "mlp", "--epochs", "1", "--set", "train.workers=2",
                  "--out", tmp_path / "run"], capsys)
    assert r.returncode == 0, r.stderr
    assert "warning: train.workers=2 is not used: worker processes decode streamed image folders, and this run's " \
           "rows are in memory" in r.stderr
