"""Energy: a hardware counter when one is readable (NVML on NVIDIA GPUs, RAPL on CPUs), otherwise an
estimate from CPU time times a stated power per core, labelled "estimated" wherever it appears."""

from __future__ import annotations

import glob
import os
import time
from pathlib import Path
from typing import Any

# The stated assumption behind every estimate: average power of one busy core of a server CPU.
ESTIMATE_WATTS_PER_CORE = 10.0
_RAPL = "/sys/class/powercap/intel-rapl:*"


def _rapl_zones() -> list[Path]:
    """Top-level RAPL package zones whose counters this process can read."""
    zones = []
    for z in sorted(glob.glob(_RAPL)):
        p = Path(z)
        if p.name.count(":") != 1:  # sub-zones (core, uncore, dram) are inside the package total
            continue
        try:
            int((p / "energy_uj").read_text())
            zones.append(p)
        except (OSError, ValueError):
            continue
    return zones


def _nvml_handle() -> Any:
    try:
        import pynvml  # optional; only on machines with NVIDIA GPUs

        pynvml.nvmlInit()
        return pynvml.nvmlDeviceGetHandleByIndex(0)
    except Exception:  # no library, no driver, no GPU: fall through to the next method
        return None


def detect_method(device: str = "cpu") -> str:
    if device == "cuda" and _nvml_handle() is not None:
        return "nvml"
    if _rapl_zones():
        return "rapl"
    return "estimated"


class EnergyMeter:
    """``with EnergyMeter() as m: ...`` then ``m.joules`` and ``m.method``."""

    def __init__(self, device: str = "cpu") -> None:
        self.method = detect_method(device)
        self.joules = 0.0
        self.cpu_s = 0.0
        self.wall_s = 0.0
        self.assumption = (f"{ESTIMATE_WATTS_PER_CORE:g} W per busy core x process CPU time"
                           if self.method == "estimated" else None)

    def _read(self) -> float:
        if self.method == "rapl":
            return sum(int((z / "energy_uj").read_text()) for z in _rapl_zones()) / 1e6
        if self.method == "nvml":
            import pynvml

            return pynvml.nvmlDeviceGetTotalEnergyConsumption(_nvml_handle()) / 1e3
        return 0.0

    def start(self) -> EnergyMeter:
        self._cpu0, self._wall0, self._e0 = _cpu_time(), time.perf_counter(), self._read()
        return self

    def stop(self) -> EnergyMeter:
        self.cpu_s = _cpu_time() - self._cpu0
        self.wall_s = time.perf_counter() - self._wall0
        if self.method == "estimated":
            self.joules = self.cpu_s * ESTIMATE_WATTS_PER_CORE
        else:
            delta = self._read() - self._e0
            self.joules = delta if delta >= 0 else 0.0  # a counter wrap within one window: report nothing
        return self

    def __enter__(self) -> EnergyMeter:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def record(self) -> dict[str, Any]:
        return {"joules": self.joules, "method": self.method, "cpu_s": self.cpu_s, "wall_s": self.wall_s,
                "assumption": self.assumption}


def _cpu_time() -> float:
    t = os.times()
    return t.user + t.system
