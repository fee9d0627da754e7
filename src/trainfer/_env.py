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


def package_version(name: str) -> str | None:
    """The installed version of distribution ``name`` (from its metadata: imports nothing), None if absent."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _git(*args: str, cwd: str | os.PathLike[str] | None = None) -> str | None:
    try:
        res = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=5)
        return res.stdout.strip() if res.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def git_revision(cwd: str | os.PathLike[str] | None = None) -> str | None:
    """HEAD of the git checkout at ``cwd`` (the current directory by default); None outside one."""
    return _git("rev-parse", "HEAD", cwd=cwd)


def git_dirty(cwd: str | os.PathLike[str] | None = None) -> bool | None:
    """Whether tracked files differ from HEAD (a measurement of uncommitted code); None outside a checkout."""
    out = _git("status", "--porcelain", "--untracked-files=no", cwd=cwd)
    return None if out is None else bool(out)


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


def environment(threads: int | None = None, repo: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """The environment record of a measurement (MEASURE.md): CPU, cores, threads, load, library versions
    and the git revision of ``repo`` (the current directory by default)."""
    return {
        "cpu_model": cpu_model(), "cores": os.cpu_count(), "usable_cores": affinity_cpus(), "threads": threads,
        "load_avg_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "platform": platform.platform(), "python": platform.python_version(),
        "versions": {n: package_version(n)
                     for n in ("trainfer", "torch", "onnxruntime", "onnx", "numpy", "mlcommons-loadgen")},
        "git_revision": git_revision(repo), "git_dirty": git_dirty(repo),
    }
