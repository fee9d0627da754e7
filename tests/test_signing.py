"""Signed bundles (issue 12, item 3; acceptance 4): OpenSSF model-signing with an EC P-256 key, interoperable with
the stock `model_signing` CLI; every changed byte, a swapped signature, a re-signed manifest and an unsigned bundle
are refused by load(trust=), `predict --trust` and `serve --trust` (a real uvicorn process), naming what failed."""

from __future__ import annotations

import errno
import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from _inference_fixtures import copy_bundle, flip_byte
from _serve_fixtures import free_port, running_server
from conftest import assert_user_error, run_cli, run_main
from test_cli_contract import run_blocked

import trainfer
from trainfer.errors import TrainferError

STOCK = Path(sys.executable).parent / "model_signing"  # the OpenSSF tool, installed with the `secure` extra
X = np.array([[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3], [5.9, 3.0, 4.2, 1.5]])


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two tiny iris runs exported, two key pairs, bundle A signed with key A (never modified: tests copy it)."""
    from trainfer.exporting import export
    from trainfer.training import train

    root = tmp_path_factory.mktemp("signing")
    w: dict[str, Path] = {"root": root}
    for i in (1, 2):
        run = train(data="iris", model="mlp", epochs=2, seed=i, out=root / f"run{i}", quiet=True,
                    overrides=["model.hidden=[8]"])
        w[f"plain{i}"] = export(run, root / f"plain{i}")
    for name in ("a", "b"):
        subprocess.run([sys.executable, "-m", "trainfer.cli", "keys", "generate", "--out", root / f"keys-{name}"],
                       check=True, capture_output=True, env={**os.environ, "PYTHONPATH": str(Path(trainfer.__file__)
                                                                                          .parents[1])})
        w[f"priv_{name}"], w[f"pub_{name}"] = root / f"keys-{name}/trainfer.key", root / f"keys-{name}/trainfer.pub"
    w["signed"] = copy_bundle(w["plain1"], root / "signed")
    w["signed2"] = copy_bundle(w["plain2"], root / "signed2")
    for b in ("signed", "signed2"):
        from trainfer.runtime.signing import sign_bundle

        sign_bundle(w[b], w["priv_a"])
    return w


def _refused(bundle: Path, trust: Path) -> str:
    with pytest.raises(TrainferError) as info:
        trainfer.load(bundle, trust=trust)
    return str(info.value)


def test_keys_generate_writes_a_private_key_only_its_owner_reads_and_never_replaces_one(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run_main(["keys", "generate", "--out", tmp_path / "k"], capsys).check()
    priv, pub = tmp_path / "k/trainfer.key", tmp_path / "k/trainfer.pub"
    assert stat.S_IMODE(priv.stat().st_mode) == 0o600
    assert "pub" in pub.name and b"PUBLIC KEY" in pub.read_bytes() and b"PRIVATE KEY" in priv.read_bytes()
    before = priv.read_bytes()
    assert_user_error(run_main(["keys", "generate", "--out", tmp_path / "k"], capsys), mentions=["already exist"])
    assert priv.read_bytes() == before
    run_main(["keys", "generate", "--out", tmp_path / "k", "--force"], capsys).check()
    assert priv.read_bytes() != before and stat.S_IMODE(priv.stat().st_mode) == 0o600
    (tmp_path / "file").write_text("x")
    assert_user_error(run_main(["keys", "generate", "--out", tmp_path / "file"], capsys), mentions=["is a file"])


def test_keys_generate_force_replaces_the_pair_whole_or_not_at_all(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    # The keys were written one after the other: the disk filling up while the public key was written removed the
    # new private key too, leaving the old public key with no private key at all.
    out = tmp_path / "k"
    run_main(["keys", "generate", "--out", out], capsys).check()
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    real_fsync, calls = os.fsync, []

    def fsync(fd: int) -> None:  # the second file's write fails as on a full disk
        calls.append(fd)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    assert_user_error(run_main(["keys", "generate", "--out", out, "--force"], capsys), mentions=["cannot write keys"])
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # the old pair, whole; no temporary left


def test_an_untouched_signed_bundle_verifies_loads_and_the_stock_verifier_accepts_it(
        world: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    r = run_main(["verify", world["signed"], "--trust", world["pub_a"]], capsys).check()
    assert r.stdout.startswith("verified")
    pred = trainfer.load(world["signed"], trust=world["pub_a"])
    assert pred.signed
    np.testing.assert_array_equal(pred.predict_proba(X), trainfer.load(world["plain1"]).predict_proba(X))
    stock = subprocess.run([STOCK, "verify", "key", world["signed"], "--signature", world["signed"] / "model.sig",
                            "--public_key", world["pub_a"]], capture_output=True, text=True, timeout=60)
    assert stock.returncode == 0 and "Verification succeeded" in stock.stdout, stock.stderr
    stock = subprocess.run([STOCK, "verify", "key", world["signed"], "--signature", world["signed"] / "model.sig",
                            "--public_key", world["pub_b"]], capture_output=True, text=True, timeout=60)
    assert stock.returncode != 0  # the stock tool refuses another key too: the test above can fail


def test_a_bundle_signed_by_the_stock_tool_is_accepted(world: dict[str, Path], tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    b = copy_bundle(world["plain1"], tmp_path / "b")
    subprocess.run([STOCK, "sign", "key", b, "--signature", b / "model.sig", "--private_key", world["priv_a"]],
                   check=True, capture_output=True, timeout=60)
    run_main(["verify", b, "--trust", world["pub_a"]], capsys).check()
    assert trainfer.load(b, trust=world["pub_a"]).signed
    assert "another key" in _refused(b, world["pub_b"])


def test_every_single_byte_flip_in_every_file_is_refused_naming_what_failed(world: dict[str, Path],
                                                                            tmp_path: Path) -> None:
    b = copy_bundle(world["signed"], tmp_path / "b")
    files = sorted(p.name for p in b.iterdir())
    assert files == ["manifest.json", "model.onnx", "model.sig"]
    refused = 0
    for name in files:
        path = b / name
        original = path.read_bytes()
        n = len(original)
        positions = sorted({0, n - 1, *range(0, n, max(1, n // 60))})  # every file; ~60 places in each
        for pos in positions:
            flip_byte(path, pos)
            message = _refused(b, world["pub_a"])
            if name != "model.sig":  # the changed file is named
                assert name in message and "changed after it was signed" in message, message
            path.write_bytes(original)
            refused += 1
    assert refused > 150
    assert trainfer.load(b, trust=world["pub_a"]).signed  # restored: loads again


def test_swapped_resigned_unsigned_and_extended_bundles_are_refused(world: dict[str, Path], tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    # a signature from another bundle (same key, same file names)
    b = copy_bundle(world["signed"], tmp_path / "swapped")
    shutil.copyfile(world["signed2"] / "model.sig", b / "model.sig")
    assert "changed after it was signed" in _refused(b, world["pub_a"])
    # the manifest edited (and its self-hash fixed), then re-signed with another key
    from trainfer.runtime import manifest_bytes

    b = copy_bundle(world["signed"], tmp_path / "resigned")
    manifest = json.loads((b / "manifest.json").read_text())
    manifest["labels"] = list(reversed(manifest["labels"]))
    (b / "manifest.json").write_bytes(manifest_bytes(manifest))
    run_main(["sign", b, "--key", world["priv_b"], "--force"], capsys).check()
    assert "signed by another key" in _refused(b, world["pub_a"])
    assert trainfer.load(b, trust=world["pub_b"]).signed  # what key B signed, key B vouches for
    # unsigned
    assert "not signed" in _refused(world["plain1"], world["pub_a"])
    # a file added after signing
    b = copy_bundle(world["signed"], tmp_path / "extended")
    (b / "notes.txt").write_text("added later\n")
    assert "notes.txt" in _refused(b, world["pub_a"])
    # a truncated signature file
    b = copy_bundle(world["signed"], tmp_path / "truncated")
    (b / "model.sig").write_bytes((b / "model.sig").read_bytes()[:100])
    assert "model.sig" in _refused(b, world["pub_a"]) and "damaged" in _refused(b, world["pub_a"])
    r = run_main(["verify", b, "--trust", world["pub_a"]], capsys)
    assert_user_error(r, mentions=["model.sig", "damaged"])


def test_predict_with_trust_refuses_bad_bundles_and_predicts_from_a_good_one(
        world: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    np.savez(tmp_path / "x.npz", X=X.astype(np.float32))
    out = tmp_path / "p.csv"
    run_main(["predict", world["signed"], tmp_path / "x.npz", "--out", out, "--trust", world["pub_a"], "-q"],
             capsys).check()
    assert len(out.read_text().splitlines()) == 4
    flipped = copy_bundle(world["signed"], tmp_path / "flipped")
    flip_byte(flipped / "model.onnx", (flipped / "model.onnx").stat().st_size // 2)
    for bundle, trust, words in [(flipped, world["pub_a"], ["model.onnx", "changed"]),
                                 (world["plain1"], world["pub_a"], ["not signed"]),
                                 (world["signed"], world["pub_b"], ["another key"])]:
        r = run_main(["predict", bundle, tmp_path / "x.npz", "--out", tmp_path / "q.csv", "--trust", trust], capsys)
        assert_user_error(r, mentions=words)
        assert not (tmp_path / "q.csv").exists()


def test_serve_with_trust_starts_on_a_signed_bundle_and_refuses_to_start_on_a_bad_one(
        world: dict[str, Path], tmp_path: Path) -> None:
    import httpx

    with running_server(world["signed"], ["--trust", world["pub_a"], "--no-access-log"], tmp_path / "good") as srv:
        rows = [dict(zip(trainfer.load(world["plain1"]).features.inputs.column_names, map(float, x), strict=True))
                for x in X]
        r = httpx.post(f"{srv.url}/predict", json={"rows": rows}, timeout=10)
        assert r.status_code == 200, r.text
        np.testing.assert_allclose(r.json()["probabilities"], trainfer.load(world["plain1"]).predict_proba(X),
                                   rtol=1e-6, atol=1e-7)
    flipped = copy_bundle(world["signed"], tmp_path / "flipped")
    flip_byte(flipped / "manifest.json", 40)
    for bundle, trust, words in [(flipped, world["pub_a"], ["manifest.json"]),
                                 (world["plain1"], world["pub_a"], ["not signed"]),
                                 (world["signed"], world["pub_b"], ["another key"])]:
        r = run_cli("serve", bundle, "--trust", trust, "--port", free_port())
        assert_user_error(r, mentions=words)


@pytest.mark.parametrize("case", ["missing", "directory", "public", "secp256k1", "ed25519", "random", "password"])
def test_a_wrong_signing_key_is_one_error_line_and_no_signature_is_written(
        case: str, world: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519

    key = tmp_path / "key.pem"
    pem = serialization.Encoding.PEM
    pkcs8 = serialization.PrivateFormat.PKCS8
    if case == "directory":
        key.mkdir()
    elif case == "public":
        key = world["pub_a"]
    elif case in ("secp256k1", "ed25519"):
        k = ec.generate_private_key(ec.SECP256K1()) if case == "secp256k1" else ed25519.Ed25519PrivateKey.generate()
        key.write_bytes(k.private_bytes(pem, pkcs8, serialization.NoEncryption()))
    elif case == "random":
        key.write_bytes(os.urandom(300))
    elif case == "password":
        k = ec.generate_private_key(ec.SECP256R1())
        key.write_bytes(k.private_bytes(pem, pkcs8, serialization.BestAvailableEncryption(b"secret")))
    b = copy_bundle(world["plain1"], tmp_path / "b")
    words = {"missing": ["no such file"], "directory": ["directory"], "public": ["public key"],
             "secp256k1": ["secp256k1"], "ed25519": ["Ed25519"], "random": ["not a PEM private key"],
             "password": ["password"]}[case]
    assert_user_error(run_main(["sign", b, "--key", key], capsys), mentions=[str(key), *words])
    assert sorted(p.name for p in b.iterdir()) == ["manifest.json", "model.onnx"]
    assert not list(tmp_path.glob(".*.tmp"))


def test_trust_must_be_a_public_key_and_a_loose_private_key_warns_but_signs(
        world: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert_user_error(run_main(["verify", world["signed"], "--trust", world["priv_a"]], capsys),
                      mentions=["private key"])
    (tmp_path / "junk.pub").write_bytes(os.urandom(100))
    assert_user_error(run_main(["verify", world["signed"], "--trust", tmp_path / "junk.pub"], capsys),
                      mentions=["not a PEM public key"])
    assert_user_error(run_main(["verify", world["signed"], "--trust", tmp_path / "nope.pub"], capsys),
                      mentions=["no such file"])
    loose = tmp_path / "loose.key"
    shutil.copyfile(world["priv_a"], loose)
    loose.chmod(0o644)
    b = copy_bundle(world["plain1"], tmp_path / "b")
    r = run_main(["sign", b, "--key", loose], capsys).check()
    assert "warning:" in r.stderr and "chmod 600" in r.stderr
    assert trainfer.load(b, trust=world["pub_a"]).signed
    # an existing signature is replaced only with --force
    assert_user_error(run_main(["sign", b, "--key", world["priv_b"]], capsys), mentions=["already signed"])
    assert trainfer.load(b, trust=world["pub_a"]).signed


def test_signing_without_the_secure_extra_names_it(world: dict[str, Path], tmp_path: Path) -> None:
    r = run_blocked(["cryptography", "model_signing"], ["sign", str(world["plain1"]), "--key", str(world["priv_a"])],
                    tmp_path)
    assert r.returncode == 2 and "trainfer[secure]" in r.stderr and "Traceback" not in r.stderr, r.stderr
