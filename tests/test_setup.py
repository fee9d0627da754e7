"""The set-up a fresh machine goes through: package metadata without warnings, and `make test`'s browser step."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ENSURE = ROOT / "scripts" / "ensure-chromium"


def test_package_metadata_builds_without_deprecation_warnings(tmp_path: Path) -> None:
    # A `license = {text = ...}` table made setuptools print a deprecation banner on every install.
    code = textwrap.dedent(f"""
        import warnings
        from setuptools import build_meta
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            build_meta.prepare_metadata_for_build_wheel({str(tmp_path)!r})
        for w in caught:
            print("WARNING", w.category.__name__, str(w.message).splitlines()[0])
    """)
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    warned = [line for line in res.stdout.splitlines() if line.startswith("WARNING")]
    assert not warned, warned
    meta = next(tmp_path.glob("*.dist-info")) / "METADATA"
    assert "License-Expression: Apache-2.0" in meta.read_text()


def _stub(folder: Path, name: str, body: str) -> None:
    path = folder / name
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)


def _run_ensure(bin_dir: Path) -> subprocess.CompletedProcess:
    # PATH holds only the stubs and the shell's basics, so no real chromium, apt-get or sudo is found.
    for tool in ("bash", "env", "chmod"):
        (bin_dir / tool).symlink_to(shutil.which(tool))
    env = {"PATH": str(bin_dir), "HOME": str(bin_dir)}
    return subprocess.run([str(bin_dir / "bash"), str(ENSURE)], capture_output=True, text=True, env=env, timeout=60)


def test_ensure_chromium_without_rights_says_which_command_to_run(tmp_path: Path) -> None:
    _stub(tmp_path, "id", 'echo 1000')
    _stub(tmp_path, "apt-get", 'echo "apt-get must not run" >&2; exit 99')
    res = _run_ensure(tmp_path)
    assert res.returncode == 2, res
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "apt-get install -y chromium" in lines[0], lines


def test_ensure_chromium_installs_the_debian_package_as_root(tmp_path: Path) -> None:
    log = tmp_path / "apt.log"
    _stub(tmp_path, "id", 'echo 0')
    # The stub "installs" by creating a chromium command on PATH, as the real package does.
    _stub(tmp_path, "apt-get", f'echo "$@" >> {log}\n'
                               f'case "$*" in *install*) printf "#!/bin/sh\\n" > {tmp_path}/chromium; '
                               f'chmod +x {tmp_path}/chromium;; esac')
    res = _run_ensure(tmp_path)
    assert res.returncode == 0, res
    calls = log.read_text().splitlines()
    assert calls[0].startswith("update") and "install -y -qq chromium" in calls[1], calls


def test_ensure_chromium_does_nothing_when_one_is_there(tmp_path: Path) -> None:
    _stub(tmp_path, "chromium", "exit 0")
    _stub(tmp_path, "apt-get", 'exit 99')
    res = _run_ensure(tmp_path)
    assert res.returncode == 0 and not res.stderr, res


@pytest.mark.skipif(os.name != "posix", reason="make and bash recipes")
def test_make_test_and_ci_run_the_browser_step() -> None:
    makefile = (ROOT / "Makefile").read_text()
    recipe = makefile.split("\ntest:", 1)[1].split("\n\n", 1)[0]
    assert "scripts/ensure-chromium" in recipe and recipe.index("ensure-chromium") < recipe.index("pytest")
    ci = [line for line in (ROOT / ".ci" / "run").read_text().splitlines() if line and not line.startswith("#")]
    assert ci[-1] == "make test" and not any("apt-get" in line for line in ci), ci
