"""Build the static site of a bundle: index.html, app.js, site.json, the bundle's model.onnx and onnxruntime-web.

The model.onnx of a whole-graph bundle takes raw columns (or UINT8 NHWC images) and returns probabilities and
labels, so the page needs no trainfer code: it parses CSV or decodes images, feeds the raw inputs, and shows
the outputs. site.json carries what the page must know from the manifest (inputs, labels, kind, image size).
"""

from __future__ import annotations

import datetime as dt
import json
from importlib import resources
from pathlib import Path
from typing import Any

from trainfer._atomic import check_output, write_dir
from trainfer.errors import BundleError, OutputError
from trainfer.runtime.bundle import MODEL, read_listed, read_manifest
from trainfer.web.assets import ORT_WEB_VERSION, copy_runtime, ensure_ort_web

SITE_FORMAT = "trainfer-web"
SITE_JSON = "site.json"
PAGE_FILES = ("index.html", "app.js", "csv.js", "png.js", "boot.js")
ORT_DIR = "ort"


def site_spec(manifest: dict[str, Any], bundle: Path) -> dict[str, Any]:
    """What the page reads (site.json), from a verified manifest; refuses bundles a browser cannot run."""
    if "encryption" in manifest:
        raise BundleError(f"bundle {bundle} is encrypted ({manifest['encryption'].get('file', 'model.onnx.enc')}); "
                          "a web page would have to ship its key to every visitor",
                          hint="build the page from a bundle exported without --encrypt-key")
    inp = manifest.get("input", {})
    raw = inp.get("raw_inputs")
    if inp.get("pipeline") != "in_graph" or not raw:
        raise BundleError(f"bundle {bundle} needs trainfer's Python preprocessing (it was exported before the whole "
                          "pipeline moved into model.onnx), so a browser cannot run it",
                          hint="export the run again with this version of trainfer: trainfer export RUN --out BUNDLE")
    kind = "image" if any(r.get("dtype") == "uint8" for r in raw) else "tabular"
    pre = manifest.get("preprocessing", {}).get("input", {})
    return {
        "format": SITE_FORMAT, "format_version": 1,
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "kind": kind, "task": manifest.get("task"),
        "inputs": [{k: r.get(k) for k in ("name", "column", "dtype", "shape")} for r in raw],
        "outputs": manifest.get("outputs", []),
        "labels": manifest.get("labels"),
        "image_size": pre.get("size") if kind == "image" else None,
        "id_column": inp.get("id_column"),
        "model": MODEL, "model_sha256": manifest["files"][MODEL],
        "bundle": {"name": bundle.name, "variant": manifest.get("variant"), "created": manifest.get("created"),
                   "opset": manifest.get("onnx", {}).get("opset")},
        "onnxruntime_web": ORT_WEB_VERSION,
    }


def is_site(path: Path) -> bool:
    try:
        return json.loads((path / SITE_JSON).read_text()).get("format") == SITE_FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def check_site_out(out: str | Path, force: bool = False) -> Path:
    """Refuse, before any work, an --out that cannot be written or must not be replaced: --force replaces a
    site built here, never another directory that happens to be there."""
    out = Path(out)
    # first: --force would not help here, so the "already exists" answer and its hint would mislead
    if out.is_dir() and any(out.iterdir()) and not is_site(out):
        raise OutputError(f"--out {out} holds other files (it is not a site built by `trainfer web`)",
                          hint="choose another --out (an empty or new directory)")
    return check_output(out, kind="dir", force=force)


def build_site(bundle: str | Path, out: str | Path, force: bool = False) -> dict[str, Any]:
    """Build the static site of ``bundle`` at ``out``, atomically (a temporary directory, then a rename).

    Returns a record: the site path and every file's size in bytes. Example:
    ``build_site("bundles/digits", "site/digits")`` then ``trainfer web bundles/digits --serve`` or any static host.
    """
    bundle = Path(bundle)
    manifest = read_manifest(bundle)  # every file checked against its sha256 before anything is copied
    spec = site_spec(manifest, bundle)
    model = read_listed(bundle, manifest, MODEL)  # the bytes copied are the bytes checked
    out = check_site_out(out, force)
    ensure_ort_web()  # installed (or npm missing: an error) before anything is written

    def build(tmp: Path) -> dict[str, int]:
        static = resources.files("trainfer.web") / "static"
        for name in PAGE_FILES:
            (tmp / name).write_bytes((static / name).read_bytes())
        (tmp / MODEL).write_bytes(model)
        (tmp / SITE_JSON).write_text(json.dumps(spec, indent=2) + "\n")
        copy_runtime(tmp / ORT_DIR)
        return {str(p.relative_to(tmp)): p.stat().st_size for p in sorted(tmp.rglob("*")) if p.is_file()}

    files = write_dir(out, build)
    return {"site": str(out), "bundle": str(bundle), "kind": spec["kind"], "files": files,
            "bytes": sum(files.values()), "onnxruntime_web": ORT_WEB_VERSION}
