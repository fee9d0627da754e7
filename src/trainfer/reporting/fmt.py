"""Number formatting shared by the terminal tables (optimize, bench, run), the HTML report and the infographic:
one source for all of them, so a latency reads the same everywhere."""

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


def duration_ms(value: float | None, digits: int = 3) -> str:
    """A time given in milliseconds, in the unit that reads best: 0.01132 -> '11.3 µs', 1.234 -> '1.23 ms',
    2500 -> '2.5 s'; None (or NaN) -> '—'. Below 1 ms, "0.01132 ms" hides the figure in leading zeros."""
    if value is None or value != value:
        return "—"
    v = float(value)
    if abs(v) < 1.0 and _rounded(v * 1e3, digits) < 1000:
        return f"{_sig(v * 1e3, digits)} µs"
    if abs(v) < 1000.0 and _rounded(v, digits) < 1000:
        return f"{_sig(v, digits)} ms"
    return seconds(v / 1e3)


def count(n: int | float | None, noun: str) -> str:
    """'1 thread', '4 threads', '1,200 rows'; None -> '—'."""
    if n is None:
        return "—"
    return f"{n:,.0f} {noun}" + ("" if n == 1 else "s")


def _rounded(v: float, digits: int) -> float:
    return abs(float(f"{v:.{digits}g}"))


def _sig(v: float, digits: int) -> str:
    """``digits`` significant digits without an exponent (0.0123 -> '0.0123', 123.4 -> '123')."""
    return f"{v:.{digits}g}" if _rounded(v, digits) < 10**digits else f"{v:.0f}"


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
