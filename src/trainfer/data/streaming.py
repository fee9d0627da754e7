"""Tables larger than memory: read in record batches, fitted in one pass, cached as float32 rows on disk.

Used instead of the in-memory path when ``data.streaming`` is true, or ``auto`` and the file is larger than
``data.streaming_threshold_mb``. What stays in memory: the target column (read alone, first: the split
needs every row's label), the split's row numbers, and one record batch (BATCH_ROWS rows) at a time.

Passes over the file:
1. the target column alone -> labels, task, split (as in memory);
2. the feature columns -> the data's fingerprint (the same bytes as the in-memory loader's for Parquet) and the
   preprocessing fitted on the train rows: exact mean/std (features.tabular.NumericStats, the same chunks and
   bits as the in-memory fit), exact category counts, and for each numeric column's median (the fill for
   missing values) a seeded reservoir sample of RESERVOIR values: exact when a column has at most RESERVOIR
   finite train values, an estimate above;
3. the feature columns again -> each split transformed to a float32 row-major cache file in a temporary
   folder (``tempfile.gettempdir()``, or $TMPDIR; ``trainfer-stream-*``), removed when the run ends.

The types of a CSV's columns are decided by its first record batch (a column of numbers is numeric); a
later value that is not a number is an error naming its row in the file. Dates written as text in a CSV
are refused (store them as a Parquet timestamp column, or train in memory).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from trainfer.config import DataConfig
from trainfer.data.dataset import Dataset
from trainfer.data.files import table_columns
from trainfer.data.split import Split, split_indices
from trainfer.errors import DataError, InputError, OutputError
from trainfer.features import Features, TabularFeatures, Target
from trainfer.features.delimiter import csv_format
from trainfer.features.tabular import (
    _MISSING_TEXT,
    FIT_CHUNK,
    NumericStats,
    _category,
    _epoch_seconds,
    _parse_iso,
    categorical_spec,
    is_missing,
)

BATCH_ROWS = 16384  # rows per record batch read from a Parquet file (4 MiB at 64 float32 columns)
PARQUET_BUFFER = 1 << 16  # bytes buffered per column: 64 columns x 1 MiB buffers were 60 MiB of arrow memory
CSV_BLOCK_BYTES = 1 << 24  # bytes of a CSV file parsed per record batch (pyarrow's block_size)
RESERVOIR = 65536  # values per numeric column kept to estimate its median (8 bytes each)
TABLE_SUFFIXES = (".csv", ".parquet", ".pq")


def source_size_mb(path: Path) -> float:
    if path.is_dir():
        return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20
    return path.stat().st_size / 2**20


def streams(cfg: DataConfig, path: Path | None) -> bool:
    """Whether ``cfg`` asks for the streaming path for the source at ``path`` (None: built in or missing)."""
    if cfg.streaming is False or (path is not None and not path.exists()):
        return False  # a missing path: the in-memory loader says so
    usable = path is not None and path.exists() and (path.is_dir() or path.suffix.lower() in TABLE_SUFFIXES)
    if cfg.streaming is True:
        if not usable:
            raise DataError(f"data.streaming=true applies to Parquet or CSV files and image folders, not "
                            f"{cfg.source!r}", hint="set data.streaming to auto or false for this source")
        return True
    return usable and source_size_mb(path) > cfg.streaming_threshold_mb  # type: ignore[arg-type]


# ---- reading ------------------------------------------------------------------------------------------


class Table:
    """A Parquet or CSV file read in record batches of BATCH_ROWS rows, each a pandas DataFrame."""

    def __init__(self, path: Path) -> None:
        from trainfer._imports import require

        require("pyarrow")
        self.path = path
        self.csv = path.suffix.lower() == ".csv"
        try:
            if self.csv:
                self.sep, self.decimal = csv_format(path)
                self.columns = self._csv_reader(None).schema.names
            else:
                import pyarrow.parquet as pq

                self.columns = pq.ParquetFile(path).schema_arrow.names
        except (OSError, ValueError) as exc:  # pyarrow's ArrowInvalid is a ValueError
            raise DataError(f"cannot read {path}: {_first_line(exc)}") from None
        self.numeric: dict[str, bool] = {}  # CSV: decided from the first batch

    def _csv_reader(self, columns: list[str] | None) -> Any:
        import pyarrow as pa
        from pyarrow import csv

        names = columns or []
        return csv.open_csv(self.path, read_options=csv.ReadOptions(block_size=CSV_BLOCK_BYTES),
                            parse_options=csv.ParseOptions(delimiter=self.sep),
                            convert_options=csv.ConvertOptions(
                                include_columns=names, column_types={c: pa.string() for c in names},
                                strings_can_be_null=False, quoted_strings_can_be_null=False))

    def batches(self, columns: list[str]) -> Iterator[tuple[int, Any]]:
        """(row index of the batch's first row, DataFrame of ``columns``), in file order."""
        start = 0
        try:
            if self.csv:
                for rb in self._csv_reader(columns):
                    frame = self._csv_types(rb.to_pandas(), start)
                    yield start, frame
                    start += len(frame)
                return
            import pyarrow.parquet as pq

            # Buffered reads without pre-buffering: pyarrow otherwise reads ahead whole column chunks (measured:
            # a 394 MiB file took 500 MiB of arrow memory in one pass; buffered by 1 MiB, 200 MiB; by 64 KiB in
            # batches of 16,384 rows, 90 MiB on a table of 64 float32 columns in row groups of 262,144 rows)
            pf = pq.ParquetFile(self.path, buffer_size=PARQUET_BUFFER, pre_buffer=False)
            for rb in pf.iter_batches(batch_size=BATCH_ROWS, columns=columns, use_threads=False):
                yield start, rb.to_pandas()
                start += rb.num_rows
        except (OSError, ValueError) as exc:
            raise DataError(f"cannot read {self.path} after row {start}: {_first_line(exc)}") from None

    def _csv_types(self, frame: Any, start: int) -> Any:
        """Text columns of numbers (and missing values) as float64, as the first batch decided them."""
        import pandas as pd

        for name in frame.columns:
            text = frame[name].str.strip()
            missing = text.isin(_MISSING_TEXT)
            if self.decimal == ",":
                text = text.str.replace(",", ".", regex=False)
            numbers = pd.to_numeric(text.where(~missing), errors="coerce")
            bad = numbers.isna() & ~missing
            if name not in self.numeric:
                self.numeric[name] = not bad.any() and not frame[name].str.lower().isin(("true", "false")).any()
            if not self.numeric[name]:  # text: pandas' own missing markers become NaN, as read_csv makes them
                frame[name] = frame[name].where(~frame[name].isin(_PANDAS_NA), np.nan)
                continue
            if bad.any():
                row = int(np.flatnonzero(bad.to_numpy())[0])
                raise DataError(f"{self.path.name} data row {start + row + 1} (counted from 1 below the header), "
                                f"column {name!r}: expected a number, got {frame[name].iloc[row]!r} (the "
                                f"column holds numbers in the rows read before)",
                                hint="fix that value, or set data.streaming=false to read the whole column "
                                     "as text categories")
            frame[name] = numbers.astype(np.float64)
        return frame

    def column(self, name: str) -> np.ndarray:
        """One whole column (the target), as the in-memory loader would give it."""
        if not self.csv:
            import pyarrow.parquet as pq

            try:
                return pq.ParquetFile(self.path).read(columns=[name]).column(0).to_pandas().to_numpy()
            except (OSError, ValueError) as exc:
                raise DataError(f"cannot read column {name!r} of {self.path}: {_first_line(exc)}") from None
        parts = [f[name].to_numpy(dtype=object) for _, f in self._raw_batches([name])]
        raw = np.concatenate(parts) if parts else np.zeros(0, dtype=object)
        return _csv_column(raw, self.decimal)

    def _raw_batches(self, columns: list[str]) -> Iterator[tuple[int, Any]]:
        start = 0
        try:
            for rb in self._csv_reader(columns):
                yield start, rb.to_pandas()
                start += rb.num_rows
        except (OSError, ValueError) as exc:
            raise DataError(f"cannot read {self.path} after row {start}: {_first_line(exc)}") from None


try:
    from pandas._libs.parsers import STR_NA_VALUES as _PANDAS_NA
except ImportError:  # pragma: no cover - a pandas without it: the markers of pandas 2 and 3
    _PANDAS_NA = _MISSING_TEXT - {"NaT"}


def _csv_column(raw: np.ndarray, decimal: str) -> np.ndarray:
    """A CSV column of text as pandas would type it: int64, float64 (missing: NaN), or text."""
    import pandas as pd

    s = pd.Series(raw, dtype=object).str.strip()
    missing = s.isin(_MISSING_TEXT).to_numpy()
    numbers = pd.to_numeric((s.str.replace(",", ".", regex=False) if decimal == "," else s).where(~missing),
                            errors="coerce").to_numpy(dtype=np.float64)
    if (np.isnan(numbers) & ~missing).any():
        return np.where(missing, None, raw).astype(object)
    if not missing.any() and np.all(numbers == np.round(numbers)) and s.str.fullmatch(r"[+-]?\d+").all():
        return numbers.astype(np.int64)
    return numbers


def _first_line(exc: BaseException) -> str:
    return (str(exc).splitlines() or [type(exc).__name__])[0]


# ---- the row cache ------------------------------------------------------------------------------------


class RowCache:
    """float32 rows of one width in a file, appended once, then read with positioned reads (``os.preadv``).

    Plain reads, not np.memmap: mapped pages count in the process's resident memory.
    ``X[a:b]`` returns a fresh array, so ``predict_outputs`` evaluates a cached split in chunks unchanged.
    """

    def __init__(self, path: Path, width: int) -> None:
        self.path, self.width, self.n = path, width, 0
        self._fh = open(path, "w+b")  # noqa: SIM115 (closed by close(), or with the folder's finalizer)
        self.dtype = np.dtype(np.float32)

    def append(self, rows: np.ndarray) -> None:
        try:
            self._fh.write(np.ascontiguousarray(rows, dtype=np.float32).tobytes())
        except OSError as exc:  # a full temp disk is not the run directory's disk: say which folder, and TMPDIR
            raise OutputError(f"cannot write the streaming row cache in {self.path.parent}: "
                              f"{(exc.strerror or str(exc)).lower()}",
                              hint="free space there, or set TMPDIR to a folder on a disk with room for the "
                                   "transformed rows (4 bytes per feature value)") from None
        self.n += len(rows)

    def done(self) -> RowCache:
        self._fh.flush()
        return self

    def __len__(self) -> int:
        return self.n

    @property
    def shape(self) -> tuple[int, int]:
        return (self.n, self.width)

    def read(self, start: int, stop: int) -> np.ndarray:
        stop = min(stop, self.n)
        out = np.empty((max(stop - start, 0), self.width), dtype=np.float32)
        if out.size:
            got = os.preadv(self._fh.fileno(), [out], start * self.width * 4)
            if got != out.nbytes:
                raise DataError(f"the row cache {self.path} was cut short (read {got} of {out.nbytes} bytes)")
        return out

    def __getitem__(self, key: slice) -> np.ndarray:
        if not isinstance(key, slice) or key.step not in (None, 1):
            raise TypeError("a row cache is read in contiguous slices")
        start, stop, _ = key.indices(self.n)
        return self.read(start, stop)

    def close(self) -> None:
        self._fh.close()


class CacheFolder:
    """The temporary folder of a streamed run's row caches (``trainfer-stream-PID-*`` in the temp folder);
    removed by close() or when garbage collected. A process killed outright (SIGKILL) cannot remove its own:
    the next streamed run removes the folders of processes that no longer exist."""

    def __init__(self) -> None:
        _remove_orphans()
        self.path = Path(tempfile.mkdtemp(prefix=f"trainfer-stream-{os.getpid()}-"))
        self._remove = weakref.finalize(self, shutil.rmtree, str(self.path), True)

    def close(self) -> None:
        self._remove()


def _remove_orphans() -> None:
    for folder in Path(tempfile.gettempdir()).glob("trainfer-stream-*-*"):
        pid = folder.name.split("-")[2]
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:  # its process is gone
            shutil.rmtree(folder, ignore_errors=True)
        except OSError:  # alive, another user's
            pass


# ---- the streamed dataset -----------------------------------------------------------------------------


class StreamedDataset(Dataset):
    """The labels and the file's name of a streamed table; its features stay in the file (X is None)."""

    streamed_fingerprint: str = ""

    def rows(self, index: np.ndarray) -> Any:
        raise DataError("a streamed dataset's rows stay in the file; read them with data.streaming=false")

    def fingerprint(self) -> str:
        return self.streamed_fingerprint


def _kinds(table: Table, names: list[str]) -> dict[str, str]:
    """numeric | datetime | categorical per feature column, from the file's types (CSV: its first batch)."""
    if table.csv:
        _, first = next(table.batches(names), (0, None))
        if first is None:
            return dict.fromkeys(names, "numeric")
        kinds = {}
        for name in names:
            if table.numeric.get(name):
                kinds[name] = "numeric"
                continue
            seen = [x for x in first[name].tolist() if not is_missing(x)]
            if seen and all(_parse_iso(x) is not None for x in seen):
                raise DataError(f"{table.path.name}: column {name!r} holds dates as text, which streaming does not "
                                "read", hint="store them as a Parquet timestamp column or as epoch seconds, or set "
                                             "data.streaming=false")
            kinds[name] = "categorical"
        return kinds
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pq.ParquetFile(table.path).schema_arrow
    kinds = {}
    for name in names:
        t = schema.field(name).type
        kinds[name] = "datetime" if pa.types.is_temporal(t) else \
            "numeric" if pa.types.is_integer(t) or pa.types.is_floating(t) else "categorical"
    return kinds


def _numbers(frame: Any, name: str, kind: str) -> np.ndarray:
    values = frame[name].to_numpy()
    return _epoch_seconds(values, name) if kind == "datetime" else values.astype(np.float64)


def fit_streaming(table: Table, names: list[str], y: np.ndarray, train: np.ndarray, seed: int,
                  ds: StreamedDataset) -> TabularFeatures:
    """One pass: the fingerprint of every row, the preprocessing fitted on the train rows (sorted row numbers)."""
    import pandas as pd

    kinds = _kinds(table, names)
    numeric = [n for n in names if kinds[n] != "categorical"]
    stats = {n: NumericStats() for n in numeric}
    reservoir = {n: np.empty(RESERVOIR) for n in numeric}
    finite_seen = dict.fromkeys(numeric, 0)
    rng = np.random.default_rng([seed, 0x5EED])
    counts: dict[str, dict[str, int]] = {n: {} for n in names if kinds[n] == "categorical"}
    # Per numeric column, its train values not yet merged into a FIT_CHUNK (a column at a time: one
    # (columns, rows) block for all of them held ~3 copies of 64 x 2 x FIT_CHUNK float64 values at once)
    pending: dict[str, list[np.ndarray]] = {n: [] for n in numeric}
    n_pending = 0
    h = hashlib.sha256()
    for start, frame in table.batches(names):
        h.update(pd.util.hash_pandas_object(frame, index=False).to_numpy().tobytes())
        stop = start + len(frame)
        pos = train[np.searchsorted(train, start):np.searchsorted(train, stop)] - start
        rows = frame.iloc[pos]
        for name, c in counts.items():
            for x in rows[name].tolist():
                if not is_missing(x):
                    key = _category(x)
                    c[key] = c.get(key, 0) + 1
        for n in numeric:
            values = _numbers(rows, n, kinds[n])
            _sample(values, reservoir[n], finite_seen, n, rng)
            pending[n].append(values)
        n_pending += len(rows)
        del frame, rows
        while n_pending >= FIT_CHUNK:
            for n in numeric:
                merged = np.concatenate(pending[n])
                stats[n].add(merged[:FIT_CHUNK])
                pending[n] = [merged[FIT_CHUNK:].copy()]  # a copy: the view would keep all of `merged`
            n_pending -= FIT_CHUNK
    if n_pending:
        for n in numeric:
            stats[n].add(np.concatenate(pending[n]))
    del pending
    h.update(",".join(names).encode())
    for i in range(0, len(y), BATCH_ROWS):  # "\x1f".join(all labels), a batch at a time
        h.update(("\x1f" if i else "").encode() + "\x1f".join(map(str, y[i:i + BATCH_ROWS].tolist())).encode())
    ds.streamed_fingerprint = h.hexdigest()
    _release_arrow_memory()
    columns = []
    for name in names:
        try:
            if kinds[name] == "categorical":
                columns.append(categorical_spec(name, counts[name]))
            else:
                kept = reservoir[name][:min(finite_seen[name], RESERVOIR)]
                fill = float(np.median(kept)) if len(kept) else 0.0
                columns.append(stats[name].spec(name, fill, kinds[name] == "datetime"))
        except InputError as exc:
            raise DataError(f"{table.path.name}, column {name!r}: {exc.problem}", hint=exc.hint) from None
    return TabularFeatures(columns)


def _sample(values: np.ndarray, res: np.ndarray, seen: dict[str, int], name: str, rng: np.random.Generator) -> None:
    """Reservoir sampling (Vitter's algorithm R) of a column's finite values into ``res``."""
    v = values[np.isfinite(values)]
    t0 = seen[name]
    seen[name] = t0 + len(v)
    room = max(0, min(len(v), RESERVOIR - t0))
    res[t0:t0 + room] = v[:room]
    rest = v[room:]
    if len(rest):
        idx = np.arange(t0 + room, t0 + len(v))
        slot = (rng.random(len(rest)) * (idx + 1)).astype(np.int64)
        keep = slot < RESERVOIR
        res[slot[keep]] = rest[keep]


def prepare_streaming(cfg: DataConfig, seed: int, split: Split | None, splits: tuple[str, ...]) -> Any:
    """``data.prepare`` for a table read in record batches; the returned Prepared holds RowCaches as X."""
    from trainfer.data import Prepared, check_targets, resolve_task

    path = Path(cfg.source).expanduser()
    if path.is_dir():
        from trainfer.data.images import prepare_image_stream

        return prepare_image_stream(cfg, seed, path, split, splits)
    if cfg.options:
        raise DataError(f"data.options apply to generated datasets only; remove them for {path.name}")
    table = Table(path)
    target_name, id_column, names = table_columns(path, table.columns, cfg.target, cfg.id_column, cfg.drop)
    y_raw = table.column(target_name)
    ds = StreamedDataset(path.stem, "tabular", None, y_raw, target=target_name, id_column=id_column,
                         origin=path.name)
    task = resolve_task(cfg, ds)
    ds.y = check_targets(ds, task)
    target = Target.fit(distinct(ds.y) if task == "classification" else ds.y, task, target_name)
    if split is None:
        split = split_indices(ds.y, cfg.val_fraction, cfg.test_fraction, seed, stratify=task == "classification")
    inputs = fit_streaming(table, names, y_raw, split.train, seed, ds)
    features = Features(inputs, target, id_column)
    folder = CacheFolder()
    try:
        X = cache_splits(table, names, features, split, splits, folder, ds)
    except BaseException:
        folder.close()
        raise
    y = {name: encode(target, ds.y[getattr(split, name)]) for name in splits}
    return Prepared(ds, features, split, X, y, closer=folder.close)


def cache_splits(table: Table, names: list[str], features: Features, split: Split, splits: tuple[str, ...],
                 folder: CacheFolder, ds: Dataset) -> dict[str, RowCache]:
    """One pass: each split's rows transformed and appended to its cache file, in file order."""
    width = features.inputs.width  # type: ignore[union-attr]
    caches = {name: RowCache(folder.path / f"{name}.f32", width) for name in splits}
    for start, frame in table.batches(names):
        stop = start + len(frame)
        for name in splits:
            idx = getattr(split, name)
            pos = idx[np.searchsorted(idx, start):np.searchsorted(idx, stop)] - start
            if not len(pos):
                continue
            try:
                caches[name].append(features.transform(frame.iloc[pos]))
            except InputError as exc:
                if exc.row is None:
                    raise DataError(exc.message, hint=exc.hint) from None
                column = f", column {exc.column!r}" if exc.column is not None else ""
                raise DataError(f"{ds.where(start + int(pos[exc.row]))}{column}: {exc.problem}",
                                hint=exc.hint) from None
    _release_arrow_memory()
    return {name: c.done() for name, c in caches.items()}


def _release_arrow_memory() -> None:
    """Hand the memory pyarrow's pool keeps after a pass back to the system (training needs none of it), and
    the C heap's free pages too: a pass leaves pandas' and numpy's freed blocks scattered between live ones,
    which glibc's malloc keeps resident (measured: 150-270 MiB after a pass over 2 million rows)."""
    import pyarrow as pa

    pa.default_memory_pool().release_unused()
    trim_heap()


def trim_heap() -> None:
    """glibc's malloc_trim(0): return free heap pages to the system; nothing on other C libraries."""
    global _malloc_trim
    if _malloc_trim is None:
        import ctypes
        import ctypes.util

        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            _malloc_trim = libc.malloc_trim
        except (OSError, AttributeError):  # musl, macOS, Windows: no malloc_trim
            _malloc_trim = False
    if _malloc_trim:
        _malloc_trim(0)


_malloc_trim: Any = None


def distinct(y: np.ndarray) -> np.ndarray:
    """The distinct labels (all Target.fit needs for classification), without a Python object per row."""
    return np.unique(y) if y.dtype.kind in "iufb" else np.asarray(list(set(y.tolist())), dtype=object)


def encode(target: Target, y: np.ndarray) -> np.ndarray:
    """``target.encode(y)`` vectorized for numeric labels (one lookup per distinct value, not per row)."""
    if target.task != "classification" or y.dtype.kind not in "iufb":
        return target.encode(y)
    uniq, inverse = np.unique(y, return_inverse=True)
    return target.encode(uniq)[inverse].astype(np.int64)
