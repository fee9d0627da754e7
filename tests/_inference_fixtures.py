"""Shared, cached runs and bundles for the inference tests (test_export, test_runtime, test_predict_cli).

Each tiny model is trained once and exported once per test session, whichever of those modules asks
first; the others reuse it. Tests that change a bundle work on a copy (``copy_bundle``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")  # tiny models on a small shared machine

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src"

TINY_MLP = ["model.hidden=[32]"]
TINY_CNN = ["data.options.n_samples=240", "data.options.size=16", "data.options.n_classes=3",
            "model.channels=[8,16]", "train.epochs=4"]

# name -> keyword arguments for trainfer.train (the "csv" data file is generated on first use)
RECIPES: dict[str, dict[str, Any]] = {
    "digits": {"data": "digits", "model": "mlp", "epochs": 3, "overrides": TINY_MLP},
    "breast_cancer": {"data": "breast_cancer", "model": "mlp", "epochs": 3, "overrides": TINY_MLP},
    "cnn": {"data": "synthetic-images", "model": "cnn", "overrides": TINY_CNN},
    "csv": {"target": "label", "model": "mlp", "epochs": 4, "overrides": TINY_MLP},
}
CSV_LABELS = ["bird", "cat", "dog"]  # sorted, as the bundle lists them

_cache: dict[str, Any] = {}


def make_animals(n: int = 240, seed: int = 0):
    """A table with an ``id`` column (shuffled, so order matters), string labels, a categorical column
    and missing values. label: red -> dog, blue -> cat, green -> bird if x1 > 0 else cat."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    colour = rng.choice(["red", "green", "blue"], size=n)
    x1 = rng.normal(size=n)
    x2 = rng.normal(size=n)
    label = np.where(colour == "red", "dog", np.where(colour == "blue", "cat", np.where(x1 > 0, "bird", "cat")))
    frame = pd.DataFrame({"id": rng.permutation(10 * n)[:n] + 1000, "x1": x1, "colour": colour.astype(object),
                          "x2": x2, "label": label})
    frame.loc[rng.random(n) < 0.05, "x2"] = np.nan
    frame.loc[rng.random(n) < 0.05, "colour"] = np.nan
    return frame


def _root(factory: pytest.TempPathFactory) -> Path:
    if "root" not in _cache:
        _cache["root"] = factory.mktemp("inference")
    return _cache["root"]


def csv_path(factory: pytest.TempPathFactory) -> Path:
    path = _root(factory) / "animals.csv"
    if not path.exists():
        make_animals().to_csv(path, index=False)
    return path


def get_run(factory: pytest.TempPathFactory, name: str):
    """A trained Run (cached for the session)."""
    key = f"run:{name}"
    if key not in _cache:
        # Imported from the submodule: `trainfer.train` stops being the function once the
        # trainfer.train package is imported (see test_export.test_public_api_verbs_stay_callable).
        from trainfer.training import train

        kwargs = dict(RECIPES[name])
        if name == "csv":
            kwargs["data"] = str(csv_path(factory))
        _cache[key] = train(out=_root(factory) / f"run-{name}", seed=0, quiet=True, **kwargs)
    return _cache[key]


def get_bundle(factory: pytest.TempPathFactory, name: str) -> Path:
    """The exported bundle of ``get_run(name)`` (cached for the session; never modify it in place)."""
    key = f"bundle:{name}"
    if key not in _cache:
        from trainfer.exporting import export

        _cache[key] = export(get_run(factory, name), _root(factory) / f"bundle-{name}")
    return _cache[key]


def copy_bundle(bundle: Path, dest: Path) -> Path:
    return Path(shutil.copytree(bundle, dest))


def flip_byte(path: Path, offset: int, new: int | None = None) -> None:
    """Change one byte of ``path`` in place (xor 0x01 unless ``new`` is given)."""
    data = bytearray(path.read_bytes())
    data[offset] = (data[offset] ^ 0x01) if new is None else new
    assert bytes(data) != path.read_bytes()
    path.write_bytes(bytes(data))


# ---- a Python where torch cannot be imported --------------------------------------------------

NO_TORCH_PRELUDE = textwrap.dedent("""
    import sys

    class _BlockTorch:
        attempts = []

        def find_spec(self, name, path=None, target=None):
            if name == "torch" or name.startswith("torch."):
                _BlockTorch.attempts.append(name)
                raise ImportError(f"torch is blocked in this test ({name})")
            return None

    sys.meta_path.insert(0, _BlockTorch())
    try:
        import torch  # noqa: F401
    except ImportError:
        pass
    else:
        raise SystemExit("the torch blocker does not work")
    _BlockTorch.attempts.clear()
""")

NO_TORCH_EPILOGUE = textwrap.dedent("""
    leaked = sorted(m for m in sys.modules if m == "torch" or m.startswith("torch."))
    assert not leaked, f"torch modules were imported: {leaked}"
    print("TORCH-IMPORT-ATTEMPTS", _BlockTorch.attempts)
    print("NO-TORCH-OK")
""")


def run_without_torch(code: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh Python in which any ``import torch`` raises ImportError; it must
    finish with torch absent from sys.modules. Returns the completed process (check it)."""
    script = NO_TORCH_PRELUDE + textwrap.dedent(code) + NO_TORCH_EPILOGUE
    env = dict(os.environ)
    env["PYTHONPATH"] = str(SRC) + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=timeout, env=env)


def assert_ran_without_torch(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 0 and "NO-TORCH-OK" in proc.stdout, (
        f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
    return proc.stdout
