"""Signed bundles in the OpenSSF model-signing format (``model_signing`` 1.1, an EC key, offline).

The signature is ``model.sig`` inside the bundle: a Sigstore bundle (DSSE envelope, in-toto statement) over the
sha256 of every other file. It is listed as ignored, relative to the bundle, as the stock tool does, so both
``model_signing verify key BUNDLE --signature BUNDLE/model.sig --public_key trainfer.pub`` and trainfer accept
what the other signed. Verification names what failed: not signed, signed by another key, which file changed,
or a damaged signature file.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any

from trainfer._imports import require_extras
from trainfer.errors import BundleError, OutputError
from trainfer.runtime.bundle import MANIFEST, _not_a_bundle, read_manifest
from trainfer.runtime.keys import private_key, public_key

SIGNATURE = "model.sig"


def _hashing() -> Any:
    import model_signing

    return model_signing.hashing.Config().set_ignored_paths(paths=[SIGNATURE])


def sign_bundle(bundle: str | Path, key: str | Path, force: bool = False) -> dict[str, Any]:
    """Sign ``bundle`` (its hashes verified first) with the EC private key file ``key``; writes model.sig.

    An existing signature is replaced only with ``force``. The signature is made beside the bundle and
    renamed into it: a failure leaves the old one (or none), never half of one.
    """
    require_extras("secure")
    bundle = _real(Path(bundle))
    read_manifest(bundle)  # never sign a bundle that is already damaged
    private_key(key, "--key")
    target = bundle / SIGNATURE
    if target.exists() and not force:
        raise OutputError(f"bundle {bundle} is already signed ({SIGNATURE} exists)",
                          hint="pass --force to replace its signature")
    import model_signing

    fd, name = tempfile.mkstemp(prefix=f".{bundle.name}.sig.", suffix=".tmp", dir=bundle.resolve().parent)
    os.close(fd)
    tmp = Path(name)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            model_signing.signing.Config().use_elliptic_key_signer(private_key=key).set_hashing_config(
                _hashing()).sign(bundle, tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    except OSError as exc:
        raise OutputError(f"cannot write {target}: {exc.strerror}") from None
    except ValueError as exc:  # model_signing refuses symbolic links inside the bundle
        raise BundleError(f"cannot sign {bundle}: {_symlink_text(str(exc))}",
                          hint="a signed bundle holds plain files: copy it without links (cp -rL) and sign the copy"
                          ) from None
    finally:
        tmp.unlink(missing_ok=True)
    return {"bundle": str(bundle), "signature": str(target), "signed_files": signed_files(target)}


def signed_files(signature: Path) -> list[str]:
    """The file names a signature covers, read from its (already verified) in-toto statement."""
    return sorted(_signed_digests(signature.read_bytes()))


def _signed_digests(raw: bytes) -> dict[str, str]:
    """File name -> sha256 hex of the files a signature's in-toto statement lists (``raw``: the signature's
    bytes, the very bytes that were verified)."""
    envelope = json.loads(raw)["dsseEnvelope"]
    statement = json.loads(base64.b64decode(envelope["payload"]))
    return {r["name"]: r["digest"] for r in statement["predicate"]["resources"] if r.get("algorithm") == "sha256"}


def _real(bundle: Path) -> Path:
    """A bundle reached through a symbolic link (bundles/current -> bundles/v3) is its target: model_signing
    refuses a link as the model path, and the signature covers the files, not the directory's name."""
    return bundle.resolve() if bundle.is_symlink() else bundle


def _symlink_text(text: str) -> str:
    link = re.search(r"Cannot use '([^']*)' because it is a symlink", text)
    return f"{link.group(1)} is a symbolic link" if link else text.splitlines()[0][:200]


def verify_bundle(bundle: str | Path, trust: str | Path) -> dict[str, Any]:
    """Check that ``bundle`` was signed by the private half of the public key file ``trust`` and that no byte
    of it changed since; raise BundleError naming what failed. Returns what was verified."""
    require_extras("secure")
    shown, bundle = Path(bundle), _real(Path(bundle))
    if not (bundle / MANIFEST).is_file():
        raise _not_a_bundle(shown)
    public_key(trust, "--trust")
    sig = bundle / SIGNATURE
    if not sig.is_file():
        raise BundleError(f"bundle {shown} is not signed (no {SIGNATURE}), and --trust requires a signature",
                          hint=f"sign it: trainfer sign {shown} --key PRIVATE_KEY")
    import model_signing
    from cryptography.exceptions import InvalidSignature

    # The signature is read once, and model_signing verifies a private copy of those bytes: the digests used
    # below (and by load) then come from the statement that was verified, even if model.sig is swapped meanwhile.
    raw = sig.read_bytes()
    try:
        with tempfile.TemporaryDirectory(prefix="trainfer-verify-") as scratch:
            copy = Path(scratch) / SIGNATURE
            copy.write_bytes(raw)
            with contextlib.redirect_stdout(io.StringIO()):  # the verifier prints a warning for old formats
                model_signing.verifying.Config().use_elliptic_key_verifier(public_key=trust).set_hashing_config(
                    _hashing()).verify(bundle, copy)
        digests = _signed_digests(raw)
        files = sorted(digests)
    except InvalidSignature:
        raise BundleError(f"{SIGNATURE} in {shown} does not verify with {trust}: the signature or the file list "
                          "it signs was altered", hint="sign the bundle again with the trusted key") from None
    except ValueError as exc:
        raise _why(shown, trust, str(exc)) from None
    except OSError as exc:  # the private copy could not be made, or a file could not be read
        raise BundleError(f"cannot verify {shown}: {exc.strerror} ({exc.filename})") from None
    except Exception:  # a truncated or edited file: JSON, base64 or schema errors from the parser
        raise BundleError(f"{SIGNATURE} in {shown} is damaged (truncated or edited): it is not a readable "
                          "signature", hint="sign the bundle again") from None
    # a signature made with extra --ignore-paths could leave the manifest (and through it the model) unsigned
    if MANIFEST not in digests:
        raise BundleError(f"the signature of {shown} does not cover {MANIFEST}",
                          hint="sign the whole bundle (without --ignore-paths)")
    manifest = read_manifest(bundle, digests[MANIFEST])  # the signed manifest, not whatever is there now
    missing = sorted(set(manifest.get("files", {})) - set(files))
    if missing:
        raise BundleError(f"the signature of {shown} does not cover {', '.join(missing)}",
                          hint="sign the whole bundle (without --ignore-paths)")
    return {"bundle": str(shown), "verified": True, "trust": str(trust), "signed_files": files, "sha256": digests}


def _why(bundle: Path, trust: str | Path, text: str) -> BundleError:
    if "because it is a symlink" in text:  # model_signing hashes plain files only
        return BundleError(f"cannot verify {bundle}: {_symlink_text(text)}",
                           hint="a signed bundle holds plain files: copy it without links (cp -rL)")
    if text.startswith("Key mismatch"):
        return BundleError(f"bundle {bundle} is signed by another key, not the one in {trust}",
                           hint="pass the public key of whoever signed it, or sign it again with a trusted key")
    if text.startswith("Signature mismatch"):
        changed = [part.split("'")[1] for part in text.split("Hash mismatch for ")[1:]]
        if changed:
            return BundleError(f"{', '.join(changed)} in bundle {bundle} changed after it was signed",
                               hint="the file was modified or corrupted; get the bundle again from its signer")
        extra = re.search(r"Extra files found in model '[^']*': ([^\"\]]+)", text)
        if extra:
            return BundleError(f"bundle {bundle} holds files that were not signed: {extra.group(1)}",
                               hint="remove them, or sign the bundle again")
        gone = re.search(r"Missing files in model '[^']*': ([^\"\]]+)", text)
        if gone:
            return BundleError(f"signed files are missing from bundle {bundle}: {gone.group(1)}")
    return BundleError(f"{SIGNATURE} in {bundle} is damaged or does not match: {text.splitlines()[0][:200]}",
                       hint="sign the bundle again")
