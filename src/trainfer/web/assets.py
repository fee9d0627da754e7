"""onnxruntime-web, from the npm registry: installed once into a cache at build time, then copied into sites.

Only the wasm build is shipped: its ES-module loader (ort.wasm.min.mjs), the Emscripten glue it imports
(ort-wasm-simd-threaded.mjs, also the script of the wasm threads' workers) and the one .wasm binary that glue
fetches; the package's other 130 MB (WebGL, WebGPU, JSPI builds, source maps) are never loaded by this page.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

from trainfer.errors import MissingDependencyError, TrainferError

ORT_WEB_VERSION = "1.30.0"
# What the page loads, read from node_modules/onnxruntime-web/dist of 1.30.0: ort.wasm.min.mjs imports
# ort-wasm-simd-threaded.mjs, which fetches ort-wasm-simd-threaded.wasm (the only URLs named in either).
SHIPPED = ("ort.wasm.min.mjs", "ort-wasm-simd-threaded.mjs", "ort-wasm-simd-threaded.wasm")
LICENSE_NAME = "LICENSE.onnxruntime-web.txt"

# The package declares "license": "MIT" and ships no LICENSE file (its README links to the repository's); the
# licence text beside the shipped files is the MIT licence of microsoft/onnxruntime, with its copyright line.
_MIT = """MIT License

Copyright (c) Microsoft Corporation

Permission is hereby granted, free of charge, to any person obtaining a copy
of this software and associated documentation files (the "Software"), to deal
in the Software without restriction, including without limitation the rights
to use, copy, modify, merge, publish, distribute, sublicense, and/or sell
copies of the Software, and to permit persons to whom the Software is
furnished to do so, subject to the following conditions:

The above copyright notice and this permission notice shall be included in all
copies or substantial portions of the Software.

THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR
IMPLIED, INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY,
FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL THE
AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER
LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM,
OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN THE
SOFTWARE.
"""


class WebSetupError(TrainferError):
    """onnxruntime-web could not be installed (no npm, no registry) or its cached copy is damaged."""


def cache_root() -> Path:
    """Where npm packages are installed once: $TRAINFER_CACHE, else ~/.cache/trainfer."""
    env = os.environ.get("TRAINFER_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "trainfer"


def package_dir(root: Path | None = None) -> Path:
    return (root or cache_root()) / f"onnxruntime-web-{ORT_WEB_VERSION}" / "node_modules" / "onnxruntime-web"


def _installed(pkg: Path) -> bool:
    try:
        version = json.loads((pkg / "package.json").read_text()).get("version")
    except (OSError, ValueError):
        return False
    return version == ORT_WEB_VERSION and all((pkg / "dist" / name).is_file() for name in SHIPPED)


def ensure_ort_web(root: Path | None = None) -> Path:
    """The installed onnxruntime-web package directory, installing it with npm when absent (once)."""
    pkg = package_dir(root)
    if _installed(pkg):
        return pkg
    npm = shutil.which("npm")
    if npm is None:
        raise MissingDependencyError(
            f"the web page needs onnxruntime-web {ORT_WEB_VERSION} from npm, and npm is not on PATH",
            hint="install Node.js and npm (Debian: sudo apt-get install -y nodejs npm), or run scripts/ensure-web")
    prefix = pkg.parent.parent
    try:
        prefix.mkdir(parents=True, exist_ok=True)
        # --ignore-scripts: nothing from the registry runs here; the package is plain files
        proc = subprocess.run([npm, "install", "--prefix", str(prefix), "--ignore-scripts", "--no-audit", "--no-fund",
                               "--no-save", "--loglevel=error", f"onnxruntime-web@{ORT_WEB_VERSION}"],
                              capture_output=True, text=True, timeout=600)
    except OSError as exc:
        raise WebSetupError(f"cannot install onnxruntime-web into {prefix}: {exc.strerror or exc}",
                            hint="set TRAINFER_CACHE to a writable directory") from None
    except subprocess.TimeoutExpired:
        raise WebSetupError("npm install onnxruntime-web took over 10 minutes",
                            hint="check the network or the npm registry setting (npm config get registry)") from None
    if proc.returncode != 0 or not _installed(pkg):
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise WebSetupError(f"npm install onnxruntime-web@{ORT_WEB_VERSION} failed: {last}",
                            hint="check the network or the npm registry setting (npm config get registry)")
    return pkg


def copy_runtime(dest: Path, root: Path | None = None) -> dict[str, int]:
    """Copy the shipped onnxruntime-web files and their licence into ``dest``; returns name -> bytes."""
    pkg = ensure_ort_web(root)
    dest.mkdir(parents=True, exist_ok=True)
    sizes: dict[str, int] = {}
    for name in SHIPPED:
        shutil.copyfile(pkg / "dist" / name, dest / name)
        sizes[name] = (dest / name).stat().st_size
    (dest / LICENSE_NAME).write_text(f"onnxruntime-web {ORT_WEB_VERSION} (npm), license: MIT (package.json)\n"
                                     "https://github.com/microsoft/onnxruntime\n\n" + _MIT)
    sizes[LICENSE_NAME] = (dest / LICENSE_NAME).stat().st_size
    return sizes
