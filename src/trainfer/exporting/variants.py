"""The optimization variants, listed as data: which pruning ratio and which quantization each uses."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from trainfer.exporting.quantize import quantize_dynamic_int8, quantize_static_int8


@dataclass(frozen=True)
class Variant:
    name: str
    prune: float | None = None  # fraction of neurons/channels removed, then fine-tuned
    quant: str | None = None  # key of QUANTIZERS
    lossless: bool = False  # exported from its torch source without approximation


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

VARIANTS: list[Variant] = [
    Variant("onnx-fp32", lossless=True),
    Variant("int8-dynamic", quant="int8-dynamic"),
    Variant("int8-static-minmax", quant="int8-static-minmax"),
    Variant("int8-static-percentile", quant="int8-static-percentile"),
    Variant("pruned-25", prune=0.25, lossless=True),
    Variant("pruned-50", prune=0.50, lossless=True),
    Variant("pruned-25+int8-dynamic", prune=0.25, quant="int8-dynamic"),
    Variant("pruned-50+int8-dynamic", prune=0.50, quant="int8-dynamic"),
    Variant("pruned-25+int8-static-minmax", prune=0.25, quant="int8-static-minmax"),
    Variant("pruned-50+int8-static-minmax", prune=0.50, quant="int8-static-minmax"),
]


def by_name(names: list[str] | None) -> list[Variant]:
    """The variants to try, in table order; unknown names raise a ConfigError listing valid ones."""
    if not names:
        return list(VARIANTS)
    from trainfer.errors import ConfigError

    known = {v.name: v for v in VARIANTS}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ConfigError(f"unknown variant(s) {unknown}", hint=f"valid: {', '.join(known)}")
    wanted = set(names) | {"onnx-fp32"}  # the baseline is always measured: drops are relative to it
    return [v for v in VARIANTS if v.name in wanted]
