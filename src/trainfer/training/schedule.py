"""Learning-rate schedules as pure functions of the step (no scheduler state to checkpoint)."""

from __future__ import annotations

import math


def lr_at(step: int, total_steps: int, base_lr: float, schedule: str, warmup_fraction: float) -> float:
    """The learning rate for optimizer step ``step`` (0-based) out of ``total_steps``.

    onecycle: cosine warm-up from base/25 to base, then cosine annealing to base/1e4 (as torch's
    OneCycleLR). cosine: linear warm-up, then cosine decay to 0. constant: base throughout.
    """
    if schedule == "constant" or total_steps <= 1:
        return base_lr
    warmup = int(total_steps * warmup_fraction)
    if schedule == "onecycle":
        start, end = base_lr / 25.0, base_lr / 1e4
        if step < warmup:
            return _cos(start, base_lr, step / max(warmup, 1))
        return _cos(base_lr, end, (step - warmup) / max(total_steps - warmup - 1, 1))
    if schedule == "cosine":
        if step < warmup:
            return base_lr * (step + 1) / warmup
        return _cos(base_lr, 0.0, (step - warmup) / max(total_steps - warmup - 1, 1))
    raise ValueError(f"unknown schedule {schedule!r}")


def _cos(start: float, end: float, pct: float) -> float:
    pct = min(max(pct, 0.0), 1.0)
    return end + (start - end) * (1.0 + math.cos(math.pi * pct)) / 2.0
