"""Seeded train/val/test splits, stratified by class for classification."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from trainfer.errors import DataError


@dataclass
class Split:
    train: np.ndarray
    val: np.ndarray
    test: np.ndarray

    def arrays(self) -> dict[str, np.ndarray]:
        """The three index arrays, for recording the split (split.json): not a read of the rows themselves."""
        return {"train": self.train, "val": self.val, "test": self.test}

    def to_dict(self) -> dict[str, list[int]]:
        return {name: idx.tolist() for name, idx in self.arrays().items()}

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
            raise _empty_split(name, y, val, test, stratify)
    return out


def min_rows(val: float, test: float) -> int:
    """The fewest rows from which a split by these fractions gives val, test and train one row each."""
    n = 3
    while round(n * val) < 1 or round(n * test) < 1 or n - round(n * val) - round(n * test) < 1:
        n += 1
    return n


def _empty_split(name: str, y: np.ndarray, val: float, test: float, stratify: bool) -> DataError:
    need = min_rows(val, test)
    fractions = f"data.val_fraction {val:g} and data.test_fraction {test:g}"
    hint = "add rows, or raise data.val_fraction / data.test_fraction"
    if not stratify:
        return DataError(f"the {name} split is empty: {len(y)} rows are too few; with {fractions} "
                         f"a split needs at least {need} rows", hint=hint)
    # Each class is split on its own (stratified): the split is empty because no class gave it a row.
    labels = np.asarray(y, dtype=object)
    counts = sorted(((int((labels == c).sum()), c) for c in _classes(y)), key=lambda t: t[0])
    small = [f"{c!r} ({k} row{'s' if k != 1 else ''})" for k, c in counts]
    more = f" and {len(small) - 5} more" if len(small) > 5 else ""
    which = f"classes {', '.join(small[:5])}{more} are" if len(small) > 1 else f"class {small[0]} is"
    return DataError(f"the {name} split is empty: {which} too small; with {fractions} each class needs at least "
                     f"{need} rows", hint=f"{hint} for the small classes")


def _classes(y: np.ndarray) -> list:
    values = np.unique(y).tolist() if np.asarray(y).dtype.kind in "iub" else np.asarray(y, dtype=object).tolist()
    return sorted(set(values), key=lambda v: (str(type(v)), v))


def split_json(seed: int, fingerprint: str, split: Split) -> Iterator[str]:
    """split.json's text in pieces: the row lists a chunk at a time, never millions of Python ints at once
    (a streamed table of 8 million rows made ~0.5 GB of them)."""
    yield f'{{\n  "seed": {json.dumps(seed)},\n  "fingerprint": {json.dumps(fingerprint)}'
    for name, idx in split.arrays().items():
        yield f',\n  "{name}": ['
        for i in range(0, len(idx), 65536):
            yield ("," if i else "") + ",".join(map(str, idx[i:i + 65536].tolist()))
        yield "]"
    yield "\n}\n"
