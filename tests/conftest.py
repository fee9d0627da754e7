"""Shared fixtures: a CLI runner, user-error assertions, and small generated datasets.

Everything is tiny on purpose: the suite runs on 2 CPU cores in well under two minutes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

# One intra-op thread per process: the models here are tiny, and on a small shared machine torch's
# default thread pool spends more time spinning than computing (and several CLI processes run at once).
# Set before torch is imported anywhere, so it holds for this process and every CLI subprocess.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src"
CLI = [sys.executable, "-m", "trainfer.cli"]
CLI_TIMEOUT_S = 180

# Small, fast models for the end-to-end tests (the defaults are sized for real data).
TINY_MLP = ["--set", "model.hidden=[32]"]


@dataclass
class Result:
    args: list[str]
    returncode: int
    stdout: str
    stderr: str

    def json(self) -> dict:
        """The JSON object printed as the last line of stdout by ``--json``."""
        lines = [line for line in self.stdout.splitlines() if line.strip()]
        assert lines, f"no stdout from {self.args}; stderr:\n{self.stderr}"
        return json.loads(lines[-1])

    def check(self) -> Result:
        assert self.returncode == 0, (
            f"`trainfer {' '.join(self.args)}` exited {self.returncode}\n"
            f"stdout:\n{self.stdout}\nstderr:\n{self.stderr}"
        )
        return self


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(SRC) + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("COLUMNS", None)
    return env


def start_cli(args: Sequence[str], cwd: Path | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        [*CLI, *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=_env(), cwd=cwd,
    )


def finish_cli(proc: subprocess.Popen, args: Sequence[str]) -> Result:
    try:
        out, err = proc.communicate(timeout=CLI_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"`trainfer {' '.join(map(str, args))}` did not finish in {CLI_TIMEOUT_S} s\n{err}")
    return Result([str(a) for a in args], proc.returncode, out, err)


def run_cli(*args: object, cwd: Path | None = None) -> Result:
    """Run ``python -m trainfer.cli ARGS`` in a fresh process and capture everything."""
    return finish_cli(start_cli([str(a) for a in args], cwd), args)


def run_cli_many(commands: Sequence[Sequence[object]]) -> list[Result]:
    """Run several CLI commands at once (each in its own process); results in the same order."""
    procs = [(start_cli([str(a) for a in c]), c) for c in commands]
    return [finish_cli(p, c) for p, c in procs]


def run_main(args: Sequence[object], capsys: pytest.CaptureFixture[str]) -> Result:
    """Call the console script's entry point, ``trainfer.cli.main(argv)``, in this process.

    Much cheaper than a new process (torch is imported once). An exception escaping ``main`` would
    be a traceback for the user: it fails the test as such.
    """
    from trainfer.cli import main

    argv = [str(a) for a in args]
    capsys.readouterr()
    try:
        main(argv)
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    captured = capsys.readouterr()
    return Result(argv, code, captured.out, captured.err)


def assert_user_error(result: Result, out: Path | None = None, mentions: Sequence[str] = ()) -> str:
    """A user mistake: exit 2, one ``error:`` line (plus at most one ``hint:``), no traceback,
    and no run directory left behind. Returns the error line."""
    assert result.returncode == 2, (
        f"expected exit 2 for `trainfer {' '.join(result.args)}`, got {result.returncode}\n"
        f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    )
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines and lines[0].startswith("error: "), f"stderr must start with 'error: ':\n{result.stderr}"
    assert sum(line.startswith("error: ") for line in lines) == 1, result.stderr
    assert len(lines) <= 2, f"expected one error line and at most one hint line:\n{result.stderr}"
    if len(lines) == 2:
        assert lines[1].startswith("hint: "), f"second stderr line must be a hint:\n{result.stderr}"
    for word in mentions:
        assert word.lower() in lines[0].lower(), f"error line should mention {word!r}: {lines[0]}"
    if out is not None:
        assert not (out / "summary.json").exists(), f"{out} looks like a complete run after an error"
        assert not out.exists(), f"a failed run left {out} behind: {sorted(p.name for p in out.iterdir())}"
    return lines[0]


def read_summary(run: Path) -> dict:
    return json.loads((run / "summary.json").read_text())


def read_metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]


# ---- generated data ---------------------------------------------------------------------------

def make_mixed_frame(n: int = 300, seed: int = 0):
    """A learnable table: string labels, a string categorical column, NaNs in numeric and categorical columns.

    label = "dog" for red, "cat" for blue, and for green the sign of x1 decides ("bird" / "cat").
    """
    import pandas as pd

    rng = np.random.default_rng(seed)
    colour = rng.choice(["red", "green", "blue"], size=n)
    x1 = rng.normal(size=n)
    x2 = rng.normal(size=n)
    label = np.where(colour == "red", "dog", np.where(colour == "blue", "cat", np.where(x1 > 0, "bird", "cat")))
    frame = pd.DataFrame({"x1": x1, "colour": colour.astype(object), "x2": x2, "label": label})
    frame.loc[rng.random(n) < 0.05, "x2"] = np.nan
    frame.loc[rng.random(n) < 0.05, "colour"] = np.nan
    frame.loc[rng.random(n) < 0.03, "x1"] = np.nan
    return frame


@pytest.fixture(scope="session")
def mixed_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("csv") / "animals.csv"
    frame = make_mixed_frame()
    frame.to_csv(path, index=False)
    text = path.read_text()
    assert ",," in text or ",\n" in text, "the CSV must really hold missing values"
    return path


def write_image_folder(root: Path, per_class: int = 20, size: int = 16, seed: int = 0) -> Path:
    """root/<class>/*.png with three clearly different classes: red solid, green stripes, blue checks."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    patterns = {
        "red": np.stack([np.full((size, size), 220), np.full((size, size), 40), np.full((size, size), 40)], -1),
        "green": np.stack([np.full((size, size), 30), np.where(yy % 4 < 2, 230, 60), np.full((size, size), 30)], -1),
        "blue": np.stack([np.full((size, size), 30), np.full((size, size), 30),
                          np.where((yy // 4 + xx // 4) % 2 == 0, 240, 70)], -1),
    }
    for name, base in patterns.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            img = np.clip(base + rng.normal(0, 20, size=base.shape), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(root / name / f"{i:03d}.png")
    return root


@pytest.fixture(scope="session")
def image_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_image_folder(tmp_path_factory.mktemp("images") / "shapes")


@pytest.fixture(scope="session")
def csv_run(tmp_path_factory: pytest.TempPathFactory, mixed_csv: Path):
    """One small run trained in-process through the Python API, shared by read-only tests."""
    from trainfer.training import train

    out = tmp_path_factory.mktemp("runs") / "csv-run"
    return train(data=str(mixed_csv), target="label", model="mlp", epochs=4, seed=0, out=out,
                          overrides=["model.hidden=[32]"])


# ---- bundles shared by the inference, predict and serve tests (trained and exported once per session) ----

@pytest.fixture(scope="session")
def digits_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from _inference_fixtures import get_bundle

    return get_bundle(tmp_path_factory, "digits")


@pytest.fixture(scope="session")
def csv_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from _inference_fixtures import get_bundle

    return get_bundle(tmp_path_factory, "csv")


@pytest.fixture(scope="session")
def cnn_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from _inference_fixtures import get_bundle

    return get_bundle(tmp_path_factory, "cnn")


# ---- a real PostgreSQL server for the study-storage tests (started once per session, stopped at the end) ----

@pytest.fixture(scope="session")
def postgres():
    from _pg_fixtures import running_postgres

    with running_postgres() as server:
        yield server
