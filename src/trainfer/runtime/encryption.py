"""Encrypted bundles: model.onnx.enc is the ONNX graph under AES-256-GCM; the plaintext lives in memory only.

The manifest's ``encryption`` section holds the algorithm, the 96-bit random nonce and a key id (a hash of the
key: it tells "another key" from "tampered" without revealing the key). The associated data is a sha256 over the
whole manifest except its ``files`` list and its own hash (those cover the ciphertext, which cannot cover
itself): changing the schema, preprocessing or labels and re-hashing the manifest still fails decryption.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from trainfer._imports import require_extras
from trainfer.errors import BundleError

ENCRYPTED_MODEL = "model.onnx.enc"
ALGORITHM = "AES-256-GCM"
_NONCE_BYTES = 12
_UNBOUND = ("files", "manifest_sha256")


def key_id(key: bytes) -> str:
    """A public name for a key: 16 hex digits of a domain-separated sha256 (not the key, not a hash of it alone)."""
    return hashlib.sha256(b"trainfer bundle key id\0" + key).hexdigest()[:16]


def binding(manifest: dict[str, Any]) -> bytes:
    """The associated data: sha256 of the manifest's canonical JSON without the fields that hash the files."""
    body = {k: v for k, v in manifest.items() if k not in _UNBOUND}
    canon = json.dumps(body, sort_keys=True, separators=(",", ":"), default=_plain).encode()
    return hashlib.sha256(b"trainfer bundle manifest\0" + canon).digest()


def _plain(obj: Any) -> Any:
    if hasattr(obj, "tolist"):
        return obj.tolist()
    raise TypeError(f"not JSON serializable: {type(obj).__name__}")


def encryption_record(key: bytes) -> dict[str, Any]:
    """The manifest's ``encryption`` section for a fresh encryption with ``key`` (a new random nonce)."""
    return {"algorithm": ALGORITHM, "file": ENCRYPTED_MODEL, "nonce": os.urandom(_NONCE_BYTES).hex(),
            "key_id": key_id(key), "associated_data": "sha256 of the manifest without its files and manifest_sha256"}


def encrypt(plaintext: bytes, key: bytes, manifest: dict[str, Any]) -> bytes:
    """Ciphertext and tag of ``plaintext`` under ``key``, with the nonce of ``manifest['encryption']``."""
    require_extras("secure")
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    nonce = bytes.fromhex(manifest["encryption"]["nonce"])
    return AESGCM(key).encrypt(nonce, plaintext, binding(manifest))


def decrypt(bundle: Path, manifest: dict[str, Any], key: bytes, data: bytes) -> bytes:
    """The ONNX bytes of an encrypted bundle whose manifest was verified; a wrong key or a changed byte is an
    error, never a garbage model (GCM's tag is checked before anything is returned). ``data``: the ciphertext,
    read by the caller once and checked against the manifest (bundle.read_listed), never re-read here."""
    require_extras("secure")
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    enc = manifest.get("encryption") or {}
    if enc.get("algorithm") != ALGORITHM:
        raise BundleError(f"bundle {bundle} is encrypted with {enc.get('algorithm')!r}, which this trainfer cannot "
                          f"decrypt (it reads {ALGORITHM})")
    if enc.get("key_id") != key_id(key):
        raise BundleError(f"cannot decrypt {bundle}: wrong key or tampered bundle (it was encrypted with key id "
                          f"{enc.get('key_id')}; the given key's id is {key_id(key)})",
                          hint="pass the bundle key it was exported with")
    try:
        nonce = bytes.fromhex(enc["nonce"])
        return AESGCM(key).decrypt(nonce, data, binding(manifest))
    except (InvalidTag, ValueError, KeyError):
        raise BundleError(f"cannot decrypt {bundle}: wrong key or tampered bundle (the authentication tag of "
                          f"{ENCRYPTED_MODEL} does not match)", hint="re-export the bundle") from None
