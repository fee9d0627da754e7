"""/openapi.json as the server really behaves: the statuses each endpoint sends (never FastAPI's 422,
which this server does not send), its content types (/metrics is Prometheus text), the API key when
there is one, and the served model's own /predict body (its columns, their types and the range of
numbers the server takes: protocol.Z_MAX), so that an example the document allows gets an answer.

The v2 infer body stays generic: whether ``data`` fits ``shape`` is beyond JSON Schema.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from trainfer.serving.protocol import Z_MAX, Schema, in_range

_ERROR = {"$ref": "#/components/schemas/Error"}
# status -> when this server sends it
WHY = {400: "Bad input; the error names the field.", 401: "Missing or invalid API key.",
       404: "No model of that name on this server.", 408: "The body did not arrive within --body-timeout-s.",
       413: "The body is over --max-body-mb.", 500: "The model failed; the server log has the details.",
       503: "The queue is full; retry after Retry-After seconds.", 504: "Waited longer than --timeout-ms."}
# (path, method) -> the error statuses beyond 401 (401 applies to every route but health, with keys set)
ERRORS = {("/v2/models/{name}", "get"): (404,), ("/v2/models/{name}/ready", "get"): (404,),
          ("/v2/models/{name}/infer", "post"): (400, 404, 408, 413, 500, 503, 504),
          ("/predict", "post"): (400, 408, 413, 500, 503, 504)}


def document(spec: dict[str, Any], schema: Schema, keys: bool) -> dict[str, Any]:
    """Make FastAPI's generated ``spec`` true for this server (mutated and returned)."""
    schemas = spec.setdefault("components", {}).setdefault("schemas", {})
    schemas["Error"] = {"type": "object", "required": ["error"], "additionalProperties": False,
                        "properties": {"error": {"type": "string"}}}
    schemas["PredictRequest"] = predict_request(schema)
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)
    if keys:
        spec["components"]["securitySchemes"] = {"apiKey": {"type": "http", "scheme": "bearer"}}
    for path, methods in spec["paths"].items():
        for method, op in methods.items():
            responses = op["responses"]
            responses.pop("422", None)
            codes = list(ERRORS.get((path, method), ()))
            if keys and not path.startswith("/v2/health"):
                codes.append(401)
                op["security"] = [{"apiKey": []}]
            for code in sorted(codes):
                responses[str(code)] = _error(code)
    metrics = spec["paths"]["/metrics"]["get"]["responses"]["200"]
    metrics["content"] = {"text/plain": {"schema": {"type": "string"}}}
    metrics["description"] = "Prometheus text exposition format."
    infer_ok = spec["paths"]["/v2/models/{name}/infer"]["post"]["responses"]["200"]
    infer_ok["content"]["application/octet-stream"] = {"schema": {"type": "string", "format": "binary"}}
    infer_ok["description"] = ("JSON, or with binary outputs asked for: the JSON header (its length in "
                               "Inference-Header-Content-Length) followed by the raw tensors.")
    return spec


def _error(code: int) -> dict[str, Any]:
    out: dict[str, Any] = {"description": WHY[code], "content": {"application/json": {"schema": _ERROR}}}
    if code == 503:
        out["headers"] = {"Retry-After": {"schema": {"type": "integer"}, "description": "seconds"}}
    elif code == 401:
        out["headers"] = {"WWW-Authenticate": {"schema": {"type": "string"}}}
    return out


def predict_request(schema: Schema) -> dict[str, Any]:
    """The /predict body for this model: one property per training column, all required."""
    features = schema.features
    if features.kind == "image":
        s = features.inputs.size
        pixel = {"type": "array", "minItems": 3, "maxItems": 3, "items": {"type": "integer", "minimum": 0,
                                                                            "maximum": 255}}
        line = {"type": "array", "minItems": s, "maxItems": s, "items": pixel}
        props: dict[str, Any] = {"image": {"type": "array", "minItems": s, "maxItems": s, "items": line,
                                           "description": f"{s} x {s} x 3 RGB values 0..255"}}
        required = ["image"]
    else:
        props = {}
        for c in schema.columns:
            if c["type"] == "numeric":
                number: dict[str, Any] = {"type": "number"}
                number["minimum"], number["maximum"] = bounds(c["mean"], c["std"])
                if c.get("datetime"):
                    props[c["name"]] = {"anyOf": [number, {"type": "string", "format": "date-time"}, {"type": "null"}],
                                        "description": "a date and time (ISO 8601, or seconds since 1970 UTC); null "
                                                       "if missing (imputed as in training)"}
                else:
                    props[c["name"]] = {"anyOf": [number, {"type": "null"}],
                                        "description": "a number; null if missing (imputed as in training)"}
            else:
                kinds = ["string", "number", "null"]
                if any(v in ("True", "False") for v in c["categories"]):
                    kinds.append("boolean")
                props[c["name"]] = {"type": kinds, "description": "a category; null if missing, unseen ones are "
                                    f"'unknown' (training saw {len(c['categories'])})"}
        required = list(props)
    row = {"type": "object", "required": required, "properties": props}
    return {"type": "object", "required": ["rows"], "properties": {"rows": {"type": "array", "minItems": 1,
                                                                           "items": row}}}


def bounds(mean: float, std: float) -> tuple[float, float]:
    """(lowest, highest) number the server takes for a column of this training mean and std: exactly
    the floats ``protocol.in_range`` accepts, found from the formula and then to the last float64."""
    out = []
    for sign in (-1.0, 1.0):
        v = mean + sign * Z_MAX * std
        while not in_range(v, mean, std):  # rounding put the guess outside: step in
            v = float(np.nextafter(v, mean))
        while in_range(nxt := float(np.nextafter(v, sign * math.inf)), mean, std) and math.isfinite(nxt):
            v = nxt
        out.append(v)
    return out[0], out[1]
