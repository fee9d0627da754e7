"""The optimization variants, listed as data: which pruning ratio and which quantization each uses.

Plain data with no dependencies, so that `trainfer optimize --help` can list the names without importing
torch; exporting.variants attaches the quantizers that build them.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Variant:
    name: str
    prune: float | None = None  # fraction of neurons/channels removed, then fine-tuned
    quant: str | None = None  # key of exporting.variants.QUANTIZERS
    lossless: bool = False  # exported from its torch source without approximation


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

NAMES: list[str] = [v.name for v in VARIANTS]

_QUANT_WORDS = {
    "int8-dynamic": "int8 weights, activations quantized at run time",
    "int8-static-minmax": "int8 weights and activations, calibrated on train rows (min-max)",
    "int8-static-percentile": "int8 weights and activations, calibrated on train rows (99.99th percentile)",
}


def describe(v: Variant) -> str:
    """One line saying what a variant is, from its fields: for `optimize --help`."""
    parts = []
    if v.prune is not None:
        parts.append(f"{int(v.prune * 100)}% of neurons/channels pruned, fine-tuned")
    if v.quant is not None:
        parts.append(_QUANT_WORDS.get(v.quant, v.quant))
    return "; then ".join(parts) if parts else "the lossless fp32 export (the baseline, always measured)"


def help_text() -> str:
    """The variants table as `optimize --help` lists it, one per line."""
    return "\n".join(f"{v.name}: {describe(v)}" for v in VARIANTS)


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
