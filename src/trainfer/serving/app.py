"""The HTTP server for one bundle: the v2 and /predict endpoints, dynamic batching, API keys, a body
limit and Prometheus metrics (FastAPI for routing and docs, the hot path in asgi.py). Imports the
runtime only: no torch in the server process."""

from __future__ import annotations

import logging
import math
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from trainfer.errors import InputError, TrainferError
from trainfer.runtime import Predictor
from trainfer.serving.apikeys import digests, normalize
from trainfer.serving.asgi import AccessLog, Answer, ASGIApp, BodyLimit, FastInfer, Guard, busy, error
from trainfer.serving.batching import Batcher, Expired, QueueFull
from trainfer.serving.limits import check_limits
from trainfer.serving.openapi import document
from trainfer.serving.protocol import HEADER, Schema, encode_infer, load_json, outputs, parse_infer
from trainfer.serving.rows import predict_images, predict_rows

log = logging.getLogger("trainfer.serving")


@dataclass
class ServeConfig:
    name: str
    max_batch_size: int = 32
    max_delay_ms: float = 0.0
    max_queue: int = 256
    timeout_ms: float = 1000.0
    max_body_mb: float = 8.0
    api_keys: tuple[str, ...] = ()  # plain keys or sha256:HEX lines; held as sha256:hex lines (apikeys.py)
    access_log: bool = True
    offload: str = "auto"  # the batcher's: run batches in a thread, inline on the event loop, or choose
    header_timeout_s: float = 10.0  # a request's headers, from the connection's start or the previous answer
    body_timeout_s: float = 30.0  # a request's whole body, from its headers
    keep_alive_s: float = 5.0  # an idle kept-alive connection

    def __post_init__(self) -> None:
        self.api_keys = normalize(self.api_keys)  # digests only: a worker's settings (env) hold no usable key
        check_limits(**{k: getattr(self, k) for k in ("max_batch_size", "max_delay_ms", "max_queue", "timeout_ms",
                                                      "max_body_mb", "header_timeout_s", "body_timeout_s",
                                                      "keep_alive_s")})


class _Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("trainfer_requests_total", "HTTP requests by endpoint and status",
                                ["endpoint", "status"], registry=self.registry)
        self.latency = Histogram("trainfer_request_seconds", "request latency", ["endpoint"], registry=self.registry,
                                 buckets=(.0005, .001, .002, .005, .01, .02, .05, .1, .2, .5, 1, 2, 5))
        self.queue = Gauge("trainfer_queue_depth", "requests waiting for a batch", registry=self.registry)
        self.batch = Histogram("trainfer_batch_size", "rows per executed batch", registry=self.registry,
                               buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256))
        self.inference = Histogram("trainfer_inference_seconds", "model time per batch", registry=self.registry,
                                   buckets=(.0001, .0002, .0005, .001, .002, .005, .01, .02, .05, .1, .5))
        self._children: dict[Any, Any] = {}  # labels() per request costs a lock and a tuple; look them up once

    def request(self, endpoint: str, status: int, seconds: float) -> None:
        key = (endpoint, status)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = (self.requests.labels(endpoint, str(status)), self.latency.labels(endpoint))
        child[0].inc()
        child[1].observe(seconds)

    def observe(self, name: str, value: float) -> None:
        if name == "batch_size":
            self.batch.observe(value)
        elif name == "inference_s":
            self.inference.observe(value)


class PredictResponse(BaseModel):
    labels: list[Any] | None = None
    probabilities: list[list[float]] | None = None
    predictions: list[float] | None = None


class TensorMetadata(BaseModel):
    name: str
    datatype: str
    shape: list[int]


class ModelMetadata(BaseModel):
    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]
    parameters: dict[str, Any] | None = Field(None, description="columns: the order of an all-numeric 'input'")


class ServerMetadata(BaseModel):
    name: str
    version: str
    extensions: list[str]


class ModelReady(BaseModel):
    name: str
    ready: bool


class OutputTensor(BaseModel):
    name: str
    datatype: str
    shape: list[int]
    data: list[Any] | None = None
    parameters: dict[str, Any] | None = None


class InferResponse(BaseModel):
    model_name: str
    model_version: str
    id: str
    outputs: list[OutputTensor]


class InferTensor(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    data: list[Any] | None = None
    parameters: dict[str, Any] | None = None


class InferRequest(BaseModel):
    id: str | None = None
    inputs: list[InferTensor]
    outputs: list[dict[str, Any]] | None = None
    parameters: dict[str, Any] | None = None



def create_app(predictor: Predictor, config: ServeConfig) -> ASGIApp:
    """The ASGI app for one loaded bundle. No endpoint loads models or changes the server.

    Requests pass Guard (keys, load shedding, metrics, access log) and BodyLimit; POSTs to the served
    model's infer endpoint are then answered by FastInfer, everything else by the FastAPI app."""
    feeder = getattr(predictor, "feeder", None)
    schema = Schema(predictor.features, predictor.labels, predictor.task, feeder.inputs if feeder else None)
    metrics = _Metrics()
    state: dict[str, Any] = {}
    access = AccessLog() if config.access_log else None

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        batcher = Batcher(run, config.max_batch_size, config.max_delay_ms, config.max_queue,
                          config.timeout_ms, observe=metrics.observe, offload=config.offload)
        batcher.start()
        state["batcher"] = batcher
        yield
        await batcher.close()  # after uvicorn stopped accepting and in-flight requests were answered
        if access is not None:
            access.flush()

    app = FastAPI(title=f"trainfer: {config.name}", version="1", lifespan=lifespan,
                  description="Open Inference Protocol v2 (KServe/Triton) and a simple /predict, for one bundle.")

    if predictor.features.kind == "image":
        # Pixels are checked per request; normalizing runs once per batch (numpy's fixed cost per call,
        # ~10 us, is paid once per batch rather than once per request).
        check, run = predictor.features.inputs.to_uint8, lambda raw: predictor.run(predictor.prepare(raw))
    else:
        check, run = predictor.prepare, predictor.run
    _document(app, schema, bool(config.api_keys))

    async def _predict_rows(rows: Any) -> np.ndarray:
        try:
            x = check(rows)
        except InputError:
            raise
        except TrainferError as exc:
            raise InputError(exc.message) from None
        out = await state["batcher"].submit(x)
        if not math.isfinite(out.sum()):  # one sum: the common all-finite case costs one numpy call
            # A float32 graph overflows on inputs far outside the training range (e.g. 1e38 where
            # training saw 0..16): NaN probabilities would be an answer that means nothing.
            row = int(np.flatnonzero(~np.isfinite(out.reshape(len(out), -1)).all(axis=1))[0])
            raise InputError("the model's output is not a finite number: an input is far outside the "
                             "range seen in training (check the units)", row=row)
        return out

    @app.get("/v2/health/live", tags=["health"])
    async def live() -> dict[str, bool]:
        return {"live": True}

    @app.get("/v2/health/ready", tags=["health"])
    async def ready() -> dict[str, bool]:
        return {"ready": "batcher" in state}

    @app.get("/v2", tags=["v2"], response_model=ServerMetadata)
    async def server_metadata() -> dict[str, Any]:
        from trainfer import __version__

        return {"name": "trainfer", "version": __version__, "extensions": ["binary_tensor_data"]}

    @app.get("/v2/models/{name}", tags=["v2"], response_model=ModelMetadata, response_model_exclude_none=True)
    async def model_metadata(name: str) -> Response:
        if name != config.name:
            return error(404, f"unknown model {name!r}; this server serves {config.name!r}")
        meta = {"name": config.name, "versions": ["1"], "platform": "onnxruntime_onnx",
                "inputs": schema.metadata_inputs, "outputs": schema.outputs}
        if schema.parameters:
            meta["parameters"] = schema.parameters
        return JSONResponse(meta)

    @app.get("/v2/models/{name}/ready", tags=["v2"], response_model=ModelReady)
    async def model_ready(name: str) -> Response:
        if name != config.name:
            return error(404, f"unknown model {name!r}; this server serves {config.name!r}")
        return JSONResponse({"name": name, "ready": "batcher" in state})

    @app.post("/v2/models/{name}/infer", tags=["v2"], response_model=InferResponse, openapi_extra={"requestBody": {
        "required": True, "content": {"application/json": {"schema": {"$ref": _REF + "InferRequest"}},
        "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}})
    async def infer(name: str, request: Request) -> Response:
        # Documents the endpoint; requests for the served model are answered by FastInfer before routing.
        if name != config.name:
            return error(404, f"unknown model {name!r}; this server serves {config.name!r}")
        answer = await infer_response(await request.body(), request.headers.get(HEADER))
        if isinstance(answer, Answer):
            return Response(answer.body, headers={k.decode(): v.decode() for k, v in answer.headers},
                            media_type=answer.content_type.decode())
        return answer

    def failure(exc: Exception) -> JSONResponse:
        """What a prediction raised, as its answer: the same on the v2 hot path and on /predict. Called
        inside the except block, so a 500 logs the traceback."""
        if isinstance(exc, InputError):
            return error(400, exc.message)
        if isinstance(exc, QueueFull):
            return busy()
        if isinstance(exc, Expired):
            return error(504, f"request waited longer than {config.timeout_ms:g} ms for the model")
        log.exception("inference failed")
        return error(500, "inference failed; the server log has the details")

    async def infer_response(body: bytes, header: str | None) -> Answer | JSONResponse:
        try:
            if header is not None and not header.isdigit():
                raise InputError(f"{HEADER} must be a number of bytes")
            rows, req = parse_infer(body, int(header) if header is not None else None, schema)
            out = await _predict_rows(rows)
            payload, head_len = encode_infer(outputs(out, schema), req, config.name, schema)
        except Exception as exc:  # the hot path is outside FastAPI's error handling: answer and keep serving
            return failure(exc)
        if head_len is None:
            return Answer(payload, b"application/json")
        return Answer(payload, b"application/octet-stream", ((_HEADER_KEY, str(head_len).encode()),))

    @app.post("/predict", tags=["simple"], response_model=PredictResponse, openapi_extra={"requestBody": {
        "required": True, "content": {"application/json": {"schema": {"$ref": _REF + "PredictRequest"}}}}})
    async def predict(request: Request) -> Response:
        # The body is read here rather than by FastAPI: a JSON body is taken whatever its Content-Type
        # (curl -d sends application/x-www-form-urlencoded), and errors name the row and column.
        try:
            rows: Any = predict_rows(_predict_json(await request.body(), request.headers.get("content-type")), schema)
            if predictor.features.kind == "image":
                rows = predict_images(rows, predictor.features.inputs.size)
            out = await _predict_rows(rows)
        except StarletteHTTPException:
            raise  # the body's size or time limit: answered by the handler below
        except Exception as exc:
            return failure(exc)
        named = outputs(out, schema)
        if predictor.task == "classification":
            res = {"labels": [_plain(v) for v in named["label"]], "probabilities": named["probabilities"].tolist()}
        else:
            res = {"predictions": named["prediction"].tolist()}
        return JSONResponse(res)

    @app.get("/metrics", tags=["operations"])
    async def prometheus() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.exception_handler(RequestValidationError)
    async def unprocessable(_request: Request, exc: RequestValidationError) -> JSONResponse:
        # 400 with the field named, like every other input error of this server (FastAPI's default is 422)
        errors = exc.errors()
        where = ".".join(str(p) for p in errors[0]["loc"]) if errors else "body"
        msg = errors[0]["msg"] if errors else "invalid request"
        return error(400, f"{where}: {msg}")

    @app.exception_handler(StarletteHTTPException)
    async def httperror(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error(exc.status_code, str(exc.detail), getattr(exc, "headers", None))

    def depth() -> int | None:
        return state["batcher"].depth if "batcher" in state else None

    metrics.queue.set_function(lambda: depth() or 0)  # read at each scrape, not kept up to date per request
    inner = FastInfer(app, f"/v2/models/{config.name}/infer", infer_response, HEADER)
    body_limit = BodyLimit(inner, int(config.max_body_mb * 1024 * 1024), config.max_body_mb, config.body_timeout_s)
    # Outermost: a refused request costs no body reading and no routing.
    return Guard(body_limit, digests(config.api_keys), metrics.request, depth, config.max_queue, access,
                 config.body_timeout_s)


_HEADER_KEY = HEADER.lower().encode()
_REF = "#/components/schemas/"


def _document(app: FastAPI, schema: Schema, keys: bool) -> None:
    """/openapi.json: FastAPI's, with the v2 request schema (the infer endpoint reads its body itself,
    JSON or binary, so FastAPI cannot derive it) and made true to what the server sends (openapi.py).
    Built on the first request for it, not at start-up."""
    default = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            spec = default()
            request = InferRequest.model_json_schema(ref_template=_REF + "{model}")
            schemas = spec.setdefault("components", {}).setdefault("schemas", {})
            schemas.update(request.pop("$defs", {}))
            schemas["InferRequest"] = request
            app.openapi_schema = document(spec, schema, keys)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def _predict_json(body: bytes, content_type: str | None) -> Any:
    try:
        return load_json(body)
    except InputError:
        if content_type and "json" not in content_type.lower():
            raise InputError(f"the body is not JSON (it came as Content-Type: {content_type}); send "
                             '{"rows": [...]} with the header Content-Type: application/json') from None
        raise


def _plain(v: Any) -> Any:
    return v.item() if hasattr(v, "item") else v
