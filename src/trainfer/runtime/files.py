"""Batch prediction from files: read the input in chunks, predict, stream the output to disk.

Memory stays bounded by the chunk size (npz arrays excepted: numpy loads them whole). The output
keeps the input's order. Its columns: the id column when the input has one (the column the training data
identified rows with, or else one named ``id`` in any case; ``path`` for images), ``prediction`` (the label,
or the value for regression), and ``prob_<label>`` per class for classification. Other input columns are
read only if the model uses them and are not copied. pandas is imported only for CSV/Parquet input; the
runtime's core stays numpy + onnxruntime.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Collection, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from trainfer._atomic import check_output, write_with
from trainfer.errors import InputError
from trainfer.features.delimiter import csv_format, numbers_from_text
from trainfer.features.image import IMAGE_SUFFIXES
from trainfer.runtime.predictor import Predictor

Chunk = tuple[Any, list[Any] | None]  # (raw rows, their ids or None)
# pandas' default missing-value markers, for the columns that keep them
_NA = ["", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN", "<NA>", "N/A",
       "NA", "NULL", "NaN", "None", "n/a", "nan", "null"]


def _table_chunks(path: Path, trained_id: str | None, size: int, text_columns: list[str],
                  chosen_id: str | None = None, numeric_columns: Collection[str] = ()
                  ) -> tuple[int, Iterator[Chunk], str | None]:
    import pandas as pd

    dec = "."
    if path.suffix.lower() == ".csv":
        total = _count_csv_rows(path)
        # pandas guesses types per chunk: ids like 0007 and category codes like 01 must stay text in every
        # chunk, and one missing id must not turn the other ids into floats.
        sep, dec = csv_format(path)  # ';', tab or '|' files and decimal commas read as training reads them
        header = [str(c) for c in pd.read_csv(path, nrows=0, sep=sep, decimal=dec).columns]
        id_column = id_column_of(header, trained_id, chosen_id, path)
        dtype = {c: str for c in [*text_columns, id_column] if c in header}
        if id_column in header:
            na = {c: _NA for c in header if c != id_column}  # the id's text is copied verbatim
            reader: Any = pd.read_csv(path, chunksize=size, dtype=dtype, keep_default_na=False, na_values=na,
                                      sep=sep, decimal=dec)
        else:
            reader = pd.read_csv(path, chunksize=size, dtype=dtype, sep=sep, decimal=dec)
    else:
        import pyarrow.parquet as pq

        pf = pq.ParquetFile(path)
        total = pf.metadata.num_rows
        id_column = id_column_of([str(c) for c in pf.schema_arrow.names], trained_id, chosen_id, path)
        # pandas' own Parquet files keep a named index (e.g. an id) in their metadata, and to_pandas() moves
        # it out of the columns again: it is a column here, like any other, so the id is found and carried.
        reader = (_index_as_columns(b.to_pandas()) for b in pf.iter_batches(batch_size=size))

    def gen() -> Iterator[Chunk]:
        for frame in reader:
            frame.columns = [str(c) for c in frame.columns]
            if path.suffix.lower() == ".csv":  # as training reads it: " " or "1,71" beside a blank are numbers
                frame = numbers_from_text(frame, dec, only=numeric_columns)
            ids = frame[id_column].tolist() if id_column and id_column in frame.columns else None
            yield frame, ids

    return total, gen(), id_column


def id_column_of(header: list[str], trained_id: str | None, chosen: str | None = None,
                 path: Path | None = None) -> str | None:
    """The input column that identifies rows: ``chosen`` (it must exist), else the training data's id column,
    else one named ``id``; the exact name first, then in any case (another tool may write ``ID`` or ``Id``)."""
    if chosen is not None:
        if chosen not in header:
            shown = ", ".join(header[:20]) + (", ..." if len(header) > 20 else "")
            raise InputError(f"--id-column {chosen!r} is not a column of {path.name if path else 'the input'}",
                             hint=f"columns are: {shown}")
        return chosen
    wanted = [c for c in (trained_id, "id") if c]
    for name in wanted:
        if name in header:
            return name
    for name in wanted:
        found = [c for c in header if c.lower() == name.lower()]
        if len(found) == 1:
            return found[0]
    return None


def _index_as_columns(frame: Any) -> Any:
    return frame.reset_index() if any(n is not None for n in frame.index.names) else frame


def _count_csv_rows(path: Path) -> int:
    with open(path, "rb") as fh:
        return max(sum(1 for _ in fh) - 1, 0)


def _npz_chunks(path: Path, size: int) -> tuple[int, Iterator[Chunk]]:
    with np.load(path, allow_pickle=False) as z:
        if "X" not in z:
            raise InputError(f"{path.name} must hold an array named 'X' (found {sorted(z.files)})")
        X = z["X"]
    return len(X), ((X[i:i + size], None) for i in range(0, len(X), size))


def _image_chunks(root: Path, size: int) -> tuple[int, Iterator[Chunk]]:
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise InputError(f"no images found in {root}")
    ids = [str(p.relative_to(root)) for p in files]
    return len(files), ((files[i:i + size], ids[i:i + size]) for i in range(0, len(files), size))


def open_input(pred: Predictor, path: Path, chunk_size: int,
               id_column: str | None = None) -> tuple[int, Iterator[Chunk], str | None]:
    """(row count, chunk iterator, id column name) for any supported input; ``id_column`` picks a table's id."""
    if not path.exists():
        raise InputError(f"input {path} not found")
    suffix = path.suffix.lower()
    if id_column is not None and suffix not in (".csv", ".parquet", ".pq"):
        raise InputError("--id-column is for CSV and Parquet input (images are named by their path; .npz has no ids)")
    _check_kind(pred, path, "image" if path.is_dir() or suffix in IMAGE_SUFFIXES else
                "tabular" if suffix in (".csv", ".parquet", ".pq") else None)
    if path.is_dir():
        total, chunks = _image_chunks(path, chunk_size)
        return total, chunks, "path"
    if suffix in (".csv", ".parquet", ".pq"):
        inputs = pred.features.inputs
        text = [c["name"] for c in getattr(inputs, "columns", []) if c["type"] == "categorical"]
        numeric = {c["name"] for c in getattr(inputs, "columns", []) if c["type"] == "numeric"}
        import pandas as pd

        try:
            total, chunks, id_col = _table_chunks(path, pred.features.id_column, chunk_size, text, id_column, numeric)
        except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError) as exc:
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            hint = "save it as UTF-8" if isinstance(exc, UnicodeDecodeError) else None
            raise InputError(f"cannot read {path}: {first}", hint=hint) from None
        return total, chunks, id_col
    if suffix == ".npz":
        total, chunks = _npz_chunks(path, chunk_size)
        return total, chunks, None
    if suffix in IMAGE_SUFFIXES:
        return 1, iter([([path], [path.name])]), "path"
    raise InputError(f"unsupported input {path.name}", hint="use .csv, .parquet, .npz, an image or a folder of images")


def _check_kind(pred: Predictor, path: Path, given: str | None) -> None:
    """A table given to an image model (or images to a table model) is named as such, before any row is read."""
    kind = pred.features.kind
    if given is None or given == kind:
        return
    what = "a folder of images" if path.is_dir() else "an image" if given == "image" else "a table"
    if kind == "tabular":
        names = pred.features.inputs.column_names
        shown = ", ".join(names[:20]) + (f", ... ({len(names)} in all)" if len(names) > 20 else "")
        raise InputError(f"bundle {pred.path.name} takes a table with columns [{shown}], not images; "
                         f"{path} is {what}", hint="pass a .csv or .parquet file (or .npz array X) with those columns")
    raise InputError(f"bundle {pred.path.name} takes images, not a table; {path} is {what}",
                     hint="pass an image, a folder of images, or an .npz with an array X of images")


def check_predictions_out(out: str | Path, force: bool = False) -> Path:
    """Refuse an output that cannot be written before any row is predicted: wrong suffix, a directory, an
    existing file without ``force``, or a place that cannot be written."""
    out = Path(out)
    if out.suffix.lower() not in (".csv", ".json") and not out.is_dir():
        raise InputError(f"--out must end in .csv or .json, got {out.name}")
    return check_output(out, kind="file", force=force)


def predict_file(pred: Predictor, input_path: str | Path, out: str | Path, chunk_size: int = 4096,
                 on_progress: Callable[[int, int], None] | None = None, force: bool = False,
                 id_column: str | None = None) -> dict[str, Any]:
    """Predict every row of ``input_path`` into ``out`` (.csv or .json); returns a small report.

    ``out`` must not exist unless ``force``; it is written under a temporary name and renamed when complete.
    """
    input_path, out = Path(input_path), check_predictions_out(out, force)
    fmt = out.suffix.lower()
    total, chunks, id_name = open_input(pred, input_path, chunk_size, id_column)
    labels = pred.labels if pred.task == "classification" else []
    columns = ["prediction", *[f"prob_{label}" for label in labels]]
    written = 0
    has_ids = False

    def write(tmp: Path) -> None:
        nonlocal written, has_ids
        with open(tmp, "w", newline="") as fh:
            writer = csv.writer(fh) if fmt == ".csv" else None
            if fmt == ".json":
                fh.write("[")
            for rows, ids in chunks:
                try:
                    x = pred.prepare(rows)
                except InputError as exc:
                    raise _in_file(exc, input_path, written) from None
                out_arr = pred.run(x)
                preds = _decode(pred, out_arr)
                if written == 0:
                    has_ids = ids is not None
                    if writer:
                        writer.writerow(([id_name] if has_ids else []) + columns)
                for i in range(len(preds)):
                    values = [_plain(preds[i]), *([float(p) for p in out_arr[i]] if labels else [])]
                    lead = [_plain(ids[i])] if has_ids and ids is not None else []
                    if writer:
                        writer.writerow(lead + values)
                    else:
                        rec = dict(zip(([id_name] if lead else []) + columns, lead + values, strict=False))
                        fh.write(("," if written + i else "") + "\n" + json.dumps(rec))
                written += len(preds)
                if on_progress:
                    on_progress(written, total)
            if fmt == ".json":
                fh.write("\n]\n")

    write_with(out, write)
    return {"input": str(input_path), "out": str(out), "rows": written, "variant": pred.variant,
            "id_column": id_name if has_ids else None}


def _decode(pred: Predictor, out: np.ndarray) -> np.ndarray:
    if pred.task == "classification":
        return np.asarray(pred.labels, dtype=object)[out.argmax(axis=1)]
    return out.reshape(-1)


def _plain(v: Any) -> Any:
    return v.item() if hasattr(v, "item") else v


def predict(bundle: str | Path, input_path: str | Path, out: str | Path = "predictions.csv", *,
            threads: int | None = None, chunk_size: int = 4096, force: bool = False, id_column: str | None = None,
            on_progress: Callable[[int, int], None] | None = None, trust: str | Path | None = None,
            key: bytes | str | Path | None = None) -> dict[str, Any]:
    """``trainfer predict``: load ``bundle`` (hashes verified) and predict every row of a file into ``out``.

    ``trust`` and ``key``: as for :func:`trainfer.load` (a signer's public key file; an encrypted bundle's key).

    ``out`` (.csv or .json) is checked before the bundle is loaded; an existing one is replaced only with
    ``force=True``. See the module docstring for the columns written.

    Example: ``trainfer.predict("bundles/digits", "rows.csv", "preds.csv")["rows"]``
    """
    from trainfer.runtime.predictor import load

    check_predictions_out(out, force)
    return predict_file(load(bundle, threads=threads, trust=trust, key=key), input_path, out, chunk_size,
                        on_progress=on_progress, force=force, id_column=id_column)


def _in_file(exc: InputError, path: Path, offset: int) -> InputError:
    """An error about row ``exc.row`` of a chunk, restated with the row's number in the file, counted as
    training's data errors count them (from 1; below the header in a CSV)."""
    if exc.row is None or path.is_dir():  # an image folder's errors name the file already
        return exc.shifted(offset)
    n = offset + exc.row + 1
    where = (f"{path.name} data row {n} (counted from 1 below the header)" if path.suffix.lower() == ".csv"
             else f"{path.name} row {n} (counted from 1)")
    column = f", column {exc.column!r}" if exc.column is not None else ""
    return InputError(f"{where}{column}: {exc.problem}", exc.hint)
