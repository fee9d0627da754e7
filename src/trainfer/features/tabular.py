"""Tabular preprocessing: fitted on the train split with numpy/pandas, applied with numpy alone.

Numeric columns: impute the median, then standardize. Categorical columns: impute the most
frequent value, then one-hot with one extra "unknown" slot for values never seen in training.

Missing means the same on every path (CSV, Parquet, DataFrame, list of dicts, JSON rows, v2 tensors):
None, NaN, NaT, an empty or blank string, or one of pandas' default missing-value markers ("NA",
"null", ...). The decision is made here, where the features are applied, so every reader agrees.

Date/time columns (a datetime dtype, date/datetime objects, or ISO 8601 strings such as 2024-01-31
or 2024-01-31T12:30:00+02:00 in every non-missing row) are numeric features: seconds since
1970-01-01 UTC (a time without a zone is taken as UTC). At inference a date/time column takes the
same kinds of value, or a number of epoch seconds.
"""

from __future__ import annotations

import datetime as _dt
import math
import re
from collections.abc import Callable
from typing import Any

import numpy as np

from trainfer.errors import InputError

MAX_CATEGORIES = 64  # rarer values fall into the unknown slot; keeps the input width bounded


def _is_numeric(values: np.ndarray) -> bool:
    return values.dtype.kind in "iuf"


FIT_CHUNK = 65536  # rows per partial moment: the in-memory and the streaming fit merge the same chunks


class NumericStats:
    """Mean and variance of one numeric column, merged chunk by chunk (Chan et al.) in float64.

    The in-memory fit and the streaming fit feed the same chunks (FIT_CHUNK train rows, in file order), so
    both get the same bits; with one chunk and nothing missing it is numpy's own mean and std. Missing
    (non-finite) values count as the imputed ``fill``, added in closed form once the fill is known.
    """

    def __init__(self) -> None:
        self.n = 0
        self.mean = 0.0
        self.m2 = 0.0
        self.missing = 0
        self.largest = 0.0

    def add(self, chunk: np.ndarray) -> None:
        ok = np.isfinite(chunk)
        f = chunk if ok.all() else chunk[ok]
        self.missing += len(chunk) - len(f)
        k = len(f)
        if not k:
            return
        with np.errstate(over="ignore", invalid="ignore"):
            m = f.sum() / k
            d = f - m
            m2 = (d * d).sum()
        self.largest = max(self.largest, float(np.abs(f).max()))
        if self.n == 0:
            self.n, self.mean, self.m2 = k, float(m), float(m2)
            return
        n = self.n + k
        delta = float(m) - self.mean
        with np.errstate(over="ignore", invalid="ignore"):
            self.mean += delta * k / n
            self.m2 += float(m2) + delta * delta * self.n * k / n
        self.n = n

    def spec(self, name: str, fill: float, dates: bool = False) -> dict[str, Any]:
        """The column's entry in features.json, with missing values imputed by ``fill``."""
        mean, m2, n = self.mean, self.m2, self.n
        if self.missing:
            total = n + self.missing
            with np.errstate(over="ignore", invalid="ignore"):
                mixed = (n * mean + self.missing * fill) / total
                m2 = m2 + n * (mean - mixed) ** 2 + self.missing * (fill - mixed) ** 2
            mean, n = mixed, total
        with np.errstate(over="ignore", invalid="ignore"):
            std = float(np.sqrt(m2 / n)) if n else 0.0
        if not (np.isfinite(std) and np.isfinite(mean)):  # |x| ~ 1e300: squares overflow
            raise InputError(f"values too large to standardize (largest magnitude {self.largest:.3g})",
                             hint="rescale the column (e.g. to other units) so its values stay below "
                                  "about 1e150", column=name)
        return {"name": name, "type": "numeric", "fill": fill, "mean": float(mean),
                "std": std if std > 1e-12 else 1.0, **({"datetime": True} if dates else {})}


def categorical_spec(name: str, counts: dict[str, int]) -> dict[str, Any]:
    """A categorical column's entry from exact value counts: the MAX_CATEGORIES most frequent (ties: in
    sorted order), the most frequent one imputed for missing values."""
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:MAX_CATEGORIES]
    cats = [k for k, _ in ranked]
    return {"name": name, "type": "categorical", "categories": sorted(cats), "fill": cats[0] if cats else None}


class TabularFeatures:
    kind = "tabular"

    def __init__(self, columns: list[dict[str, Any]]) -> None:
        self.columns = columns
        self._cat_index = [
            {v: i for i, v in enumerate(c["categories"])} if c["type"] == "categorical" else None
            for c in columns
        ]
        # Standardizing as x * scale + shift (float64) is the same arithmetic on every path.
        numeric = [c for c in columns if c["type"] == "numeric"]
        self._scale = np.asarray([1.0 / c["std"] for c in numeric], dtype=np.float64)
        self._shift = np.asarray([-c["mean"] / c["std"] for c in numeric], dtype=np.float64)
        self._fill = np.asarray([c["fill"] for c in numeric], dtype=np.float64)
        # All-numeric tables (the common case) take one vectorized path instead of a loop per column.
        self._all_numeric = len(numeric) == len(columns)

    # ---- fit -------------------------------------------------------------------------------
    @classmethod
    def fit(cls, frame: Any, whole: Any | None = None) -> TabularFeatures:
        """Fit on a pandas DataFrame of raw feature columns (train split only).

        ``whole``: all rows of the data, when given, decides which columns are dates (as the file's own
        column types decide which are numbers), so one odd value outside the train split cannot make a
        date column fail on that value later.
        """
        columns = []
        for name in frame.columns:
            series = frame[name]
            values = series.to_numpy()
            dates = _holds_datetimes(values if whole is None else whole[name].to_numpy())
            if dates or (_is_numeric(values) and series.dtype.kind != "b"):
                v = _epoch_seconds(values, str(name)) if dates else values.astype(np.float64)
                stats = NumericStats()
                for i in range(0, max(len(v), 1), FIT_CHUNK):
                    stats.add(v[i:i + FIT_CHUNK])
                finite = v[np.isfinite(v)]
                columns.append(stats.spec(str(name), float(np.median(finite)) if len(finite) else 0.0, dates))
            else:
                present = [_category(x) for x in values.tolist() if not is_missing(x)]
                uniq, counts = np.unique(np.asarray(present, dtype=object).astype(str), return_counts=True) \
                    if present else (np.array([]), np.array([]))
                columns.append(categorical_spec(str(name), dict(zip(uniq.tolist(), counts.tolist(), strict=True))))
        return cls(columns)

    # ---- shape -----------------------------------------------------------------------------
    @property
    def column_names(self) -> list[str]:
        return [c["name"] for c in self.columns]

    @property
    def width(self) -> int:
        return sum(1 if c["type"] == "numeric" else len(c["categories"]) + 1 for c in self.columns)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return (self.width,)

    # ---- apply -----------------------------------------------------------------------------
    def transform(self, X: Any) -> np.ndarray:
        """Raw rows -> standardized float32 matrix of shape (n, width), in numpy alone.

        X: a DataFrame, a list of dicts keyed by column name, or a 2-D array whose columns are
        in training order. Missing values are imputed; unseen categories go to the unknown slot;
        a column that is absent, a non-number in a numeric column, or an infinity raises
        InputError naming the row and column.
        """
        return self._apply(X, standardize=True)

    def encode(self, X: Any) -> np.ndarray:
        """Like transform, without the final ``x * scale + shift``: for graphs that standardize themselves.

        transform(X) == encode(X) * scale + shift (up to float32 rounding), see ``affine``.
        """
        return self._apply(X, standardize=False)

    @property
    def affine(self) -> tuple[np.ndarray, np.ndarray]:
        """(scale, shift) over all ``width`` model inputs; one-hot slots pass through unchanged."""
        scale, shift = np.ones(self.width), np.zeros(self.width)
        j = k = 0
        for spec in self.columns:
            if spec["type"] == "numeric":
                scale[j], shift[j] = self._scale[k], self._shift[k]
                j, k = j + 1, k + 1
            else:
                j += len(spec["categories"]) + 1
        return scale, shift

    @property
    def affine_in_float32_is_exact_enough(self) -> bool:
        """Whether standardizing raw float32 values loses nothing that matters: with |mean|/std below
        1e3, float32 rounding of the raw value moves the standardized one by less than 1e-4."""
        return all(abs(c["mean"]) / c["std"] < 1e3 for c in self.columns if c["type"] == "numeric")

    def _apply(self, X: Any, standardize: bool) -> np.ndarray:
        if self._all_numeric and isinstance(X, np.ndarray) and X.dtype.kind in "iufb":
            return self._apply_numeric(X, standardize)
        cols = self._columns_of(X)
        n = len(cols[0]) if cols else 0
        out = np.zeros((n, self.width), dtype=np.float32)
        j = k = 0
        for spec, values, index in zip(self.columns, cols, self._cat_index, strict=False):
            if spec["type"] == "numeric":
                v = _epoch_seconds(values, spec["name"]) if spec.get("datetime") else _to_float(values, spec["name"])
                bad = np.isinf(v)
                if bad.any():
                    row = int(np.flatnonzero(bad)[0])
                    raise InputError("value is infinite; send a finite number", row=row, column=spec["name"])
                v = np.where(np.isnan(v), self._fill[k], v)
                if standardize:
                    v = v * self._scale[k] + self._shift[k]
                _check_float32_range(v, spec["name"])
                out[:, j] = v
                j += 1
                k += 1
            else:
                unknown = len(spec["categories"])
                for i, x in enumerate(values.tolist() if hasattr(values, "tolist") else values):
                    key = spec["fill"] if is_missing(x) else _category(x)
                    out[i, j + index.get(key, unknown)] = 1.0
                j += unknown + 1
        return out

    def _apply_numeric(self, X: np.ndarray, standardize: bool) -> np.ndarray:
        # The hot path at batch 1: as few numpy calls as possible, each on a handful of numbers.
        v = X.reshape(1, -1) if X.ndim == 1 else X
        if v.ndim != 2 or v.shape[1] != len(self.columns):
            names = self.column_names
            raise InputError(f"expected rows of {len(names)} features {names}, got an array of shape {X.shape}")
        if standardize:
            out = v * self._scale  # float64, a new array: the caller's input is never modified
            out += self._shift
            res = out.astype(np.float32)
        else:
            res = v.astype(np.float32)  # always a copy
        # One sum tells whether anything is NaN, infinite or beyond float32 (the cast made it inf).
        if math.isfinite(res.sum()):
            return res
        src = v.astype(np.float64)
        bad = np.isinf(src)
        if bad.any():
            row, col = (int(i) for i in np.argwhere(bad)[0])
            raise InputError("value is infinite; send a finite number", row=row, column=self.columns[col]["name"])
        out = np.where(np.isnan(src), self._fill, src)
        if standardize:
            out = out * self._scale + self._shift
        for col in range(out.shape[1]):  # a float32 sum may overflow with every value in range: then all pass
            _check_float32_range(out[:, col], self.columns[col]["name"])
        return out.astype(np.float32)

    def _columns_of(self, X: Any) -> list[np.ndarray]:
        names = self.column_names
        if hasattr(X, "columns") and hasattr(X, "__getitem__"):  # DataFrame, without importing pandas
            missing = [c for c in names if c not in X.columns]
            if missing:
                raise InputError(f"missing column(s) {missing}; the model expects {names}")
            return [X[c].to_numpy() for c in names]
        if isinstance(X, dict):
            X = [X]
        if isinstance(X, list) and (not X or isinstance(X[0], dict)):
            for i, row in enumerate(X):
                if not isinstance(row, dict):
                    raise InputError(f"expected an object of named features, got {type(row).__name__}", row=i)
                missing = [c for c in names if c not in row]
                if missing:
                    raise InputError(f"missing column(s) {missing}; the model expects {names}", row=i)
            return [np.asarray([row[c] for row in X], dtype=object) for c in names]
        arr = np.asarray(X, dtype=object) if not isinstance(X, np.ndarray) else X
        if arr.ndim == 1:
            arr = arr.reshape(1, -1)
        if arr.ndim != 2 or arr.shape[1] != len(names):
            raise InputError(
                f"expected rows of {len(names)} features {names}, got an array of shape {arr.shape}"
            )
        return [arr[:, k] for k in range(len(names))]

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "columns": self.columns}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TabularFeatures:
        return cls(d["columns"])


_F32_MAX = float(np.finfo(np.float32).max)


def _check_float32_range(standardized: np.ndarray, column: str) -> None:
    """A finite input so far outside the training range that the model's float32 input overflows."""
    bad = np.abs(standardized) > _F32_MAX
    if bad.any():
        raise InputError("value is too large for the model (overflows float32 after scaling); check the units",
                         row=int(np.flatnonzero(bad)[0]), column=column)


# pandas' default missing-value markers (what read_csv turns into NaN) and NaT: the same text means missing
# whether it arrives in a CSV, a Parquet string column, a DataFrame or a JSON request.
_MISSING_TEXT = frozenset(["", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN",
                           "<NA>", "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null", "NaT"])


def is_missing(x: Any) -> bool:
    """Whether one raw value counts as missing (imputed for features, unlabeled for targets)."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return True
    if isinstance(x, (bytes, bytearray)):
        x = x.decode("utf-8", "replace")
    return str(x).strip() in _MISSING_TEXT


def _category(x: Any) -> str:
    # 3, 3.0 and "3" are one category: a CSV may give any of them for the same value.
    if isinstance(x, float) and x.is_integer():
        x = int(x)
    return str(x)


def _each_value(values: np.ndarray, column: str, convert: Callable[[Any], float | None], want: str) -> np.ndarray:
    """float64 of ``convert(x)`` for each value of an object column: missing -> NaN, and a value ``convert``
    cannot take (None, or an error) -> InputError naming its row and column."""
    out = np.empty(len(values), dtype=np.float64)
    for i, x in enumerate(values.tolist()):
        if is_missing(x):
            out[i] = np.nan
            continue
        try:
            v = convert(x)
        except (TypeError, ValueError):
            v = None
        if v is None:
            raise InputError(f"expected {want}, got {x!r}", row=i, column=column) from None
        out[i] = v
    return out


def _to_float(values: np.ndarray, column: str) -> np.ndarray:
    if values.dtype.kind in "iufb":
        return values.astype(np.float64)
    return _each_value(values, column, float, "a number")  # float(True) is 1.0, as for a bool dtype


# ISO 8601 dates and date-times, as CSV files and JSON clients write them.
_ISO = re.compile(r"\d{4}-\d{2}-\d{2}([T ]\d{2}:\d{2}(:\d{2}(\.\d{1,9})?)?)?(Z|[+-]\d{2}(:?\d{2})?)?")


def _holds_datetimes(values: np.ndarray) -> bool:
    """A datetime dtype, or at least one value and every non-missing one a date/time (object or ISO string)."""
    if values.dtype.kind == "M":
        return True
    if values.dtype.kind != "O":
        return False
    seen = False
    for x in values.tolist():
        if is_missing(x):
            continue
        if not (isinstance(x, (_dt.date, np.datetime64)) or (isinstance(x, str) and _parse_iso(x) is not None)):
            return False
        seen = True
    return seen


def _parse_iso(text: str) -> _dt.datetime | None:
    text = text.strip()
    m = _ISO.fullmatch(text)
    if not m:
        return None
    if m.group(1) is None and m.group(4) not in (None, "Z"):
        # 2024-01-31+02:00 is midnight at +02:00: fromisoformat took the sign for the date/time separator (02:00 UTC)
        text = f"{text[:10]}T00:00{text[10:]}"
    try:
        return _dt.datetime.fromisoformat(text)
    except ValueError:  # e.g. 2024-02-30
        return None


def _epoch_seconds(values: np.ndarray, column: str) -> np.ndarray:
    """Date/times -> float64 seconds since 1970-01-01 UTC; missing -> NaN; numbers are taken as epoch seconds."""
    if values.dtype.kind == "M":  # microseconds: exact enough, and no overflow before the year 294247
        us = values.astype("datetime64[us]")
        out = us.astype(np.int64).astype(np.float64) / 1e6
        out[np.isnat(us)] = np.nan
        return out
    if values.dtype.kind in "iuf":
        return values.astype(np.float64)
    return _each_value(values, column, _seconds, "a date/time such as 2024-01-31 or 2024-01-31T12:30:00")


def _seconds(x: Any) -> float | None:
    """One date/time as seconds since 1970 UTC (no zone: UTC); None when it is not one."""
    if isinstance(x, np.datetime64):
        return float("nan") if np.isnat(x) else float(x.astype("datetime64[us]").astype(np.int64)) / 1e6
    if isinstance(x, _dt.datetime):  # pandas' Timestamp too
        return (x if x.tzinfo is not None else x.replace(tzinfo=_dt.UTC)).timestamp()
    if isinstance(x, _dt.date):
        return _dt.datetime(x.year, x.month, x.day, tzinfo=_dt.UTC).timestamp()
    if isinstance(x, (int, float)) and not isinstance(x, bool):
        return float(x)
    parsed = _parse_iso(x) if isinstance(x, str) else None
    if parsed is None:
        return None
    return (parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=_dt.UTC)).timestamp()
