"""Reference models for the calibrated attack: ordinary runs of the training loop on chosen rows.

Each reference is trained by ``training.loop.fit`` with the audited run's recipe (another seed), on the
rows this module assigns it; its per-example confidence on the scored rows is all the attack keeps.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from trainfer.config import Recipe
from trainfer.data import Dataset, Split, prepare
from trainfer.features import Target


@dataclass
class ReferenceOutputs:
    """Every reference's confidence on every scored row, and which rows each one trained on."""

    confidence: np.ndarray  # (n_scored, n_references), logit-scaled
    trained_on: np.ndarray  # (n_scored, n_references) bool: True where the reference saw the row (IN)
    seconds: list[float]
    train_rows: list[int]


def assign(n_rows: int, n_references: int, seed: int) -> np.ndarray:
    """Which reference trains on which scored row: each row goes to exactly ``n_references // 2`` of them
    (chosen at random), so each is OUT, never seen, for the other ``n_references - n_references // 2``."""
    keys = np.random.default_rng([seed, 0xA0D17]).random((n_rows, n_references))
    ranks = keys.argsort(axis=1).argsort(axis=1)
    return ranks < n_references // 2


def reference_seed(seed: int, i: int) -> int:
    """A seed of its own for each reference's weights and batch order, fixed by the audit's seed."""
    return int(np.random.default_rng([seed, 0x5EED, i]).integers(0, 2**31 - 1))


def confidence(outputs: np.ndarray, y: np.ndarray, target: Target) -> np.ndarray:
    """LiRA's statistic, per row: log(p / (1 - p)) of the true class, computed from the logits without
    forming p (it saturates at 1 for the memorized rows the attack is about). Regression: -log(squared
    error), in the original units, so that models with their own target scaling compare."""
    if target.task == "classification":
        z = np.asarray(outputs, dtype=np.float64)
        rows = np.arange(len(z))
        true = z[rows, y]
        others = z.copy()
        others[rows, y] = -np.inf
        top = others.max(axis=1, keepdims=True)
        lse_others = top[:, 0] + np.log(np.exp(others - top).sum(axis=1))
        return true - lse_others
    err = target.decode(outputs) - np.asarray(y, dtype=np.float64)
    return -np.log(err**2 + 1e-12)


def loss(outputs: np.ndarray, y: np.ndarray, target: Target) -> np.ndarray:
    """Per-row training loss: cross-entropy, or squared error in the model's standardized units."""
    z = np.asarray(outputs, dtype=np.float64)
    if target.task == "classification":
        top = z.max(axis=1, keepdims=True)
        lse = top[:, 0] + np.log(np.exp(z - top).sum(axis=1))
        return lse - z[np.arange(len(z)), y]
    return (z.reshape(-1) - target.encode(y).astype(np.float64)) ** 2


def train_references(recipe: Recipe, dataset: Dataset, scored: np.ndarray, val: np.ndarray, n_references: int,
                     seed: int, progress: Callable[[str], None] | None = None) -> ReferenceOutputs:
    """Train ``n_references`` models through the loop and score ``scored`` (dataset row indices) with each.

    Each model's training rows are its share of ``scored`` (see ``assign``); ``val`` (the audited run's
    validation rows, never scored) is its validation split, for early stopping as in the audited run.
    """
    import torch

    from trainfer.models import build_model
    from trainfer.training.loop import fit, predict_outputs

    trained_on = assign(len(scored), n_references, seed)
    conf = np.empty((len(scored), n_references), dtype=np.float64)
    seconds, sizes = [], []
    y_raw = dataset.y[scored]
    with tempfile.TemporaryDirectory(prefix="trainfer-audit-") as work:
        for i in range(n_references):
            t0 = time.perf_counter()
            rows = np.sort(scored[trained_on[:, i]])
            ref_seed = reference_seed(seed, i)
            ref_recipe = recipe.model_copy(update={"seed": ref_seed})
            if progress:
                progress(f"reference {i + 1}/{n_references}: training on {len(rows)} rows "
                         f"({recipe.model.name}, {recipe.train.epochs} epochs max, seed {ref_seed})")
            # The audited run's own path: split, preprocessing fitted on this model's train rows, loop.
            data = prepare(recipe.data, ref_seed, Split(rows, val, val), splits=("train", "val"))
            torch.manual_seed(ref_seed)
            model = build_model(recipe.model, data.features.input_shape, data.features.n_outputs)
            fit(model, data, ref_recipe, Path(work) / f"ref{i}", quiet=True, splits=("train", "val"))
            X = data.features.transform(data.dataset.rows(scored))
            out = predict_outputs(model, X, next(model.parameters()).device, recipe.train.eval_batch_size)
            target = data.features.target
            y = target.encode(y_raw) if target.task == "classification" else y_raw
            conf[:, i] = confidence(out, y, target)
            seconds.append(time.perf_counter() - t0)
            sizes.append(len(rows))
            if progress:
                progress(f"reference {i + 1}/{n_references}: done in {seconds[-1]:.1f} s")
    return ReferenceOutputs(conf, trained_on, seconds, sizes)
