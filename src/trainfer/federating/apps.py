"""trainfer's Flower apps: a ClientApp whose local training is trainfer's loop, and a ServerApp that runs the
rounds (server.py) and writes an ordinary run directory (rundir.py).

``client_app`` and ``server_app`` at module level are what a deployed SuperLink and SuperNodes load (the app
bundle that `trainfer federate --superlink` submits names them); the simulation builds its own pair around
the data it already holds in memory (``simulation_apps``).
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from typing import Any

from flwr.app import ArrayRecord, Context, Error, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.constant import ErrorCode
from flwr.serverapp import Grid, ServerApp

from trainfer.errors import TrainferError
from trainfer.federating.client import RowSource, decode_config, rows_from_file, train_round

_log = logging.getLogger("trainfer.federating")


def failure_reason(client: int, exc: BaseException) -> str:
    """One line: which client failed and why (a trainfer error's own message, else the exception's type too)."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    if not isinstance(exc, TrainferError):
        text = f"{type(exc).__name__}: {text}"
    return f"client {client}: {text}"[:300]


def make_client_app(rows: RowSource) -> ClientApp:
    """A ClientApp that trains on the rows ``rows`` gives it for its node (see client.py)."""
    app = ClientApp()

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        import torch  # noqa: F401  (Flower's to_torch_state_dict works only once torch is imported)

        node_config = dict(context.node_config)
        who = int(node_config.get("partition-id", context.node_id))
        try:
            cfg = msg.content["config"]
            recipe, features = decode_config(cfg)
            dataset, X, y = rows(recipe, features, node_config)
            state = msg.content["arrays"].to_torch_state_dict()
            new_state, metrics = train_round(recipe, features, state, dataset, X, y, dict(cfg), client=who)
        except Exception as exc:
            # Replied as an error naming the client and the cause: raised, Flower logged a multi-page Ray
            # traceback per client and round on the server's console, and its reason was Ray's repr of it.
            # The traceback stays on this client's side (a SuperNode's log; a simulated client's is dropped).
            _log.exception("client %s: local training failed", who)
            return Message(Error(ErrorCode.CLIENT_APP_RAISED_EXCEPTION, failure_reason(who, exc)), reply_to=msg)
        metrics["client"] = float(who)
        return Message(content=RecordDict({"arrays": ArrayRecord(new_state), "metrics": MetricRecord(metrics)}),
                       reply_to=msg)

    return app


def simulation_apps(spec: dict[str, Any], prepared: Any, parts: list[Any], recipe: Any,
                    done: Callable[[dict[str, Any]], None], progress: Any = None,
                    stop: threading.Event | None = None) -> tuple[ClientApp, ServerApp]:
    """The pair the simulation engine runs: client k trains on ``parts[k]`` (positions in the train split)."""
    from trainfer.federating.server import run_rounds

    X, y, ds = prepared.X["train"], prepared.y["train"], prepared.dataset
    shards = [(X[p], y[p]) for p in parts]

    def rows(_recipe: Any, _features: Any, node_config: dict[str, Any]) -> Any:
        Xk, yk = shards[int(node_config["partition-id"])]
        return ds, Xk, yk

    server = ServerApp()

    @server.main()
    def main(grid: Grid, context: Context) -> None:
        done(run_rounds(grid, spec, prepared, recipe, progress, stop))

    return make_client_app(rows), server


# -- what a deployed SuperLink / SuperNode loads (pyproject.toml of the submitted app names these two)
client_app = make_client_app(rows_from_file)
server_app = ServerApp()


@server_app.main()
def _deployed_main(grid: Grid, context: Context) -> None:
    # The spec (recipe, --out, rounds, ...) travels in the run config as one JSON string; the run directory is
    # written where this ServerApp runs, i.e. on the SuperLink's machine.
    from trainfer.federating.rundir import prepare_federation, write_run

    spec = json.loads(str(context.run_config["spec"]))
    recipe, prepared = prepare_federation(spec)
    from trainfer.federating.server import run_rounds

    outcome = run_rounds(grid, spec, prepared, recipe)
    write_run(spec, recipe, prepared, outcome, parts=None)
