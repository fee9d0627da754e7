"""Data sources (built-in names, files), splits, and fitting the preprocessing on the train split."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from trainfer.config import DataConfig
from trainfer.data.builtin import BUILTIN
from trainfer.data.dataset import Dataset
from trainfer.data.files import load_image_folder, load_npz, load_table, read_table
from trainfer.data.split import Split, split_indices
from trainfer.errors import DataError
from trainfer.features import Features, ImageFeatures, TabularFeatures, Target, infer_task

_TABLE_SUFFIXES = (".csv", ".parquet", ".pq")


def load_dataset(cfg: DataConfig) -> Dataset:
    """Resolve ``cfg.source`` (a built-in name or a path) to a raw Dataset."""
    src = cfg.source
    if src in BUILTIN:
        return BUILTIN[src](dict(cfg.options))
    path = Path(src).expanduser()
    if not path.exists():
        raise DataError(
            f"data source {src!r} is neither a built-in dataset nor an existing path",
            hint=f"built-in names: {', '.join(BUILTIN)}",
        )
    if cfg.options:
        raise DataError(f"data.options apply to generated datasets only; remove them for {path.name}")
    if path.is_dir():
        return load_image_folder(path, cfg.image_size)
    suffix = path.suffix.lower()
    if suffix in _TABLE_SUFFIXES:
        return load_table(path, cfg.target, cfg.id_column, cfg.drop)
    if suffix == ".npz":
        return load_npz(path)
    raise DataError(f"unsupported data file {path.name}",
                    hint="use .csv, .parquet, .npz or a folder of images (root/<class>/*.png)")


def resolve_task(cfg: DataConfig, ds: Dataset) -> str:
    return infer_task(ds.y) if cfg.task == "auto" else cfg.task


@dataclass
class Prepared:
    """Model-ready arrays per split, with the fitted features that produced them."""

    dataset: Dataset
    features: Features
    split: Split
    X: dict[str, np.ndarray]
    y: dict[str, np.ndarray]


def prepare(cfg: DataConfig, seed: int, split: Split | None = None) -> Prepared:
    """Load, split (or reuse a recorded split), fit preprocessing on train only, transform all splits."""
    ds = load_dataset(cfg)
    ds.fingerprint()  # of the data exactly as loaded (cached), before the target is converted below
    task = resolve_task(cfg, ds)
    if task == "regression":
        try:
            ds.y = np.asarray(ds.y, dtype=np.float64)
        except (TypeError, ValueError):
            raise DataError(f"target {ds.target!r} is not numeric; it cannot be a regression target",
                            hint="set data.task=classification") from None
    target = Target.fit(ds.y, task, ds.target)  # checks for a single class before anything is split
    if split is None:
        split = split_indices(ds.y, cfg.val_fraction, cfg.test_fraction, seed, stratify=task == "classification")
    train_rows = ds.rows(split.train)
    inputs = TabularFeatures.fit(train_rows) if ds.kind == "tabular" else ImageFeatures.fit(train_rows)
    target = Target.fit(ds.y[split.train], task, ds.target) if task == "regression" else target
    features = Features(inputs, target, ds.id_column)
    X, y = {}, {}
    for name in ("train", "val", "test"):
        idx = getattr(split, name)
        X[name] = features.transform(ds.rows(idx))
        y[name] = target.encode(ds.y[idx])
    return Prepared(ds, features, split, X, y)


__all__ = ["BUILTIN", "Dataset", "Prepared", "Split", "load_dataset", "prepare", "read_table", "resolve_task"]
