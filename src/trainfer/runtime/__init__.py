"""The inference side: read and verify bundles, predict with onnxruntime. numpy + onnxruntime only."""

from trainfer.runtime.bundle import FORMAT, FORMAT_VERSION, MANIFEST, MODEL, manifest_bytes, read_manifest, sha256_file
from trainfer.runtime.predictor import Predictor, default_threads, feed_runner, inference_session, load

__all__ = [
    "FORMAT", "FORMAT_VERSION", "MANIFEST", "MODEL", "Predictor", "default_threads", "feed_runner", "inference_session",
    "load", "manifest_bytes",
    "read_manifest", "sha256_file",
]
