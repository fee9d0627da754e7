"""Seeded train/val/test splits, stratified by class for classification."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from trainfer.errors import DataError


@dataclass
class Split:
    train: np.ndarray
    val: np.ndarray
    test: np.ndarray

    def to_dict(self) -> dict[str, list[int]]:
        return {"train": self.train.tolist(), "val": self.val.tolist(), "test": self.test.tolist()}

    @classmethod
    def from_dict(cls, d: dict[str, list[int]]) -> Split:
        return cls(*(np.asarray(d[k], dtype=np.int64) for k in ("train", "val", "test")))


def split_indices(y: np.ndarray, val: float, test: float, seed: int, stratify: bool) -> Split:
    """Deterministic for a given seed; each class keeps its share in every split when stratified."""
    rng = np.random.default_rng(seed)
    n = len(y)
    groups = [np.flatnonzero(y == c) for c in _classes(y)] if stratify else [np.arange(n)]
    parts: dict[str, list[np.ndarray]] = {"train": [], "val": [], "test": []}
    for idx in groups:
        idx = rng.permutation(idx)
        n_test = round(len(idx) * test)
        n_val = round(len(idx) * val)
        parts["test"].append(idx[:n_test])
        parts["val"].append(idx[n_test:n_test + n_val])
        parts["train"].append(idx[n_test + n_val:])
    out = Split(*(np.sort(np.concatenate(parts[k])).astype(np.int64) for k in ("train", "val", "test")))
    for name in ("train", "val", "test"):
        if len(getattr(out, name)) == 0:
            raise DataError(
                f"the {name} split is empty ({n} rows in all)",
                hint="use more data or raise data.val_fraction / data.test_fraction",
            )
    return out


def _classes(y: np.ndarray) -> list:
    return sorted(set(np.asarray(y, dtype=object).tolist()), key=lambda v: (str(type(v)), v))
