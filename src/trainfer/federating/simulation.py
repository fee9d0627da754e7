"""The simulation engine: Flower's Ray-backed runtime with ``clients`` virtual SuperNodes on this machine.

Why ``flwr.simulation.run_simulation`` although Flower marks it deprecated in favour of `flwr run`: `flwr run`
submits an app bundle to a SuperLink, and the local SuperLink it starts on its own installs each run's
dependencies from the package index (DEPENDENCY-NOTES.md: a multi-GB CUDA torch) and needs a packaged app.
``run_simulation`` runs the same ServerApp/ClientApp pair in this process (the ServerApp in a thread, the
ClientApps in Ray actors), offline, with the data already in memory; it is pinned with flwr 1.42.*.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from typing import Any

from trainfer.config import Recipe
from trainfer.errors import RunError

# Ray's object store is sized for big clusters by default (30% of RAM): a federation of small models needs little
RAY_OBJECT_STORE_BYTES = 80 * 1024 * 1024


def simulate(spec: dict[str, Any], recipe: Recipe, progress: Callable[[dict[str, Any]], None] | None) -> None:
    from trainfer.data import prepare
    from trainfer.federating.partition import histograms, partition
    from trainfer.federating.rundir import write_run

    prepared = prepare(recipe.data, recipe.seed)
    if prepared.features.task != "classification" and spec["partition"] != "iid":
        from trainfer.errors import ConfigError

        raise ConfigError("--partition dirichlet splits by class: it needs a classification target",
                          hint="use --partition iid for regression")
    labels = prepared.y["train"]
    parts = partition(labels, spec["clients"], spec["partition"], recipe.seed)
    hist = histograms(labels, parts, [str(v) for v in prepared.features.target.labels]) \
        if prepared.features.task == "classification" else None
    cpus = os.cpu_count() or 1
    actors = min(spec["clients"], cpus)
    spec["client_threads"] = max(1, cpus // actors)
    outcome: dict[str, Any] = {}

    from trainfer.federating.apps import simulation_apps

    stop = threading.Event()
    client, server = simulation_apps(spec, prepared, parts, recipe, outcome.update, progress, stop)
    backend = {"init_args": {"num_cpus": cpus, "object_store_memory": RAY_OBJECT_STORE_BYTES,
                             "include_dashboard": False, "logging_level": logging.ERROR, "log_to_driver": False},
               "client_resources": {"num_cpus": 1, "num_gpus": 0.0}}
    t0 = time.perf_counter()
    _run(server, client, spec["clients"], backend, stop)
    spec["simulation_s"] = time.perf_counter() - t0
    if "state" not in outcome:
        raise RunError("the simulation ended without a result (see the messages above)")
    write_run(spec, recipe, prepared, outcome, parts, hist)


class Terminated(KeyboardInterrupt):
    """SIGTERM during a simulation: stopped the way Ctrl-C stops it (the CLI exits 143, not 130)."""


def _run(server: Any, client: Any, clients: int, backend: dict[str, Any], stop: threading.Event) -> None:
    import ray
    from flwr.simulation import run_simulation

    # Ray is started here, not by Flower, so that our SIGTERM handler can replace the one Ray installs in the
    # driver (it printed a stack dump and aborted: exit 134). Flower's backend reuses an initialized Ray.
    pythonpath = os.pathsep.join(sys.path)  # what Flower passes its Ray workers: this process's import path
    previous = signal.getsignal(signal.SIGTERM)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # Flower logs every round at INFO, and at ERROR each actor Ctrl-C stops (39 lines before our one line).
        # A client's failure reaches the user anyway: its reply names the client and the cause (failure_reasons).
        logging.getLogger("flwr").setLevel(logging.CRITICAL)
        try:
            ray.init(runtime_env={"env_vars": {"PYTHONPATH": pythonpath}}, **backend["init_args"])
            if threading.current_thread() is threading.main_thread():
                signal.signal(signal.SIGTERM, _terminate)
            with _busy_actors_killed_on_stop():
                run_simulation(server_app=server, client_app=client, num_supernodes=clients,
                               backend_config=backend)
        except BaseException:
            # the ServerApp thread is not a daemon: it must stop waiting for replies, or the process cannot exit
            stop.set()
            raise
        finally:
            if threading.current_thread() is threading.main_thread():
                signal.signal(signal.SIGTERM, previous)
            if ray.is_initialized():
                ray.shutdown()


@contextlib.contextmanager
def _busy_actors_killed_on_stop() -> Iterator[None]:
    """While Flower runs the simulation, its backend's ``terminate`` first kills the actors still running a task.

    Flower (pinned 1.42.*) terminates only its idle actors and then shuts Ray down. A worker thread of its
    that was waiting in ``ray.get`` on a busy actor when Ctrl-C came then waits forever (the reply can no
    longer come), and the interpreter waits for that thread at exit: the command printed its error line and
    hung (seen with its output on pipes; timing decided it). Killing the busy actors first makes that
    ``ray.get`` raise; the thread sees Flower's stop flag and ends before Ray is shut down.
    """
    import ray
    from flwr.server.superlink.fleet.vce.backend.raybackend import RayBackend

    original = RayBackend.terminate

    def terminate(self: Any) -> None:
        pool = getattr(self, "pool", None)
        busy = list(getattr(pool, "_future_to_actor", {}).values())
        for actor in busy:
            with contextlib.suppress(Exception):  # already gone: nothing to unblock
                ray.kill(actor, no_restart=True)
        if busy:
            deadline = time.monotonic() + 10
            for t in threading.enumerate():
                if t.name.startswith("ThreadPoolExecutor") and t is not threading.current_thread():
                    t.join(max(0.0, deadline - time.monotonic()))
        original(self)

    RayBackend.terminate = terminate  # type: ignore[method-assign]
    try:
        yield
    finally:
        RayBackend.terminate = original  # type: ignore[method-assign]


def _terminate(_signum: int, _frame: Any) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second SIGTERM ends the process at once
    raise Terminated()
