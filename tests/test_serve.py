"""`trainfer serve` end to end (issue 6): a real uvicorn process on loopback, Triton's own client in JSON
and binary mode, schemathesis on the OpenAPI document, overload (503 fast, bounded latency and memory),
API keys, the body limit, input errors, metrics, no torch in the server, and a graceful SIGTERM.

Every server is a subprocess on 127.0.0.1 and a free port (see _serve_fixtures.py), stopped by the
fixture that started it. Load tests are bounded in requests and seconds.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import signal
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from _inference_fixtures import get_run, make_animals
from _serve_fixtures import Server, free_port, heavy_cnn_bundle, raw_post, running_server

import trainfer

HEADER = "Inference-Header-Content-Length"
FEATURES = ["x1", "colour", "x2"]  # the animals table's feature columns, in the bundle's order


# ---- bundles, reference predictors, inputs ------------------------------------------------------

@pytest.fixture(scope="module")
def digits_model(digits_bundle: Path):
    return trainfer.load(digits_bundle)


@pytest.fixture(scope="module")
def animals_model(csv_bundle: Path):
    return trainfer.load(csv_bundle)


@pytest.fixture(scope="module")
def shapes_model(cnn_bundle: Path):
    return trainfer.load(cnn_bundle)


@pytest.fixture(scope="module")
def digits_X(tmp_path_factory: pytest.TempPathFactory) -> np.ndarray:
    """Twelve test rows, already float32: the server sees exactly the values the reference sees."""
    X, _ = get_run(tmp_path_factory, "digits").load_split("test")
    return X.to_numpy(dtype=np.float32)[:12]


@pytest.fixture(scope="module")
def animals_rows():
    """Complete rows of the animals table (numbers rounded to float32, as FP32 tensors carry them)."""
    frame = make_animals(seed=1)[FEATURES].dropna().head(12).reset_index(drop=True)
    for col in ("x1", "x2"):
        frame[col] = frame[col].astype(np.float32).astype(np.float64)
    assert set(frame["colour"]) == {"red", "green", "blue"}
    return frame


@pytest.fixture(scope="module")
def shapes_X(tmp_path_factory: pytest.TempPathFactory) -> np.ndarray:
    X, _ = get_run(tmp_path_factory, "cnn").load_split("test")
    assert X.dtype == np.uint8 and X.shape[1:] == (16, 16, 3)
    return X[:8]


# ---- servers ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def digits_server(digits_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with running_server(digits_bundle, ["--name", "digits"], tmp_path_factory.mktemp("serve-digits")) as s:
        yield s


@pytest.fixture(scope="module")
def csv_server(csv_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with running_server(csv_bundle, ["--name", "animals"], tmp_path_factory.mktemp("serve-csv")) as s:
        yield s


@pytest.fixture(scope="module")
def cnn_server(cnn_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with running_server(cnn_bundle, ["--name", "shapes"], tmp_path_factory.mktemp("serve-cnn")) as s:
        yield s


KEYS = ("k-3f9a1c-first", "k-77b2e0-second")


@pytest.fixture(scope="module")
def guarded_server(digits_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """API keys and a 0.001 MB (1048 byte) body limit."""
    workdir = tmp_path_factory.mktemp("serve-guarded")
    keyfile = workdir / "keys.txt"
    keyfile.write_text(f"# serving keys\n{KEYS[0]}\n\n  {KEYS[1]}  \n")
    args = ["--name", "digits", "--api-key-file", str(keyfile), "--max-body-mb", "0.001"]
    with running_server(digits_bundle, args, workdir) as s:
        yield s


@pytest.fixture
def triton_client(request: pytest.FixtureRequest) -> Iterator[Any]:
    """A tritonclient.http client for the server fixture named by the test's ``server`` parameter."""
    server: Server = request.getfixturevalue(request.param)
    client = triton.InferenceServerClient(url=f"127.0.0.1:{server.port}", network_timeout=30)
    try:
        yield client
    finally:
        client.close()


# ---- request helpers ----------------------------------------------------------------------------

def _bytes_blob(arr: np.ndarray) -> bytes:
    return b"".join(struct.pack("<I", len(b)) + b for b in (str(v).encode() for v in arr.reshape(-1)))


def binary_request(tensors: list[tuple[str, str, np.ndarray]], binary_outputs: bool = True,
                   outputs: list[dict] | None = None) -> tuple[bytes, dict[str, str]]:
    """A v2 request with every input in the binary section: (body, headers)."""
    inputs, blobs = [], []
    for name, dtype, arr in tensors:
        blob = _bytes_blob(arr) if dtype == "BYTES" else np.ascontiguousarray(arr).tobytes()
        inputs.append({"name": name, "datatype": dtype, "shape": list(arr.shape),
                       "parameters": {"binary_data_size": len(blob)}})
        blobs.append(blob)
    req: dict[str, Any] = {"inputs": inputs, "parameters": {"binary_data_output": binary_outputs}}
    if outputs is not None:
        req["outputs"] = outputs
    head = json.dumps(req).encode()
    return head + b"".join(blobs), {HEADER: str(len(head)), "Content-Type": "application/octet-stream"}


def json_request(name: str, dtype: str, shape: list[int], data: Any) -> bytes:
    # json.dumps writes NaN/Infinity literals, as a careless client would
    return json.dumps({"inputs": [{"name": name, "datatype": dtype, "shape": shape, "data": data}]}).encode()


def parse_binary_response(r: httpx.Response) -> dict[str, np.ndarray]:
    head_len = int(r.headers[HEADER])
    head = json.loads(r.content[:head_len])
    out, pos = {}, head_len
    for o in head["outputs"]:
        size = o["parameters"]["binary_data_size"]
        raw = r.content[pos:pos + size]
        pos += size
        if o["datatype"] == "BYTES":
            vals, i = [], 0
            while i < len(raw):
                (n,) = struct.unpack_from("<I", raw, i)
                vals.append(raw[i + 4:i + 4 + n].decode())
                i += 4 + n
            out[o["name"]] = np.asarray(vals, dtype=object).reshape(o["shape"])
        else:
            dt = {"FP32": "<f4", "INT64": "<i8", "FP64": "<f8"}[o["datatype"]]
            out[o["name"]] = np.frombuffer(raw, dtype=dt).reshape(o["shape"])
    assert pos == len(r.content)
    return out


def parse_json_response(r: httpx.Response) -> dict[str, np.ndarray]:
    return {o["name"]: np.asarray(o["data"]).reshape(o["shape"]) for o in r.json()["outputs"]}


def _text(values: Any) -> list[str]:
    return [v.decode() if isinstance(v, bytes) else str(v) for v in np.asarray(values).reshape(-1)]


def assert_error(r: httpx.Response, status: int, *mentions: str) -> str:
    assert r.status_code == status, f"expected {status}, got {r.status_code}: {r.text[:500]}"
    assert r.headers["content-type"].startswith("application/json"), r.headers
    body = r.json()
    assert set(body) == {"error"} and isinstance(body["error"], str) and body["error"], body
    for word in mentions:
        assert word.lower() in body["error"].lower(), f"the error should mention {word!r}: {body['error']}"
    return body["error"]


# ---- 1. metadata, docs, OpenAPI -----------------------------------------------------------------

def test_health_and_metadata_endpoints(digits_server: Server, digits_model) -> None:
    with httpx.Client(base_url=digits_server.url, timeout=10) as c:
        assert c.get("/v2/health/live").json() == {"live": True}
        assert c.get("/v2/health/ready").json() == {"ready": True}
        meta = c.get("/v2").json()
        assert meta["name"] == "trainfer" and meta["version"] == trainfer.__version__
        assert "binary_tensor_data" in meta["extensions"]
        model = c.get("/v2/models/digits")
        assert model.status_code == 200
        assert "server" not in model.headers, "the server should not advertise its software"
        m = model.json()
        assert m["name"] == "digits" and m["versions"] == ["1"] and m["platform"] == "onnxruntime_onnx"
        # the whole graph's raw inputs (issue 14): one FP32 tensor per column, as a stock client reads them
        assert m["inputs"] == [{"name": c, "datatype": "FP32", "shape": [-1, 1]}
                               for c in digits_model.features.inputs.column_names]
        # one tensor of 64 numbers ("input") is taken too: which is which, in the order the tensor takes them
        assert m["parameters"]["columns"] == digits_model.features.inputs.column_names
        assert m["parameters"]["columns"][:2] == ["pixel_0_0", "pixel_0_1"] and len(m["parameters"]["columns"]) == 64
        assert m["outputs"] == [{"name": "probabilities", "datatype": "FP32", "shape": [-1, len(digits_model.labels)]},
                                {"name": "label", "datatype": "INT64", "shape": [-1]}]
        assert c.get("/v2/models/digits/ready").json() == {"name": "digits", "ready": True}
        for path in ("/v2/models/nope", "/v2/models/nope/ready"):
            assert_error(c.get(path), 404, "nope", "digits")
        assert_error(c.post("/v2/models/nope/infer", content=json_request("input", "FP32", [1, 64], [0] * 64)),
                     404, "nope")


@pytest.mark.parametrize("triton_client", ["digits_server"], indirect=True)
def test_tritonclient_metadata_calls(triton_client) -> None:
    assert triton_client.is_server_live() and triton_client.is_server_ready()
    assert triton_client.is_model_ready("digits")
    assert triton_client.get_server_metadata()["name"] == "trainfer"
    meta = triton_client.get_model_metadata("digits")
    assert [i["name"] for i in meta["inputs"]][:2] == ["pixel_0_0", "pixel_0_1"] and len(meta["inputs"]) == 64
    assert [o["name"] for o in meta["outputs"]] == ["probabilities", "label"]


def test_docs_and_openapi(digits_server: Server) -> None:
    with httpx.Client(base_url=digits_server.url, timeout=10) as c:
        docs = c.get("/docs")
        assert docs.status_code == 200 and "text/html" in docs.headers["content-type"]
        assert "swagger" in docs.text.lower() and "/openapi.json" in docs.text
        spec = c.get("/openapi.json")
        assert spec.status_code == 200
        doc = spec.json()
    assert doc["openapi"].startswith("3.")
    assert {"/v2/health/live", "/v2/health/ready", "/v2", "/v2/models/{name}", "/v2/models/{name}/ready",
            "/v2/models/{name}/infer", "/predict", "/metrics"} <= set(doc["paths"])
    body = doc["paths"]["/v2/models/{name}/infer"]["post"]["requestBody"]
    assert body["required"] is True
    assert {"application/json", "application/octet-stream"} <= set(body["content"])


def test_openapi_documents_what_the_server_sends(digits_server: Server, guarded_server: Server,
                                                 digits_model) -> None:
    doc = httpx.get(f"{digits_server.url}/openapi.json", timeout=10).json()
    codes = {(path, method): set(op["responses"]) for path, ops in doc["paths"].items() for method, op in ops.items()}
    assert not any("422" in c for c in codes.values()), "FastAPI's 422 is never sent by this server"
    assert codes[("/v2/models/{name}/infer", "post")] == {"200", "400", "404", "408", "413", "500", "503", "504"}
    assert codes[("/predict", "post")] == {"200", "400", "408", "413", "500", "503", "504"}
    assert codes[("/v2/models/{name}", "get")] == {"200", "404"}
    assert codes[("/v2/health/live", "get")] == {"200"}
    assert set(doc["paths"]["/metrics"]["get"]["responses"]["200"]["content"]) == {"text/plain"}
    busy = doc["paths"]["/predict"]["post"]["responses"]["503"]
    assert busy["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Error"}
    assert "Retry-After" in busy["headers"]
    # the /predict body is this model's: its columns, and the numbers the server takes
    row = doc["components"]["schemas"]["PredictRequest"]["properties"]["rows"]["items"]
    assert row["required"] == digits_model.features.inputs.column_names
    number = row["properties"]["pixel_3_4"]["anyOf"][0]
    lo, hi = number["minimum"], number["maximum"]
    names = digits_model.features.inputs.column_names
    with httpx.Client(base_url=digits_server.url, timeout=10) as c:
        for value, status in ((hi, 200), (lo, 200), (np.nextafter(hi, np.inf), 400), (np.nextafter(lo, -np.inf), 400)):
            r = c.post("/predict", json={"rows": [{**dict.fromkeys(names, 0.0), "pixel_3_4": float(value)}]})
            assert r.status_code == status, (value, r.text)
    # with API keys: every route but health says so
    guarded = httpx.get(f"{guarded_server.url}/openapi.json", timeout=10,
                        headers={"Authorization": f"Bearer {KEYS[0]}"}).json()
    assert guarded["components"]["securitySchemes"] == {"apiKey": {"type": "http", "scheme": "bearer"}}
    for path, ops in guarded["paths"].items():
        for op in ops.values():
            assert ("401" in op["responses"]) != path.startswith("/v2/health"), path


def _refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        if isinstance(node.get("$ref"), str):
            yield node["$ref"]
        for v in node.values():
            yield from _refs(v)
    elif isinstance(node, list):
        for v in node:
            yield from _refs(v)


def _resolve(doc: dict, ref: str) -> bool:
    node: Any = doc
    for part in ref.removeprefix("#/").split("/"):
        part = part.replace("~1", "/").replace("~0", "~")
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def test_every_openapi_ref_resolves(digits_server: Server) -> None:
    """A dangling $ref makes the JSON body of /infer unusable to OpenAPI tools (schemathesis drops it)."""
    doc = httpx.get(f"{digits_server.url}/openapi.json", timeout=10).json()
    dangling = sorted({r for r in _refs(doc) if r.startswith("#/") and not _resolve(doc, r)})
    assert not dangling, f"/openapi.json refers to schemas it does not define: {dangling}"


# ---- 1. Triton's client and /predict agree with trainfer.load(bundle) ----------------------------

def _triton_infer(client: Any, model: str, tensors: list[tuple[str, str, np.ndarray]], binary: bool,
                  outputs: tuple[str, ...] = ("probabilities", "label")) -> Any:
    inputs = []
    for name, dtype, arr in tensors:
        i = triton.InferInput(name, list(arr.shape), dtype)
        i.set_data_from_numpy(arr, binary_data=binary)
        inputs.append(i)
    wanted = [triton.InferRequestedOutput(o, binary_data=binary) for o in outputs]
    return client.infer(model, inputs, outputs=wanted)


@pytest.mark.parametrize("triton_client", ["digits_server"], indirect=True)
@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_tritonclient_digits_matches_the_bundle(triton_client, binary: bool, digits_model, digits_X) -> None:
    res = _triton_infer(triton_client, "digits", [("input", "FP32", digits_X)], binary)
    proba = res.as_numpy("probabilities")
    assert proba.shape == (len(digits_X), len(digits_model.labels)) and proba.dtype == np.float32
    np.testing.assert_allclose(proba, digits_model.predict_proba(digits_X), rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(res.as_numpy("label"), digits_model.predict(digits_X).astype(np.int64))
    assert len(set(res.as_numpy("label").tolist())) > 1, "pick rows with different predictions"


def _column_tensors(meta: dict, frame) -> list[tuple[str, str, np.ndarray]]:
    tensors = []
    for spec in meta["inputs"]:
        col = frame[spec["name"]]
        if spec["datatype"] == "BYTES":
            arr = np.asarray([str(v) for v in col], dtype=object).reshape(-1, 1)
        else:
            assert spec["datatype"] == "FP32"
            arr = col.to_numpy(dtype=np.float32).reshape(-1, 1)
        tensors.append((spec["name"], spec["datatype"], arr))
    return tensors


@pytest.mark.parametrize("triton_client", ["csv_server"], indirect=True)
@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_tritonclient_table_with_strings_one_input_per_column(triton_client, binary: bool, animals_model,
                                                             animals_rows) -> None:
    meta = triton_client.get_model_metadata("animals")
    assert [(i["name"], i["datatype"]) for i in meta["inputs"]] == [("x1", "FP32"), ("colour", "BYTES"),
                                                                     ("x2", "FP32")]
    assert {o["name"]: o["datatype"] for o in meta["outputs"]} == {"probabilities": "FP32", "label": "BYTES"}
    res = _triton_infer(triton_client, "animals", _column_tensors(meta, animals_rows), binary)
    np.testing.assert_allclose(res.as_numpy("probabilities"), animals_model.predict_proba(animals_rows),
                               rtol=1e-5, atol=1e-6)
    assert _text(res.as_numpy("label")) == list(animals_model.predict(animals_rows))


@pytest.mark.parametrize("triton_client", ["cnn_server"], indirect=True)
def test_tritonclient_images_binary(triton_client, shapes_model, shapes_X) -> None:
    meta = triton_client.get_model_metadata("shapes")
    assert meta["inputs"] == [{"name": "image", "datatype": "UINT8", "shape": [-1, -1, -1, 3]}]
    for name in ("image", "input"):  # the raw input the metadata lists, and the tensor clients sent before
        res = _triton_infer(triton_client, "shapes", [(name, "UINT8", shapes_X)], binary=True)
        np.testing.assert_allclose(res.as_numpy("probabilities"), shapes_model.predict_proba(shapes_X),
                                   rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(res.as_numpy("label"), shapes_model.predict(shapes_X).astype(np.int64))
    # images of another size: resized as the bundle resizes them
    big = np.repeat(np.repeat(shapes_X[:4], 2, axis=1), 3, axis=2)  # 32 x 48
    res = _triton_infer(triton_client, "shapes", [("image", "UINT8", big)], binary=True)
    np.testing.assert_array_equal(res.as_numpy("label"), shapes_model.predict(big).astype(np.int64))


@pytest.mark.parametrize("triton_client", ["digits_server"], indirect=True)
def test_tritonclient_sends_raw_columns_the_metadata_lists(triton_client, digits_model, digits_X) -> None:
    """A stock client reads the metadata and sends one tensor per raw column (issue 14); NaN is a missing value."""
    meta = triton_client.get_model_metadata("digits")
    X = digits_X.copy()
    X[0, 5] = np.nan
    tensors = [(i["name"], i["datatype"], X[:, k:k + 1].astype(np.float32)) for k, i in enumerate(meta["inputs"])]
    res = _triton_infer(triton_client, "digits", tensors, binary=True)
    np.testing.assert_allclose(res.as_numpy("probabilities"), digits_model.predict_proba(X), rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(res.as_numpy("label"), digits_model.predict(X).astype(np.int64))


def test_json_images_flat_or_nested_match_the_bundle_and_out_of_range_pixels_are_400(cnn_server: Server,
                                                                                    shapes_model, shapes_X) -> None:
    url = f"{cnn_server.url}/v2/models/shapes/infer"
    x = shapes_X[:2]
    want = shapes_model.predict_proba(x)
    for data in (x.reshape(-1).tolist(), x.tolist()):  # flat, as tritonclient sends it, and nested
        r = httpx.post(url, content=json_request("input", "UINT8", list(x.shape), data), timeout=10)
        assert r.status_code == 200, r.text
        np.testing.assert_allclose(parse_json_response(r)["probabilities"], want, rtol=1e-5, atol=1e-6)
    flat = x.reshape(-1).tolist()
    for i, bad in ((5, 256), (7, -1), (9, 1.5)):  # would wrap or truncate silently as uint8
        data = [*flat[:i], bad, *flat[i + 1:]]
        r = httpx.post(url, content=json_request("input", "UINT8", list(x.shape), data), timeout=10)
        assert_error(r, 400, "input", f"index {i}", "UINT8")


@pytest.mark.parametrize("triton_client", ["digits_server"], indirect=True)
def test_tritonclient_can_ask_for_one_output(triton_client, digits_model, digits_X) -> None:
    res = _triton_infer(triton_client, "digits", [("input", "FP32", digits_X[:3])], True, outputs=("label",))
    assert res.as_numpy("probabilities") is None
    np.testing.assert_array_equal(res.as_numpy("label"), digits_model.predict(digits_X[:3]).astype(np.int64))


def test_binary_request_with_json_outputs(digits_server: Server, digits_model, digits_X) -> None:
    body, headers = binary_request([("input", "FP32", digits_X)], binary_outputs=False)
    r = httpx.post(f"{digits_server.url}/v2/models/digits/infer", content=body, headers=headers, timeout=10)
    assert r.status_code == 200 and HEADER not in r.headers
    out = parse_json_response(r)
    np.testing.assert_allclose(out["probabilities"], digits_model.predict_proba(digits_X), rtol=1e-6, atol=1e-7)


def test_predict_rows_of_named_features(digits_server: Server, csv_server: Server, digits_model, digits_X,
                                        animals_model, animals_rows) -> None:
    names = digits_model.features.inputs.column_names
    rows = [dict(zip(names, map(float, x), strict=True)) for x in digits_X]
    r = httpx.post(f"{digits_server.url}/predict", json={"rows": rows}, timeout=10)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["labels"] == digits_model.predict(digits_X).tolist()
    np.testing.assert_allclose(body["probabilities"], digits_model.predict_proba(digits_X), rtol=1e-6, atol=1e-7)

    rows = animals_rows.to_dict(orient="records")
    r = httpx.post(f"{csv_server.url}/predict", json={"rows": rows}, timeout=10)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["labels"] == list(animals_model.predict(animals_rows))
    np.testing.assert_allclose(body["probabilities"], animals_model.predict_proba(animals_rows), rtol=1e-5, atol=1e-6)
    # rows may leave a value out (missing is imputed) like the Python API
    r = httpx.post(f"{csv_server.url}/predict", json={"rows": [{"x1": 0.3, "colour": None, "x2": 1.0}]}, timeout=10)
    assert r.status_code == 200, r.text
    assert r.json()["labels"] == list(animals_model.predict([{"x1": 0.3, "colour": None, "x2": 1.0}]))


def test_predict_images(cnn_server: Server, shapes_model, shapes_X) -> None:
    rows = [{"image": img.tolist()} for img in shapes_X[:3]]
    r = httpx.post(f"{cnn_server.url}/predict", json={"rows": rows}, timeout=10)
    assert r.status_code == 200, r.text
    assert r.json()["labels"] == shapes_model.predict(shapes_X[:3]).tolist()
    np.testing.assert_allclose(r.json()["probabilities"], shapes_model.predict_proba(shapes_X[:3]),
                               rtol=1e-5, atol=1e-6)
    assert_error(httpx.post(f"{cnn_server.url}/predict", json={"rows": [{"image": [[1, 2], [3]]}]}, timeout=10),
                 400, "image")


# ---- 2. schemathesis: no 5xx for anything the OpenAPI document allows (or nearly allows) ---------

# Every check schemathesis has ("--checks all"): no 5xx, every status, content type, header and body
# as documented, schema-valid bodies accepted and invalid ones refused, unsupported methods 405 with
# Allow. One exception, with its reason: whether a v2 tensor's data fits its shape is beyond JSON
# Schema, so a schema-valid infer body is a 400 unless the generator happens to match them.
SCHEMATHESIS_CONFIG = """
[parameters]
"path.name" = "{name}"

[checks]
enabled = true

[[operations]]
include-path = "/v2/models/{{name}}/infer"
include-method = "POST"
checks.positive_data_acceptance.enabled = false
"""


@pytest.mark.parametrize("server, name", [("digits_server", "digits"), ("csv_server", "animals"),
                                          ("cnn_server", "shapes")])
def test_schemathesis_all_checks_pass(server: str, name: str, request: pytest.FixtureRequest,
                                      tmp_path: Path) -> None:
    import subprocess
    import sys

    s: Server = request.getfixturevalue(server)
    config = tmp_path / "schemathesis.toml"
    config.write_text(SCHEMATHESIS_CONFIG.format(name=name))
    st = Path(sys.executable).parent / "st"
    started = time.monotonic()
    run = subprocess.run([str(st), "--config-file", str(config), "run", f"{s.url}/openapi.json",
                          "--max-examples", "30", "--seed", "1", "--no-color"],
                         capture_output=True, text=True, timeout=170, cwd=tmp_path)
    elapsed = time.monotonic() - started
    tail = run.stdout[-6000:] + run.stderr[-2000:]
    summary = re.search(r"(\d+) generated, (\d+) passed", run.stdout)
    print(f"schemathesis --checks all on {name}: {summary.group(0) if summary else tail[-300:]} in {elapsed:.0f} s")
    assert run.returncode == 0 and summary, tail
    assert int(summary.group(1)) > 300, tail  # it really generated requests for every operation
    assert elapsed < 150, f"schemathesis took {elapsed:.0f} s"
    assert s.proc is not None and s.proc.poll() is None, "the server crashed"
    assert "Traceback" not in s.log(), s.log()[-3000:]


# ---- 4. input errors: 400 with {"error": ...} naming the field ------------------------------------

ROW = [0.0] * 64


def _bad_requests() -> list[Any]:
    inf_bin = np.zeros((2, 64), dtype=np.float32)
    inf_bin[1, 3] = np.inf
    j = "application/json"
    cases = [
        ("not-json", b"{'inputs': [", j, ["json"]),
        ("json-array", b"[1, 2]", j, ["inputs"]),
        ("no-inputs", b'{"inputs": []}', j, ["inputs"]),
        ("wrong-shape", json_request("input", "FP32", [1, 63], ROW[:63]), j, ["shape", "64"]),
        ("shape-3d", json_request("input", "FP32", [1, 8, 8], ROW), j, ["shape"]),
        ("shape-data-mismatch", json_request("input", "FP32", [2, 64], ROW), j, ["shape", "128"]),
        ("negative-shape", json_request("input", "FP32", [-1, 64], ROW), j, ["shape"]),
        ("infinity-json", json_request("input", "FP32", [1, 64], [float("inf"), *ROW[1:]]), j, ["input", "finite"]),
        ("overflow-fp32", json_request("input", "FP32", [1, 64], [1e300, *ROW[1:]]), j, ["input", "finite"]),
        ("text-in-data", json_request("input", "FP32", [1, 64], ["abc", *ROW[1:]]), j, ["input"]),
        ("infinity-string", json_request("input", "FP32", [1, 64], ["Infinity", *ROW[1:]]), j, ["input"]),
        ("list-in-data", json_request("input", "FP32", [1, 64], [[1, [2]], *ROW[2:]]), j, ["input"]),
        ("nan-in-an-integer-tensor", json_request("input", "INT32", [1, 64], [None, *ROW[1:]]), j, ["input", "INT32"]),
        ("far-outside-training", json_request("input", "FP32", [1, 64], [*ROW[:9], 1e38, *ROW[10:]]), j,
         ["pixel_1_1", "standard deviations"]),
        ("ragged-data", json_request("input", "FP32", [2, 2], [[1, 2], [3]]), j, ["input"]),
        ("unknown-input-name", json_request("pixels", "FP32", [1, 64], ROW), j, ["input"]),
        ("unsupported-datatype", json_request("input", "FP99", [1, 64], ROW), j, ["datatype", "FP99"]),
        ("bytes-for-fp32", json_request("input", "BYTES", [1, 64], ["x"] * 64), j, ["pixel_0_0"]),
        ("no-data", json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 64]}]}).encode(),
         j, ["input", "data"]),
        ("no-name", json.dumps({"inputs": [{"datatype": "FP32", "shape": [1, 64], "data": ROW}]}).encode(),
         j, ["name"]),
        ("unknown-output", json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 64],
                                                   "data": ROW}], "outputs": [{"name": "logits"}]}).encode(),
         j, ["logits"]),
    ]
    body, headers = binary_request([("input", "FP32", inf_bin)])
    cases.append(("inf-binary", body, headers, ["input", "finite"]))
    body, headers = binary_request([("input", "FP64", np.zeros((1, 64)))])
    headers = dict(headers)
    body = body.replace(b'"FP64"', b'"FP32"')  # 512 bytes declared FP32: twice what the shape needs
    cases.append(("wrong-datatype-binary", body, headers, ["input", "bytes"]))
    body, headers = binary_request([("input", "FP32", np.zeros((1, 64), np.float32))])
    cases.append(("binary-section-too-short", body[:-4], headers, ["binary_data_size"]))
    cases.append(("binary-section-too-long", body + b"\0\0\0\0", headers, ["binary"]))
    cases.append(("header-past-the-body", body, {**headers, HEADER: str(len(body) + 1)}, [HEADER]))
    cases.append(("header-not-a-number", body, {**headers, HEADER: "ten"}, [HEADER]))
    return [pytest.param(b, h, m, id=i) for i, b, h, m in cases]


@pytest.mark.parametrize(("body", "headers", "mentions"), _bad_requests())
def test_bad_infer_requests_are_400_naming_the_problem(digits_server: Server, body: bytes, headers: Any,
                                                       mentions: list[str]) -> None:
    if isinstance(headers, str):
        headers = {"Content-Type": headers}
    r = httpx.post(f"{digits_server.url}/v2/models/digits/infer", content=body, headers=headers, timeout=10)
    assert_error(r, 400, *mentions)


def _valid(**extra: Any) -> dict[str, Any]:
    return {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 64], "data": ROW}], **extra}


@pytest.mark.parametrize("req", [
    pytest.param({"inputs": [{**_valid()["inputs"][0], "parameters": "binary"}]}, id="tensor-parameters-string"),
    pytest.param({"inputs": [{**_valid()["inputs"][0], "parameters": [1]}]}, id="tensor-parameters-list"),
    pytest.param(_valid(parameters=[1]), id="request-parameters-list"),
    pytest.param(_valid(parameters="binary_data_output"), id="request-parameters-string"),
    pytest.param(_valid(outputs=[{"name": "label", "parameters": "binary_data"}]), id="output-parameters-string"),
    pytest.param(_valid(outputs="label"), id="outputs-string"),
    pytest.param(_valid(outputs=[["label"]]), id="output-not-an-object"),
    pytest.param({"inputs": [{**_valid()["inputs"][0], "parameters": {"binary_data_size": True}}]},
                 id="binary-size-boolean"),
    pytest.param({"inputs": [{**_valid()["inputs"][0], "shape": [True, 64]}]}, id="shape-boolean"),
    pytest.param({"inputs": [{**_valid()["inputs"][0], "datatype": None}]}, id="datatype-null"),
    pytest.param({"inputs": [{**_valid()["inputs"][0], "name": 7}]}, id="name-number"),
    pytest.param({"inputs": ["input"]}, id="input-not-an-object"),
    pytest.param(_valid(id=10**30), id="id-a-huge-number"),
    pytest.param(_valid(id={"a": 1}), id="id-an-object"),
])
def test_malformed_v2_fields_are_400_not_500(digits_server: Server, req: dict) -> None:
    """Anything a client can put in the JSON header is a 400 with the field named, never a 500."""
    r = httpx.post(f"{digits_server.url}/v2/models/digits/infer", json=req, timeout=10)
    assert_error(r, 400)


def test_an_unknown_input_next_to_the_right_one_is_rejected(digits_server: Server) -> None:
    """A misspelt or extra input is an error (as in Triton), not silently ignored."""
    req = _valid()
    req["inputs"].append({"name": "inputt", "datatype": "FP32", "shape": [1, 64], "data": ROW})
    r = httpx.post(f"{digits_server.url}/v2/models/digits/infer", json=req, timeout=10)
    assert_error(r, 400, "inputt")


def test_empty_batch_is_answered(digits_server: Server) -> None:
    r = httpx.post(f"{digits_server.url}/v2/models/digits/infer", content=json_request("input", "FP32", [0, 64], []),
                   timeout=10)
    assert r.status_code in (200, 400), r.text
    if r.status_code == 200:
        assert parse_json_response(r)["probabilities"].shape == (0, 10)


def test_bad_per_column_requests(csv_server: Server) -> None:
    url = f"{csv_server.url}/v2/models/animals/infer"

    def col(name: str, dtype: str, data: list, shape: list[int] | None = None) -> dict:
        return {"name": name, "datatype": dtype, "shape": shape or [len(data), 1], "data": data}

    good = [col("x1", "FP32", [0.5]), col("colour", "BYTES", ["red"]), col("x2", "FP32", [0.1])]
    assert httpx.post(url, json={"inputs": good}, timeout=10).status_code == 200
    assert_error(httpx.post(url, json={"inputs": [good[0], good[2]]}, timeout=10), 400, "colour")
    assert_error(httpx.post(url, json={"inputs": [col("x1", "FP32", [0.5, 1.0]), *good[1:]]}, timeout=10),
                 400, "colour", "rows")
    assert_error(httpx.post(url, json={"inputs": [col("x1", "BYTES", ["abc"]), *good[1:]]}, timeout=10),
                 400, "x1", "abc")
    inf = json.dumps({"inputs": [col("x1", "FP32", [float("inf")]), *good[1:]]}).encode()
    assert_error(httpx.post(url, content=inf, timeout=10), 400, "x1", "infinite")
    assert_error(httpx.post(url, json={"inputs": [good[0], col("colour", "BYTES", [True]), good[2]]},
                            timeout=10), 400, "colour", "boolean")
    assert_error(httpx.post(url, json={"inputs": [good[0], col("colour", "BYTES", [{"x": 1}]), good[2]]},
                            timeout=10), 400, "colour", "object")
    assert_error(httpx.post(url, json={"inputs": [col("x1", "FP32", [0.5], [1, 1, 1]), *good[1:]]}, timeout=10),
                 400, "x1", "shape")
    # and binary: a BYTES column with a truncated element
    body, headers = binary_request([("x1", "FP32", np.array([[0.5]], np.float32)),
                                    ("colour", "BYTES", np.array([["red"]], dtype=object)),
                                    ("x2", "FP32", np.array([[0.1]], np.float32))])
    ok = httpx.post(url, content=body, headers=headers, timeout=10)
    assert ok.status_code == 200, ok.text
    assert list(parse_binary_response(ok)["label"]) == list(parse_json_response(
        httpx.post(url, json={"inputs": good}, timeout=10))["label"])
    broken = body.replace(struct.pack("<I", 3) + b"red", struct.pack("<I", 9) + b"red")
    assert_error(httpx.post(url, content=broken, headers=headers, timeout=10), 400, "colour")


def test_bad_predict_requests(digits_server: Server, csv_server: Server) -> None:
    assert_error(httpx.post(f"{digits_server.url}/predict", json={"rows": []}, timeout=10), 400, "rows")
    assert_error(httpx.post(f"{digits_server.url}/predict", json={"nope": 1}, timeout=10), 400, "rows")
    assert_error(httpx.post(f"{digits_server.url}/predict", content=b"{not json", timeout=10,
                            headers={"Content-Type": "application/json"}), 400)
    assert_error(httpx.post(f"{csv_server.url}/predict", json={"rows": [{"x1": 0.5, "colour": "red"}]}, timeout=10),
                 400, "x2")
    assert_error(httpx.post(f"{csv_server.url}/predict", json={"rows": [{"x1": "zz", "colour": "red", "x2": 1}]},
                            timeout=10), 400, "x1", "zz")


@pytest.mark.parametrize("field, value, kind", [
    ("colour", ["red"], "list"), ("colour", {"x": 1}, "object"), ("colour", True, "boolean"),
    ("x1", [0.5], "list"), ("x1", {"v": 0.5}, "object"), ("x1", True, "boolean"), ("x1", "0.5", "'0.5'"),
    ("x2", 1e300, "standard deviations"),
])
def test_predict_refuses_a_value_that_is_no_feature_value(csv_server: Server, field: str, value: Any,
                                                            kind: str) -> None:
    # A list, an object or a boolean was taken (a category nobody trained on, or 1.0) with a 200.
    row: dict[str, Any] = {"x1": 0.5, "colour": "red", "x2": 1.0, field: value}
    r = httpx.post(f"{csv_server.url}/predict", json={"rows": [{"x1": 0.1, "colour": "blue", "x2": 0.0}, row]},
                   timeout=10)
    assert_error(r, 400, f"row 1, column '{field}'", kind)


def test_predict_takes_json_whatever_the_content_type(digits_server: Server, digits_model) -> None:
    names = digits_model.features.inputs.column_names
    body = json.dumps({"rows": [dict.fromkeys(names, 1.0)]}).encode()
    want = digits_model.predict([dict.fromkeys(names, 1.0)]).tolist()
    for headers in ({}, {"Content-Type": "application/x-www-form-urlencoded"}, {"Content-Type": "text/plain"}):
        r = httpx.post(f"{digits_server.url}/predict", content=body, headers=headers, timeout=10)
        assert r.status_code == 200, (headers, r.text)
        assert r.json()["labels"] == want
    r = httpx.post(f"{digits_server.url}/predict", content=b"rows=1", timeout=10,
                   headers={"Content-Type": "application/x-www-form-urlencoded"})
    message = assert_error(r, 400, "not JSON", "Content-Type: application/json")
    assert "pydantic" not in message.lower() and "loc" not in message


def _digits_with_gaps(digits_X: np.ndarray) -> np.ndarray:
    x = digits_X[:4].copy()
    x[0, 3] = x[1, 20] = x[1, 21] = x[3, 63] = np.nan
    return x


@pytest.mark.parametrize("triton_client", ["digits_server"], indirect=True)
@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_tritonclient_sends_missing_numbers_and_gets_the_bundles_imputed_answer(triton_client, binary: bool,
                                                                                digits_model, digits_X) -> None:
    x = _digits_with_gaps(digits_X)
    res = _triton_infer(triton_client, "digits", [("input", "FP32", x)], binary)
    np.testing.assert_allclose(res.as_numpy("probabilities"), digits_model.predict_proba(x), rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(res.as_numpy("label"), digits_model.predict(x).astype(np.int64))


def test_json_missing_numbers_as_null_nan_or_string(digits_server: Server, csv_server: Server, digits_model,
                                                    digits_X, animals_model) -> None:
    x = _digits_with_gaps(digits_X)
    want = digits_model.predict_proba(x)
    flat = x.reshape(-1).tolist()
    for missing in (None, "NaN", float("nan"), "", "NA"):  # json.dumps writes the NaN literal; "" and NA: as /predict
        data = [missing if v != v else v for v in flat]
        r = httpx.post(f"{digits_server.url}/v2/models/digits/infer",
                       content=json_request("input", "FP32", list(x.shape), data), timeout=10)
        assert r.status_code == 200, (missing, r.text)
        np.testing.assert_allclose(parse_json_response(r)["probabilities"], want, rtol=1e-6, atol=1e-7)
    # one tensor per column: a missing number and a missing category, as /predict and the Python API impute them
    rows = [{"x1": None, "colour": "green", "x2": 0.5}, {"x1": 0.7, "colour": None, "x2": None}]
    inputs = [{"name": "x1", "datatype": "FP32", "shape": [2, 1], "data": [None, 0.7]},
              {"name": "colour", "datatype": "BYTES", "shape": [2, 1], "data": ["green", None]},
              {"name": "x2", "datatype": "FP32", "shape": [2, 1], "data": [0.5, "NaN"]}]
    r = httpx.post(f"{csv_server.url}/v2/models/animals/infer", json={"inputs": inputs}, timeout=10)
    assert r.status_code == 200, r.text
    np.testing.assert_allclose(parse_json_response(r)["probabilities"], animals_model.predict_proba(rows),
                               rtol=1e-5, atol=1e-6)
    p = httpx.post(f"{csv_server.url}/predict", json={"rows": rows}, timeout=10)
    assert p.status_code == 200 and p.json()["labels"] == list(animals_model.predict(rows)), p.text


# ---- 4. API keys and the body limit -------------------------------------------------------------

def _small_infer() -> bytes:
    return json_request("input", "FP32", [1, 64], [0] * 64)


def test_api_keys(guarded_server: Server, digits_model) -> None:
    url = guarded_server.url
    with httpx.Client(base_url=url, timeout=10) as c:
        # health stays open: load balancers and orchestrators probe without a key
        assert c.get("/v2/health/live").status_code == 200
        assert c.get("/v2/health/ready").status_code == 200
        for headers in ({}, {"Authorization": "Bearer wrong-key"}, {"Authorization": f"Bearer {KEYS[0]}x"},
                        {"Authorization": KEYS[0]}, {"Authorization": f"Basic {KEYS[0]}"},
                        {"Authorization": "Bearer"}, {"X-API-Key": KEYS[0]}):
            for method, path, body in (("POST", "/v2/models/digits/infer", _small_infer()),
                                       ("POST", "/predict", b'{"rows": [{}]}'), ("GET", "/v2/models/digits", None),
                                       ("GET", "/v2", None), ("GET", "/metrics", None)):
                r = c.request(method, path, content=body, headers=headers)
                assert_error(r, 401, "key")
                assert r.headers.get("www-authenticate", "").lower().startswith("bearer"), (headers, path)
        for key in KEYS:
            ok = c.post("/v2/models/digits/infer", content=_small_infer(), headers={"Authorization": f"Bearer {key}"})
            assert ok.status_code == 200, ok.text
            np.testing.assert_allclose(parse_json_response(ok)["probabilities"],
                                       digits_model.predict_proba(np.zeros((1, 64), np.float32)), rtol=1e-6, atol=1e-7)
        assert c.get("/v2/models/digits", headers={"Authorization": f"bearer {KEYS[1]}"}).status_code == 200
        assert c.get("/metrics", headers={"Authorization": f"Bearer {KEYS[1]}"}).status_code == 200


def _chunks(data: bytes, size: int = 256) -> Iterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i:i + size]


def test_body_limit(guarded_server: Server) -> None:
    auth = {"Authorization": f"Bearer {KEYS[0]}"}
    big = json_request("input", "FP32", [8, 64], [0.125] * 512)  # ~4 KB > 1048 bytes
    assert len(big) > 1048 >= len(_small_infer())
    with httpx.Client(base_url=guarded_server.url, timeout=10) as c:
        assert c.post("/v2/models/digits/infer", content=_small_infer(), headers=auth).status_code == 200
        assert_error(c.post("/v2/models/digits/infer", content=big, headers=auth), 413, "MB")
        rows = {"rows": [{f"pixel_{i // 8}_{i % 8}": 0.125 for i in range(64)}] * 3}
        assert_error(c.post("/predict", json=rows, headers=auth), 413, "MB")
        # without a key, the limit is not the first thing a client learns
        assert_error(c.post("/v2/models/digits/infer", content=big), 401)
        # a chunked body carries no Content-Length: the server counts while reading
        r = c.post("/v2/models/digits/infer", content=_chunks(big), headers=auth)
        assert r.request.headers.get("transfer-encoding") == "chunked" and "content-length" not in r.request.headers
        assert_error(r, 413, "MB")
        # a small chunked body is fine
        r = c.post("/v2/models/digits/infer", content=_chunks(_small_infer()), headers=auth)
        assert r.status_code == 200, r.text
        assert c.get("/v2/health/ready").status_code == 200


@pytest.mark.parametrize("auth, status", [(False, 401), (True, 413)], ids=["no-key", "over-the-limit"])
def test_an_early_answer_reaches_a_client_still_sending(guarded_server: Server, auth: bool, status: int) -> None:
    # Answered from the headers alone, then the body is read and dropped: closing with the body unread
    # would reset the connection, and a client still sending (here: after the answer) would never see it.
    import http.client

    body = b"z" * (1 << 20)
    conn = http.client.HTTPConnection("127.0.0.1", guarded_server.port, timeout=30)
    try:
        conn.putrequest("POST", "/v2/models/digits/infer")
        for key, value in {"Content-Length": str(len(body)), "Connection": "close",
                           **({"Authorization": f"Bearer {KEYS[0]}"} if auth else {})}.items():
            conn.putheader(key, value)
        conn.endheaders()
        time.sleep(0.3)  # the answer is out before the body
        for i in range(0, len(body), 1 << 16):
            conn.send(body[i:i + (1 << 16)])
        response = conn.getresponse()
        assert response.status == status and set(json.loads(response.read())) == {"error"}
    finally:
        conn.close()


def test_body_limit_applies_to_chunked_predict(guarded_server: Server) -> None:
    auth = {"Authorization": f"Bearer {KEYS[0]}", "Content-Type": "application/json"}
    rows = json.dumps({"rows": [{f"pixel_{i // 8}_{i % 8}": 0.125 for i in range(64)}] * 3}).encode()
    assert len(rows) > 1048
    r = httpx.post(f"{guarded_server.url}/predict", content=_chunks(rows), headers=auth, timeout=10)
    assert r.request.headers.get("transfer-encoding") == "chunked"
    assert_error(r, 413, "MB")


# ---- metrics, no torch ----------------------------------------------------------------------------

def test_prometheus_metrics(digits_server: Server, digits_X) -> None:
    with httpx.Client(base_url=digits_server.url, timeout=10) as c:
        body, headers = binary_request([("input", "FP32", digits_X)])
        assert c.post("/v2/models/digits/infer", content=body, headers=headers).status_code == 200
        assert c.post("/v2/models/digits/infer", content=b"nope").status_code == 400
        r = c.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    text = r.text
    for name in ("trainfer_requests_total", "trainfer_request_seconds", "trainfer_queue_depth", "trainfer_batch_size",
                 "trainfer_inference_seconds"):
        assert re.search(rf"^# TYPE {name} ", text, re.M), f"{name} missing from /metrics"
    assert re.search(r'^trainfer_requests_total\{endpoint="/v2/models/\{name\}/infer",status="200"\} [1-9]', text, re.M)
    assert re.search(r'^trainfer_requests_total\{endpoint="/v2/models/\{name\}/infer",status="400"\} [1-9]', text, re.M)
    assert re.search(r'^trainfer_request_seconds_count\{endpoint="/v2/models/\{name\}/infer"\} [1-9]', text, re.M)
    assert re.search(r"^trainfer_batch_size_count [1-9]", text, re.M)
    assert re.search(r"^trainfer_inference_seconds_count [1-9]", text, re.M)
    assert re.search(r"^trainfer_queue_depth 0\.0$", text, re.M)


def test_access_log_has_one_line_per_request_and_cannot_be_forged(digits_server: Server, digits_X) -> None:
    tag = f"t{time.monotonic_ns()}"  # the session-scoped server's log holds other tests' lines too
    with httpx.Client(base_url=digits_server.url, timeout=10) as c:
        body, headers = binary_request([("input", "FP32", digits_X)])
        assert c.post(f"/v2/models/digits/infer?{tag}", content=body, headers=headers).status_code == 200
        assert c.get(f"/v2/models/{tag}%0A1.2.3.4 forged/ready").status_code == 404
    for _ in range(50):  # lines are written in bulk, at least every 0.2 s
        lines = [ln for ln in digits_server.log().splitlines() if tag in ln]
        if len(lines) == 2:
            break
        time.sleep(0.05)
    assert len(lines) == 2, lines
    stamp = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z"
    assert re.fullmatch(stamp + rf' 127\.0\.0\.1:\d+ "POST /v2/models/digits/infer\?{tag} HTTP/1\.1" 200 \d+\.\d\dms',
                        lines[0]), lines[0]
    assert lines[1].endswith(" 404 " + lines[1].rsplit(" ", 1)[1]) and "\\n1.2.3.4 forged" in lines[1], lines[1]
    assert not any(ln.startswith("1.2.3.4") for ln in digits_server.log().splitlines())


@pytest.mark.parametrize("server", ["digits_server", "csv_server", "cnn_server", "guarded_server"])
def test_server_process_never_imports_torch(server: str, request: pytest.FixtureRequest) -> None:
    s: Server = request.getfixturevalue(server)
    # the server was started with torch blocked and has answered requests: nothing tried to import it
    assert httpx.get(f"{s.url}/v2/health/ready", timeout=10).status_code == 200
    assert s.torch_import_attempts() == [], f"the server tried to import torch: {s.torch_import_attempts()}"
    assert s.mapped_torch_libraries() == []
    assert "torch" not in s.log().lower(), s.log()[-2000:]


# ---- 3. overload ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def heavy_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return heavy_cnn_bundle(tmp_path_factory)


@pytest.fixture(scope="module")
def heavy_model(heavy_bundle: Path):
    return trainfer.load(heavy_bundle)


OVERLOAD_ROWS = 32  # images per request: ~15-30 ms of model time on one thread
INFER = "/v2/models/shapes/infer"


async def _closed_loop(port: int, body: bytes, headers: dict, seconds: float, concurrency: int) -> float:
    """Requests per second with ``concurrency`` clients that each send the next request when answered."""
    done = 0
    stop = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal done
        while time.perf_counter() < stop:
            status, _, payload = await raw_post(port, INFER, body, headers)
            assert status == 200, payload[:300]
            done += 1

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return done / (time.perf_counter() - t0)


async def _raw_get(port: int, path: str) -> int:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n".encode())
        await writer.drain()
        return int((await reader.read()).split()[1])
    finally:
        writer.close()


async def _open_loop(port: int, body: bytes, headers: dict, rate: float,
                     n: int) -> tuple[list[tuple], list[float], float]:
    """Send ``n`` requests at ``rate`` per second whatever the answers, and probe /v2/health/live every
    20 ms meanwhile: ([(status, seconds, retry-after)], [probe seconds], achieved send rate)."""
    results: list[tuple] = []
    probes: list[float] = []

    async def one() -> None:
        t = time.perf_counter()
        try:
            status, head, _ = await asyncio.wait_for(raw_post(port, INFER, body, headers), 30)
            results.append((status, time.perf_counter() - t, head.get("retry-after")))
        except (TimeoutError, OSError) as exc:
            results.append((type(exc).__name__, time.perf_counter() - t, None))

    async def probe(until: float) -> None:
        while time.perf_counter() < until:
            t = time.perf_counter()
            assert await asyncio.wait_for(_raw_get(port, "/v2/health/live"), 30) == 200
            probes.append(time.perf_counter() - t)
            await asyncio.sleep(0.02)

    tasks = []
    t0 = time.perf_counter()
    prober = asyncio.create_task(probe(t0 + n / rate))
    for i in range(n):
        delay = t0 + i / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one()))
    sent_s = time.perf_counter() - t0
    await asyncio.gather(*tasks, prober)
    return results, probes, n / max(sent_s, 1e-9)


def _p(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else math.nan


def test_overload_sheds_excess_fast_and_recovers(heavy_bundle: Path, heavy_model, shapes_X, tmp_path: Path) -> None:
    timeout_ms = 500
    args = ["--name", "shapes", "--threads", "1", "--max-batch-size", str(OVERLOAD_ROWS), "--max-delay-ms", "1",
            "--max-queue", "8", "--timeout-ms", str(timeout_ms), "--max-body-mb", "1"]
    x = np.resize(shapes_X, (OVERLOAD_ROWS, 16, 16, 3))
    body, headers = binary_request([("input", "UINT8", x)], binary_outputs=True)
    with running_server(heavy_bundle, args, tmp_path) as server:
        asyncio.run(_closed_loop(server.port, body, headers, seconds=0.3, concurrency=2))  # warm-up
        # 4 clients keep the model busy without filling the queue (8): the server's capacity
        capacity = asyncio.run(_closed_loop(server.port, body, headers, seconds=1.0, concurrency=4))
        rate = min(3 * capacity, 600.0)
        n = int(min(rate * 2.5, 1500))  # ~2.5 s at 3x capacity
        rss_before = server.rss_mb()
        peak = [rss_before]
        sampling = threading.Event()

        def sample() -> None:
            while not sampling.wait(0.05):
                peak[0] = max(peak[0], server.rss_mb())

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        try:
            results, probes, sent_rate = asyncio.run(_open_loop(server.port, body, headers, rate, n))
        finally:
            sampling.set()
            sampler.join(5)
        peak[0] = max(peak[0], server.rss_mb())

        codes: dict[Any, int] = {}
        for status, _, _ in results:
            codes[status] = codes.get(status, 0) + 1
        ok = [t for s, t, _ in results if s == 200]
        busy = [(t, ra) for s, t, ra in results if s == 503]
        p90_busy, p50_ok, p99_ok, p90_probe = (_p([t for t, _ in busy], 90), _p(ok, 50), _p(ok, 99),
                                               _p(probes, 90))
        summary = (f"capacity {capacity:.0f}/s, offered {rate:.0f}/s (sent at {sent_rate:.0f}/s), {n} requests: "
                   f"{codes}; RSS {rss_before:.0f} -> peak {peak[0]:.0f} MB; 503 p90 {p90_busy * 1e3:.0f} ms; "
                   f"200 p50/p99 {p50_ok * 1e3:.0f}/{p99_ok * 1e3:.0f} ms; "
                   f"/v2/health/live p90 meanwhile {p90_probe * 1e3:.0f} ms")
        print(summary)
        assert set(codes) <= {200, 503, 504}, summary  # no connection errors, no 500s
        assert len(ok) >= 0.5 * capacity, summary  # the model kept working
        assert len(busy) >= 0.25 * n, summary  # offered 3x capacity: the excess is shed...
        assert all(ra is not None and ra.isdigit() for _, ra in busy), "every 503 carries Retry-After"
        # ...quickly: within 50 ms. On a machine so busy that even a health check takes over 20 ms (other
        # processes on the 2 shared cores), the scheduler dominates and the bound becomes relative:
        # a 503 still takes at most half the median time of an accepted request.
        bound = 0.05 if p90_probe < 0.02 else max(0.05, 0.5 * p50_ok)
        assert p90_busy < bound, f"503 p90 over {bound * 1e3:.0f} ms: {summary}"
        assert p99_ok < timeout_ms / 1e3 + 0.5, summary  # accepted requests wait at most the timeout
        assert peak[0] - rss_before < 100, summary  # a bounded queue: bounded memory

        # once the load stops the server answers normally
        time.sleep(0.3)
        r = httpx.post(f"{server.url}{INFER}", content=body, headers=headers, timeout=10)
        assert r.status_code == 200, r.text
        np.testing.assert_allclose(parse_binary_response(r)["probabilities"], heavy_model.predict_proba(x),
                                   rtol=1e-5, atol=1e-6)
        metrics = httpx.get(f"{server.url}/metrics", timeout=10).text
        assert re.search(r'trainfer_requests_total\{endpoint="/v2/models/\{name\}/infer",status="503"\} [1-9]',
                         metrics), summary
        assert re.search(r"^trainfer_queue_depth 0\.0$", metrics, re.M)


# ---- graceful shutdown ---------------------------------------------------------------------------

def _batches_started(server: Server, client: httpx.Client) -> float:
    m = re.search(r"^trainfer_batch_size_count (\S+)$", client.get(f"{server.url}/metrics").text, re.M)
    return float(m.group(1)) if m else 0.0


def test_sigterm_drains_the_request_in_flight_then_exits_0(heavy_bundle: Path, heavy_model, shapes_X,
                                                           tmp_path: Path) -> None:
    x = np.resize(shapes_X, (512, 16, 16, 3))  # ~0.25-1 s of model time on one thread
    body, headers = binary_request([("input", "UINT8", x)])
    server = Server(heavy_bundle, ["--name", "shapes", "--threads", "1", "--max-batch-size", "512",
                                   "--timeout-ms", "60000"], tmp_path).start()
    try:
        got: dict[str, Any] = {}

        def send() -> None:
            try:
                got["response"] = httpx.post(f"{server.url}{INFER}", content=body, headers=headers, timeout=60)
            except Exception as exc:
                got["error"] = exc

        sender = threading.Thread(target=send)
        with httpx.Client(timeout=10) as poll:
            assert _batches_started(server, poll) == 0
            sender.start()
            deadline = time.monotonic() + 30
            while _batches_started(server, poll) < 1:  # the big batch is in the model now
                assert time.monotonic() < deadline and sender.is_alive(), f"the request never started: {got}"
                time.sleep(0.005)
        t_term = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
        sender.join(60)
        assert not sender.is_alive()
        assert "error" not in got, f"the request in flight failed on SIGTERM: {got['error']!r}\n{server.log()[-2000:]}"
        r = got["response"]
        assert r.status_code == 200, r.text[:500]
        np.testing.assert_allclose(parse_binary_response(r)["probabilities"], heavy_model.predict_proba(x),
                                   rtol=1e-5, atol=1e-6)
        code = server.proc.wait(60)  # type: ignore[union-attr]
        assert time.monotonic() - t_term < 30
        log = server.log()
        assert "Application shutdown complete" in log, log[-2000:]
        assert "Traceback" not in log, log[-4000:]
        with pytest.raises(httpx.TransportError):  # the port is closed
            httpx.get(f"{server.url}/v2/health/live", timeout=2)
        assert code == 0, f"`trainfer serve` exited {code} after a graceful SIGTERM\n{log[-1500:]}"
    finally:
        server.stop()


def test_serve_freezes_the_heap_before_it_serves(digits_bundle: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A full garbage collection over the start-up heap stalls every request in flight for ~50 ms (the p99
    # at concurrency 64 in benchmarks/serve_load.py): `serve` freezes that heap before uvicorn starts.
    import gc
    import signal

    import uvicorn

    from trainfer.serving import serve

    calls: list[object] = []
    monkeypatch.setattr(gc, "freeze", lambda: calls.append("freeze"))
    monkeypatch.setattr(signal, "signal", lambda *_: None)
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: calls.append(("run", callable(app), kw)))
    serve(digits_bundle, port=free_port(), keep_alive_s=3, header_timeout_s=4)
    assert calls[0] == "freeze" and calls[1][:2] == ("run", True) and len(calls) == 2
    kw = calls[1][2]
    assert kw["access_log"] is False  # uvicorn's access log stays off: the app writes its own (asgi.AccessLog)
    assert kw["timeout_keep_alive"] == 3 and kw["http"].endswith(":HeaderTimeoutProtocol")
    from trainfer.serving.connection import HeaderTimeoutProtocol

    assert HeaderTimeoutProtocol.header_timeout_s == 4


def test_several_worker_processes_serve_and_stop_cleanly(digits_bundle: Path, digits_model, digits_X,
                                                          tmp_path: Path) -> None:
    # --workers N: uvicorn spawns N processes, each building the app from trainfer.serving._factory.
    server = Server(digits_bundle, ["--name", "digits", "--workers", "2", "--threads", "1"], tmp_path)
    server.start()
    try:
        with httpx.Client(base_url=server.url, timeout=10) as c:
            for _ in range(6):  # new connections: the kernel spreads them over the workers
                body, headers = binary_request([("input", "FP32", digits_X[:2])])
                r = c.post("/v2/models/digits/infer", content=body, headers={**headers, "Connection": "close"})
                assert r.status_code == 200, r.text
                np.testing.assert_allclose(parse_binary_response(r)["probabilities"],
                                           digits_model.predict_proba(digits_X[:2]), rtol=1e-5, atol=1e-6)
    finally:
        code = server.stop()
    log = server.log()
    assert code == 0, log[-2000:]
    assert log.count("Application startup complete") == 2 and "Traceback" not in log, log[-3000:]
