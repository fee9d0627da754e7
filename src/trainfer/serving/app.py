"""The HTTP server for one bundle: the v2 and /predict endpoints, dynamic batching, API keys, a body
limit and Prometheus metrics (FastAPI for routing and docs, the hot path in asgi.py). Imports the
runtime only: no torch in the server process."""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
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
from trainfer.serving.asgi import AccessLog, Answer, ASGIApp, BodyLimit, FastInfer, Guard, busy, error
from trainfer.serving.batching import Batcher, Expired, QueueFull
from trainfer.serving.protocol import HEADER, Schema, encode_infer, outputs, parse_infer

log = logging.getLogger("trainfer.serving")


@dataclass
class ServeConfig:
    name: str
    max_batch_size: int = 32
    max_delay_ms: float = 0.0
    max_queue: int = 256
    timeout_ms: float = 1000.0
    max_body_mb: float = 8.0
    api_keys: tuple[str, ...] = ()
    access_log: bool = True
    offload: str = "auto"  # the batcher's: run batches in a thread, inline on the event loop, or choose


def read_api_keys(path: str | Path) -> tuple[str, ...]:
    """One key per line; blank lines and # comments ignored."""
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as exc:
        raise TrainferError(f"cannot read --api-key-file {path}: {exc.strerror}") from None
    keys = tuple(s.strip() for s in lines if s.strip() and not s.strip().startswith("#"))
    if not keys:
        raise TrainferError(f"--api-key-file {path} holds no key", hint="put one key per line")
    return keys


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


class PredictRequest(BaseModel):
    rows: list[dict[str, Any]] = Field(..., min_length=1, description="rows of named raw features")


class PredictResponse(BaseModel):
    labels: list[Any] | None = None
    probabilities: list[list[float]] | None = None
    predictions: list[float] | None = None


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
    schema = Schema(predictor.features, predictor.labels, predictor.task)
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
    _document_infer_request(app)

    if predictor.features.kind == "image":
        # Pixels are checked per request; normalizing runs once per batch (numpy's fixed cost per call,
        # ~10 us, is paid once per batch rather than once per request).
        check, run = predictor.features.inputs.to_uint8, lambda raw: predictor.run(predictor.prepare(raw))
    else:
        check, run = predictor.prepare, predictor.run

    async def _predict_rows(rows: Any) -> np.ndarray:
        try:
            x = check(rows)
        except InputError:
            raise
        except TrainferError as exc:
            raise InputError(exc.message) from None
        return await state["batcher"].submit(x)

    @app.get("/v2/health/live", tags=["health"])
    async def live() -> dict[str, bool]:
        return {"live": True}

    @app.get("/v2/health/ready", tags=["health"])
    async def ready() -> dict[str, bool]:
        return {"ready": "batcher" in state}

    @app.get("/v2", tags=["v2"])
    async def server_metadata() -> dict[str, Any]:
        from trainfer import __version__

        return {"name": "trainfer", "version": __version__, "extensions": ["binary_tensor_data"]}

    @app.get("/v2/models/{name}", tags=["v2"])
    async def model_metadata(name: str) -> Response:
        if name != config.name:
            return error(404, f"unknown model {name!r}; this server serves {config.name!r}")
        return JSONResponse({"name": config.name, "versions": ["1"], "platform": "onnxruntime_onnx",
                             "inputs": schema.inputs, "outputs": schema.outputs})

    @app.get("/v2/models/{name}/ready", tags=["v2"])
    async def model_ready(name: str) -> Response:
        if name != config.name:
            return error(404, f"unknown model {name!r}; this server serves {config.name!r}")
        return JSONResponse({"name": name, "ready": "batcher" in state})

    @app.post("/v2/models/{name}/infer", tags=["v2"], openapi_extra={"requestBody": {"required": True, "content": {
        "application/json": {"schema": {"$ref": "#/components/schemas/InferRequest"}},
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

    async def infer_response(body: bytes, header: str | None) -> Answer | JSONResponse:
        try:
            if header is not None and not header.isdigit():
                raise InputError(f"{HEADER} must be a number of bytes")
            rows, req = parse_infer(body, int(header) if header is not None else None, schema)
            out = await _predict_rows(rows)
            payload, head_len = encode_infer(outputs(out, schema), req, config.name, schema)
        except InputError as exc:
            return error(400, exc.message)
        except QueueFull:
            return busy()
        except Expired:
            return error(504, f"request waited longer than {config.timeout_ms:g} ms for the model")
        except Exception:  # the hot path is outside FastAPI's error handling: answer 500 and keep serving
            log.exception("inference failed")
            return error(500, "inference failed; the server log has the details")
        if head_len is None:
            return Answer(payload, b"application/json")
        return Answer(payload, b"application/octet-stream", ((_HEADER_KEY, str(head_len).encode()),))

    @app.post("/predict", tags=["simple"], response_model=PredictResponse)
    async def predict(body: PredictRequest) -> Response:
        try:
            rows: Any = body.rows
            if predictor.features.kind == "image":
                rows = np.asarray([r.get("image") for r in body.rows], dtype=np.float64)
            out = await _predict_rows(rows)
        except InputError as exc:
            return error(400, exc.message)
        except (ValueError, TypeError):
            return error(400, "each row needs an 'image' field holding a height x width x 3 array of 0..255")
        except QueueFull:
            return busy()
        except Expired:
            return error(504, f"request waited longer than {config.timeout_ms:g} ms for the model")
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
    body_limit = BodyLimit(inner, int(config.max_body_mb * 1024 * 1024), config.max_body_mb)
    # Outermost: a refused request costs no body reading and no routing.
    return Guard(body_limit, [k.encode() for k in config.api_keys], metrics.request, depth, config.max_queue, access)


_HEADER_KEY = HEADER.lower().encode()


def _document_infer_request(app: FastAPI) -> None:
    """Put the v2 request schema (and the models it refers to) into the OpenAPI components, since the
    infer endpoint reads its body itself (JSON or binary) and FastAPI cannot derive it."""
    default = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            spec = default()
            request = InferRequest.model_json_schema(ref_template="#/components/schemas/{model}")
            schemas = spec.setdefault("components", {}).setdefault("schemas", {})
            schemas.update(request.pop("$defs", {}))
            schemas["InferRequest"] = request
            app.openapi_schema = spec
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def _plain(v: Any) -> Any:
    return v.item() if hasattr(v, "item") else v
