"""Every code block of the README, run in order in a scratch directory, as a new user would paste them.

bash blocks run with `set -euo pipefail` and the venv's `trainfer` first on PATH; python blocks run in a
fresh interpreter; yaml blocks must be valid recipes. The only lines not run are the two set-up commands
(`make demo`, `make test`): they build the environment this test runs in. A `trainfer serve` line (and a
`trainfer web --serve` line) starts the server in the background on a free port (the README's port
8000, or 8080, is replaced), the block's next lines
run against it once it is ready, and the server is stopped at the end of the block. A block under
`<!-- readme-test: needs-server BUNDLE port=8000 -->` runs against `trainfer serve BUNDLE` started for it.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from _serve_fixtures import free_port
from conftest import REPO, SRC

README = REPO / "README.md"
SETUP_LINES = {"make demo", "make test"}
BLOCK_TIMEOUT_S = 900


def blocks() -> list[tuple[str, int, str, str]]:
    """(language, line number, code, the readme-test marker just above it or "") for every fenced block."""
    found, lines = [], README.read_text(encoding="utf-8").splitlines()
    i = 0
    while i < len(lines):
        m = re.match(r"^```(\w*)\s*$", lines[i])
        if m:
            j = next(k for k in range(i + 1, len(lines)) if lines[k].startswith("```"))
            above = next((lines[k] for k in range(i - 1, -1, -1) if lines[k].strip()), "")
            marker = re.match(r"^<!-- readme-test: (.*?) -->$", above.strip())
            found.append((m.group(1), i + 1, "\n".join(lines[i + 1:j]) + "\n", marker.group(1) if marker else ""))
            i = j
        i += 1
    return found


def _command(line: str) -> str:
    return line.split("#", 1)[0].strip()


def _start_server(cmd: str, port: int, readme_port: str = "8000", ready: str = "/v2/health/live") -> list[str]:
    cmd = cmd.replace(readme_port, str(port))
    return [f"{cmd if '--port' in cmd else f'{cmd} --port {port}'} > serve.log 2>&1 &",
            "SERVER=$!; trap 'kill $SERVER; wait $SERVER || true' EXIT",
            f"for i in $(seq 600); do curl -sf localhost:{port}{ready} >/dev/null && break; "
            "kill -0 $SERVER || { cat serve.log; exit 1; }; sleep 0.1; done"]


def bash_script(code: str, port: int, marker: str = "") -> str:
    out = ["set -euo pipefail"]
    serving = marker.startswith("needs-server ")
    if serving:
        out += _start_server(f"trainfer serve {marker.split()[1]}", port)
    for line in code.splitlines():
        cmd = _command(line)
        if cmd in SETUP_LINES:
            continue
        if cmd.startswith("trainfer serve "):
            out += _start_server(cmd, port)
            serving = True
            continue
        if cmd.startswith("trainfer web ") and " --serve" in cmd:  # the page's static server: 8080, ready at /
            out += _start_server(cmd, port, "8080", "/")
            serving = True
            continue
        out.append(re.sub(r"localhost:80[08]0\b", f"localhost:{port}", line) if serving else line)
    return "\n".join(out) + "\n"


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("readme")
    shutil.copytree(REPO / "examples", work / "examples")
    return work


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env["PYTHONPATH"] = str(SRC) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def test_the_readme_has_the_blocks_this_test_expects() -> None:
    langs = [lang for lang, _, _, _ in blocks()]
    assert {"bash", "python", "yaml"} <= set(langs) and langs.count("python") >= 3, langs
    setup = [_command(line) for lang, _, code, _ in blocks() if lang == "bash" for line in code.splitlines()
             if _command(line).startswith("make ")]
    assert set(setup) == SETUP_LINES, setup


@pytest.mark.slow
def test_every_readme_block_runs_in_order(workdir: Path) -> None:
    from trainfer.config import validate

    for lang, line, code, marker in blocks():
        where = f"README.md line {line} ({lang})"
        if lang == "yaml":
            validate(yaml.safe_load(code), where)
            continue
        if lang == "bash":
            args = ["bash", "-c", bash_script(code, free_port(), marker)]
        elif lang == "python":
            args = [sys.executable, "-c", code]
        else:
            pytest.fail(f"{where}: a block in a language this test cannot run; label it bash, python or yaml")
        res = subprocess.run(args, cwd=workdir, env=_env(), capture_output=True, text=True, timeout=BLOCK_TIMEOUT_S)
        assert res.returncode == 0, f"{where} failed ({res.returncode}):\n{code}\nstdout:\n{res.stdout[-3000:]}" \
                                    f"\nstderr:\n{res.stderr[-3000:]}"
        assert "Traceback" not in res.stderr, f"{where}:\n{res.stderr[-3000:]}"
        assert '"error"' not in res.stdout, f"{where}: a request was refused:\n{res.stdout[-3000:]}"  # curl -s
    assert (workdir / "preds.csv").read_text().startswith("id,prediction,")
    assert (workdir / "runs" / "digits" / "report.html").is_file()
