"""The set-up a fresh machine goes through: package metadata without warnings, and `make test`'s browser and
PostgreSQL steps."""

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
ENSURE_PG = ROOT / "scripts" / "ensure-postgresql"


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


def _run_ensure(bin_dir: Path, script: Path = ENSURE, **env: str) -> subprocess.CompletedProcess:
    # PATH holds only the stubs and the shell's basics, so no real chromium, apt-get or sudo is found.
    for tool in ("bash", "env", "chmod", "mkdir"):
        (bin_dir / tool).symlink_to(shutil.which(tool))
    env = {"PATH": str(bin_dir), "HOME": str(bin_dir), **env}
    return subprocess.run([str(bin_dir / "bash"), str(script)], capture_output=True, text=True, env=env, timeout=60)


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


# The PostgreSQL tests: an empty folder stands in for Debian's /usr/lib/postgresql, so the server binaries
# this machine may have are not found; the stub apt-get "installs" them there, as the real package does.
_PG_BINARIES = ("initdb", "pg_ctl", "postgres")


def _pg_lib(tmp_path: Path) -> Path:
    lib = tmp_path / "lib-postgresql"
    lib.mkdir()
    return lib


def test_ensure_postgresql_without_rights_says_which_command_to_run(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    _stub(bin_dir, "id", "echo 1000")
    _stub(bin_dir, "sudo", 'echo "sudo: a password is required" >&2; exit 1')
    _stub(bin_dir, "apt-get", 'echo "apt-get must not run" >&2; exit 99')
    res = _run_ensure(bin_dir, ENSURE_PG, TRAINFER_POSTGRESQL_LIB=str(_pg_lib(tmp_path)))
    assert res.returncode == 2, res
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "apt-get install -y postgresql" in lines[0], lines


def test_ensure_postgresql_installs_the_debian_package_as_root(tmp_path: Path) -> None:
    bin_dir, lib, log = tmp_path / "bin", _pg_lib(tmp_path), tmp_path / "apt.log"
    bin_dir.mkdir()
    _stub(bin_dir, "id", "echo 0")
    made = " ".join(f"{lib}/16/bin/{b}" for b in _PG_BINARIES)
    _stub(bin_dir, "apt-get", f'echo "$@" >> {log}\n'
                              f'case "$*" in *install*) mkdir -p {lib}/16/bin; for f in {made}; do '
                              f'printf "#!/bin/sh\\n" > $f; chmod +x $f; done;; esac')
    res = _run_ensure(bin_dir, ENSURE_PG, TRAINFER_POSTGRESQL_LIB=str(lib))
    assert res.returncode == 0, res
    calls = log.read_text().splitlines()
    assert calls[0].startswith("update") and "install -y -qq postgresql" in calls[1], calls
    assert all((lib / "16" / "bin" / b).is_file() for b in _PG_BINARIES)


def test_ensure_postgresql_with_sudo_installs_through_it(tmp_path: Path) -> None:
    bin_dir, lib, log = tmp_path / "bin", _pg_lib(tmp_path), tmp_path / "sudo.log"
    bin_dir.mkdir()
    _stub(bin_dir, "id", "echo 1000")
    # Passwordless sudo: `sudo -n true` succeeds; every other call is logged and the package "installed".
    _stub(bin_dir, "sudo", f'[ "$*" = "-n true" ] && exit 0\nprintf "%s\\n" "$*" >> {log}\n'
                           f'case "$*" in *install*) mkdir -p {lib}/15/bin; for f in initdb pg_ctl postgres; do '
                           f'printf "#!/bin/sh\\n" > {lib}/15/bin/$f; chmod +x {lib}/15/bin/$f; done;; esac')
    _stub(bin_dir, "apt-get", 'echo "apt-get must run through sudo" >&2; exit 99')
    res = _run_ensure(bin_dir, ENSURE_PG, TRAINFER_POSTGRESQL_LIB=str(lib))
    assert res.returncode == 0, res
    calls = log.read_text().splitlines()
    assert calls[0].startswith("-n env DEBIAN_FRONTEND=noninteractive apt-get update"), calls
    assert "apt-get install -y -qq postgresql" in calls[1], calls


def test_ensure_postgresql_an_install_without_server_binaries_is_an_error(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    _stub(bin_dir, "id", "echo 0")
    _stub(bin_dir, "apt-get", "exit 0")  # "succeeds" and installs nothing
    res = _run_ensure(bin_dir, ENSURE_PG, TRAINFER_POSTGRESQL_LIB=str(_pg_lib(tmp_path)))
    assert res.returncode == 2 and res.stderr.strip().splitlines()[-1].startswith("error: "), res


def test_ensure_postgresql_does_nothing_when_the_server_is_on_path(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    _stub(bin_dir, "apt-get", "exit 99")
    for name in _PG_BINARIES:  # as a source build or another distribution puts them
        _stub(bin_dir, name, "exit 0")
    res = _run_ensure(bin_dir, ENSURE_PG, TRAINFER_POSTGRESQL_LIB=str(_pg_lib(tmp_path)))
    assert res.returncode == 0 and not res.stderr, res


def test_ensure_postgresql_does_nothing_when_debian_has_installed_it(tmp_path: Path) -> None:
    bin_dir, lib = tmp_path / "bin", _pg_lib(tmp_path)
    bin_dir.mkdir()
    _stub(bin_dir, "apt-get", "exit 99")
    (lib / "15" / "bin").mkdir(parents=True)  # Debian's layout, not on PATH
    for name in _PG_BINARIES:
        _stub(lib / "15" / "bin", name, "exit 0")
    res = _run_ensure(bin_dir, ENSURE_PG, TRAINFER_POSTGRESQL_LIB=str(lib))
    assert res.returncode == 0 and not res.stderr, res


@pytest.mark.skipif(os.name != "posix", reason="make and bash recipes")
def test_make_test_and_ci_run_the_browser_and_postgresql_steps() -> None:
    makefile = (ROOT / "Makefile").read_text()
    recipe = makefile.split("\ntest:", 1)[1].split("\n\n", 1)[0]
    assert "scripts/ensure-chromium" in recipe and recipe.index("ensure-chromium") < recipe.index("pytest")
    assert "scripts/ensure-postgresql" in recipe and recipe.index("ensure-postgresql") < recipe.index("pytest")
    ci = [line for line in (ROOT / ".ci" / "run").read_text().splitlines() if line and not line.startswith("#")]
    assert ci[-1] == "make test" and not any("apt-get" in line for line in ci), ci
