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

import contextlib
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

from trainfer.errors import ConfigError, DataError, RunError

# Seconds `flwr run` may take beyond the rounds themselves (bundle upload, ServerApp start, the run dir write)
SUBMIT_MARGIN_S = 120.0
# Seconds `flwr stop` may take to reach the SuperLink when a run is interrupted
STOP_TIMEOUT_S = 30.0


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
    """Run the federation on the SuperLink at ``superlink`` and wait for it to end (the ServerApp writes the run).

    Ctrl-C or SIGTERM stops the run on the SuperLink too (`flwr stop RUN_ID`), and is raised again (as
    KeyboardInterrupt, or simulation.Terminated for SIGTERM) with a message saying what became of the run.
    """
    budget = spec["wait_s"] + spec["rounds"] * spec["round_timeout"] + SUBMIT_MARGIN_S
    with tempfile.TemporaryDirectory(prefix="trainfer-flwr-") as work:
        (Path(work) / "app").mkdir()
        (Path(work) / "home").mkdir()
        app = app_bundle(Path(work) / "app", spec)
        home = flower_home(Path(work) / "home", superlink)
        # unbuffered: "Successfully started run N" must reach us when printed, so that an interrupt can stop run N
        env = {**os.environ, "FLWR_HOME": str(home), "FLWR_DISABLE_UPDATE_CHECK": "1", "PYTHONUNBUFFERED": "1"}
        code, output = _follow([_flwr(), "run", str(app), "trainfer", "--stream"], env, budget, superlink)
    if code != 0 or "Successfully started run" not in output:
        raise RunError(f"the SuperLink at {superlink} did not run the federation: {flwr_message(output)}",
                       hint=f"is `flower-superlink --insecure --disable-runtime-dependency-installation` running at "
                            f"{superlink}?")
    errors = [ln for ln in output.splitlines() if "RunError" in ln or "TrainferError" in ln or "error:" in ln]
    if errors and not Path(spec["out"], "summary.json").is_file():
        raise RunError(f"the federation failed on the SuperLink: {errors[-1].strip()[:500]}")


def _follow(cmd: list[str], env: dict[str, str], budget: float, superlink: str) -> tuple[int, str]:
    """Run `flwr run --stream` to its end and return its exit status and output; stop the run on
    the SuperLink when interrupted or past ``budget`` seconds."""
    from trainfer.federating.simulation import Terminated

    lines: list[str] = []
    # its own session: Ctrl-C in a terminal reaches this process only, which stops the run before `flwr` exits
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            errors="replace", start_new_session=True)
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout or ()), daemon=True)
    reader.start()
    main = threading.current_thread() is threading.main_thread()
    previous = signal.getsignal(signal.SIGTERM) if main else None
    if main:
        signal.signal(signal.SIGTERM, _terminate)
    try:
        try:
            proc.wait(timeout=budget)
        except subprocess.TimeoutExpired:
            stopped = _stop(lines, env)
            raise RunError(f"the federation on {superlink} did not finish within {budget:g} s ({stopped})",
                           hint="raise --round-timeout, or check the SuperLink and SuperNodes") from None
        except KeyboardInterrupt as exc:
            stopped = _stop(lines, env)
            raise (Terminated if isinstance(exc, Terminated) else KeyboardInterrupt)(stopped) from None
    finally:
        if main:
            signal.signal(signal.SIGTERM, previous)
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        reader.join(timeout=5)
    return proc.returncode, "".join(lines)


def _terminate(_signum: int, _frame: Any) -> None:
    from trainfer.federating.simulation import Terminated

    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second SIGTERM ends the process at once
    raise Terminated()


def _stop(lines: list[str], env: dict[str, str]) -> str:
    """Stop the run `flwr run` started (its id is in the output), the way `flwr stop RUN_ID` does; say how it went."""
    found = re.search(r"Successfully started run (\d+)", "".join(lines))
    if found is None:
        return "no run had started on the SuperLink yet (`flwr ls` lists its runs)"
    run_id = found.group(1)
    try:
        res = subprocess.run([_flwr(), "stop", run_id, "trainfer"], env=env, capture_output=True, text=True,
                             timeout=STOP_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired:
        return f"run {run_id} may still be going on the SuperLink: `flwr stop {run_id}` did not answer in time"
    if res.returncode != 0:
        said = flwr_message(res.stdout + res.stderr)
        return f"run {run_id} may still be going on the SuperLink: `flwr stop` said {said}"
    return f"run {run_id} stopped on the SuperLink"


def flwr_message(output: str) -> str:
    """The message of `flwr`'s output on one line: the text of its boxed error panel when there is one (the box,
    its colour codes and its wrapping taken out), else its last lines."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", output)
    boxed = [ln.strip().strip("│").strip() for ln in text.splitlines() if ln.strip().startswith("│")]
    lines = boxed or [ln.strip() for ln in text.strip().splitlines() if ln.strip()][-3:]
    return " ".join(" ".join(lines).split())[:500] or "no output"


# How long a SuperNode keeps trying to reach its SuperLink (at start, and each time it loses it) before it exits:
# nodes are often started before the link, so minutes, not seconds; Flower's own default is to try forever.
CONNECT_TIMEOUT_S = 300.0


def check_node_data(data: Path) -> Path:
    """A node's rows: a non-empty table file, or an image folder with at least one image in a class folder."""
    from trainfer.features.image import IMAGE_SUFFIXES

    data = Path(data).expanduser().absolute()
    if not data.exists():
        raise DataError(f"--data {data} not found", hint="the file (or image folder) of this node's labelled rows")
    if data.is_dir():
        if not any(p.suffix.lower() in IMAGE_SUFFIXES for c in data.iterdir() if c.is_dir() and
                   not c.name.startswith(".") for p in c.rglob("*")):
            raise DataError(f"--data {data} is a folder without images in class sub-folders",
                            hint="give the node's table (.csv, .parquet, .npz) or an image folder root/<class>/*.png")
        return data
    if data.suffix.lower() not in (".csv", ".parquet", ".pq", ".npz"):
        raise DataError(f"--data {data.name} is not a table or an image folder",
                        hint="use .csv, .parquet, .npz or a folder of images (root/<class>/*.png)")
    if data.stat().st_size == 0:
        raise DataError(f"--data {data} is empty", hint="the node's labelled rows, with the recipe's columns")
    return data


def node_command(superlink: str, data: Path, port: int | None,
                 connect_timeout: float = CONNECT_TIMEOUT_S) -> list[str]:
    """The `flower-supernode` command that serves trainfer's ClientApp on the rows at ``data``."""
    if isinstance(connect_timeout, bool) or not isinstance(connect_timeout, int | float) \
            or not math.isfinite(connect_timeout) or connect_timeout <= 0:
        raise ConfigError(f"--connect-timeout must be a number of seconds above 0, not {connect_timeout!r}")
    data = check_node_data(data)
    exe = Path(sys.executable).with_name("flower-supernode")
    # --max-wait-time bounds each reconnection attempt sequence (Flower's RetryInvoker: per call, so at start and
    # after a lost link alike); the retry count stays unlimited within it
    cmd = [str(exe) if exe.exists() else "flower-supernode", "--insecure", "--superlink", superlink,
           "--node-config", f"data={_toml_string(str(data))}", "--max-wait-time", f"{float(connect_timeout):g}"]
    if port is not None:
        if not 1 <= port <= 65535:
            raise ConfigError(f"--port must be 1 to 65535, not {port}")
        cmd += ["--port", str(port)]
    return cmd
