"""Review of signed and encrypted bundles and serving security as a new user and a security reviewer (issue 12):
what is loaded must be what was verified, a bundle reached through a link signs and verifies, and a key passed
where its file's path belongs is never echoed into an error line."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import assert_user_error, run_main

import trainfer
from trainfer.errors import TrainferError

X = np.array([[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3], [5.9, 3.0, 4.2, 1.5], [6.0, 2.2, 5.0, 1.5]])


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two tiny iris bundles that predict differently (A signed), a key pair and a bundle key."""
    from trainfer.exporting import export
    from trainfer.runtime.keys import generate_signing_keys, generate_symmetric_key
    from trainfer.runtime.signing import sign_bundle
    from trainfer.training import train

    root = tmp_path_factory.mktemp("newuser")
    w: dict[str, Path] = {"root": root}
    for name, seed, epochs in (("a", 1, 3), ("b", 7, 1)):
        run = train(data="iris", model="mlp", epochs=epochs, seed=seed, out=root / f"run-{name}", quiet=True,
                    overrides=["model.hidden=[8]"])
        w[f"run_{name}"] = run.path
        w[name] = export(run, root / f"bundle-{name}")
    keys = generate_signing_keys(root / "keys")
    w["priv"], w["pub"] = Path(keys["private_key"]), Path(keys["public_key"])
    w["bundle_key"] = Path(generate_symmetric_key(root / "keys")["key"])
    w["signed"] = Path(shutil.copytree(w["a"], root / "signed"))
    sign_bundle(w["signed"], w["priv"])
    # the attacker's model must be told apart by its answers
    assert not np.allclose(trainfer.load(w["a"]).predict_proba(X), trainfer.load(w["b"]).predict_proba(X))
    return w


def _swap_in(bundle: Path, other: Path, names: tuple[str, ...]) -> None:
    for name in names:
        shutil.copyfile(other / name, bundle / name)


# ---- what is loaded is what was verified ------------------------------------------------------------------


def test_a_bundle_swapped_right_after_its_signature_was_verified_is_refused_not_loaded(
        world: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An attacker who can write to the bundle replaces manifest.json and model.onnx with another self-consistent
    (unsigned) pair just after the signature check, before they are read for loading. Before the fix load() parsed
    and ran whatever was on disk then: the attacker's model, reported as signed."""
    import trainfer.runtime.signing as signing

    bundle = Path(shutil.copytree(world["signed"], tmp_path / "b"))
    real = signing.verify_bundle

    def verify_then_lose_the_race(path: Path, trust: Path) -> dict:
        record = real(path, trust)  # the real verifier, on the untouched bundle
        _swap_in(bundle, world["b"], ("manifest.json", "model.onnx"))  # the attacker wins the race here
        return record

    monkeypatch.setattr(signing, "verify_bundle", verify_then_lose_the_race)
    with pytest.raises(TrainferError, match="changed after its signature was verified"):
        trainfer.load(bundle, trust=world["pub"])


def test_a_graph_swapped_after_its_hash_was_checked_is_not_loaded(
        world: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """read_manifest hashed model.onnx, then onnxruntime opened the file again: a graph written in between ran
    unchecked. Now the graph is read once, checked in memory, and those bytes are what onnxruntime gets."""
    import trainfer.runtime.predictor as predictor

    bundle = Path(shutil.copytree(world["a"], tmp_path / "b"))
    real = predictor.read_manifest

    def check_then_lose_the_race(path: Path, *args: object) -> dict:
        manifest = real(path, *args)
        _swap_in(bundle, world["b"], ("model.onnx",))
        return manifest

    monkeypatch.setattr(predictor, "read_manifest", check_then_lose_the_race)
    with pytest.raises(TrainferError, match=r"model.onnx in bundle .* does not match its sha256"):
        trainfer.load(bundle)


def test_a_signature_swapped_during_verification_does_not_supply_the_digests(
        world: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The digests load() trusts come from the very signature bytes that were verified: model.sig replaced by a
    forged one (another key's) while model_signing checks the genuine one changes nothing that is returned."""
    import model_signing

    from trainfer.runtime.keys import generate_signing_keys
    from trainfer.runtime.signing import sign_bundle, verify_bundle

    bundle = Path(shutil.copytree(world["signed"], tmp_path / "b"))
    forged_dir = Path(shutil.copytree(world["b"], tmp_path / "forged"))
    other = generate_signing_keys(tmp_path / "other")
    sign_bundle(forged_dir, other["private_key"])
    real = model_signing.verifying.Config.verify

    def verify_while_swapped(self: object, model_path: Path, signature_path: Path) -> None:
        real(self, model_path, signature_path)
        shutil.copyfile(forged_dir / "model.sig", bundle / "model.sig")  # swapped once the check is done

    monkeypatch.setattr(model_signing.verifying.Config, "verify", verify_while_swapped)
    record = verify_bundle(bundle, world["pub"])
    genuine = {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
               for p in (world["signed"] / "manifest.json", world["signed"] / "model.onnx")}
    assert record["sha256"] == genuine


def test_a_listed_file_name_outside_the_bundle_is_never_read_for_the_model(world: dict[str, Path],
                                                                          tmp_path: Path) -> None:
    """The encrypted graph's file name comes from the manifest: a name with a path is refused (read_listed)."""
    from trainfer.runtime.bundle import read_listed

    manifest = {"files": {"../bundle-b/model.onnx": "0" * 64}}
    with pytest.raises(TrainferError, match="not a file listed"):
        read_listed(world["a"], manifest, "../bundle-b/model.onnx")


# ---- links ------------------------------------------------------------------------------------------------


def test_a_bundle_reached_through_a_symlink_signs_verifies_and_loads(
        world: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """bundles/current -> bundles/v3 is how deployments switch versions. Before the fix `trainfer sign LINK`
    was a traceback (exit 1) and `verify LINK` said the signature was damaged."""
    target = Path(shutil.copytree(world["a"], tmp_path / "v3"))
    link = tmp_path / "current"
    link.symlink_to(target, target_is_directory=True)
    run_main(["sign", link, "--key", world["priv"]], capsys).check()
    assert (target / "model.sig").is_file()
    verified = run_main(["verify", link, "--trust", world["pub"]], capsys).check()
    assert "verified" in verified.stdout
    assert trainfer.load(link, trust=world["pub"]).signed


def test_a_symlinked_file_inside_a_bundle_is_one_clear_error_for_sign_and_verify(
        world: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for name in ("plain", "signed"):
        bundle = Path(shutil.copytree(world[name if name == "signed" else "a"], tmp_path / name))
        (bundle / "model.onnx").unlink()
        (bundle / "model.onnx").symlink_to(world["a"] / "model.onnx")
        r = run_main(["sign", bundle, "--key", world["priv"]] if name == "plain"
                     else ["verify", bundle, "--trust", world["pub"]], capsys)
        assert_user_error(r, mentions=["symbolic link"])
        assert "sign the bundle again" not in r.stderr  # not "damaged": the fix is to copy without links


# ---- secrets never in error lines -------------------------------------------------------------------------


def test_a_key_passed_where_its_file_belongs_is_not_echoed(world: dict[str, Path], tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    """`--key "$(base64 bundle.key)"`, a PEM pasted into --key or --ssl-keyfile, or an API key given as
    --api-key-file: the error said "<the secret>: no such file", into terminals and CI logs."""
    import base64
    import secrets

    raw_key = world["bundle_key"].read_bytes()
    pem = world["priv"].read_text()
    token = secrets.token_urlsafe(32)
    rows = tmp_path / "rows.npz"
    np.savez(rows, X=X)
    encrypted = trainfer.export(world["run_a"], tmp_path / "enc", encrypt_key=world["bundle_key"])
    cases = [
        (["predict", encrypted, rows, "--out", tmp_path / "p.csv", "--key", base64.b64encode(raw_key).decode()],
         base64.b64encode(raw_key).decode()),
        (["predict", encrypted, rows, "--out", tmp_path / "p.csv", "--key", raw_key.hex()], raw_key.hex()),
        (["sign", world["a"], "--key", pem], pem.splitlines()[1]),
        (["serve", world["a"], "--api-key-file", token], token),
        (["serve", world["a"], "--ssl-certfile", world["pub"], "--ssl-keyfile", pem], pem.splitlines()[1]),
    ]
    for args, secret in cases:
        r = run_main(args, capsys)
        line = assert_user_error(r, mentions=["value not shown"])
        assert secret not in r.stderr + r.stdout, line
    # a real path that does not exist is still named
    r = run_main(["predict", encrypted, rows, "--out", tmp_path / "p.csv", "--key", tmp_path / "nope.key"], capsys)
    assert_user_error(r, mentions=[str(tmp_path / "nope.key")])


def test_bundle_key_in_the_environment_as_the_key_itself_is_not_echoed_and_encryption_is_announced(
        world: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """TRAINFER_BUNDLE_KEY names a key file; set to the key's hex it was printed in the error. Set to the file,
    it encrypts without any flag on the command line: the export now says so."""
    secret = os.urandom(32).hex()
    monkeypatch.setenv("TRAINFER_BUNDLE_KEY", secret)
    r = run_main(["export", world["run_a"], "--out", tmp_path / "b1"], capsys)
    assert_user_error(r)
    assert secret not in r.stderr
    assert not (tmp_path / "b1").exists()
    monkeypatch.setenv("TRAINFER_BUNDLE_KEY", str(world["bundle_key"]))
    r = run_main(["export", world["run_a"], "--out", tmp_path / "b2"], capsys).check()
    assert "encrypted model.onnx.enc" in r.stdout
    assert sorted(p.name for p in (tmp_path / "b2").iterdir()) == ["manifest.json", "model.onnx.enc"]


def test_a_private_key_of_another_algorithm_is_named_by_its_algorithm_not_as_a_public_key(
        world: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """An Ed25519 private key given to sign was called "a Ed25519PublicKey": wrong kind, wrong article."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    key = tmp_path / "ed.key"
    key.write_bytes(ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    bundle = Path(shutil.copytree(world["a"], tmp_path / "b"))
    line = assert_user_error(run_main(["sign", bundle, "--key", key], capsys), mentions=["an Ed25519 key"])
    assert "PublicKey" not in line
    assert not (bundle / "model.sig").exists()


def test_a_manifest_listing_a_file_outside_the_bundle_is_refused_before_it_is_read(world: dict[str, Path],
                                                                                   tmp_path: Path) -> None:
    """The manifest's self-hash is no protection (anyone can recompute it): a bundle from elsewhere listed
    "../x" or "/abs/x" and loading read and hashed a file outside the bundle."""
    import json

    from trainfer.runtime.bundle import manifest_bytes

    outside = tmp_path / "outside.bin"
    outside.write_bytes(b"not part of any bundle")
    for name in ("../outside.bin", str(outside)):
        bundle = Path(shutil.copytree(world["a"], tmp_path / f"b{len(name)}"))
        manifest = json.loads((bundle / "manifest.json").read_bytes())
        manifest["files"][name] = hashlib.sha256(outside.read_bytes()).hexdigest()
        (bundle / "manifest.json").write_bytes(manifest_bytes(manifest))
        with pytest.raises(TrainferError, match="not a file name inside the bundle"):
            trainfer.load(bundle)
