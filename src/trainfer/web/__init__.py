"""The browser side of a bundle: a static site that runs its whole-graph model.onnx with onnxruntime-web.

L4 beside serving: reads bundles through runtime only and never imports torch. ``build_site`` writes the
site; ``serve_site`` serves it with the cross-origin-isolation headers that let wasm use threads.
"""

from trainfer.web.assets import ORT_WEB_VERSION, SHIPPED, ensure_ort_web
from trainfer.web.server import make_server, serve_site
from trainfer.web.site import build_site, is_site

__all__ = ["ORT_WEB_VERSION", "SHIPPED", "build_site", "ensure_ort_web", "is_site", "make_server", "serve_site"]
