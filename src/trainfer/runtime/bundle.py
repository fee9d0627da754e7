"""The bundle format: a directory with manifest.json and model.onnx, every byte covered by a hash.

manifest.json lists the sha256 of every other file, and carries ``manifest_sha256``: the sha256 of
its own bytes with that value replaced by zeros. Changing any byte of any file is detected.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

from trainfer.errors import BundleError

FORMAT = "trainfer-bundle"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
MODEL = "model.onnx"
_PLACEHOLDER = "0" * 64
_SELF_HASH = re.compile(rb'"manifest_sha256": "([0-9a-f]{64})"')


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def manifest_bytes(manifest: dict[str, Any]) -> bytes:
    """Serialize a manifest with its self-hash filled in (the key is placed last)."""
    body = {k: v for k, v in manifest.items() if k != "manifest_sha256"}
    body["manifest_sha256"] = _PLACEHOLDER
    raw = (json.dumps(body, indent=2, default=_plain) + "\n").encode()
    digest = hashlib.sha256(raw).hexdigest()
    return raw.replace(f'"manifest_sha256": "{_PLACEHOLDER}"'.encode(), f'"manifest_sha256": "{digest}"'.encode())


def _plain(obj: Any) -> Any:
    if hasattr(obj, "tolist"):
        return obj.tolist()
    raise TypeError(f"not JSON serializable: {type(obj).__name__}")


def read_manifest(bundle: Path, sha256: str | None = None) -> dict[str, Any]:
    """Read and verify a bundle: the manifest's own hash, then every file it lists.

    ``sha256``: the digest a verified signature gives for manifest.json. The bytes parsed here are checked
    against it, so that a manifest swapped after the signature was checked is refused, not trusted.

    Raises BundleError naming the file that is missing or does not match; nothing is loaded then.
    """
    bundle = Path(bundle)
    path = bundle / MANIFEST
    if not path.is_file():
        raise _not_a_bundle(bundle)
    raw = path.read_bytes()
    if sha256 is not None and hashlib.sha256(raw).hexdigest() != sha256:
        raise BundleError(f"{MANIFEST} in {bundle} changed after its signature was verified",
                          hint="something is writing to the bundle; load it again once it is left alone")
    found = _SELF_HASH.findall(raw)
    if len(found) != 1:
        raise BundleError(f"{MANIFEST} in {bundle} was modified: its manifest_sha256 field is damaged")
    claimed = found[0].decode()
    actual = hashlib.sha256(raw.replace(found[0], _PLACEHOLDER.encode())).hexdigest()
    if actual != claimed:
        raise BundleError(f"{MANIFEST} in {bundle} was modified after export (sha256 mismatch)",
                          hint="re-export the bundle; do not edit bundle files by hand")
    try:
        manifest = json.loads(raw)
    except ValueError:
        raise BundleError(f"{MANIFEST} in {bundle} is not valid JSON") from None
    if manifest.get("format") != FORMAT or manifest.get("format_version", 0) > FORMAT_VERSION:
        raise BundleError(f"{bundle} is not a trainfer bundle of format version <= {FORMAT_VERSION}",
                          hint="upgrade trainfer to read newer bundles")
    for name, digest in manifest.get("files", {}).items():
        # a bundle is flat: a listed name with a path (../x, /etc/x) would make loading read outside it
        if Path(name).name != name or name in (".", ".."):
            raise BundleError(f"{MANIFEST} in {bundle} lists {name!r}, which is not a file name inside the bundle",
                              hint="re-export the bundle; do not edit bundle files by hand")
        f = bundle / name
        if not f.is_file():
            raise BundleError(f"{name} is missing from bundle {bundle}")
        if sha256_file(f) != digest:
            raise BundleError(f"{name} in bundle {bundle} does not match its sha256 in the manifest",
                              hint="the file was modified or corrupted; re-export the bundle")
    return manifest


def read_listed(bundle: Path, manifest: dict[str, Any], name: str) -> bytes:
    """The bytes of ``name``, a file the manifest lists, read once and checked against its sha256 in memory.

    What is loaded is then exactly what was checked: hashing the file and letting onnxruntime open it again
    would leave a window in which a file swapped on disk (after read_manifest, or after a signature was
    verified) is loaded unchecked. ``name`` must be a plain file name of the bundle (no path), whatever the
    manifest says.
    """
    digest = manifest.get("files", {}).get(name) if isinstance(name, str) else None
    if digest is None or Path(name).name != name or name in (".", ".."):
        raise BundleError(f"{name!r} is not a file listed in the manifest of bundle {bundle}",
                          hint="re-export the bundle; do not edit bundle files by hand")
    try:
        data = (Path(bundle) / name).read_bytes()
    except OSError as exc:
        raise BundleError(f"cannot read {name} in bundle {bundle}: {exc.strerror}") from None
    if hashlib.sha256(data).hexdigest() != digest:
        raise BundleError(f"{name} in bundle {bundle} does not match its sha256 in the manifest",
                          hint="the file was modified or corrupted; re-export the bundle")
    return data


# Files that only a training run directory holds (see trainfer.training); runtime must not import training.
_RUN_FILES = ("summary.json", "recipe.yaml", "metrics.jsonl", "checkpoints")


def _not_a_bundle(path: Path) -> BundleError:
    """Why ``path`` is not a bundle, and what to pass instead: a run is exported first; the output of
    ``trainfer run`` holds its bundle one or two levels down."""
    export_hint = f"export it first: trainfer export {path} --out BUNDLE (or trainfer optimize for a faster one)"
    if not path.exists():
        return BundleError(f"bundle {path} not found (expected a directory with {MANIFEST} and {MODEL})",
                           hint="create one with `trainfer export RUN --out BUNDLE`")
    if not path.is_dir():
        return BundleError(f"bundle {path} is a file; a bundle is a directory with {MANIFEST} and {MODEL}",
                           hint="pass the --out directory of `trainfer export` or `trainfer optimize`")
    for inner in (path / "bundle", path / "run" / "bundle"):
        if (inner / MANIFEST).is_file():
            return BundleError(f"{path} is not a bundle; it holds one at {inner}", hint=f"pass {inner}")
    if (path / "tune.json").is_file() or ((path / "best.yaml").is_file() and (path / "trials").is_dir()):
        return BundleError(f"{path} is a tuning study, not a bundle: its best trial's run is {path / 'best'}",
                           hint=f"export it first: trainfer export {path / 'best'} --out BUNDLE")
    if any((path / name).exists() for name in _RUN_FILES):
        return BundleError(f"{path} is a training run, not a bundle: a run is exported before it predicts or serves",
                           hint=export_hint)
    return BundleError(f"{MANIFEST} is missing from bundle {path}",
                       hint="a bundle is the --out directory of `trainfer export` or `trainfer optimize`")
