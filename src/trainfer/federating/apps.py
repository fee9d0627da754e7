"""trainfer's Flower apps: a ClientApp whose local training is trainfer's loop, and a ServerApp that runs the
rounds (server.py) and writes an ordinary run directory (rundir.py).

``client_app`` and ``server_app`` at module level are what a deployed SuperLink and SuperNodes load (the app
bundle that `trainfer federate --superlink` submits names them); the simulation builds its own pair around
the data it already holds in memory (``simulation_apps``).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

from trainfer.federating.client import RowSource, decode_config, rows_from_file, train_round


def make_client_app(rows: RowSource) -> ClientApp:
    """A ClientApp that trains on the rows ``rows`` gives it for its node (see client.py)."""
    app = ClientApp()

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        import torch  # noqa: F401  (Flower's to_torch_state_dict works only once torch is imported)

        cfg = msg.content["config"]
        recipe, features = decode_config(cfg)
        node_config = dict(context.node_config)
        dataset, X, y = rows(recipe, features, node_config)
        state = msg.content["arrays"].to_torch_state_dict()
        new_state, metrics = train_round(recipe, features, state, dataset, X, y, dict(cfg))
        metrics["client"] = float(node_config.get("partition-id", context.node_id))
        return Message(content=RecordDict({"arrays": ArrayRecord(new_state), "metrics": MetricRecord(metrics)}),
                       reply_to=msg)

    return app


def simulation_apps(spec: dict[str, Any], prepared: Any, parts: list[Any], recipe: Any,
                    done: Callable[[dict[str, Any]], None], progress: Any = None) -> tuple[ClientApp, ServerApp]:
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
        done(run_rounds(grid, spec, prepared, recipe, progress))

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
