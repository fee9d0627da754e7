"""Federated learning on Flower: partitions, bad input, and one simulated federation with DP per client.

The simulation test runs Flower's simulation engine (Ray) for real: 3 clients on iris, 3 rounds, DP-SGD on
every client, half the clients per round; its run directory goes through `trainfer export`.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from conftest import SRC, assert_user_error, read_metrics, read_summary, run_main

from trainfer.errors import ConfigError
from trainfer.federating.partition import histograms, partition

LABELS = np.repeat(np.arange(10), 50)  # 500 rows, 10 balanced classes


def test_iid_partition_is_seeded_disjoint_and_balanced() -> None:
    parts = partition(LABELS, 5, "iid", seed=3)
    assert [len(p) for p in parts] == [100] * 5
    assert np.array_equal(np.sort(np.concatenate(parts)), np.arange(500))
    assert all(np.array_equal(a, b) for a, b in zip(parts, partition(LABELS, 5, "iid", seed=3), strict=True))
    assert not all(np.array_equal(a, b) for a, b in zip(parts, partition(LABELS, 5, "iid", seed=4), strict=True))


def test_dirichlet_partition_skews_labels_more_as_alpha_falls() -> None:
    def skew(spec: str) -> float:
        # mean over clients of the share of its rows in its most common class (iid: ~0.1 for 10 classes)
        hist = histograms(LABELS, partition(LABELS, 5, spec, seed=0), [str(c) for c in range(10)])
        return float(np.mean([max(h.values()) / sum(h.values()) for h in hist]))

    low = partition(LABELS, 5, "dirichlet:0.1", seed=0)
    assert np.array_equal(np.sort(np.concatenate(low)), np.arange(500)) and all(len(p) for p in low)
    assert all(np.array_equal(a, b) for a, b in zip(low, partition(LABELS, 5, "dirichlet:0.1", seed=0), strict=True))
    assert skew("dirichlet:0.1") > skew("dirichlet:1") > skew("dirichlet:1000") > 0.1 - 1e-9
    assert skew("dirichlet:0.1") > 0.4 and skew("iid") < 0.2


@pytest.mark.parametrize(("labels", "clients", "spec", "words"), [
    (LABELS, 5, "dirichlet:0", ["α", "above 0"]),
    (LABELS, 5, "dirichlet:-2", ["α"]),
    (LABELS, 5, "dirichlet:nan", ["α"]),
    (LABELS, 5, "dirichlet:x", ["α"]),
    (LABELS, 5, "random", ["not a partition"]),
    (LABELS, 501, "iid", ["501", "500 rows"]),
    (LABELS, 0, "iid", ["at least 1"]),
    # 2 classes of 3 rows among 6 clients at a tiny α: some client always ends up empty
    (np.array([0, 0, 0, 1, 1, 1]), 6, "dirichlet:0.01", ["no rows"]),
])
def test_bad_partitions_are_refused(labels: np.ndarray, clients: int, spec: str, words: list[str]) -> None:
    with pytest.raises(ConfigError) as err:
        partition(labels, clients, spec, seed=0)
    assert all(w in str(err.value) for w in words), str(err.value)


@pytest.mark.parametrize(("extra", "words"), [
    (["--clients", "0", "--rounds", "1"], ["--clients"]),
    (["--clients", "2", "--rounds", "0"], ["--rounds"]),
    (["--clients", "2", "--rounds", "1", "--partition", "dirichlet:0"], ["α"]),
    (["--clients", "2", "--rounds", "1", "--fraction", "0"], ["--fraction"]),
    (["--clients", "2", "--rounds", "1", "--fraction", "1.01"], ["--fraction"]),
    (["--clients", "2", "--rounds", "1", "--fraction", "nan"], ["--fraction"]),
    (["--clients", "2", "--rounds", "1", "--local-epochs", "0"], ["--local-epochs"]),
    (["--clients", "2", "--rounds", "1", "--strategy", "fedsgd"], ["--strategy"]),
    (["--clients", "2", "--rounds", "1", "--proximal-mu", "0.1"], ["fedprox"]),
    (["--clients", "2", "--rounds", "1", "--strategy", "fedprox", "--dp-epsilon", "3"], ["fedprox", "dp-epsilon"]),
    (["--clients", "2", "--rounds", "1", "--dp-epsilon", "0"], ["--dp-epsilon"]),
    (["--clients", "2", "--rounds", "1", "--dp-epsilon", "inf"], ["--dp-epsilon"]),
    (["--clients", "2", "--rounds", "1", "--superlink", "localhost"], ["HOST:PORT"]),
    (["--clients", "2", "--rounds", "1", "--round-timeout", "0"], ["--round-timeout"]),
    (["--clients", "1000", "--rounds", "1"], ["--clients 1000", "rows"]),  # iris: 105 train rows
    (["--clients", "two", "--rounds", "1"], ["clients"]),
])
def test_federate_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str],
                            words: list[str]) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text("data: {source: iris}\nmodel: {name: mlp, hidden: [8]}\n")
    out = tmp_path / "out"
    assert_user_error(run_main(["federate", recipe, *extra, "--out", out], capsys), out, mentions=words)


def test_federate_bad_recipe_out_and_node(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text("data: {source: iris}\n")
    args = ["--clients", "2", "--rounds", "1"]
    assert_user_error(run_main(["federate", tmp_path / "missing.yaml", *args, "--out", tmp_path / "o"], capsys),
                      tmp_path / "o")
    assert_user_error(run_main(["federate", tmp_path, *args, "--out", tmp_path / "o"], capsys), tmp_path / "o")
    (tmp_path / "file").write_text("x")
    assert_user_error(run_main(["federate", recipe, *args, "--out", tmp_path / "file"], capsys), mentions=["file"])
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "summary.json").write_text("{}")
    assert_user_error(run_main(["federate", recipe, *args, "--out", taken], capsys), mentions=["exists"])
    assert_user_error(run_main(["federate-node", "--superlink", "127.0.0.1:9", "--data", tmp_path / "no.csv"],
                               capsys), mentions=["no.csv", "not found"])
    assert_user_error(run_main(["federate-node", "--superlink", "nohost", "--data", recipe], capsys),
                      mentions=["HOST:PORT"])


BLOCKED = textwrap.dedent("""
    import sys
    class _NotInstalled:  # flwr cannot be imported, exactly as when it is not installed
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] == "flwr":
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
    sys.meta_path.insert(0, _NotInstalled())
    from trainfer.cli import main
    main(sys.argv[1:])
""")


def test_without_flwr_the_extra_is_named(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(SRC) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    res = subprocess.run([sys.executable, "-c", BLOCKED, "federate", "x.yaml", "--clients", "2", "--rounds", "1",
                          "--out", str(tmp_path / "o")], capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode == 2 and res.stderr.splitlines() == [
        "error: flwr is needed for this and is not installed", "hint: pip install 'trainfer[federated]'"], res.stderr
    assert not (tmp_path / "o").exists()


@pytest.fixture(scope="module")
def dp_federation(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import trainfer

    work = tmp_path_factory.mktemp("fed")
    recipe = {"seed": 1, "data": {"source": "iris"}, "model": {"name": "mlp", "hidden": [16], "batchnorm": True},
              "train": {"batch_size": 16, "lr": 0.01}, "privacy": {"accountant": "rdp"}}
    run = trainfer.federate(recipe, out=work / "run", clients=3, rounds=3, partition="dirichlet:1",
                            local_epochs=2, fraction=0.5, dp_epsilon=4.0)
    return run.path


def test_simulated_dp_federation_is_a_run_that_exports(dp_federation: Path, capsys: pytest.CaptureFixture[str],
                                                       tmp_path: Path) -> None:
    from trainfer.training.privacy import epsilon_of

    summary = read_summary(dp_federation)
    fed = summary["federated"]
    rows = read_metrics(dp_federation)
    assert [r["round"] for r in rows] == [1, 2, 3]
    # half of 3 clients, rounded up, train each round; every round sends and receives weights
    assert all(r["clients_sampled"] == r["clients_replied"] == 2 for r in rows)
    pairs = {a + b for a, b in itertools.combinations(fed["client_rows"], 2)}
    assert all(r["rows_replied"] in pairs for r in rows), (rows, fed["client_rows"])  # 2 of the 3 clients' rows
    assert all(r["bytes_sent"] > r["bytes_received"] > 0 and 0 <= r["val_accuracy"] <= 1 for r in rows)
    assert fed["bytes_sent"] == sum(r["bytes_sent"] for r in rows)
    assert fed["strategy"] == "fedavg" and fed["partition"] == "dirichlet:1" and fed["clients"] == 3
    assert sum(sum(h.values()) for h in fed["label_histograms"]) == summary["samples"]["train"] == sum(
        fed["client_rows"])
    assert "simplification" in fed["preprocessing"]
    # per-client ε: every client within the target; one that trained in more rounds spent more
    privacy = summary["privacy"]
    per = privacy["per_client"]
    assert sum(c["rounds"] for c in per.values()) == 6
    assert all(0 < c["epsilon"] <= 4.0 + 1e-6 for c in per.values()), per
    assert privacy["epsilon"] == max(c["epsilon"] for c in per.values())
    for k, c in per.items():
        # honest composition: the client's accountant covers every step of every round it took part in
        # (2 local epochs of ceil(rows / 16) Poisson steps each), at the noise fixed for the whole federation
        rows_k = fed["client_rows"][int(k)]
        assert c["steps"] == c["rounds"] * 2 * -(-rows_k // 16), (k, c, rows_k)
        assert c["epsilon"] == pytest.approx(epsilon_of("rdp", [(c["noise_multiplier"], c["sample_rate"], c["steps"])],
                                                        c["delta"]), rel=1e-9)
    # the run directory is an ordinary one: export turns it into a bundle (GroupNorm, as DP trained it)
    bundle = tmp_path / "bundle"
    res = run_main(["export", dp_federation, "--out", bundle], capsys)
    assert res.returncode == 0, res.stderr
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["privacy"]["epsilon"] == privacy["epsilon"]
    import trainfer

    predictor = trainfer.load(bundle)
    run = trainfer.Run.load(dp_federation)
    X, _ = run.load_split("test")
    assert np.allclose(predictor.predict_proba(X), run.predict_proba(X), atol=1e-4)


def test_fedprox_proximal_term_keeps_the_client_near_the_global_weights() -> None:
    """FedProx measured: the same local round from the same global weights drifts less with a large mu."""
    import torch

    from trainfer.config import validate
    from trainfer.data import prepare
    from trainfer.federating.client import train_round
    from trainfer.models import build_model

    recipe = validate({"seed": 0, "data": {"source": "iris"}, "model": {"name": "mlp", "hidden": [16]},
                       "train": {"batch_size": 8, "lr": 0.05}}, "test")
    prepared = prepare(recipe.data, recipe.seed)
    torch.manual_seed(0)
    model = build_model(recipe.model, prepared.features.input_shape, prepared.features.n_outputs)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    weights = [name for name, _ in model.named_parameters()]  # not BatchNorm's step counter, which always grows
    X, y = prepared.X["train"], prepared.y["train"]

    def drift(mu: float) -> float:
        cfg = {"local-epochs": 3, "rounds": 1, "threads": 1, "proximal-mu": mu}
        state, _ = train_round(recipe, prepared.features, start, prepared.dataset, X, y, cfg)
        return float(sum(((state[k] - start[k]) ** 2).sum() for k in weights) ** 0.5)

    # measured here: 4.45 at mu 0, 0.59 at mu 1, 0.16 at mu 10
    free, some, held = drift(0.0), drift(1.0), drift(10.0)
    assert held < some < 0.5 * free, (free, some, held)


def _small_csv(path: Path, per_class: int) -> Path:
    from sklearn.datasets import load_iris

    load_iris(as_frame=True).frame.groupby("target").head(per_class).to_csv(path, index=False)
    return path


def test_failing_clients_end_in_one_error_line_naming_the_client_and_cause(tmp_path: Path) -> None:
    # 4 rows per class leave 6 train rows, dealt to 6 clients: one row each, which BatchNorm cannot train on, so
    # every client fails. Flower logged a multi-page Ray traceback per client before our `error:` line, whose
    # cause was Ray's repr of the exception (with colour codes).
    data = _small_csv(tmp_path / "tiny.csv", 4)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"data: {{source: {data}, target: target}}\n"
                      "model: {name: mlp, hidden: [8], batchnorm: true}\n")
    from conftest import run_cli

    res = run_cli("federate", recipe, "--clients", "6", "--rounds", "1", "--out", tmp_path / "out", "--quiet")
    assert res.returncode == 2, res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 2 and lines[0].startswith("error: round 1: no client returned weights: client "), res.stderr
    assert "ValueError: Expected more than 1 value per channel" in lines[0] and "5 more clients" in lines[0], lines
    assert lines[1].startswith("hint: ") and not (tmp_path / "out").exists()


@pytest.mark.parametrize("sig,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["ctrl-c", "sigterm"])
def test_a_signal_stops_a_simulation_promptly_and_shuts_ray_down(tmp_path: Path, sig: int, code: int) -> None:
    # SIGTERM hit Ray's handler in the driver: a stack dump and abort (exit 134). Ctrl-C hung: the ServerApp thread
    # waited for replies from a stopped Ray until --round-timeout. SIGTERM now takes Ctrl-C's path.
    # Then Ctrl-C with the output on pipes hung at exit whenever a client was mid-fit: a Flower worker thread
    # waited in ray.get on an actor Ray had shut down. Long local fits (train.epochs) keep a fit in flight here.
    import time

    from conftest import start_cli

    # no YAML: the CSV and its target given as `trainfer train` takes them (federate had no --data before)
    data = _small_csv(tmp_path / "iris.csv", 50)
    out = tmp_path / "out"

    def ray_processes() -> set[str]:
        # zombies left: exited workers whose new parent (a container's PID 1 may not reap) has not collected them
        ps = subprocess.run(["ps", "-eo", "pid,stat,args"], capture_output=True, text=True).stdout.splitlines()
        return {ln.split()[0] for ln in ps[1:] if not ln.split()[1].startswith("Z")
                and any(w in ln for w in ("raylet", "gcs_server", "ray::"))}

    before = ray_processes()
    proc = start_cli(["federate", "--data", data, "--target", "target", "--model", "mlp", "--seed", "1", "--set",
                      "model.hidden=[8]", "--set", "train.epochs=300", "--clients", "2", "--rounds", "10000",
                      "--out", out])
    assert proc.stderr is not None
    first = proc.stderr.readline()  # round 1's line: Ray and its actors are up
    assert first.startswith("round 1/10000: 2/2 clients"), first + proc.stderr.read()
    proc.send_signal(sig)
    t0 = time.monotonic()
    _, err = proc.communicate(timeout=60)
    assert time.monotonic() - t0 < 30 and proc.returncode == code, (proc.returncode, err)
    lines = [ln for ln in err.splitlines() if ln.strip() and not ln.startswith("round ")]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "no run written" in lines[0], err
    assert not out.exists()
    deadline = time.monotonic() + 20  # Ray's workers exit on their own once its raylet is gone: a few seconds
    while (left := ray_processes() - before) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not left, f"Ray processes {left} outlived the command by 20 s"


def test_unreachable_superlink_is_one_clean_error_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import socket
    import time

    with socket.socket() as s:  # a port where nothing listens
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    recipe = tmp_path / "r.yaml"
    recipe.write_text("data: {source: iris}\n")
    t0 = time.monotonic()
    line = assert_user_error(run_main(["federate", recipe, "--clients", "2", "--rounds", "1", "--superlink",
                                       f"127.0.0.1:{port}", "--out", tmp_path / "o"], capsys), tmp_path / "o",
                             mentions=["Connection to the SuperLink is unavailable"])
    assert time.monotonic() - t0 < 60
    assert not any(ch in line for ch in "│╭╰─\x1b"), line


def test_federate_takes_data_options_instead_of_a_recipe(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # `trainfer federate iris.csv` pointed at --data/--target, which federate did not have
    data = _small_csv(tmp_path / "iris.csv", 50)
    args = ["--clients", "2", "--rounds", "1", "--out", tmp_path / "o"]
    res = run_main(["federate", data, *args], capsys)
    assert_user_error(res, tmp_path / "o")
    assert f"hint: pass it as --data {data}" in res.stderr  # the options below exist now
    (tmp_path / "empty").mkdir()
    assert_user_error(run_main(["federate", "--data", data, "--target", "nosuch", *args], capsys), tmp_path / "o",
                      mentions=["nosuch"])
    assert_user_error(run_main(["federate", "--data", tmp_path / "missing.csv", *args], capsys), tmp_path / "o",
                      mentions=["missing.csv"])
    assert_user_error(run_main(["federate", "--data", tmp_path / "empty", *args], capsys), tmp_path / "o")
    assert_user_error(run_main(["federate", "--data", data, "--target", "target", "--seed", "x", *args], capsys),
                      tmp_path / "o", mentions=["seed"])
    assert_user_error(run_main(["federate", "--data", data, "--target", "target", "--model", "nosuch", *args],
                               capsys), tmp_path / "o", mentions=["nosuch"])


def test_federate_node_refuses_data_it_cannot_train_on(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    node = ["federate-node", "--superlink", "127.0.0.1:9", "--data"]
    (tmp_path / "empty").mkdir()
    assert_user_error(run_main([*node, tmp_path / "empty"], capsys), mentions=["folder without images"])
    (tmp_path / "cls").mkdir()
    (tmp_path / "cls" / "a").mkdir()
    (tmp_path / "cls" / "a" / "notes.txt").write_text("x")
    assert_user_error(run_main([*node, tmp_path / "cls"], capsys), mentions=["folder without images"])
    (tmp_path / "e.csv").write_text("")
    assert_user_error(run_main([*node, tmp_path / "e.csv"], capsys), mentions=["empty"])
    ok = _small_csv(tmp_path / "ok.csv", 5)
    for bad in ("0", "-1", "nan", "inf", "soon"):
        assert_user_error(run_main([*node, ok, "--connect-timeout", bad], capsys), mentions=["connect-timeout"])


def test_a_node_whose_superlink_never_answers_gives_up_within_connect_timeout(tmp_path: Path) -> None:
    # it retried forever: a SuperNode started against a SuperLink that is down never exited
    import socket
    import time

    with socket.socket() as s:  # ports where nothing listens
        s.bind(("127.0.0.1", 0))
        link = s.getsockname()[1]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        own = s.getsockname()[1]
    log = tmp_path / "node.log"
    cmd = [sys.executable, "-m", "trainfer.cli", "federate-node", "--superlink", f"127.0.0.1:{link}", "--data",
           str(_small_csv(tmp_path / "n.csv", 5)), "--port", str(own), "--connect-timeout", "3"]
    env = {**os.environ, "PYTHONPATH": str(SRC) + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "FLWR_HOME": str(tmp_path), "FLWR_DISABLE_UPDATE_CHECK": "1"}
    # output to a file and the node reaped by wait(): its `flower-superexec` child exits once its parent is gone,
    # which it cannot tell while the parent is an unreaped zombie (a pipe read to its end would wait for both)
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        code = proc.wait(timeout=60)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    took = time.monotonic() - t0
    text = log.read_text(errors="replace")
    # 3 s of retries after the node's start-up (imports, its local API): ~8 s in all here
    assert code != 0 and took < 40, (code, took, text[-2000:])
    assert "could not establish a connection to the SuperLink" in text, text[-2000:]


def test_a_federation_with_a_fixed_seed_repeats_exactly(tmp_path: Path) -> None:
    # Replies are summed in client order (not arrival order) and each client's round has a seed of its own:
    # two runs gave different weights when dropout drew from whichever Ray worker served the client
    from safetensors.numpy import load_file

    import trainfer

    recipe = {"seed": 0, "data": {"source": "iris"}, "model": {"name": "mlp", "hidden": [16], "dropout": 0.2,
                                                                "batchnorm": False},
              "train": {"batch_size": 16, "lr": 0.01}}
    weights = []
    for k in range(2):
        run = trainfer.federate(recipe, out=tmp_path / f"run{k}", clients=3, rounds=2, local_epochs=1)
        weights.append(load_file(str(run.path / "model.safetensors")))
    assert weights[0].keys() == weights[1].keys()
    assert all(np.array_equal(weights[0][n], weights[1][n]) for n in weights[0])
    losses = [[r["train_loss"] for r in read_metrics(tmp_path / f"run{k}")] for k in range(2)]
    assert losses[0] == losses[1] and losses[0][0] != losses[0][1]  # rounds differ, runs do not
