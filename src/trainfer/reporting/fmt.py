"""Number formatting shared by the HTML report and the infographic (one source for both)."""

from __future__ import annotations

from typing import Any


def si(value: float | None, unit: str = "", digits: int = 3) -> str:
    """1234567 -> '1.23 M' + unit; None -> '—'."""
    if value is None:
        return "—"
    v = float(value)
    for factor, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(v) >= factor:
            return f"{v / factor:.{digits}g} {prefix}{unit}".strip()
    if v != 0 and abs(v) < 1e-3:
        for factor, prefix in ((1e-9, "n"), (1e-6, "µ"), (1e-3, "m")):
            if abs(v) < factor * 1e3:
                return f"{v / factor:.{digits}g} {prefix}{unit}".strip()
    return f"{v:.{digits}g} {unit}".strip()


def ms(value: float | None) -> str:
    return "—" if value is None else f"{value:.4g} ms"


def seconds(value: float | None) -> str:
    if value is None:
        return "—"
    return f"{value:.3g} s" if value < 120 else f"{value / 60:.3g} min"


def get(record: dict[str, Any], path: str) -> Any:
    """record['a']['b'] for 'a.b'; None when any part is missing."""
    node: Any = record
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node
