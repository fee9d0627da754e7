"""Metrics for a finished run: on its recorded test split, or on new labelled data."""

from __future__ import annotations

from typing import Any

import numpy as np

from trainfer.data import BUILTIN, check_targets, in_source, load_dataset, unlabeled
from trainfer.errors import DataError, InputError
from trainfer.training.metrics import compute_metrics
from trainfer.training.run import Run


def evaluate(run: Run, data: str | None = None) -> dict[str, Any]:
    """Score ``run`` on its test split (``data=None``) or on a labelled source with the same columns.

    Rows of ``data`` without a label are skipped and counted (``"unlabeled"`` in the result); errors name
    rows by their number in the file. Example: ``trainfer.evaluate(run, "new.csv")["metrics"]``
    """
    target = run.features.target
    skipped = 0
    if data is None:
        (X, y), source, split = run.load_split("test"), run.recipe.data.source, "test"
        y = np.asarray(y, dtype=np.float64) if target.task == "regression" else y  # checked when trained
        ds = None
    else:
        # Another source keeps the run's column choices, except for a built-in one, whose columns are fixed.
        fixed = {"target": None, "id_column": None, "drop": []} if data in BUILTIN else {}
        cfg = run.recipe.data if run.recipe.data.source == data else \
            run.recipe.data.model_copy(update={"source": data, "options": {}, **fixed})
        ds = load_dataset(cfg)
        missing = unlabeled(ds)
        skipped = int(missing.sum())
        if skipped == len(ds):
            raise DataError(f"none of the {len(ds)} rows of {data} has a value in target {ds.target!r}",
                            hint="evaluate needs labelled rows; use `trainfer predict` for unlabeled data")
        if skipped:
            ds = ds.subset(~missing)
        y = check_targets(ds, target.task)
        X, source, split = ds.X, data, "all"
    try:
        outputs = run.outputs(X)
    except InputError as exc:
        if ds is None:
            raise
        raise in_source(exc, ds) from None
    encoded = target.encode(y, where=ds.where if ds is not None else None)
    metrics = compute_metrics(outputs, encoded, target)
    return {"run": str(run.path), "data": source, "split": split, "samples": len(y), "unlabeled": skipped,
            "metrics": metrics}
