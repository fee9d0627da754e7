"""The raw dataset: features exactly as the user has them, plus the target."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np


@dataclass
class Dataset:
    """Raw rows. ``X`` is a pandas DataFrame (tabular) or uint8 images (n, h, w, 3)."""

    name: str
    kind: str  # "tabular" | "image"
    X: Any
    y: np.ndarray
    target: str | None = None
    ids: np.ndarray | None = None
    id_column: str | None = None
    # For messages: the file the rows came from, and each row's number there (1-based, header not counted).
    # None: the rows are numbered 1..n in the order loaded.
    origin: str | None = None
    row_numbers: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.y)

    def rows(self, index: np.ndarray) -> Any:
        return self.X.iloc[index].reset_index(drop=True) if self.kind == "tabular" else self.X[index]

    def where(self, i: int) -> str:
        """Row ``i`` as the user finds it in the source: "animals.csv data row 3 (from 1, below the header)"."""
        n = int(self.row_numbers[i]) if self.row_numbers is not None else int(i) + 1
        if self.origin is None:
            return f"{self.name} row {n} (counted from 1)"
        return f"{self.origin} data row {n} (counted from 1 below the header)" if self.origin.lower().endswith(
            ".csv") else f"{self.origin} row {n} (counted from 1)"

    def subset(self, keep: np.ndarray) -> Dataset:
        """The rows where ``keep`` is true, each keeping its number in the source."""
        numbers = self.row_numbers if self.row_numbers is not None else np.arange(1, len(self.y) + 1)
        X = self.X[keep].reset_index(drop=True) if self.kind == "tabular" else self.X[keep]
        return Dataset(self.name, self.kind, X, self.y[keep], self.target,
                       None if self.ids is None else self.ids[keep], self.id_column, self.origin, numbers[keep])

    @cached_property
    def _fingerprint(self) -> str:
        h = hashlib.sha256()
        if self.kind == "tabular":
            import pandas as pd

            h.update(pd.util.hash_pandas_object(self.X, index=False).to_numpy().tobytes())
            h.update(",".join(map(str, self.X.columns)).encode())
        else:
            h.update(np.ascontiguousarray(self.X).tobytes())
        h.update("\x1f".join(map(str, np.asarray(self.y).tolist())).encode())
        return h.hexdigest()

    def fingerprint(self) -> str:
        """sha256 of the raw content, recorded in runs and bundles to tie them to their data."""
        return self._fingerprint
