"""Helpers shared by the benchmarks: the environment record and the timing harness (trainfer's own, so that
benchmarks and `trainfer optimize`/`bench` measure by the same rules), and the models they train.

Imports neither torch nor onnxruntime at module level, so a benchmark can fix thread counts first.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from trainfer import _env
from trainfer._env import package_version
from trainfer._timing import Interleaved, interleave, paired_ratio, summarize

__all__ = ["MODELS", "ROOT", "Interleaved", "ensure_bundle", "environment", "first_raw_row", "interleave",
           "package_version", "paired_ratio", "summarize", "train_and_export"]

ROOT = Path(__file__).resolve().parent.parent

# What each benchmark trains when no run is given. Quality does not matter for latency or footprint.
MODELS: dict[str, dict[str, Any]] = {
    "digits_mlp": {"data": "digits", "model": "mlp", "epochs": 30, "seed": 0},
    "cnn": {"data": "synthetic-images", "model": "cnn", "epochs": 2, "seed": 0,
            "overrides": ["data.options.n_samples=600"]},
    # The width of the reference CNN for serving (~130 MFLOPs at 3x32x32, ~1.5 ms per image here)
    "cnn_wide": {"data": "synthetic-images", "model": "cnn", "epochs": 2, "seed": 0,
                 "overrides": ["data.options.n_samples=600", "model.channels=[36,72,144]"]},
}


def environment(threads: int | None) -> dict[str, Any]:
    """trainfer's environment record, with the git revision of this checkout whatever the working directory."""
    return _env.environment(threads, repo=ROOT)


def train_and_export(name: str, workdir: Path, epochs: int | None = None) -> tuple[Path, Path]:
    """Train ``MODELS[name]`` into ``workdir/name/run`` and export it to ``workdir/name/bundle``."""
    # Import the functions from their modules: once the `trainfer.train` / `trainfer.export`
    # subpackages are imported, the package attributes of those names are the modules, not the functions.
    from trainfer.exporting import export
    from trainfer.training import train

    spec = dict(MODELS[name])
    if epochs is not None:
        spec["epochs"] = epochs
    run = train(out=workdir / name / "run", quiet=True, **spec)
    return run.path, export(run, workdir / name / "bundle")


def ensure_bundle(run: Path, bundle: Path | None, out: Path) -> Path:
    """The given bundle, or a fresh export of ``run`` to ``out``."""
    if bundle is not None:
        return bundle
    from trainfer.exporting import export

    return export(run, out)


def first_raw_row(run: Any) -> np.ndarray:
    """One test-split sample exactly as a user passes it: a (1, n_features) float array, or (1, h, w, 3) uint8."""
    rows = run.load_split("test")[0]
    if hasattr(rows, "to_numpy"):  # a DataFrame of numeric columns
        return np.ascontiguousarray(rows.to_numpy(dtype=np.float64)[:1])
    return np.ascontiguousarray(np.asarray(rows)[:1])
