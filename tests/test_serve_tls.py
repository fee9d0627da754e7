"""`trainfer serve` security (issue 12, item 5; acceptance 6): HTTPS through uvicorn's own ssl options,
API key files with ``sha256:HEX`` lines, and a server that never logs a key or a request body.

The certificates are made here with ``cryptography``: a test CA and a server certificate for 127.0.0.1
(an IP SAN), so the clients verify the chain and the name for real (no ``verify=False`` anywhere).
Two real server processes (module scope): the digits bundle over plain HTTP (the reference) and over
HTTPS with API keys. Mistakes in the options are checked in this process through the CLI's entry point
against a port held busy by the test, so a check that wrongly passed would end on "port in use" (and
fail the test) rather than start a server.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import ipaddress
import json
import os
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from _inference_fixtures import get_run
from _serve_fixtures import Server, running_server
from conftest import assert_user_error, run_main
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

import trainfer
from trainfer.errors import ConfigError
from trainfer.serving import ServeConfig, hash_api_key

HASHED_KEY = "tk-hashed-9c1d7e44b0a2"  # the key file holds only its sha256: line
PLAIN_KEY = "tk-plain-51f0e8a3c6d9"  # the key file holds it as it is (mode 0600)
WRONG_KEY = "tk-wrong-0d6b2f97e1c4"
BODY_MARK = "bodymark-7e2a91c5"  # in request bodies: must never reach a log
PIXEL = 7.3190417  # a distinctive number in a request body
PASSWORD = "pw-for-the-test-key"


# ---- certificates ------------------------------------------------------------------------------

def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _pem_key(key: Any, path: Path, password: str | None = None, mode: int = 0o600) -> Path:
    encryption = (serialization.BestAvailableEncryption(password.encode()) if password
                  else serialization.NoEncryption())
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption))
    path.chmod(mode)
    return path


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """ca.pem (a test CA), cert.pem + key.pem (127.0.0.1, signed by it), other-key.pem (not cert.pem's),
    encrypted-key.pem (key.pem under PASSWORD)."""
    root = tmp_path_factory.mktemp("pki")
    now = datetime.datetime.now(datetime.UTC)
    valid = {"not_valid_before": now - datetime.timedelta(minutes=5),
             "not_valid_after": now + datetime.timedelta(days=1)}
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder().subject_name(_name("trainfer test CA")).issuer_name(_name("trainfer test CA"))
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(valid["not_valid_before"]).not_valid_after(valid["not_valid_after"])
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False, data_encipherment=False,
                                       key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder().subject_name(_name("127.0.0.1")).issuer_name(ca.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(valid["not_valid_before"]).not_valid_after(valid["not_valid_after"])
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    (root / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    (root / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return {"root": root, "ca": root / "ca.pem", "cert": root / "cert.pem", "key": _pem_key(key, root / "key.pem"),
            "other_key": _pem_key(ec.generate_private_key(ec.SECP256R1()), root / "other-key.pem"),
            "encrypted_key": _pem_key(key, root / "encrypted-key.pem", PASSWORD)}


@pytest.fixture(scope="module")
def ca_context(pki: dict[str, Path]) -> ssl.SSLContext:
    """A client context that trusts the test CA only (and checks the host name)."""
    return ssl.create_default_context(cafile=str(pki["ca"]))


# ---- servers -----------------------------------------------------------------------------------

class TLSServer(Server):
    """A `trainfer serve` process over HTTPS: ready when it answers through the test CA's context."""

    def __init__(self, bundle: Path, args: list[str], workdir: Path, context: ssl.SSLContext) -> None:
        super().__init__(bundle, args, workdir)
        self.context = self.verify = context

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"


def _sha256_line(key: str) -> str:
    """The documented shell one-liner (`trainfer serve --help`), run for real."""
    out = subprocess.run(["bash", "-c", "printf %s \"$KEY\" | sha256sum | awk '{print \"sha256:\" $1}'"],
                         env={**os.environ, "KEY": key}, capture_output=True, text=True, check=True).stdout.strip()
    assert out == hash_api_key(key)  # the shell and the Python helper make the same line
    return out


@pytest.fixture(scope="module")
def digits_X(tmp_path_factory: pytest.TempPathFactory) -> np.ndarray:
    X, _ = get_run(tmp_path_factory, "digits").load_split("test")
    return X.to_numpy(dtype=np.float32)[:12]


@pytest.fixture(scope="module")
def plain_server(digits_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with running_server(digits_bundle, ["--name", "digits"], tmp_path_factory.mktemp("serve-plain")) as s:
        yield s


@pytest.fixture(scope="module")
def tls_server(digits_bundle: Path, pki: dict[str, Path], ca_context: ssl.SSLContext,
               tmp_path_factory: pytest.TempPathFactory) -> Iterator[TLSServer]:
    workdir = tmp_path_factory.mktemp("serve-tls")
    keyfile = workdir / "keys.txt"
    keyfile.write_text(f"# serving keys\n{_sha256_line(HASHED_KEY)}\n\n  {PLAIN_KEY}\n")
    keyfile.chmod(0o600)
    args = ["--name", "digits", "--ssl-certfile", str(pki["cert"]), "--ssl-keyfile", str(pki["key"]),
            "--api-key-file", str(keyfile)]
    server = TLSServer(digits_bundle, args, workdir, ca_context)
    try:
        yield server.start()
    finally:
        server.stop()


def _auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


# ---- acceptance 6: real TLS clients get the plain server's answers -----------------------------

def _triton_infer(client: Any, X: np.ndarray, binary: bool, headers: dict[str, str] | None = None) -> Any:
    inp = triton.InferInput("input", list(X.shape), "FP32")
    inp.set_data_from_numpy(X, binary_data=binary)
    wanted = [triton.InferRequestedOutput(o, binary_data=binary) for o in ("probabilities", "label")]
    return client.infer("digits", [inp], outputs=wanted, headers=headers)


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_tritonclient_over_https_gets_the_plain_servers_answers(tls_server: TLSServer, plain_server: Server,
                                                                pki: dict[str, Path], digits_X: np.ndarray,
                                                                digits_bundle: Path, binary: bool) -> None:
    secure = triton.InferenceServerClient(url=f"127.0.0.1:{tls_server.port}", ssl=True,
                                          ssl_options={"ca_certs": str(pki["ca"])}, network_timeout=30)
    plain = triton.InferenceServerClient(url=f"127.0.0.1:{plain_server.port}", network_timeout=30)
    try:
        assert secure.is_server_ready() and secure.is_model_ready("digits", headers=_auth(HASHED_KEY))
        assert secure.get_model_metadata("digits", headers=_auth(PLAIN_KEY)) == plain.get_model_metadata("digits")
        got = _triton_infer(secure, digits_X, binary, _auth(HASHED_KEY))
        want = _triton_infer(plain, digits_X, binary)
    finally:
        secure.close()
        plain.close()
    np.testing.assert_array_equal(got.as_numpy("probabilities"), want.as_numpy("probabilities"))
    np.testing.assert_array_equal(got.as_numpy("label"), want.as_numpy("label"))
    reference = trainfer.load(digits_bundle)  # and both are the bundle's answers
    np.testing.assert_allclose(got.as_numpy("probabilities"), reference.predict_proba(digits_X), rtol=1e-6, atol=1e-7)
    assert len(set(got.as_numpy("label").tolist())) > 1, "pick rows with different predictions"


def test_httpx_with_the_test_ca_gets_the_plain_servers_answers(tls_server: TLSServer, plain_server: Server,
                                                               ca_context: ssl.SSLContext,
                                                               digits_X: np.ndarray) -> None:
    names = [f"pixel_{i // 8}_{i % 8}" for i in range(64)]
    body = {"rows": [dict(zip(names, map(float, row), strict=True)) for row in digits_X]}
    with httpx.Client(base_url=tls_server.url, verify=ca_context, timeout=10) as c:
        secure = c.post("/predict", json=body, headers=_auth(PLAIN_KEY))
        assert c.get("/v2/models/digits", headers=_auth(HASHED_KEY)).status_code == 200
    plain = httpx.post(f"{plain_server.url}/predict", json=body, timeout=10)
    assert secure.status_code == plain.status_code == 200, (secure.text, plain.text)
    assert secure.json() == plain.json()
    # the chain is really checked: a client that does not trust the test CA is refused in the handshake
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(f"{tls_server.url}/v2/health/live", verify=ssl.create_default_context(), timeout=10)


def test_plain_http_to_the_tls_port_fails(tls_server: TLSServer, ca_context: ssl.SSLContext) -> None:
    with pytest.raises(httpx.TransportError):  # the server reads the request line as a broken TLS handshake
        httpx.get(f"http://127.0.0.1:{tls_server.port}/v2/health/live", timeout=10)
    plain = triton.InferenceServerClient(url=f"127.0.0.1:{tls_server.port}", network_timeout=10)
    try:
        with pytest.raises(Exception):  # noqa: B017  (whatever the client raises: no answer came)
            plain.is_server_live()
    finally:
        plain.close()
    # and the server goes on serving HTTPS; its start-up line gives the https:// URL
    assert httpx.get(f"{tls_server.url}/v2/health/live", verify=ca_context, timeout=10).json() == {"live": True}
    assert f"https://127.0.0.1:{tls_server.port}" in tls_server.log(), tls_server.log()[-2000:]


def test_hashed_and_plain_keys_are_accepted_and_nothing_else(tls_server: TLSServer, ca_context: ssl.SSLContext) -> None:
    with httpx.Client(base_url=tls_server.url, verify=ca_context, timeout=10) as c:
        for key in (HASHED_KEY, PLAIN_KEY):
            assert c.get("/v2/models/digits", headers=_auth(key)).status_code == 200
        # the file's sha256: line is not itself a key: a copy of the key file lets no one in
        for key in (WRONG_KEY, hash_api_key(HASHED_KEY), hash_api_key(HASHED_KEY)[len("sha256:"):], HASHED_KEY + "x",
                    hash_api_key(PLAIN_KEY)):
            r = c.get("/v2/models/digits", headers=_auth(key))
            assert r.status_code == 401 and "key" in r.json()["error"], (key, r.text)


# ---- the server writes no key and no request body ------------------------------------------------

def test_server_never_logs_a_key_or_a_request_body(tls_server: TLSServer, ca_context: ssl.SSLContext,
                                                   digits_X: np.ndarray) -> None:
    """Every answer path a framework likes to echo input on (401, 400 on bad JSON, a wrong type, a bad
    shape, 404), a key in the query and plain HTTP to the TLS port; then everything the server wrote
    (stdout, stderr, any file in its working directory) is searched for the keys, their hashes and the
    bodies."""
    row = [PIXEL] + [0.0] * 63
    infer = {"id": BODY_MARK, "parameters": {"note": BODY_MARK},
             "inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": row}]}
    names = [f"pixel_{i // 8}_{i % 8}" for i in range(64)]
    expected = {  # (method, path, body, key) -> status: each path below must really be taken
        ("POST", "/v2/models/digits/infer", json.dumps(infer), HASHED_KEY): 200,
        ("POST", "/predict", json.dumps({"rows": [{**dict.fromkeys(names, PIXEL), BODY_MARK: 1}]}), PLAIN_KEY): 200,
        ("POST", "/v2/models/digits/infer", json.dumps(infer), WRONG_KEY): 401,
        ("POST", "/predict", json.dumps({"rows": [dict.fromkeys(names, PIXEL)]}), None): 401,
        ("POST", "/v2/models/digits/infer", '{"id": "' + BODY_MARK + '", "inputs": [', HASHED_KEY): 400,
        ("POST", "/predict", json.dumps({"rows": [{**dict.fromkeys(names, 0.0), "pixel_0_0": BODY_MARK}]}),
         PLAIN_KEY): 400,
        ("POST", "/v2/models/digits/infer", json.dumps({**infer, "inputs": [{**infer["inputs"][0], "shape": [1, 7]}]}),
         HASHED_KEY): 400,
        ("POST", f"/v2/models/{BODY_MARK[:4]}/infer", json.dumps(infer), HASHED_KEY): 404,
        # a key sent where it does not belong (the query) is not logged either
        ("GET", f"/v2/models/digits?api_key={WRONG_KEY}&token={PLAIN_KEY}", None, HASHED_KEY): 200,
    }
    with httpx.Client(base_url=tls_server.url, verify=ca_context, timeout=10) as c:
        for (method, path, body, key), status in expected.items():
            r = c.request(method, path, content=body, headers=_auth(key) if key else {})
            assert r.status_code == status, (method, path, r.status_code, r.text)
    with pytest.raises(httpx.TransportError):  # plain HTTP with a key to the TLS port: a handshake error
        httpx.get(f"http://127.0.0.1:{tls_server.port}/v2/models/digits", headers=_auth(PLAIN_KEY), timeout=10)
    for _ in range(100):  # the access log is written in bulk, at least every 0.2 s; the query request was last
        if "api_key=" in tls_server.log():
            break
        time.sleep(0.05)

    written = {"server output": tls_server.log()}
    for path in tls_server.workdir.rglob("*"):
        if path.is_file() and path.name != "keys.txt":  # the key file itself holds the plain key, by design
            written[str(path)] = path.read_text(errors="replace")
    log = written["server output"]
    assert "/v2/models/digits/infer HTTP/1.1\" 401" in log and "/predict HTTP/1.1\" 400" in log, log
    assert "api_key=[redacted]&token=[redacted]" in log, log  # the request line is there, the keys are not
    secrets = [HASHED_KEY, PLAIN_KEY, WRONG_KEY, BODY_MARK, f"{PIXEL}", "7.31904",
               hashlib.sha256(HASHED_KEY.encode()).hexdigest(), hashlib.sha256(PLAIN_KEY.encode()).hexdigest()]
    for where, text in written.items():
        for secret in secrets:
            assert secret not in text, f"{secret!r} appears in {where}:\n{text[-3000:]}"


# ---- mistakes: one error line, exit 2, before the port is bound ----------------------------------

@pytest.fixture(scope="module")
def busy_port() -> Iterator[int]:
    """A port held by this test: a serve whose checks wrongly passed fails on it instead of serving."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


@pytest.fixture(scope="module")
def bad_files(pki: dict[str, Path]) -> dict[str, Path]:
    root = pki["root"]
    files = {"garbage": root / "garbage.pem", "binary": root / "binary.txt", "empty_keys": root / "empty-keys.txt",
             "bad_hex": root / "bad-hex.txt", "short_hex": root / "short-hex.txt", "sha512": root / "sha512.txt",
             "empty_hash": root / "empty-hash.txt"}
    files["garbage"].write_text("this is not a certificate\n")
    files["binary"].write_bytes(b"\xff\xfe\x00secret\x81")
    files["empty_keys"].write_text("# no key yet\n\n")
    files["bad_hex"].write_text("# ok\nk-fine-1\nsha256:" + "z1" * 32 + "\n")
    files["short_hex"].write_text("sha256:" + hashlib.sha256(b"x").hexdigest()[:-1] + "\n")
    files["sha512"].write_text("\n\n\nsha512:" + hashlib.sha512(b"x").hexdigest() + "\n")
    files["empty_hash"].write_text(f"{hash_api_key(HASHED_KEY)}\nsha256:{hashlib.sha256(b'').hexdigest()}\n")
    for path in files.values():
        path.chmod(0o600)
    return files


TLS_CASES = {  # name -> (options, words the error line must contain)
    "certfile_alone": (["--ssl-certfile", "{cert}"], ["--ssl-certfile needs --ssl-keyfile"]),
    "keyfile_alone": (["--ssl-keyfile", "{key}"], ["--ssl-keyfile needs --ssl-certfile"]),
    "missing_certfile": (["--ssl-certfile", "{root}/nope.pem", "--ssl-keyfile", "{key}"],
                         ["nope.pem", "does not exist"]),
    "certfile_is_a_directory": (["--ssl-certfile", "{root}", "--ssl-keyfile", "{key}"], ["directory"]),
    "swapped": (["--ssl-certfile", "{key}", "--ssl-keyfile", "{cert}"], ["private key, not a certificate"]),
    "key_is_a_certificate": (["--ssl-certfile", "{cert}", "--ssl-keyfile", "{cert}"], ["certificate, not a private"]),
    "not_pem": (["--ssl-certfile", "{garbage}", "--ssl-keyfile", "{key}"], ["garbage.pem", "not a PEM certificate"]),
    "key_of_another_certificate": (["--ssl-certfile", "{cert}", "--ssl-keyfile", "{other_key}"],
                                   ["other-key.pem", "not the private key"]),
    "encrypted_key_without_password": (["--ssl-certfile", "{cert}", "--ssl-keyfile", "{encrypted_key}"],
                                       ["encrypted", "no password"]),
}
KEY_CASES = {
    "missing": ("{root}/no-keys.txt", ["no-keys.txt", "does not exist"]),
    "directory": ("{root}", ["directory"]),
    "binary": ("{binary}", ["not a text file"]),
    "no_key": ("{empty_keys}", ["holds no key"]),
    "bad_hex": ("{bad_hex}", ["line 3", "hex digits"]),
    "short_hex": ("{short_hex}", ["line 1", "64 hex digits", "63"]),
    "unknown_prefix": ("{sha512}", ["line 4", "unknown prefix sha512:"]),
    "hash_of_nothing": ("{empty_hash}", ["line 2", "empty string"]),  # would let a request without a key in
}


def _fill(args: list[str], paths: dict[str, Path]) -> list[str]:
    return [a.format(**{k: str(v) for k, v in paths.items()}) for a in args]


@pytest.mark.parametrize("case", list(TLS_CASES) + [f"keys_{k}" for k in KEY_CASES])
def test_bad_tls_and_key_files_are_one_error_line(case: str, digits_bundle: Path, pki: dict[str, Path],
                                                   bad_files: dict[str, Path], busy_port: int,
                                                   monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
                                                   ) -> None:
    monkeypatch.delenv("TRAINFER_SSL_KEYFILE_PASSWORD", raising=False)
    paths = {**pki, **bad_files}
    if case.startswith("keys_"):
        keyfile, words = KEY_CASES[case[5:]]
        options = ["--api-key-file", keyfile]
    else:
        options, words = TLS_CASES[case]
    result = run_main(["serve", digits_bundle, "--port", busy_port, *_fill(options, paths)], capsys)
    line = assert_user_error(result, mentions=words)
    assert "in use" not in line
    for secret in ("k-fine-1", "z1z1", "secret", hashlib.sha512(b"x").hexdigest()[:16]):
        assert secret not in result.stderr  # a malformed line is named by its number, never shown


def test_encrypted_key_takes_its_password_from_the_environment(digits_bundle: Path, pki: dict[str, Path],
                                                               busy_port: int, monkeypatch: pytest.MonkeyPatch,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    args = ["serve", digits_bundle, "--port", busy_port, "--ssl-certfile", pki["cert"],
            "--ssl-keyfile", pki["encrypted_key"]]
    monkeypatch.setenv("TRAINFER_SSL_KEYFILE_PASSWORD", "not-" + PASSWORD)
    line = assert_user_error(run_main(args, capsys), mentions=["wrong password", "TRAINFER_SSL_KEYFILE_PASSWORD"])
    assert PASSWORD not in line
    monkeypatch.setenv("TRAINFER_SSL_KEYFILE_PASSWORD", PASSWORD)
    # the key loads: every TLS check passed and start-up went on to the (busy) port
    assert_user_error(run_main(args, capsys), mentions=[f"port {busy_port}", "in use"])


def test_loose_permissions_on_plain_keys_and_the_tls_key_warn(digits_bundle: Path, pki: dict[str, Path],
                                                             busy_port: int, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    loose_keys, hashed_keys = tmp_path / "loose.txt", tmp_path / "hashed.txt"
    loose_keys.write_text(f"{PLAIN_KEY}\n{hash_api_key(HASHED_KEY)}\n")
    hashed_keys.write_text(f"{hash_api_key(HASHED_KEY)}\n")
    for path in (loose_keys, hashed_keys):
        path.chmod(0o644)
    base = ["serve", digits_bundle, "--port", busy_port]

    def stderr_lines(*options: object) -> list[str]:
        result = run_main([*base, *options], capsys)
        assert result.returncode == 2 and "in use" in result.stderr  # got as far as the port: only warnings
        assert PLAIN_KEY not in result.stderr
        return [ln for ln in result.stderr.splitlines() if ln.startswith("warning:")]

    warned = stderr_lines("--api-key-file", loose_keys)
    assert len(warned) == 1 and "loose.txt" in warned[0] and "1 plain key" in warned[0] and "0644" in warned[0]
    assert stderr_lines("--api-key-file", hashed_keys) == []  # hashes only: nothing to protect
    loose_keys.chmod(0o600)
    assert stderr_lines("--api-key-file", loose_keys) == []
    loose_copy = tmp_path / "key-copy.pem"
    loose_copy.write_bytes(pki["key"].read_bytes())
    loose_copy.chmod(0o640)
    warned = stderr_lines("--ssl-certfile", pki["cert"], "--ssl-keyfile", loose_copy)
    assert len(warned) == 1 and "key-copy.pem" in warned[0] and "0640" in warned[0]


def test_serve_config_holds_digests_only() -> None:
    """What ``--workers N`` hands each worker (ServeConfig, as JSON in the environment) holds no usable key."""
    upper_hex = "sha256:" + hash_api_key(HASHED_KEY)[len("sha256:"):].upper()  # hex digits in either case
    config = ServeConfig(name="digits", api_keys=(PLAIN_KEY, upper_hex))
    assert config.api_keys == (hash_api_key(PLAIN_KEY), hash_api_key(HASHED_KEY))
    assert PLAIN_KEY not in json.dumps(dataclasses.asdict(config))
    with pytest.raises(ConfigError, match="API key 2: sha256: needs 64 hex digits") as info:
        ServeConfig(name="digits", api_keys=(PLAIN_KEY, "sha256:abc"))
    assert PLAIN_KEY not in str(info.value)
