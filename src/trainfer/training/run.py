"""A finished run: its recipe, features, summary and model, loaded from the run directory."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from trainfer.config import Recipe, validate
from trainfer.errors import RunError
from trainfer.features import Features
from trainfer.models import build_model
from trainfer.training.checkpoint import load_tensors


class Run:
    """A completed training run. ``Run.load("runs/digits")`` opens one; ``trainfer.train`` returns one.

    Attributes: ``path``, ``recipe``, ``features``, ``summary`` (dict), ``model`` (torch, eval mode).
    """

    def __init__(self, path: Path, recipe: Recipe, features: Features, summary: dict[str, Any],
                 model: torch.nn.Module) -> None:
        self.path = path
        self.recipe = recipe
        self.features = features
        self.summary = summary
        self.model = model
        self._dataset: Any = None  # the run's data, read once by load_split

    @classmethod
    def load(cls, path: str | Path) -> Run:
        path = Path(path)
        if not path.is_dir():
            if path.exists():
                raise RunError(f"{path} is a file, not a run directory",
                               hint="pass the --out directory of `trainfer train`")
            raise RunError(f"run directory {path} not found", hint="pass the --out directory of `trainfer train`")
        if (path / "tune.json").is_file() or ((path / "best.yaml").is_file() and (path / "trials").is_dir()):
            # a study's summary.json and recipe.yaml made it look like a run, until features.json was missing
            raise RunError(f"{path} is a tuning study, not a run",
                           hint=f"its best trial's run is {path / 'best'} (every trial's: {path / 'trials'}/NNNN)")
        if (path / "manifest.json").is_file() and not (path / "summary.json").exists():
            raise RunError(f"{path} is a bundle, not a training run",
                           hint="export and optimize take the run directory (the --out of `trainfer train`)")
        if not (path / "summary.json").is_file():
            raise RunError(f"run {path} is incomplete (no summary.json)",
                           hint=f"finish it with: trainfer train --out {path} --resume")
        try:
            recipe = validate(yaml.safe_load((path / "recipe.yaml").read_text()), str(path / "recipe.yaml"))
            summary = json.loads((path / "summary.json").read_text())
        except (OSError, ValueError) as exc:
            raise RunError(f"run {path} is damaged: {exc}") from None
        features = Features.load(path / "features.json")
        model = build_model(recipe.model, features.input_shape, features.n_outputs)
        if recipe.privacy is not None:  # trained with DP-SGD: its BatchNorms became GroupNorms (training/privacy.py)
            from trainfer.training.privacy import replace_batchnorm

            model, _ = replace_batchnorm(model)
        model.load_state_dict(load_tensors(path / "model.safetensors"))
        model.eval()
        return cls(path, recipe, features, summary, model)

    @property
    def task(self) -> str:
        return self.features.task

    def split(self) -> dict[str, Any]:
        return json.loads((self.path / "split.json").read_text())

    def load_split(self, name: str = "test") -> tuple[Any, np.ndarray]:
        """Raw rows and raw targets of one recorded split (train, val or test) of the run's data."""
        from trainfer.data import load_dataset
        from trainfer.errors import DataError

        recorded = self.split()
        ds = self._dataset
        if ds is None:  # read and checked once: optimize asks for three splits, bench and export for one
            ds = load_dataset(self.recipe.data)
            if ds.fingerprint() != recorded["fingerprint"]:
                raise DataError(f"the data at {self.recipe.data.source!r} changed since the run was trained",
                                hint="pass labelled data explicitly (e.g. --data) instead of the recorded split")
            self._dataset = ds
        idx = np.asarray(recorded[name], dtype=np.int64)
        return ds.rows(idx), ds.y[idx]

    def outputs(self, X: Any, batch_size: int = 1024) -> np.ndarray:
        """Raw model outputs (logits, or standardized values) for raw input rows."""
        return self.outputs_preprocessed(self.features.transform(X), batch_size)

    def outputs_preprocessed(self, X: np.ndarray, batch_size: int = 1024) -> np.ndarray:
        """Raw model outputs for already preprocessed float32 input (the torch reference for export)."""
        from trainfer.training.loop import predict_outputs

        device = next(self.model.parameters()).device
        return predict_outputs(self.model, X, device, batch_size)

    def predict_proba(self, X: Any) -> np.ndarray:
        """Class probabilities from the torch model, for raw input rows."""
        if self.task != "classification":
            raise RunError("predict_proba is for classification runs; use predict for regression")
        z = self.outputs(X).astype(np.float64)
        e = np.exp(z - z.max(axis=1, keepdims=True))
        return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)

    def predict(self, X: Any) -> np.ndarray:
        """Labels (classification) or values (regression) in the original space, from torch."""
        return self.features.target.decode(self.outputs(X))

    def __repr__(self) -> str:
        test = self.summary.get("test", {})
        shown = ", ".join(f"{k}={v:.4f}" for k, v in test.items() if k != "loss")
        return f"Run({str(self.path)!r}, {self.recipe.model.name}, test: {shown})"
