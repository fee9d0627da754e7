"""Acceptance 5: a federation on real processes, a SuperLink and 2 SuperNodes on 127.0.0.1 started by the test.

`flower-superlink --insecure --disable-runtime-dependency-installation` and two `trainfer federate-node`
processes (SuperNodes running trainfer's ClientApp on their own CSV), each in its own session (setsid) with a
Flower home in tmp; their process groups are killed on teardown. One federation of 1 round goes through
`trainfer federate --superlink` and its run directory through `trainfer export`; then a second federation in
which one SuperNode is killed mid-round must finish on the other one within the round timeout.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from conftest import SRC, read_metrics, read_summary, run_cli, start_cli

BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _env(home: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(SRC) + os.pathsep + os.environ.get("PYTHONPATH", ""),
            "FLWR_HOME": str(home), "FLWR_DISABLE_UPDATE_CHECK": "1", "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}


def _start(cmd: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    return subprocess.Popen(cmd, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)


def _kill(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)


def _wait_for(log: Path, text: str, timeout: float) -> None:
    t0 = time.monotonic()
    while text not in log.read_text(errors="replace"):
        assert time.monotonic() - t0 < timeout, f"{log.name} never said {text!r}:\n{log.read_text()[-2000:]}"
        time.sleep(0.3)


@pytest.fixture(scope="module")
def federation(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    from sklearn.datasets import load_iris

    work = tmp_path_factory.mktemp("deploy")
    frame = load_iris(as_frame=True).frame
    frame.to_csv(work / "iris.csv", index=False)
    order = np.random.default_rng(0).permutation(len(frame))
    for k, rows in enumerate(np.array_split(order, 2)):  # each SuperNode owns half of the rows
        frame.iloc[rows].to_csv(work / f"node{k}.csv", index=False)
    (work / "recipe.yaml").write_text(f"seed: 0\ndata: {{source: {work / 'iris.csv'}, target: target}}\n"
                                      "model: {name: mlp, hidden: [16]}\ntrain: {batch_size: 16, lr: 0.01}\n")
    home = work / "flwr-home"
    home.mkdir()
    env = _env(home)
    port = _free_port()
    link = _start([str(BIN / "flower-superlink"), "--insecure", "--disable-runtime-dependency-installation",
                   "--port", str(port)], env, work / "superlink.log")
    procs = [link]
    try:
        _wait_for(work / "superlink.log", "Uvicorn running", 60)
        nodes = []
        for k in range(2):
            nodes.append(_start([sys.executable, "-m", "trainfer.cli", "federate-node", "--superlink",
                                 f"127.0.0.1:{port}", "--data", str(work / f"node{k}.csv"), "--port",
                                 str(_free_port())], env, work / f"node{k}.log"))
            procs.append(nodes[-1])
        for k in range(2):
            _wait_for(work / f"node{k}.log", "Starting Flower SuperExec", 60)
        yield {"work": work, "superlink": f"127.0.0.1:{port}", "nodes": nodes, "env": env}
    finally:
        for p in procs:
            _kill(p)


def test_one_round_on_real_processes_exports(federation: dict, tmp_path: Path) -> None:
    work = federation["work"]
    out = tmp_path / "run"
    t0 = time.monotonic()
    run_cli("federate", work / "recipe.yaml", "--clients", "2", "--rounds", "1", "--superlink",
            federation["superlink"], "--round-timeout", "120", "--out", out, "--json").check()
    took = time.monotonic() - t0
    rows = read_metrics(out)
    assert len(rows) == 1 and rows[0]["clients_replied"] == 2 and rows[0]["bytes_received"] > 0
    summary = read_summary(out)
    assert summary["federated"]["engine"] == "deployment"
    assert sorted(summary["federated"]["client_rows"].values()) == [75, 75]  # each node trained on its own file
    run_cli("export", out, "--out", tmp_path / "bundle").check()
    assert (tmp_path / "bundle" / "manifest.json").is_file()
    print(f"1 round on a SuperLink and 2 SuperNodes: {took:.1f} s")


def test_ctrl_c_stops_the_run_on_the_superlink(federation: dict, tmp_path: Path) -> None:
    # Ctrl-C ended `flwr run --stream` only: the run went on on the SuperLink, its nodes still training
    import json

    from trainfer.federating.deploy import flower_home

    work, out = federation["work"], tmp_path / "run"
    proc = start_cli(["federate", work / "recipe.yaml", "--clients", "2", "--rounds", "10000", "--superlink",
                      federation["superlink"], "--round-timeout", "60", "--out", out])
    t0 = time.monotonic()
    before = (work / "node0.log").read_text(errors="replace").count("Receiving: train message")
    while (work / "node0.log").read_text(errors="replace").count("Receiving: train message") == before:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() - t0 < 60, "the run never reached its nodes"
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    t1 = time.monotonic()
    _, err = proc.communicate(timeout=60)
    took = time.monotonic() - t1
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert proc.returncode == 130 and took < 30, (proc.returncode, took, err)
    assert len(lines) == 1 and lines[0].startswith("error: interrupted: run ") and "stopped on the SuperLink" in \
        lines[0] and "no run written" in lines[0], err
    run_id = lines[0].split("run ")[1].split()[0]
    home = tmp_path / "home"
    home.mkdir()
    flower_home(home, federation["superlink"])  # the same config.toml `federate --superlink` writes
    listed = subprocess.run([str(BIN / "flwr"), "ls", "--format", "json", "--run-id", run_id, "trainfer"],
                            env={**federation["env"], "FLWR_HOME": str(home)}, capture_output=True, text=True,
                            timeout=60)
    status = json.loads(listed.stdout)["runs"][0]["status"]
    assert status == "finished:stopped", listed.stdout + listed.stderr
    assert not out.exists()
    print(f"Ctrl-C stopped run {run_id} in {took:.1f} s: {status}")


def test_a_supernode_killed_mid_round_does_not_hang_the_server(federation: dict, tmp_path: Path) -> None:
    work, (_, victim) = federation["work"], federation["nodes"]
    out = tmp_path / "run"
    timeout = 15
    args = ["federate", work / "recipe.yaml", "--clients", "2", "--rounds", "2", "--superlink",
            federation["superlink"], "--round-timeout", str(timeout), "--out", out]
    t0 = time.monotonic()
    proc = start_cli(args)
    # mid-round: once the victim has taken its first training message (its ClientApp process is starting)
    before = (work / "node1.log").read_text(errors="replace").count("Receiving: train message")
    while (work / "node1.log").read_text(errors="replace").count("Receiving: train message") == before:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() - t0 < 60, "the victim never received a message"
        time.sleep(0.2)
    _kill(victim)
    _, stderr = proc.communicate(timeout=2 * timeout + 120)
    took = time.monotonic() - t0
    assert proc.returncode == 0, stderr
    rows = read_metrics(out)
    assert [r["round"] for r in rows] == [1, 2]
    assert rows[0]["clients_replied"] == 1, rows  # the killed node's reply never came: the round went on without it
    assert all(r["clients_replied"] >= 1 for r in rows)
    assert took < 2 * timeout + 120
    print(f"federation with a SuperNode killed mid-round finished in {took:.1f} s")
