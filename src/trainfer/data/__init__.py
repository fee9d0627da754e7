"""Data sources (built-in names, files), splits, and fitting the preprocessing on the train split."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from trainfer.config import DataConfig
from trainfer.data.builtin import BUILTIN
from trainfer.data.dataset import Dataset
from trainfer.data.files import load_image_folder, load_npz, load_table, read_table
from trainfer.data.split import Split, split_indices
from trainfer.data.streaming import prepare_streaming, streams
from trainfer.errors import DataError, InputError
from trainfer.features import Features, ImageFeatures, TabularFeatures, Target, infer_task, is_missing

_TABLE_SUFFIXES = (".csv", ".parquet", ".pq")


def load_dataset(cfg: DataConfig) -> Dataset:
    """Resolve ``cfg.source`` (a built-in name or a path) to a raw Dataset."""
    src = cfg.source
    if src in BUILTIN:
        return _builtin_columns(BUILTIN[src](dict(cfg.options)), cfg)
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


def _builtin_columns(ds: Dataset, cfg: DataConfig) -> Dataset:
    """A built-in dataset's target is fixed and it has no id column: naming others is a mistake, not a no-op.
    ``data.drop`` is honoured for the built-in tables, whose columns have names."""
    if cfg.target is not None and cfg.target != ds.target:
        raise DataError(f"--target {cfg.target!r} does not apply to the built-in dataset {ds.name!r}: "
                        f"its target is fixed ({ds.target!r})",
                        hint="remove --target (data.target), or save the data to a CSV file to predict another column")
    if cfg.id_column is not None:
        raise DataError(f"data.id_column {cfg.id_column!r} does not apply to the built-in dataset {ds.name!r}: "
                        "it has no id column", hint="remove data.id_column")
    if cfg.drop:
        columns = [str(c) for c in ds.X.columns] if ds.kind == "tabular" else []
        unknown = [c for c in cfg.drop if c not in columns]
        if unknown:
            raise DataError(f"data.drop names column(s) not in the built-in dataset {ds.name!r}: {unknown}",
                            hint=f"its columns are: {', '.join(columns[:20])}" if columns else "remove data.drop")
        if len(set(cfg.drop)) == len(columns):
            raise DataError(f"data.drop removes every feature column of {ds.name!r}")
        ds.X = ds.X.drop(columns=list(cfg.drop))
    return ds


def resolve_task(cfg: DataConfig, ds: Dataset) -> str:
    return infer_task(ds.y) if cfg.task == "auto" else cfg.task


def unlabeled(ds: Dataset) -> np.ndarray:
    """Rows whose target is missing (None, NaN, empty, "NA", ...: the features' own notion of missing)."""
    y = np.asarray(ds.y)
    if y.dtype.kind in "iub":
        return np.zeros(len(y), dtype=bool)
    if y.dtype.kind == "f":
        return np.isnan(y)
    return np.fromiter((is_missing(v) for v in y.tolist()), bool, len(y))


def check_targets(ds: Dataset, task: str) -> np.ndarray:
    """The targets, checked: every row labelled, and a finite number for regression (as float64).

    Training never drops rows silently: a missing or non-finite target is an error naming its row in the file.
    """
    missing = unlabeled(ds)
    if missing.all():
        raise DataError(f"target {ds.target!r} has no values in {ds.origin or ds.name}")
    if missing.any():
        rows = np.flatnonzero(missing)
        raise DataError(f"{len(rows)} of {len(ds)} rows have no value in target {ds.target!r}; the first: "
                        f"{ds.where(rows[0])}",
                        hint="fill in or remove the rows without a label (training does not drop them silently)")
    if task != "regression":
        y = np.asarray(ds.y)
        if y.dtype.kind == "O":
            inf = [i for i, v in enumerate(y.tolist()) if isinstance(v, float) and math.isinf(v)]
        else:
            inf = np.flatnonzero(np.isinf(y)).tolist() if y.dtype.kind == "f" else []
        if inf:  # it would silently become a class of its own
            raise DataError(f"target {ds.target!r} holds an infinite value at {ds.where(inf[0])}"
                            f"{f' and {len(inf) - 1} more row(s)' if len(inf) > 1 else ''}",
                            hint="fix or remove those rows")
        return ds.y
    try:
        y = np.asarray(ds.y, dtype=np.float64)
    except (TypeError, ValueError):  # find the value to name
        for i, v in enumerate(np.asarray(ds.y, dtype=object).tolist()):
            try:
                float(v)
            except (TypeError, ValueError):
                raise DataError(f"target {ds.target!r} is not numeric ({v!r} at {ds.where(i)}); it cannot be a "
                                "regression target", hint="set data.task=classification, or fix that value") from None
        raise
    bad = np.flatnonzero(~np.isfinite(y))
    if len(bad):
        raise DataError(f"target {ds.target!r} must be a finite number: {y[bad[0]]} at {ds.where(bad[0])}"
                        f"{f' and {len(bad) - 1} more row(s)' if len(bad) > 1 else ''}",
                        hint="fix or remove those rows; a regression target cannot be infinite")
    return y


def in_source(exc: InputError, ds: Dataset, index: np.ndarray | None = None) -> DataError:
    """An error about row ``exc.row`` of ``ds.rows(index)``, restated with the row's number in the source."""
    if exc.row is None:
        return DataError(exc.message, hint=exc.hint)
    i = int(index[exc.row]) if index is not None else exc.row
    column = f", column {exc.column!r}" if exc.column is not None else ""
    return DataError(f"{ds.where(i)}{column}: {exc.problem}", hint=exc.hint)


@dataclass
class Prepared:
    """Model-ready arrays per split, with the fitted features that produced them."""

    dataset: Dataset
    features: Features
    split: Split
    X: dict[str, np.ndarray]  # streamed: data.streaming.RowCache (len, [a:b] slices) instead of arrays
    y: dict[str, np.ndarray]
    closer: Callable[[], None] | None = field(default=None, repr=False)

    @property
    def streamed(self) -> bool:
        return not all(isinstance(x, np.ndarray) for x in self.X.values())

    def close(self) -> None:
        """Remove what the streaming path keeps on disk (its row caches); nothing for in-memory data."""
        if self.closer is not None:
            self.closer()


def prepare(cfg: DataConfig, seed: int, split: Split | None = None,
            splits: tuple[str, ...] = ("train", "val", "test")) -> Prepared:
    """Load, split (or reuse a recorded split), fit preprocessing on train only, transform ``splits``.

    A tuner asks for train and val only: the test rows are then never transformed or looked at.
    Above ``data.streaming_threshold_mb`` (or with ``data.streaming: true``) a table or image folder is streamed
    (data/streaming.py): X then holds row caches on disk, and ``Prepared.close()`` removes them.
    """
    path = None if cfg.source in BUILTIN else Path(cfg.source).expanduser()
    if streams(cfg, path):
        return prepare_streaming(cfg, seed, split, splits)
    ds = load_dataset(cfg)
    ds.fingerprint()  # of the data exactly as loaded (cached), before the target is converted below
    task = resolve_task(cfg, ds)
    ds.y = check_targets(ds, task)  # every row labelled; regression: finite floats
    target = Target.fit(ds.y, task, ds.target)  # checks for a single class before anything is split
    if split is None:
        split = split_indices(ds.y, cfg.val_fraction, cfg.test_fraction, seed, stratify=task == "classification")
    train_rows = ds.rows(split.train)
    inputs = TabularFeatures.fit(train_rows, ds.X) if ds.kind == "tabular" else ImageFeatures.fit(train_rows)
    target = Target.fit(ds.y[split.train], task, ds.target) if task == "regression" else target
    features = Features(inputs, target, ds.id_column)
    X, y = {}, {}
    for name in splits:
        idx = getattr(split, name)
        try:
            X[name] = features.transform(ds.rows(idx))
        except InputError as exc:  # its row counts within this split; the user knows the row in the file
            raise in_source(exc, ds, idx) from None
        y[name] = target.encode(ds.y[idx], where=lambda i, idx=idx: ds.where(int(idx[i])))
    return Prepared(ds, features, split, X, y)


__all__ = ["BUILTIN", "Dataset", "Prepared", "Split", "check_targets", "in_source", "load_dataset", "prepare",
           "read_table", "resolve_task", "unlabeled"]
