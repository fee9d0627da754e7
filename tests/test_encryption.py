"""Encrypted bundles at rest (issue 12, item 4; acceptance 5): model.onnx.enc under AES-256-GCM bound to the manifest,
decrypted into memory only; the plaintext graph is never on disk (the bundle, its temporary directory and TMPDIR
are watched during export, optimize and load); a wrong key or a changed manifest is a clear error."""

from __future__ import annotations

import json
import os
import stat
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from _inference_fixtures import copy_bundle, flip_byte
from _serve_fixtures import running_server
from conftest import assert_user_error, run_cli, run_main

import trainfer
from trainfer.errors import TrainferError

X = np.array([[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3], [5.9, 3.0, 4.2, 1.5], [6.0, 2.2, 5.0, 1.5]])


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from trainfer.exporting import export
    from trainfer.runtime.keys import generate_symmetric_key
    from trainfer.training import train

    root = tmp_path_factory.mktemp("encryption")
    run = train(data="iris", model="mlp", epochs=2, seed=0, out=root / "run", quiet=True,
                overrides=["model.hidden=[8]"])
    generate_symmetric_key(root / "k")
    generate_symmetric_key(root / "other")
    return {"root": root, "run": run.path, "plain": export(run, root / "plain"), "key": root / "k/bundle.key",
            "other": root / "other/bundle.key"}


@contextmanager
def watching(dirs: list[Path], needle: bytes) -> Iterator[list[str]]:
    """Every file that appears under ``dirs`` (hidden temporary ones too) while the block runs, polled every 2 ms;
    yields the list of those that held ``needle`` (a slice of the plaintext graph) or were named *.onnx."""
    found: list[str] = []
    stop = threading.Event()

    def scan() -> None:
        for d in dirs:
            for p in (d.rglob("*") if d.exists() else []):
                try:
                    if p.is_file() and (p.suffix == ".onnx" or needle in p.read_bytes()):
                        found.append(str(p))
                except OSError:  # removed between listing and reading
                    pass

    def loop() -> None:
        while not stop.is_set():
            scan()
            time.sleep(0.002)

    t = threading.Thread(target=loop, daemon=True)
    t.start()
    try:
        yield found
    finally:
        stop.set()
        t.join()
        scan()  # and after


def _needle(world: dict[str, Path]) -> bytes:
    """A slice of the weights in the graph: the plain export of the same run writes the same bytes."""
    graph = (world["plain"] / "model.onnx").read_bytes()
    return graph[len(graph) // 2: len(graph) // 2 + 48]


def test_export_writes_no_plaintext_anywhere_and_the_bundle_predicts_exactly_as_the_plain_one(
        world: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    scratch = tmp_path / "tmpdir"
    scratch.mkdir()
    monkeypatch.setenv("TMPDIR", str(scratch))
    out = tmp_path / "out" / "enc"
    with watching([scratch, tmp_path / "out"], _needle(world)) as found:
        r = run_cli("export", world["run"], "--out", out, "--encrypt-key", world["key"], "-q").check()
    assert found == [], found
    with watching([tmp_path / "control"], _needle(world)) as control:  # the watch sees a plain export's graph
        trainfer.export(world["run"], tmp_path / "control" / "plain")
    assert control
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "model.onnx.enc"], r.stdout
    # (a library may leave a small session-id file in TMPDIR: the scan above reads every file for the graph)
    assert not [p for p in scratch.rglob("*") if p.suffix == ".onnx"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["encryption"]["algorithm"] == "AES-256-GCM" and len(manifest["encryption"]["nonce"]) == 24
    with watching([scratch, out], _needle(world)) as found:
        enc = trainfer.load(out, key=world["key"])
        by_bytes = trainfer.load(out, key=world["key"].read_bytes())
    assert found == []
    plain = trainfer.load(world["plain"])
    np.testing.assert_array_equal(enc.predict_proba(X), plain.predict_proba(X))
    np.testing.assert_array_equal(by_bytes.predict(X), plain.predict(X))
    # the same through `predict --key`: identical output files
    np.savez(tmp_path / "x.npz", X=X.astype(np.float32))
    run_cli("predict", out, tmp_path / "x.npz", "--out", tmp_path / "e.csv", "--key", world["key"], "-q").check()
    run_cli("predict", world["plain"], tmp_path / "x.npz", "--out", tmp_path / "p.csv", "-q").check()
    assert (tmp_path / "e.csv").read_text() == (tmp_path / "p.csv").read_text()


@pytest.fixture(scope="module")
def enc(world: dict[str, Path]) -> Path:
    from trainfer.exporting import export

    return export(world["run"], world["root"] / "enc", encrypt_key=world["key"])


def test_a_wrong_key_a_missing_key_and_a_changed_manifest_are_clear_errors(
        world: dict[str, Path], enc: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(TrainferError, match="wrong key or tampered bundle"):
        trainfer.load(enc, key=world["other"])
    with pytest.raises(TrainferError, match="is encrypted"):
        trainfer.load(enc)
    with pytest.raises(TrainferError, match="not encrypted"):
        trainfer.load(world["plain"], key=world["key"])
    np.savez(tmp_path / "x.npz", X=X.astype(np.float32))
    r = run_main(["predict", enc, tmp_path / "x.npz", "--out", tmp_path / "p.csv", "--key", world["other"]], capsys)
    assert_user_error(r, mentions=["wrong key or tampered bundle"])
    assert not (tmp_path / "p.csv").exists()
    # the associated data binds the manifest: labels swapped and the manifest's own hash fixed still fail
    from trainfer.runtime import manifest_bytes

    b = copy_bundle(enc, tmp_path / "edited")
    manifest = json.loads((b / "manifest.json").read_text())
    manifest["labels"] = list(reversed(manifest["labels"]))
    (b / "manifest.json").write_bytes(manifest_bytes(manifest))
    with pytest.raises(TrainferError, match="wrong key or tampered bundle"):
        trainfer.load(b, key=world["key"])
    # a changed ciphertext byte is caught by the manifest's hashes first, naming the file
    b = copy_bundle(enc, tmp_path / "flipped")
    flip_byte(b / "model.onnx.enc", 100)
    with pytest.raises(TrainferError, match=r"model\.onnx\.enc"):
        trainfer.load(b, key=world["key"])


@pytest.mark.parametrize("case", ["missing", "directory", "pem", "short", "loose"])
def test_a_bad_key_file_is_one_error_line_and_nothing_is_written(
        case: str, world: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    key = tmp_path / "k"
    if case == "directory":
        key.mkdir()
    elif case == "pem":
        run_main(["keys", "generate", "--out", tmp_path / "pair"], capsys).check()
        key = tmp_path / "pair/trainfer.key"
    elif case == "short":
        key.write_bytes(os.urandom(31))
    elif case == "loose":
        key.write_bytes(world["key"].read_bytes())
        key.chmod(0o644)
    out = tmp_path / "b"
    r = run_main(["export", world["run"], "--out", out, "--encrypt-key", key, "-q"], capsys)
    if case == "loose":  # a warning, then the work
        r.check()
        assert "warning:" in r.stderr and "chmod 600" in r.stderr
        assert trainfer.load(out, key=world["key"]).predict(X).shape == (len(X),)
        return
    words = {"missing": ["no such file"], "directory": ["directory"], "pem": ["PEM"], "short": ["31 bytes"]}[case]
    assert_user_error(r, mentions=["--encrypt-key", *words])
    assert not out.exists() and not list(tmp_path.glob(".b.*"))


def test_keys_generate_symmetric_and_the_environment_variable(world: dict[str, Path], tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str],
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    run_main(["keys", "generate", "--symmetric", "--out", tmp_path / "k"], capsys).check()
    key = tmp_path / "k/bundle.key"
    assert len(key.read_bytes()) == 32 and stat.S_IMODE(key.stat().st_mode) == 0o600
    assert_user_error(run_main(["keys", "generate", "--symmetric", "--out", tmp_path / "k"], capsys),
                      mentions=["already exist"])
    monkeypatch.setenv("TRAINFER_BUNDLE_KEY", str(key))
    run_main(["export", world["run"], "--out", tmp_path / "b", "-q"], capsys).check()
    assert (tmp_path / "b/model.onnx.enc").exists() and not (tmp_path / "b/model.onnx").exists()
    np.testing.assert_array_equal(trainfer.load(tmp_path / "b", key=key).predict(X),
                                  trainfer.load(world["plain"]).predict(X))


def test_optimize_encrypts_and_keeps_its_candidate_graphs_off_the_disk(
        world: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    scratch = tmp_path / "tmpdir"
    scratch.mkdir()
    monkeypatch.setenv("TMPDIR", str(scratch))
    out = tmp_path / "out" / "opt"
    with watching([scratch, tmp_path / "out"], _needle(world)) as found:
        run_cli("optimize", world["run"], "--out", out, "--variant", "int8-dynamic", "--encrypt-key", world["key"],
                "-q").check()
    assert found == [] and not [p for p in scratch.rglob("*") if p.suffix == ".onnx"]
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "model.onnx.enc"]
    assert trainfer.load(out, key=world["key"]).predict_proba(X).shape == (len(X), 3)


def test_signed_and_encrypted_bundles_serve_with_a_key_file(world: dict[str, Path], enc: Path, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    import httpx

    b = copy_bundle(enc, tmp_path / "signed-enc")
    run_main(["keys", "generate", "--out", tmp_path / "pair"], capsys).check()
    run_main(["sign", b, "--key", tmp_path / "pair/trainfer.key"], capsys).check()
    pub = tmp_path / "pair/trainfer.pub"
    assert trainfer.load(b, trust=pub, key=world["key"]).signed
    plain = trainfer.load(world["plain"])
    with running_server(b, ["--trust", pub, "--key-file", world["key"], "--no-access-log"], tmp_path / "srv") as srv:
        rows = [dict(zip(plain.features.inputs.column_names, map(float, x), strict=True)) for x in X]
        r = httpx.post(f"{srv.url}/predict", json={"rows": rows}, timeout=10)
        assert r.status_code == 200, r.text
        np.testing.assert_allclose(r.json()["probabilities"], plain.predict_proba(X), rtol=1e-6, atol=1e-7)
    r = run_cli("serve", b, "--key-file", world["other"], "--port", "8765")
    assert_user_error(r, mentions=["wrong key or tampered bundle"])
