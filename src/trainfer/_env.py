"""Provenance of measurements and bundles: machine, threads, library versions, git revision."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
from typing import Any


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def git_revision() -> str | None:
    try:
        res = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        return res.stdout.strip() if res.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def affinity_cpus() -> int:
    """CPUs this process may be scheduled on (its affinity mask; all of them where there is none)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def usable_cpus() -> float:
    """CPUs this process may use: its affinity mask, capped by a cgroup v2 CPU quota (containers)."""
    n: float = affinity_cpus()
    try:
        with open("/sys/fs/cgroup/cpu.max") as fh:
            quota, period = fh.read().split()[:2]
        if quota != "max":
            n = min(n, int(quota) / int(period))
    except (OSError, ValueError):
        pass
    return n


def environment(threads: int | None = None) -> dict[str, Any]:
    return {
        "cpu_model": cpu_model(), "cores": os.cpu_count(), "usable_cores": affinity_cpus(), "threads": threads,
        "platform": platform.platform(), "python": platform.python_version(),
        "versions": {n: _version(n) for n in ("trainfer", "torch", "onnxruntime", "numpy", "mlcommons-loadgen")},
        "git_revision": git_revision(),
    }
