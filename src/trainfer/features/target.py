"""Target encoding: labels <-> class indices for classification, standardization for regression."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from trainfer.errors import DataError


@dataclass
class Target:
    task: str  # "classification" | "regression"
    name: str | None = None
    labels: list[Any] = field(default_factory=list)  # classification: index -> original label
    mean: float = 0.0  # regression: the model predicts (y - mean) / std
    std: float = 1.0

    @classmethod
    def fit(cls, y: np.ndarray, task: str, name: str | None = None) -> Target:
        if task == "classification":
            labels = sorted({_plain(v) for v in y.tolist()}, key=lambda v: (str(type(v)), v))
            if len(labels) < 2:
                raise DataError(
                    f"target {name or 'y'!r} has a single class ({labels[0]!r} in every row)"
                    if labels else f"target {name or 'y'!r} has no values",
                    hint="classification needs at least two classes; check the --target column",
                )
            return cls(task=task, name=name, labels=labels)
        values = np.asarray(y, dtype=np.float64)
        with np.errstate(over="ignore", invalid="ignore"):
            mean, std = float(values.mean()), float(values.std())
        if not (np.isfinite(mean) and np.isfinite(std)):  # finite values whose squares overflow (|y| ~ 1e300)
            raise DataError(f"target {name or 'y'!r} holds values too large to standardize "
                            f"(largest magnitude {np.abs(values).max():.3g})",
                            hint="rescale the column (e.g. to other units) so its values stay below about 1e150")
        return cls(task=task, name=name, mean=mean, std=std or 1.0)

    @property
    def n_outputs(self) -> int:
        return len(self.labels) if self.task == "classification" else 1

    def encode(self, y: np.ndarray, where: Callable[[int], str] | None = None) -> np.ndarray:
        """Raw targets -> int64 class indices, or float32 standardized values.

        ``where(i)`` names row ``i`` in an error as the user finds it (default: "row i").
        """
        if self.task == "classification":
            index = {label: i for i, label in enumerate(self.labels)}
            out = np.empty(len(y), dtype=np.int64)
            for i, v in enumerate(np.asarray(y, dtype=object).tolist()):
                key = _plain(v)
                if key not in index:
                    raise DataError(
                        f"{where(i) if where else f'row {i}'}: label {key!r} was not seen in training "
                        f"(known: {self.labels[:10]})"
                    )
                out[i] = index[key]
            return out
        return ((np.asarray(y, dtype=np.float64) - self.mean) / self.std).astype(np.float32)

    def decode(self, outputs: np.ndarray) -> np.ndarray:
        """Model outputs -> labels in the original label space (or values in original units)."""
        if self.task == "classification":
            idx = np.asarray(outputs).argmax(axis=1)
            return np.asarray(self.labels, dtype=object)[idx] if _any_str(self.labels) else np.asarray(
                self.labels
            )[idx]
        return np.asarray(outputs, dtype=np.float64).reshape(-1) * self.std + self.mean

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"task": self.task, "name": self.name}
        if self.task == "classification":
            d["labels"] = self.labels
        else:
            d.update(mean=self.mean, std=self.std)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Target:
        return cls(
            task=d["task"], name=d.get("name"), labels=list(d.get("labels", [])),
            mean=float(d.get("mean", 0.0)), std=float(d.get("std", 1.0)),
        )


def _plain(v: Any) -> Any:
    # numpy scalars -> Python scalars so labels survive JSON; whole floats like 3.0 become 3.
    if hasattr(v, "item"):
        v = v.item()
    if isinstance(v, float) and v.is_integer():
        return int(v)
    return v


def _any_str(labels: list[Any]) -> bool:
    return any(isinstance(v, str) for v in labels)


def infer_task(y: np.ndarray) -> str:
    """Strings, booleans and small sets of integers are classes; other numbers are regression."""
    arr = np.asarray(y)
    if arr.dtype.kind in "OUSb" or str(arr.dtype) in ("str", "string", "category"):
        return "classification"
    if arr.dtype.kind in "iu":
        return "classification" if len(np.unique(arr)) <= 50 else "regression"
    if arr.dtype.kind == "f":
        finite = arr[np.isfinite(arr)]
        if len(finite) and np.all(finite == np.round(finite)) and len(np.unique(finite)) <= 20:
            return "classification"
    return "regression"
