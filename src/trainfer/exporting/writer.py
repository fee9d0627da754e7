"""Write a bundle directory atomically: build it under a temporary name, then rename it into place."""

from __future__ import annotations

import datetime as dt
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from trainfer.errors import BundleError
from trainfer.runtime.bundle import FORMAT, FORMAT_VERSION, MANIFEST, manifest_bytes, sha256_file


def write_bundle(out: Path, fill: Callable[[Path], dict[str, Any]], force: bool = False) -> Path:
    """``fill(tmpdir)`` writes the bundle's files and returns the manifest fields; hashes are added here."""
    out = Path(out)
    if out.exists() and not force:
        raise BundleError(f"{out} already exists", hint="choose another --out, or pass --force to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        fields = fill(tmp)
        files = {p.name: sha256_file(p) for p in sorted(tmp.iterdir()) if p.is_file()}
        manifest = {"format": FORMAT, "format_version": FORMAT_VERSION,
                    "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                    **fields, "files": files}
        (tmp / MANIFEST).write_bytes(manifest_bytes(manifest))
        if out.exists():  # --force: move the old bundle aside first, so a crash never leaves neither
            old = out.with_name(f".{out.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            out.rename(old)
            tmp.rename(out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
