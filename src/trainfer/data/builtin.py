"""Built-in data: scikit-learn's bundled datasets (no download) and seeded generators."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from trainfer.data.dataset import Dataset
from trainfer.errors import ConfigError


def _sklearn(loader_name: str) -> Callable[[dict[str, Any]], Dataset]:
    def load(options: dict[str, Any]) -> Dataset:
        _no_options(loader_name, options)
        from trainfer._imports import require
        from trainfer.data._shipped import load_shipped

        shipped = load_shipped(loader_name)  # the same frame, without importing scikit-learn (~1.4 s)
        if shipped is not None:
            return Dataset(loader_name, "tabular", shipped[0], shipped[1], target="target")
        datasets = require("sklearn.datasets")
        bunch = getattr(datasets, f"load_{loader_name}")(as_frame=True)
        frame = bunch.data
        frame.columns = [str(c) for c in frame.columns]
        return Dataset(loader_name, "tabular", frame, bunch.target.to_numpy(), target="target")

    return load


def _no_options(name: str, options: dict[str, Any]) -> None:
    if options:
        raise ConfigError(f"data.options {sorted(options)} do not apply to {name!r}; remove them")


def _take(name: str, options: dict[str, Any], defaults: dict[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(options) - set(defaults))
    if unknown:
        raise ConfigError(f"data.options {unknown} unknown for {name!r}; valid: {sorted(defaults)}")
    merged = {**defaults, **options}
    for key, value in merged.items():
        if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
            raise ConfigError(f"data.options.{key} must be a non-negative number, got {value!r}")
    return merged


def synthetic_classification(options: dict[str, Any]) -> Dataset:
    """Gaussian clusters around random class centres; some features informative, the rest noise."""
    o = _take("synthetic-classification", options,
              {"n_samples": 2000, "n_features": 20, "n_informative": 10, "n_classes": 3, "noise": 1.0, "seed": 0})
    rng = np.random.default_rng(int(o["seed"]))
    n, d, k = int(o["n_samples"]), int(o["n_features"]), int(o["n_classes"])
    inf = min(int(o["n_informative"]), d)
    y = rng.integers(0, k, size=n)
    centres = rng.normal(0.0, 2.0, size=(k, inf))
    X = rng.normal(0.0, float(o["noise"]), size=(n, d))
    X[:, :inf] += centres[y]
    return Dataset("synthetic-classification", "tabular", _frame(X), y, target="target")


def synthetic_regression(options: dict[str, Any]) -> Dataset:
    """A smooth nonlinear function of the first features plus noise."""
    o = _take("synthetic-regression", options, {"n_samples": 2000, "n_features": 10, "noise": 0.1, "seed": 0})
    rng = np.random.default_rng(int(o["seed"]))
    n, d = int(o["n_samples"]), max(int(o["n_features"]), 2)
    X = rng.normal(size=(n, d))
    w = rng.normal(size=d)
    y = X @ w + np.sin(2 * X[:, 0]) + 0.5 * X[:, 1] ** 2 + rng.normal(0.0, float(o["noise"]), size=n)
    return Dataset("synthetic-regression", "tabular", _frame(X), y.astype(np.float64), target="target")


def synthetic_images(options: dict[str, Any]) -> Dataset:
    """Each class is a fixed smooth colour pattern; samples are shifted, noisy copies of it."""
    o = _take("synthetic-images", options,
              {"n_samples": 2000, "size": 32, "n_classes": 10, "noise": 40.0, "seed": 0})
    rng = np.random.default_rng(int(o["seed"]))
    n, s, k = int(o["n_samples"]), int(o["size"]), int(o["n_classes"])
    # Low-frequency templates: random 4x4 colour grids upsampled, so a small CNN can learn them.
    coarse = rng.uniform(-1.0, 1.0, size=(k, 4, 4, 3))
    reps = -(-s // 4)
    templates = np.repeat(np.repeat(coarse, reps, axis=1), reps, axis=2)[:, :s, :s, :]
    y = rng.integers(0, k, size=n)
    shifts = rng.integers(-2, 3, size=(n, 2))
    X = np.empty((n, s, s, 3), dtype=np.uint8)
    for i in range(n):
        t = np.roll(templates[y[i]], tuple(shifts[i]), axis=(0, 1))
        img = 128.0 + 70.0 * t + rng.normal(0.0, float(o["noise"]), size=t.shape)
        X[i] = np.clip(img, 0, 255).astype(np.uint8)
    return Dataset("synthetic-images", "image", X, y, target="label")


def _frame(X: np.ndarray) -> Any:
    import pandas as pd

    return pd.DataFrame(X, columns=[f"x{i}" for i in range(X.shape[1])])


BUILTIN: dict[str, Callable[[dict[str, Any]], Dataset]] = {
    "digits": _sklearn("digits"),
    "iris": _sklearn("iris"),
    "wine": _sklearn("wine"),
    "breast_cancer": _sklearn("breast_cancer"),
    "synthetic-classification": synthetic_classification,
    "synthetic-regression": synthetic_regression,
    "synthetic-images": synthetic_images,
}
