"""Write a bundle directory atomically: build it under a temporary name, then rename it into place."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from pathlib import Path
from typing import Any

from trainfer._atomic import check_output, write_dir
from trainfer.errors import OutputError
from trainfer.runtime.bundle import FORMAT, FORMAT_VERSION, MANIFEST, MODEL, manifest_bytes, sha256_file
from trainfer.runtime.encryption import ENCRYPTED_MODEL, encrypt, encryption_record


def check_bundle_out(out: str | Path, force: bool = False) -> Path:
    """Refuse, before any work, a bundle --out that cannot be written or must not be replaced: --force
    replaces a bundle, never a run or another directory that happens to be there."""
    out = check_output(out, kind="dir", force=force)
    if out.is_dir() and any(out.iterdir()) and not (out / MANIFEST).is_file():
        raise OutputError(f"--force replaces a bundle only, and {out} holds other files (not a bundle)",
                          hint="choose another --out")
    return out


def write_bundle(out: Path, fill: Callable[[Path], dict[str, Any]], force: bool = False,
                 key: bytes | None = None) -> Path:
    """``fill(tmpdir)`` writes the bundle's files and returns the manifest fields; hashes are added here.

    With ``key`` (a 32-byte bundle key) ``fill`` writes no model file: it returns the ONNX graph's bytes under
    ``model_bytes``, and they are written encrypted (model.onnx.enc, AES-256-GCM bound to the manifest), so
    the plaintext never reaches the disk.

    An OS error on the way (disk full, read-only, no permission), even one an exporter re-raised as its own
    error, becomes an OutputError naming ``out``; the temporary directory is removed, the old bundle kept.
    """
    out = check_bundle_out(out, force)

    def build(tmp: Path) -> None:
        fields = fill(tmp)
        model = fields.pop("model_bytes", None)
        manifest = {"format": FORMAT, "format_version": FORMAT_VERSION,
                    "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), **fields}
        if key is not None:
            if model is None or (tmp / MODEL).exists():
                raise ValueError("an encrypted bundle's fill returns model_bytes and writes no model.onnx")
            manifest["encryption"] = encryption_record(key)
            (tmp / ENCRYPTED_MODEL).write_bytes(encrypt(model, key, manifest))
        elif model is not None:
            (tmp / MODEL).write_bytes(model)
        manifest["files"] = {p.name: sha256_file(p) for p in sorted(tmp.iterdir()) if p.is_file()}
        (tmp / MANIFEST).write_bytes(manifest_bytes(manifest))

    write_dir(out, build)
    return out
