"""The baseline for serve_load.py: the server a user writes in an afternoon, no batching.

FastAPI on uvicorn, one onnxruntime session on the bundle's model.onnx (same session options as
trainfer's Predictor), and one inference per request, inline in the async handler. Preprocessing is
the bundle's own (``trainfer.load(bundle).prepare``), so both servers compute the same tensor. It
speaks the same Open Inference Protocol v2 JSON as ``trainfer serve`` (POST /v2/models/NAME/infer,
GET /v2/health/ready), so one client drives both; no binary extension and no /metrics.

    .venv/bin/python benchmarks/_naive_server.py BUNDLE --port 8001 --threads 1 [--name NAME]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, Request  # at module level: FastAPI resolves the handler's annotations here
from fastapi.responses import JSONResponse, Response

NUMPY = {"FP32": np.float32, "FP64": np.float64, "UINT8": np.uint8, "INT64": np.int64, "INT32": np.int32}


def create_app(bundle: Path, name: str, threads: int) -> Any:
    import trainfer
    from trainfer.runtime import inference_session

    predictor = trainfer.load(bundle, threads=threads)  # for its preprocessing only (numpy)
    # a whole-graph bundle's feed dict of raw inputs (what any runtime takes); an older bundle's tensor
    prepare = predictor.feed if predictor.feeder is not None else predictor.prepare
    labels = np.asarray(predictor.labels)
    session = inference_session(bundle / "model.onnx", threads)  # the same session settings as the bundle's
    input_name = session.get_inputs()[0].name
    app = FastAPI()

    @app.get("/v2/health/ready")
    async def ready() -> dict[str, bool]:
        return {"ready": True}

    @app.post("/v2/models/{model}/infer")
    async def infer(model: str, request: Request) -> Response:
        if model != name:
            return JSONResponse({"error": f"unknown model {model!r}"}, status_code=404)
        try:
            req = json.loads(await request.body())
            t = req["inputs"][0]
            x = np.asarray(t["data"], dtype=NUMPY[t["datatype"]]).reshape(t["shape"])
            feed = prepare(x)
            probs = session.run(["probabilities"], feed if isinstance(feed, dict) else {input_name: feed})[0]
        except (ValueError, KeyError, TypeError, IndexError) as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        label = labels[probs.argmax(axis=1)]
        outs = [{"name": "probabilities", "datatype": "FP32", "shape": list(probs.shape),
                 "data": probs.reshape(-1).tolist()},
                {"name": "label", "datatype": "INT64", "shape": [len(label)], "data": label.tolist()}]
        body = {"model_name": name, "model_version": "1", "id": req.get("id", ""), "outputs": outs}
        return Response(json.dumps(body).encode(), media_type="application/json")

    return app


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundle", type=Path)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8001)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--name", help="model name in the URL (default: the bundle folder's name)")
    ap.add_argument("--no-access-log", action="store_true", help="uvicorn's access log is on by default")
    args = ap.parse_args()

    import uvicorn

    app = create_app(args.bundle, args.name or args.bundle.resolve().name, args.threads)
    uvicorn.run(app, host=args.host, port=args.port, access_log=not args.no_access_log, log_level="info")


if __name__ == "__main__":
    main()
