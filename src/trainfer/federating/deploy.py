"""Deployment: a federation on real processes, a SuperLink started by the user and SuperNodes on the data owners.

``submit`` hands the run to the SuperLink the way `flwr run` does: a tiny app bundle (a pyproject.toml whose
components are trainfer's own ``server_app`` and ``client_app``, and whose run config carries the federation's
spec as JSON) sent over the SuperLink's Control API, here by the `flwr run` command itself with a Flower home of
our own (its config.toml names the SuperLink), and `--stream` to follow the run to its end. The bundle declares
no dependencies and the SuperLink must be started with ``--disable-runtime-dependency-installation``
(DEPENDENCY-NOTES.md): trainfer[federated] is installed where the SuperLink and SuperNodes run.

``node_command`` is what `trainfer federate-node` runs: `flower-supernode`, with the data path in its node config.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from trainfer.errors import ConfigError, DataError, RunError

# Seconds `flwr run` may take beyond the rounds themselves (bundle upload, ServerApp start, the run dir write)
SUBMIT_MARGIN_S = 120.0


def _toml_string(text: str) -> str:
    return json.dumps(text)  # a JSON string literal is a valid TOML basic string


def app_bundle(directory: Path, spec: dict[str, Any]) -> Path:
    """Write the app directory `flwr run` packages: trainfer's apps, the spec in the run config."""
    (directory / "pyproject.toml").write_text(f"""[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "trainfer-federation"
version = "1.0.0"
description = "trainfer's ServerApp and ClientApp (installed with trainfer[federated])"
dependencies = []

[tool.hatch.build.targets.wheel]
packages = ["."]

[tool.flwr.app]
publisher = "trainfer"

[tool.flwr.app.components]
serverapp = "trainfer.federating.apps:server_app"
clientapp = "trainfer.federating.apps:client_app"

[tool.flwr.app.config]
spec = {_toml_string(json.dumps(spec))}
""")
    return directory


def flower_home(directory: Path, superlink: str) -> Path:
    """A Flower home whose config.toml names the SuperLink (insecure: loopback or a private network)."""
    (directory / "config.toml").write_text(f"""[superlink]
default = "trainfer"

[superlink.trainfer]
address = {_toml_string(superlink)}
insecure = true
""")
    return directory


def _flwr() -> str:
    found = Path(sys.executable).with_name("flwr")
    return str(found) if found.exists() else (shutil.which("flwr") or "flwr")


def submit(spec: dict[str, Any], superlink: str) -> None:
    """Run the federation on the SuperLink at ``superlink`` and wait for it to end (the ServerApp writes the run)."""
    budget = spec["wait_s"] + spec["rounds"] * spec["round_timeout"] + SUBMIT_MARGIN_S
    with tempfile.TemporaryDirectory(prefix="trainfer-flwr-") as work:
        (Path(work) / "app").mkdir()
        (Path(work) / "home").mkdir()
        app = app_bundle(Path(work) / "app", spec)
        home = flower_home(Path(work) / "home", superlink)
        env = {**os.environ, "FLWR_HOME": str(home), "FLWR_DISABLE_UPDATE_CHECK": "1"}
        try:
            proc = subprocess.run([_flwr(), "run", str(app), "trainfer", "--stream"], env=env, capture_output=True,
                                  text=True, timeout=budget, check=False)
        except subprocess.TimeoutExpired:
            raise RunError(f"the federation on {superlink} did not finish within {budget:g} s",
                           hint="raise --round-timeout, or check the SuperLink and SuperNodes") from None
    output = (proc.stdout or "") + (proc.stderr or "")
    if proc.returncode != 0 or "Successfully started run" not in output:
        raise RunError(f"the SuperLink at {superlink} did not run the federation: {flwr_message(output)}",
                       hint=f"is `flower-superlink --insecure --disable-runtime-dependency-installation` running at "
                            f"{superlink}?")
    errors = [ln for ln in output.splitlines() if "RunError" in ln or "TrainferError" in ln or "error:" in ln]
    if errors and not Path(spec["out"], "summary.json").is_file():
        raise RunError(f"the federation failed on the SuperLink: {errors[-1].strip()[:500]}")


def flwr_message(output: str) -> str:
    """The message of `flwr`'s output on one line: the text of its boxed error panel when there is one (the box,
    its colour codes and its wrapping taken out), else its last lines."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", output)
    boxed = [ln.strip().strip("│").strip() for ln in text.splitlines() if ln.strip().startswith("│")]
    lines = boxed or [ln.strip() for ln in text.strip().splitlines() if ln.strip()][-3:]
    return " ".join(" ".join(lines).split())[:500] or "no output"


def node_command(superlink: str, data: Path, port: int | None) -> list[str]:
    """The `flower-supernode` command that serves trainfer's ClientApp on the rows at ``data``."""
    data = Path(data).expanduser().absolute()
    if not data.exists():
        raise DataError(f"--data {data} not found", hint="the file (or image folder) of this node's labelled rows")
    if not ((data.is_file() and data.suffix.lower() in (".csv", ".parquet", ".pq", ".npz")) or data.is_dir()):
        raise DataError(f"--data {data.name} is not a table or an image folder",
                        hint="use .csv, .parquet, .npz or a folder of images (root/<class>/*.png)")
    exe = Path(sys.executable).with_name("flower-supernode")
    cmd = [str(exe) if exe.exists() else "flower-supernode", "--insecure", "--superlink", superlink,
           "--node-config", f"data={_toml_string(str(data))}"]
    if port is not None:
        if not 1 <= port <= 65535:
            raise ConfigError(f"--port must be 1 to 65535, not {port}")
        cmd += ["--port", str(port)]
    return cmd
