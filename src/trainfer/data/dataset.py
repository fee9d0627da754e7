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

    def __len__(self) -> int:
        return len(self.y)

    def rows(self, index: np.ndarray) -> Any:
        return self.X.iloc[index].reset_index(drop=True) if self.kind == "tabular" else self.X[index]

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
