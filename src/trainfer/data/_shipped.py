"""scikit-learn's bundled tables, read straight from its package data without importing scikit-learn.

``import sklearn.datasets`` pulls in sklearn.base, scipy.stats and more: ~1.4 s on every command that
touches digits, iris, wine or breast_cancer, against a few ms to read the file. The frames are exactly
what ``load_<name>(as_frame=True)`` returns (tests/test_startup.py compares them, fingerprints included),
so runs trained either way match. Returns None when the files are not where this scikit-learn keeps
them; the caller then asks scikit-learn itself.
"""

from __future__ import annotations

import csv
import importlib.util
from pathlib import Path
from typing import Any

import numpy as np

# Column names as scikit-learn's loaders set them (they are not in the data files).
_IRIS = ["sepal length (cm)", "sepal width (cm)", "petal length (cm)", "petal width (cm)"]
_WINE = ["alcohol", "malic_acid", "ash", "alcalinity_of_ash", "magnesium", "total_phenols", "flavanoids",
         "nonflavanoid_phenols", "proanthocyanins", "color_intensity", "hue", "od280/od315_of_diluted_wines",
         "proline"]
_PARTS = ["radius", "texture", "perimeter", "area", "smoothness", "compactness", "concavity", "concave points",
          "symmetry", "fractal dimension"]
_BREAST_CANCER = [f"mean {p}" for p in _PARTS] + [f"{p} error" for p in _PARTS] + [f"worst {p}" for p in _PARTS]
_DIGITS = [f"pixel_{r}_{c}" for r in range(8) for c in range(8)]

SHIPPED = {"iris": ("iris.csv", _IRIS), "wine": ("wine_data.csv", _WINE),
           "breast_cancer": ("breast_cancer.csv", _BREAST_CANCER), "digits": ("digits.csv.gz", _DIGITS)}


def _data_dir() -> Path | None:
    spec = importlib.util.find_spec("sklearn")  # finds the package without running its __init__
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data"


def load_shipped(name: str) -> tuple[Any, np.ndarray] | None:
    """(features DataFrame, integer target) of a bundled scikit-learn table, or None when not readable here."""
    folder = _data_dir()
    if name not in SHIPPED or folder is None:
        return None
    file, columns = SHIPPED[name]
    path = folder / file
    try:
        if file.endswith(".gz"):  # digits: no header, the class in the last column
            table = np.loadtxt(path, delimiter=",")
            data, target = table[:, :-1], table[:, -1].astype(int)
        else:  # first line: n_samples, n_features, class names; then features and class per row
            with path.open(encoding="utf-8") as fh:
                rows = csv.reader(fh)
                n_samples = int(next(rows)[0])
                body = list(rows)
            data = np.asarray([r[:-1] for r in body], dtype=np.float64)
            target = np.asarray([r[-1] for r in body], dtype=int)
            if len(body) != n_samples:
                return None
    except (OSError, ValueError, StopIteration, IndexError):
        return None
    if data.ndim != 2 or data.shape != (len(target), len(columns)):
        return None  # a layout this module does not know: let scikit-learn read it
    import pandas as pd

    return pd.DataFrame(data, columns=columns), target
