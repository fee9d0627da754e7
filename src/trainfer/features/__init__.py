"""Input schema and preprocessing: fitted with numpy/pandas, applied with numpy alone, saved as JSON.

This package ships inside inference bundles, so it never imports torch.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from trainfer._atomic import write_json
from trainfer.errors import RunError
from trainfer.features.delimiter import csv_format, sniff_delimiter
from trainfer.features.image import ImageFeatures, read_image, read_images
from trainfer.features.tabular import TabularFeatures, is_missing
from trainfer.features.target import Target, infer_task

FORMAT_VERSION = 1
_KINDS = {"tabular": TabularFeatures, "image": ImageFeatures}


class Features:
    """Everything needed to turn raw input into the model's tensor and outputs back into labels."""

    def __init__(self, inputs: TabularFeatures | ImageFeatures, target: Target, id_column: str | None = None):
        self.inputs = inputs
        self.target = target
        self.id_column = id_column

    @property
    def kind(self) -> str:
        return self.inputs.kind

    @property
    def task(self) -> str:
        return self.target.task

    @property
    def input_shape(self) -> tuple[int, ...]:
        return self.inputs.input_shape

    @property
    def n_outputs(self) -> int:
        return self.target.n_outputs

    def transform(self, X: Any) -> np.ndarray:
        return self.inputs.transform(X)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT_VERSION, "input": self.inputs.to_dict(), "target": self.target.to_dict(),
            "id_column": self.id_column,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Features:
        kind = d["input"]["kind"]
        return cls(_KINDS[kind].from_dict(d["input"]), Target.from_dict(d["target"]), d.get("id_column"))

    def save(self, path: str | Path) -> None:
        write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> Features:
        try:
            return cls.from_dict(json.loads(Path(path).read_text()))
        except FileNotFoundError:
            raise RunError(f"{path} not found") from None
        except (KeyError, ValueError) as exc:
            raise RunError(f"{path} is not a valid features file: {exc}") from None


__all__ = [
    "Features", "ImageFeatures", "TabularFeatures", "Target", "csv_format", "infer_task", "is_missing", "read_image",
    "read_images", "sniff_delimiter",
]
