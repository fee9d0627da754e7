"""Metrics for a finished run: on its recorded test split, or on new labelled data."""

from __future__ import annotations

from typing import Any

import numpy as np

from trainfer.data import load_dataset
from trainfer.training.metrics import compute_metrics
from trainfer.training.run import Run


def evaluate(run: Run, data: str | None = None) -> dict[str, Any]:
    """Score ``run`` on its test split (``data=None``) or on a labelled source with the same columns."""
    target = run.features.target
    if data is None:
        (X, y), source, split = run.load_split("test"), run.recipe.data.source, "test"
    else:
        cfg = run.recipe.data if run.recipe.data.source == data else \
            run.recipe.data.model_copy(update={"source": data, "options": {}})
        ds = load_dataset(cfg)
        X, y, source, split = ds.X, ds.y, data, "all"
    if target.task == "regression":
        y = np.asarray(y, dtype=np.float64)
    metrics = compute_metrics(run.outputs(X), target.encode(y), target)
    return {"run": str(run.path), "data": source, "split": split, "samples": len(y), "metrics": metrics}
