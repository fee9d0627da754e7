"""The optimization variants (the table is trainfer._variants, torch-free) and the quantizers that build them."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from trainfer._variants import NAMES, VARIANTS, Variant, by_name
from trainfer.exporting.quantize import quantize_dynamic_int8, quantize_static_int8

__all__ = ["NAMES", "QUANTIZERS", "VARIANTS", "Variant", "by_name"]


def _dynamic(src: Path, dst: Path, work: Path, calib: np.ndarray) -> None:
    quantize_dynamic_int8(src, dst, work)


def _static(method: str):
    def run(src: Path, dst: Path, work: Path, calib: np.ndarray) -> None:
        quantize_static_int8(src, dst, work, calib, method)

    return run


QUANTIZERS = {
    "int8-dynamic": _dynamic,
    "int8-static-minmax": _static("minmax"),
    "int8-static-percentile": _static("percentile"),
}
