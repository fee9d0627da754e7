"""The body of ``POST /predict``: rows of named raw features (or images), each value checked against
its column before the bundle sees it, so that every refusal names the row and column. Pure functions."""

from __future__ import annotations

import sys
from typing import Any

import numpy as np

from trainfer.errors import InputError
from trainfer.features import is_missing
from trainfer.serving.protocol import Schema, far_message, flatten, in_range, json_type


def predict_images(rows: list[dict[str, Any]], size: int) -> np.ndarray:
    """The ``image`` of each /predict row as uint8 (n, size, size, 3): integers 0..255 in exactly the
    model's size, as v2's UINT8 input takes them (a clipped 256 or a truncated 1.5 would be a silent
    change of the input). InputError names the row."""
    out = np.empty((len(rows), size, size, 3), dtype=np.uint8)
    want = f"{size} x {size} x 3 integers 0..255"
    for i, row in enumerate(rows):
        flat: list[Any] = []
        img = row.get("image")
        if not flatten(img, flat) or np.shape(img) != (size, size, 3):
            raise InputError(f"needs {want} (rows of pixels of [r, g, b])", row=i, column="image")
        if not all(type(v) is int and 0 <= v <= 255 for v in flat):  # bool is no int here
            bad = next(v for v in flat if not (type(v) is int and 0 <= v <= 255))
            raise InputError(f"needs {want}; got {bad!r}", row=i, column="image")
        out[i] = np.asarray(flat, dtype=np.uint8).reshape(size, size, 3)
    return out


def predict_rows(req: Any, schema: Schema) -> list[dict[str, Any]]:
    """The rows of a ``/predict`` body ``{"rows": [{"feature": value, ...}, ...]}``, each value checked
    against its column: a number (or null, "", "NaN" if missing) for a numeric column, also ISO 8601 text for
    a date column; a string, a
    number or null for a categorical one (true/false only where training saw booleans). A list, an
    object or a boolean elsewhere is never a feature value: InputError naming the row and column."""
    if not isinstance(req, dict) or "rows" not in req:
        raise InputError('the body must be a JSON object {"rows": [{"feature": value, ...}, ...]}', column="rows")
    rows = req["rows"]
    if not isinstance(rows, list) or not rows:
        raise InputError("must be a non-empty list of objects, one per row", column="rows")
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise InputError(f"expected an object of named features, got {json_type(row)}", row=i)
    for spec in schema.columns:
        name, numeric = spec["name"], spec["type"] == "numeric"
        bools = not numeric and any(c in ("True", "False") for c in spec["categories"])
        for i, row in enumerate(rows):
            v = row.get(name)  # an absent column is the features' error, which names every one
            if numeric and (isinstance(v, float) or (isinstance(v, int) and not isinstance(v, bool))):
                k = schema.numeric_index[name]
                if abs(v) <= sys.float_info.max and not in_range(float(v), schema.means[k], schema.stds[k]):
                    raise InputError(far_message(schema.means[k], schema.stds[k]), row=i, column=name)
            if v is None or isinstance(v, float) or (isinstance(v, bool) and bools):
                continue
            if isinstance(v, int) and not isinstance(v, bool) and abs(v) <= sys.float_info.max:
                continue
            # a date column takes ISO 8601 text (the features parse it and name a bad one); any column takes
            # the spellings of "missing" that a CSV cell may have, imputed as on every other path
            if isinstance(v, str) and (not numeric or spec.get("datetime") or is_missing(v)):
                continue
            got = (repr(v) if isinstance(v, str) and len(v) <= 40 else "an integer beyond float64"
                   if isinstance(v, int) and not isinstance(v, bool) else json_type(v))
            want = "a number (null if missing)" if numeric else "a string (null if missing)"
            raise InputError(f"expected {want}, got {got}", row=i, column=name)
    return rows

