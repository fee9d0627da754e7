"""User files: CSV, Parquet, .npz (X and y) and image folders (root/<class>/*.png|jpg)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from trainfer.data.dataset import Dataset
from trainfer.errors import DataError, InputError
from trainfer.features.delimiter import csv_format, numbers_from_text
from trainfer.features.image import IMAGE_SUFFIXES, pixels_in_range, read_image


def read_table(path: Path) -> Any:
    """A CSV or Parquet file as a DataFrame, with one clear error when it cannot be read."""
    import pandas as pd

    try:
        if path.suffix.lower() == ".csv":
            sep, decimal = csv_format(path)  # ';', tab or '|', and decimal commas, as `predict` reads them
            return numbers_from_text(pd.read_csv(path, sep=sep, decimal=decimal), decimal)
        from trainfer._imports import require

        require("pyarrow")
        return pd.read_parquet(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError, ValueError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataError(f"cannot read {path}: {first}") from None


def load_table(path: Path, target: str | None, id_column: str | None, drop: list[str]) -> Dataset:
    frame = read_table(path)
    columns = [str(c) for c in frame.columns]
    frame.columns = columns
    target, id_column, features = table_columns(path, columns, target, id_column, drop)
    # Rows without a label are kept here: training refuses them and evaluate skips and counts them
    # (data.check_targets, data.labelled), each naming rows by their number in this file.
    y = frame[target].to_numpy()
    ids = frame[id_column].to_numpy() if id_column else None
    X = frame[features]
    return Dataset(path.stem, "tabular", X, y, target=target, ids=ids, id_column=id_column, origin=path.name)


def load_npz(path: Path) -> Dataset:
    try:
        with np.load(path, allow_pickle=False) as z:  # never unpickle user files
            if "X" not in z or "y" not in z:
                raise DataError(f"{path.name} must hold arrays named 'X' and 'y' (found {sorted(z.files)})")
            X, y = z["X"], z["y"]
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read {path}: {exc}") from None
    if len(X) != len(y):
        raise DataError(f"{path.name}: X has {len(X)} rows but y has {len(y)}")
    if X.ndim == 2:
        import pandas as pd

        return Dataset(path.stem, "tabular", pd.DataFrame(X, columns=[f"x{i}" for i in range(X.shape[1])]), y,
                       target="y", origin=path.name)
    if X.ndim == 4 and X.shape[-1] == 3:
        try:
            X = pixels_in_range(X)
        except InputError as exc:
            raise DataError(f"{path.name}: {exc.message}", hint=exc.hint) from None
        # the same conversion as the runtime's ImageFeatures.to_uint8
        return Dataset(path.stem, "image", np.clip(X, 0, 255).astype(np.uint8), y, target="y", origin=path.name)
    raise DataError(f"{path.name}: X must be (n, features) or images (n, h, w, 3), got shape {X.shape}")


def load_image_folder(root: Path, size: int) -> Dataset:
    files, labels = image_files(root)
    X = np.empty((len(files), size, size, 3), dtype=np.uint8)
    for i, f in enumerate(files):
        try:
            X[i] = read_image(f, size)
        except InputError as exc:
            raise DataError(exc.message, hint="remove or replace the corrupt file") from None
    return Dataset(root.name, "image", X, np.asarray(labels, dtype=object), target="label",
                   ids=np.asarray([str(f.relative_to(root)) for f in files], dtype=object), id_column="path")


def table_columns(path: Path, columns: list[str], target: str | None, id_column: str | None,
                  drop: list[str]) -> tuple[str, str | None, list[str]]:
    """(target, id column, feature columns) of a table, checked as the in-memory loader checks them."""
    if target is None:
        raise DataError(f"{path.name} is a table: name the column to predict",
                        hint=f"add --target COLUMN (columns: {', '.join(columns[:20])})")
    if target not in columns:
        raise DataError(f"target column {target!r} not found in {path.name}",
                        hint=f"columns are: {', '.join(columns[:20])}")
    unknown = [c for c in drop if c not in columns]
    if unknown:
        raise DataError(f"data.drop names column(s) not in {path.name}: {unknown}")
    if id_column is None and "id" in (c.lower() for c in columns) and target.lower() != "id":
        id_column = next(c for c in columns if c.lower() == "id")  # ids identify rows, they don't predict
    if id_column is not None and id_column not in columns:
        raise DataError(f"id column {id_column!r} not found in {path.name}")
    features = [c for c in columns if c not in {target, id_column, *drop}]
    if not features:
        raise DataError(f"{path.name} has no feature columns left besides the target {target!r}")
    return target, id_column, features


def image_files(root: Path) -> tuple[list[Path], list[str]]:
    """The images of a folder root/<class>/*.png|jpg and their class names, in a fixed order."""
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    files: list[Path] = []
    labels: list[str] = []
    for cls in classes:
        found = sorted(p for p in (root / cls).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        files += found
        labels += [cls] * len(found)
    if not files:
        raise DataError(f"no images found in {root}",
                        hint="an image folder holds one sub-folder per class: root/<class>/*.png|jpg")
    return files, labels
