"""The Open Inference Protocol v2 (KServe, Triton) for a trainfer bundle: metadata, request decoding
(JSON tensors and the binary tensor data extension) and response encoding. Pure functions, no I/O.

The model takes raw features, as in the training data: one FP32 tensor "input" [batch, features] for
an all-numeric table (its columns in training order, listed in the model metadata's parameters), one
tensor per column for a table with strings (BYTES for the string columns), or UINT8 "input" [batch,
height, width, 3] for images. It returns "probabilities" and "label" (regression: "prediction").

A missing number is NaN in a float tensor (IEEE NaN in binary data; ``null`` or ``"NaN"`` in JSON)
and a missing string is ``null``: the bundle imputes both, as ``trainfer predict`` does. Infinities
are refused.
"""

from __future__ import annotations

import json
import math
import struct
import sys
from typing import Any

import numpy as np
import orjson

from trainfer.errors import InputError
from trainfer.features import is_missing

HEADER = "Inference-Header-Content-Length"
# The farthest a number may lie from its training mean, in training standard deviations. Beyond it the
# value is a unit mistake rather than data, and the model's float32 arithmetic would overflow anyway
# (1e38 in a digits pixel gave NaN probabilities): a 400 naming the column, and an exact range in the
# OpenAPI document (openapi.py), so that every number the document allows gets an answer.
Z_MAX = 1e6
_NUMPY = {"FP32": "<f4", "FP64": "<f8", "FP16": "<f2", "INT8": "i1", "INT16": "<i2", "INT32": "<i4",
          "INT64": "<i8", "UINT8": "u1", "UINT16": "<u2", "UINT32": "<u4", "UINT64": "<u8", "BOOL": "?"}


class Schema:
    """What the bundle's v2 model looks like: its inputs and outputs, derived from the manifest."""

    def __init__(self, features: Any, labels: list[Any], task: str,
                 raw_inputs: list[dict[str, Any]] | None = None) -> None:
        self.features, self.task, self.labels = features, task, labels
        self.tabular = features.kind == "tabular"
        cols = getattr(features.inputs, "columns", None)
        self.columns: list[dict[str, Any]] = list(cols or [])
        self.per_column = features.kind == "tabular" and any(c["type"] == "categorical" for c in cols)
        self.parameters: dict[str, Any] = {}  # the model metadata's parameters
        if features.kind == "image":
            s = features.inputs.size
            self.inputs = [{"name": "input", "datatype": "UINT8", "shape": [-1, s, s, 3]}]
        elif self.per_column:
            self.inputs = [{"name": c["name"], "datatype": "FP32" if c["type"] == "numeric" else "BYTES",
                            "shape": [-1, 1]} for c in cols]
        else:
            self.inputs = [{"name": "input", "datatype": "FP32", "shape": [-1, len(cols)]}]
            # One tensor of numbers: without the names a client cannot know which column is which.
            self.parameters["columns"] = [c["name"] for c in cols]
        # A whole-graph bundle's raw inputs (one tensor per column, or "image" of any size): what the metadata
        # lists, so that a stock Triton/KServe client sends raw features; the tensors above are taken too.
        self.raw = list(raw_inputs or [])
        self.raw_only = {r["name"]: r for r in self.raw} if self.raw else {}
        for i in self.inputs:
            self.raw_only.pop(i["name"], None)
        self.metadata_inputs = [{"name": r["name"], "datatype": _V2_TYPES[r["dtype"]],
                                 "shape": [-1, -1, -1, 3] if r["dtype"] == "uint8" else [-1, 1]}
                                for r in self.raw] or self.inputs
        numeric = [c for c in self.columns if c["type"] == "numeric"]
        self.means = np.asarray([c["mean"] for c in numeric], dtype=np.float64)
        self.stds = np.asarray([c["std"] for c in numeric], dtype=np.float64)
        # A radius inside every column's range: one dot product (x . x <= r^2) clears a whole request of
        # floats in the common case, ~1 us on the hot path; anything else gets the exact check.
        margin = Z_MAX * (1 - 1e-6) * self.stds
        r = min(float((margin - self.means).min(initial=np.inf)), float((margin + self.means).min(initial=np.inf)))
        self.safe_r2 = r * r if 0 < r < np.inf else -1.0
        self.numeric_index = {c["name"]: k for k, c in enumerate(numeric)}
        # Tables impute a missing number (NaN) as in training; images have no missing pixels.
        self.imputed = {i["name"] for i in [*self.inputs, *self.metadata_inputs]
                        if features.kind == "tabular" and i["datatype"] in ("FP32", "FP64")}
        self.known = {i["name"] for i in self.inputs} | set(self.raw_only)
        string_labels = any(isinstance(v, str) for v in labels)
        # bool labels are BOOL, as the graph's label output (tensor(bool)) and Triton serving model.onnx say
        bool_labels = bool(labels) and all(isinstance(v, (bool, np.bool_)) for v in labels)
        if task == "classification":  # the label output per class index, built once
            self.label_values = np.asarray(labels, dtype=object if string_labels else bool if bool_labels else np.int64)
            label_type = "BYTES" if string_labels else "BOOL" if bool_labels else "INT64"
            self.outputs = [{"name": "probabilities", "datatype": "FP32", "shape": [-1, len(labels)]},
                            {"name": "label", "datatype": label_type, "shape": [-1]}]
        else:
            self.outputs = [{"name": "prediction", "datatype": "FP64", "shape": [-1]}]


def parse_infer(body: bytes, header_length: int | None, schema: Schema) -> tuple[Any, dict[str, Any]]:
    """(raw rows for Predictor.prepare, the request's JSON header). Raises InputError (-> 400)."""
    if header_length is not None:
        if header_length < 0 or header_length > len(body):
            raise InputError(f"{HEADER} is {header_length} but the body has {len(body)} bytes")
        head, binary = body[:header_length], body[header_length:]
    else:
        head, binary = body, b""
    req = load_json(head)
    if not isinstance(req, dict) or not isinstance(req.get("inputs"), list) or not req["inputs"]:
        raise InputError("the request needs a non-empty 'inputs' list", column="inputs")
    _object_or_none(req.get("parameters"), "parameters")
    rid = req.get("id")
    if rid is not None and not (isinstance(rid, str) and _utf8(rid)):  # it is echoed in the answer
        raise InputError("must be a string of valid Unicode", column="id")
    known = schema.known
    tensors: dict[str, np.ndarray] = {}
    offset = 0
    for i, t in enumerate(req["inputs"]):
        if not isinstance(t, dict) or not isinstance(t.get("name"), str) or not t["name"]:
            raise InputError(f"inputs[{i}] needs a 'name'", column=f"inputs[{i}].name")
        if t["name"] not in known:
            raise InputError(f"unknown input; the model takes {sorted(known)}", column=t["name"])
        if t["name"] in tensors:
            raise InputError("given twice", column=t["name"])
        tensors[t["name"]], offset = _tensor(t, binary, offset, t["name"] in schema.imputed)
    if offset != len(binary):
        raise InputError(f"the binary section has {len(binary) - offset} bytes that no input claims")
    return _rows(tensors, schema), req


def load_json(body: bytes) -> Any:
    """The request body's JSON; NaN and Infinity literals read too (a NaN is a missing value, an
    Infinity is then refused naming the input). Raises InputError (-> 400)."""
    try:
        return orjson.loads(body)  # ~10x faster than json.loads: a 29 KB image request took ~1 ms to decode
    except orjson.JSONDecodeError:
        try:
            return json.loads(body)
        except (ValueError, UnicodeDecodeError, RecursionError):
            raise InputError("the request body is not valid JSON") from None


def _tensor(t: dict[str, Any], binary: bytes, offset: int, nan_ok: bool) -> tuple[np.ndarray, int]:
    name, dtype, shape = t["name"], t.get("datatype"), t.get("shape")
    if dtype not in _NUMPY and dtype != "BYTES":
        raise InputError(f"unsupported datatype {dtype!r}", column=f"{name}.datatype")
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                              for d in shape):
        raise InputError("'shape' must be a list of non-negative integers", column=f"{name}.shape")
    count = math.prod(shape)
    size = (_object_or_none(t.get("parameters"), f"{name}.parameters") or {}).get("binary_data_size")
    if size is not None:
        if not isinstance(size, int) or size < 0 or offset + size > len(binary):
            raise InputError("binary_data_size runs past the end of the body", column=f"{name}.parameters")
        raw = binary[offset:offset + size]
        offset += size
        arr = _decode_bytes(raw, count, name) if dtype == "BYTES" else _frombuffer(raw, dtype, count, name)
    else:
        if "data" not in t:
            raise InputError("needs 'data' (or binary_data_size)", column=f"{name}.data")
        flat = _strings(t["data"], name) if dtype == "BYTES" else _numbers(t["data"], name)
        if flat.size != count:
            raise InputError(f"shape {shape} holds {count} values but 'data' has {flat.size}", column=f"{name}.shape")
        arr = flat if dtype == "BYTES" else _typed(flat, dtype, name)
    if dtype != "BYTES" and arr.dtype.kind == "f":
        flat_arr = arr.reshape(-1)
        if not math.isfinite(flat_arr.sum()):  # one sum clears the common case (an overflow gets the full check)
            bad_mask = np.isinf(flat_arr) if nan_ok else ~np.isfinite(flat_arr)
            if bad_mask.any():
                bad = int(np.flatnonzero(bad_mask)[0])
                what = "is infinite; send a finite number (NaN for a missing one)" if nan_ok else \
                    "is not a finite number"
                raise InputError(f"value {flat_arr[bad]} at flat index {bad} {what}", column=name)
    return arr.reshape(shape), offset


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")  # a lone surrogate (\ud800) parses as JSON but cannot be written back
    except UnicodeEncodeError:
        return False
    return True


def _object_or_none(value: Any, where: str) -> dict[str, Any] | None:
    if value is not None and not isinstance(value, dict):
        raise InputError("must be an object of named parameters", column=where)
    return value


def _numbers(data: Any, name: str) -> np.ndarray:
    """JSON numbers as float64 (exact for every integer up to 2**53, so integer types can be checked).
    ``null`` and ``"NaN"`` are NaN: a missing value, which an input the bundle imputes accepts."""
    try:
        if isinstance(data, list) and not (data and isinstance(data[0], list)):
            return np.fromiter(data, np.float64, len(data))  # flat, as clients send it: ~2x faster than asarray
        return np.asarray(data, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError, OverflowError):
        pass
    flat: list[Any] = []
    if not flatten(data, flat) or not all(_number_or_missing(v) for v in flat):
        raise InputError("'data' must be numbers (a flat or nested list; null or \"NaN\" for a missing one)",
                         column=f"{name}.data")
    return np.asarray([math.nan if v is None or isinstance(v, str) else v for v in flat], dtype=np.float64)


def _number_or_missing(v: Any) -> bool:
    if isinstance(v, str):  # the spellings of "missing" every other path imputes ("NaN", "", "NA", ...)
        return is_missing(v)
    if isinstance(v, int) and not isinstance(v, bool):
        return abs(v) <= sys.float_info.max  # a JSON integer beyond float64 is not a number we can take
    return v is None or isinstance(v, float)


def flatten(data: Any, out: list[Any]) -> bool:
    """A flat or regularly nested list -> ``out``, leaves in order; False for anything else (ragged)."""
    if not isinstance(data, list):
        return False
    shape = []
    node: Any = data
    while isinstance(node, list) and len(shape) < 32:  # the nesting the first elements show
        shape.append(len(node))
        node = node[0] if node else None
    return _leaves(data, shape, out)


def _leaves(data: Any, shape: list[int], out: list[Any]) -> bool:
    if not isinstance(data, list) or len(data) != shape[0]:
        return False
    if len(shape) == 1:
        if any(isinstance(v, list) for v in data):
            return False
        out.extend(data)
        return True
    return all(_leaves(v, shape[1:], out) for v in data)


def _strings(data: Any, name: str) -> np.ndarray:
    """BYTES elements in JSON: strings (a number is read as its text, null is missing); a list or
    an object inside a value would only ever be an unknown category."""
    flat: list[Any] = []
    if not flatten(data, flat):
        raise InputError("'data' must be a flat or nested list of strings", column=f"{name}.data")
    for i, v in enumerate(flat):
        if not (v is None or isinstance(v, str) or (isinstance(v, int | float) and not isinstance(v, bool))):
            raise InputError(f"element {i} is {json_type(v)}; BYTES elements are strings (null if missing)",
                             column=name)
    return np.asarray(flat, dtype=object)


def json_type(v: Any) -> str:
    return {bool: "a boolean", list: "a list", dict: "an object", str: "a string", type(None): "null"}.get(
        type(v), "a number")


def _typed(flat: np.ndarray, dtype: str, name: str) -> np.ndarray:
    """``flat`` as the tensor's datatype; an integer type takes integers in its range only."""
    arr = flat.astype(_NUMPY[dtype])
    if arr.dtype.kind in "iub":
        exact = arr == flat
        if dtype in ("INT64", "UINT64"):
            exact &= np.abs(flat) <= 2.0**53  # beyond, JSON numbers pass through float64 inexactly
        if not exact.all():
            bad = int(np.flatnonzero(~exact)[0])
            raise InputError(f"value {flat[bad]:g} at flat index {bad} is not a {dtype} value (an integer in range; "
                             "send larger 64-bit integers as binary data)", column=name)
    return arr


def _frombuffer(raw: bytes, dtype: str, count: int, name: str) -> np.ndarray:
    item = np.dtype(_NUMPY[dtype]).itemsize
    if len(raw) != count * item:
        raise InputError(f"binary data has {len(raw)} bytes, the shape needs {count * item}", column=name)
    return np.frombuffer(raw, dtype=_NUMPY[dtype])


def _decode_bytes(raw: bytes, count: int, name: str) -> np.ndarray:
    out, pos = [], 0
    while pos < len(raw):
        if pos + 4 > len(raw):
            raise InputError("truncated BYTES element", column=name)
        (n,) = struct.unpack_from("<I", raw, pos)
        out.append(raw[pos + 4:pos + 4 + n])
        pos += 4 + n
    if len(out) != count or pos != len(raw):
        raise InputError(f"binary BYTES data holds {len(out)} elements, the shape needs {count}", column=name)
    return np.asarray([b.decode("utf-8", "replace") for b in out], dtype=object)


def _rows(tensors: dict[str, np.ndarray], schema: Schema) -> Any:
    if schema.raw_only and any(n in schema.raw_only for n in tensors):
        return _raw_rows(tensors, schema)
    names = [i["name"] for i in schema.inputs]
    missing = [n for n in names if n not in tensors]
    if missing:
        raise InputError(f"missing input(s) {missing}; the model takes {names}", column=missing[0])
    if not schema.per_column:
        x = tensors["input"]
        want = schema.inputs[0]["shape"][1:]
        if x.ndim != len(want) + 1 or list(x.shape[1:]) != want:
            raise InputError(f"shape {list(x.shape)} does not match [-1, {', '.join(map(str, want))}]",
                             column="input.shape")
        if schema.tabular and x.dtype.kind in "iuf":  # (BYTES: the features parse the text)
            flat = x.reshape(-1)  # float32 squares overflow to inf and NaN compares False: both go to the check
            if not (x.dtype.kind == "f" and float(flat @ flat) <= schema.safe_r2):
                check_range(x, schema.means, schema.stds, [c["name"] for c in schema.columns])
        return x
    cols = _column_vectors(tensors, [(spec["name"], spec["name"]) for spec in schema.inputs], schema)
    return np.stack([v.astype(object) for v in cols], axis=1)


def _column_vectors(tensors: dict[str, np.ndarray], names: list[tuple[str, str]], schema: Schema) -> list[np.ndarray]:
    """One 1-D array per (tensor name, column name), each [batch] or [batch, 1] with the same batch; numbers
    further than Z_MAX standard deviations from their column's training mean are refused (check_range)."""
    cols: list[np.ndarray] = []
    for tensor, column in names:
        v = tensors[tensor]
        if v.ndim == 2 and v.shape[1] == 1:
            v = v[:, 0]
        if v.ndim != 1:
            raise InputError(f"shape {list(v.shape)} must be [batch] or [batch, 1]", column=f"{tensor}.shape")
        if cols and len(v) != len(cols[0]):
            raise InputError(f"has {len(v)} rows, other inputs have {len(cols[0])}", column=tensor)
        k = schema.numeric_index.get(column)
        if k is not None and v.dtype.kind in "iuf":
            check_range(v[:, None], schema.means[k:k + 1], schema.stds[k:k + 1], [tensor])
        cols.append(v)
    return cols


def _raw_rows(tensors: dict[str, np.ndarray], schema: Schema) -> Any:
    """Rows from a whole-graph bundle's raw inputs (as its metadata lists them): for Predictor.prepare."""
    names = [r["name"] for r in schema.raw]
    missing = [n for n in names if n not in tensors]
    if missing:
        raise InputError(f"missing input(s) {missing}; the model takes {names}", column=missing[0])
    if not schema.tabular:
        x = tensors[names[0]]
        if x.ndim != 4 or x.shape[-1] != 3:
            raise InputError(f"shape {list(x.shape)} does not match [-1, -1, -1, 3]", column=f"{names[0]}.shape")
        return x
    cols = _column_vectors(tensors, [(r["name"], spec["name"]) for spec, r in zip(schema.columns, schema.raw,
                                                                                   strict=True)], schema)
    if all(c.dtype.kind in "iuf" for c in cols):  # all numbers: one float matrix, the features' fast path
        return np.stack([c.astype(np.float64) for c in cols], axis=1)
    return np.stack([c.astype(object) for c in cols], axis=1)


_V2_TYPES = {"float32": "FP32", "float64": "FP64", "string": "BYTES", "uint8": "UINT8"}


def check_range(x: np.ndarray, means: np.ndarray, stds: np.ndarray, names: list[str]) -> None:
    """InputError for the first number more than Z_MAX standard deviations from its training mean
    (NaN, a missing value, passes). ``x``: rows by columns."""
    far = np.abs((x - means) / stds) > Z_MAX  # float64, as /predict computes it for one value; NaN is False
    if far.any():
        row, col = (int(i) for i in np.argwhere(far)[0])
        raise InputError(far_message(means[col], stds[col]), row=row, column=names[col])


def in_range(v: float, mean: float, std: float) -> bool:
    return not abs((v - mean) / std) > Z_MAX  # written so that NaN (missing) is in range


def far_message(mean: float, std: float) -> str:
    return (f"value is more than {Z_MAX:g} standard deviations from the training mean (allowed: "
            f"{mean - Z_MAX * std:.6g} to {mean + Z_MAX * std:.6g}); check the units")


def outputs(out: np.ndarray, schema: Schema) -> dict[str, np.ndarray]:
    """The model's raw output rows -> the named v2 outputs."""
    if schema.task != "classification":
        return {"prediction": out.reshape(-1).astype(np.float64)}
    return {"probabilities": out.astype(np.float32, copy=False), "label": schema.label_values[out.argmax(axis=1)]}


def encode_infer(named: dict[str, np.ndarray], req: dict[str, Any], model: str,
                 schema: Schema) -> tuple[bytes, int | None]:
    """(body, header length for the binary extension, or None for plain JSON)."""
    wanted = req.get("outputs") or [{"name": o["name"]} for o in schema.outputs]
    if not isinstance(wanted, list):
        raise InputError("must be a list of {'name': ...} objects", column="outputs")
    all_binary = bool((req.get("parameters") or {}).get("binary_data_output"))
    dtypes = {o["name"]: o["datatype"] for o in schema.outputs}
    outs, chunks = [], []
    for o in wanted:
        name = o.get("name") if isinstance(o, dict) else None
        if name not in named:
            raise InputError(f"unknown output {name!r}; the model returns {list(named)}", column="outputs")
        arr = named[name]
        entry: dict[str, Any] = {"name": name, "datatype": dtypes[name], "shape": list(arr.shape)}
        if all_binary or (_object_or_none(o.get("parameters"), f"outputs.{name}.parameters") or {}).get("binary_data"):
            blob = _encode_bytes(arr) if dtypes[name] == "BYTES" else np.ascontiguousarray(arr).tobytes()
            entry["parameters"] = {"binary_data_size": len(blob)}
            chunks.append(blob)
        else:  # orjson writes numeric arrays itself, float32 in its shortest round-trip form
            entry["data"] = ([str(v) for v in arr.reshape(-1)] if dtypes[name] == "BYTES"
                             else np.ascontiguousarray(arr.reshape(-1)))
        outs.append(entry)
    head = orjson.dumps({"model_name": model, "model_version": "1", "id": req.get("id") or "", "outputs": outs},
                        option=orjson.OPT_SERIALIZE_NUMPY)
    if not chunks:
        return head, None
    return head + b"".join(chunks), len(head)


def _encode_bytes(arr: np.ndarray) -> bytes:
    parts = []
    for v in arr.reshape(-1):
        b = str(v).encode()
        parts.append(struct.pack("<I", len(b)) + b)
    return b"".join(parts)
