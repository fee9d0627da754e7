"""The whole graph's raw inputs, and raw rows -> the feed dict that a whole-graph bundle runs on.

A whole-graph ``model.onnx`` takes one tensor per raw column (see exporting.graph): numbers as float32 (NaN for
missing), dates and columns too wide for float32 as float64 (dates as epoch seconds), categories as strings ("" for
missing), images as uint8 NHWC. Everything else (imputation, one-hot, scaling, resizing) happens in the graph, so this
module only checks, orders and converts: the same checks trainfer's numpy preprocessing makes (an infinity or a value
beyond float32 is refused naming its row and column; a missing column is named).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from trainfer.errors import InputError
from trainfer.features.tabular import _F32_MAX, _category, _epoch_seconds, _to_float, is_missing

OUTPUT_NAMES = ("probabilities", "label", "prediction")
# |mean| / std at or above which float32 rounds a raw value too coarsely for the standardized one (the same
# bound as TabularFeatures.affine_in_float32_is_exact_enough): such columns come in as float64.
WIDE_RATIO = 1e3


def raw_inputs(features: Any) -> list[dict[str, Any]]:
    """The whole graph's inputs, in column order: {"name", "column", "dtype", "shape"} (the manifest's
    ``input.raw_inputs``). A column named like an output (or like an internal node, ``trainfer/...``) is fed as
    ``input:<column>`` (more ``input:`` when that is another column's name)."""
    if features.kind == "image":
        return [{"name": "image", "column": "image", "dtype": "uint8", "shape": ["batch", "height", "width", 3]}]
    out = []
    # Names are unique and never an output's or an internal node's (``trainfer/...``): a column that would clash
    # gets "input:" prepended until it does not (``label`` beside a column ``input:label`` -> ``input:input:label``).
    # The manifest records each input's column, so the scheme only has to be deterministic.
    taken = set(OUTPUT_NAMES) | {c["name"] for c in features.inputs.columns}
    for c in features.inputs.columns:
        if c["type"] == "categorical":
            dtype = "string"
        elif c.get("datetime") or abs(c["mean"]) / c["std"] >= WIDE_RATIO:
            dtype = "float64"
        else:
            dtype = "float32"
        name = c["name"]
        if name in OUTPUT_NAMES or name.startswith("trainfer/"):
            name = f"input:{name}"
            while name in taken:
                name = f"input:{name}"
            taken.add(name)
        out.append({"name": name, "column": c["name"], "dtype": dtype, "shape": ["batch", 1]})
    return out


class RawFeeder:
    """Raw rows (ndarray, DataFrame, list of dicts; image paths or arrays) -> {input name: array}."""

    def __init__(self, features: Any, inputs: list[dict[str, Any]] | None = None) -> None:
        self.features = features
        self.inputs = inputs if inputs is not None else raw_inputs(features)
        self.names = [i["name"] for i in self.inputs]
        self.image = features.kind == "image"
        self._specs = [] if self.image else list(zip(features.inputs.columns, self.inputs, strict=True))
        # The hot path: every column a float32 number, rows given as a numeric ndarray.
        self.all_float32 = not self.image and all(i["dtype"] == "float32" for i in self.inputs)

    def feed(self, X: Any) -> dict[str, np.ndarray]:
        """The feed for ``X``: fresh arrays, {input name: array} in the graph's dtypes, checked."""
        if self.image:
            return {self.names[0]: self.features.inputs.to_uint8(X, resize=False)}
        v = self.numeric_rows(X)
        if v is not None:
            buf, feed = self.buffer(v.shape[0])
            self.fill(buf, v)
            return feed
        cols = self.features.inputs._columns_of(X)
        feed = {}
        for (spec, inp), values in zip(self._specs, cols, strict=True):
            name = spec["name"]
            if inp["dtype"] == "string":
                arr = np.empty((len(values), 1), dtype=object)
                vals = values.tolist() if hasattr(values, "tolist") else list(values)
                arr[:, 0] = ["" if is_missing(x) else _category(x) for x in vals]
            else:
                v = _epoch_seconds(values, name) if spec.get("datetime") else _to_float(values, name)
                _check_finite(v, name, inp["dtype"] == "float32")
                arr = v.astype(np.float32 if inp["dtype"] == "float32" else np.float64).reshape(-1, 1)
            feed[inp["name"]] = arr
        return feed

    def numeric_rows(self, X: Any) -> np.ndarray | None:
        """``X`` as (n, ncols) numbers when the hot path applies (every input float32, ``X`` a numeric ndarray),
        else None. Raises InputError for an array of the wrong width."""
        if not (self.all_float32 and isinstance(X, np.ndarray) and X.dtype.kind in "iufb"):
            return None
        v = X.reshape(1, -1) if X.ndim == 1 else X
        if v.ndim != 2 or v.shape[1] != len(self.names):
            names = [i["column"] for i in self.inputs]
            raise InputError(f"expected rows of {len(names)} features {names}, got an array of shape {X.shape}")
        return v

    def pack(self, X: Any) -> np.ndarray:
        """Rows of a table whose raw inputs are all float32 -> one checked (n, columns) float32 matrix, the inputs'
        columns side by side (the Predictor binds it to the session in one copy)."""
        v = self.numeric_rows(X)
        if v is None:
            feed = self.feed(X)
            return np.concatenate([feed[name] for name in self.names], axis=1)
        buf = np.empty((len(self.names), v.shape[0], 1), dtype=np.float32)
        self.fill(buf, v)
        return buf[:, :, 0].T

    def buffer(self, n: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """A float32 (ncols, n, 1) buffer and the feed of its views: each column's (n, 1) slice is contiguous, so
        onnxruntime takes it without a copy."""
        buf = np.empty((len(self.names), n, 1), dtype=np.float32)
        return buf, dict(zip(self.names, buf, strict=True))

    def fill(self, buf: np.ndarray, v: np.ndarray) -> None:
        """Rows ``v`` (from numeric_rows) into ``buf`` (from buffer), checked: NaN (missing) passes; an infinity,
        or a value beyond float32, is an InputError naming its row and column."""
        dest = buf[:, :, 0]
        # One check clears the common case: every value finite and within float32 (a NaN max compares False); it is
        # the only one on the hot path (an errstate block costs 3-4 us beside the run). Integers always fit.
        if v.dtype.kind == "f" and not np.abs(v).max(initial=0.0) <= _F32_MAX:
            with np.errstate(over="ignore", invalid="ignore"):
                np.copyto(dest, v.T, casting="unsafe")
            src = v.astype(np.float64)
            bad = np.isinf(src) | (np.abs(src) > _F32_MAX)  # NaN (missing) is neither
            if bad.any():
                row, col = (int(i) for i in np.argwhere(bad)[0])
                _check_finite(src[row:row + 1, col], self.inputs[col]["column"], True, row)
            return
        np.copyto(dest, v.T, casting="unsafe")


def _check_finite(v: np.ndarray, column: str, float32: bool, first_row: int = 0) -> None:
    """InputError for the first infinity (or, for a float32 input, value beyond float32) in one column's values."""
    bad = np.isinf(v) | ((np.abs(v) > _F32_MAX) if float32 else False)  # NaN (missing) is neither
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        what = "value is infinite; send a finite number" if np.isinf(v[row]) else \
            "value is too large for the model (beyond float32); check the units"
        raise InputError(what, row=first_row + row, column=column)


def concat_feeds(feeds: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Feeds of several requests -> one batch (per input name, along the batch axis)."""
    if len(feeds) == 1:
        return feeds[0]
    return {k: np.concatenate([f[k] for f in feeds]) for k in feeds[0]}


def feed_rows(feed: dict[str, np.ndarray]) -> int:
    return int(next(iter(feed.values())).shape[0]) if feed else 0
