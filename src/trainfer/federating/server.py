"""The server side: Flower's strategy drives the rounds; trainfer scores the global model and writes the run.

Each round the strategy (Flower's FedAvg or FedProx) samples clients, sends them the global weights, and
averages their replies weighted by row count. trainfer adds three things around it: a Grid that counts the
bytes of every message each way, a deadline on waiting for clients (Flower's own sampling waits forever for
its minimum), and an evaluation of the global model on the validation split after every round.
"""

from __future__ import annotations

import json
import math
import re
import threading
import time
from typing import Any

import numpy as np

from trainfer.errors import RunError


def record_bytes(content: Any) -> int:
    """Payload bytes of a message's content: its arrays (serialized numpy) and its config values."""
    n = sum(len(a.data) for rec in content.array_records.values() for a in rec.values())
    for rec in content.config_records.values():
        n += sum(len(str(v).encode()) for v in rec.values())
    for rec in content.metric_records.values():
        n += 8 * len(rec)
    return n


# How often the server polls for replies and connected clients (Flower's own Grid polls every 0.1 s too)
POLL_S = 0.1


def _check_stop(stop: threading.Event | None) -> None:
    if stop is not None and stop.is_set():
        raise RunError("the federation was stopped")


class CountingGrid:
    """A Flower Grid that counts the payload bytes sent to and received from the clients, round by round.

    It also waits for the replies itself, the way Flower's Grid does, but gives up as soon as ``stop`` is set:
    in the simulation the ServerApp runs in a (non-daemon) thread of this process, and Flower's own wait for
    replies that will never come (Ctrl-C stopped Ray) kept the interrupted command alive until --round-timeout.
    """

    def __init__(self, grid: Any, stop: threading.Event | None = None) -> None:
        self._grid = grid
        self._stop = stop
        self.sent = 0
        self.received = 0
        self.replies: list[Any] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._grid, name)

    def send_and_receive(self, messages: Any, *, timeout: float | None = None) -> Any:
        messages = list(messages)
        if not messages:  # the evaluation round: client-side evaluation is off, nothing is sent
            return []
        self.sent += sum(record_bytes(m.content) for m in messages)
        pending = set(self._grid.push_messages(messages))
        end = time.monotonic() + (timeout if timeout is not None else math.inf)
        replies: list[Any] = []
        while pending and time.monotonic() < end:
            _check_stop(self._stop)
            got = list(self._grid.pull_messages(pending))
            replies.extend(got)
            pending.difference_update(m.metadata.reply_to_message_id for m in got)
            if pending:
                time.sleep(POLL_S)
        self.received += sum(record_bytes(m.content) for m in replies if not m.has_error())
        # In client order, not arrival order: FedAvg sums the replies in the order given, and float sums
        # depend on it, so a federation with a fixed seed repeats only if its replies are summed the same way.
        replies.sort(key=_reply_order)
        self.replies = replies
        return replies


def _reply_order(message: Any) -> tuple[int, int]:
    """(0, client number) for a reply with weights; (1, node id) for a failed one."""
    if message.has_error():
        return 1, int(message.metadata.src_node_id)
    metrics = message.content.metric_records.get("metrics")
    if metrics is not None and "client" in metrics:
        return 0, int(metrics["client"])
    return 0, int(message.metadata.src_node_id)


def wait_for_nodes(grid: Any, wanted: int, deadline_s: float, stop: threading.Event | None = None) -> list[int]:
    """The connected node ids once ``wanted`` are connected; a RunError after ``deadline_s`` seconds."""
    t0 = time.monotonic()
    while len(nodes := list(grid.get_node_ids())) < wanted:
        _check_stop(stop)
        if time.monotonic() - t0 > deadline_s:
            raise RunError(f"only {len(nodes)} of {wanted} clients connected to the SuperLink within {deadline_s:g} s",
                           hint="start the missing `trainfer federate-node` processes, or lower --clients")
        time.sleep(0.5)
    return nodes


def failure_reasons(failed: list[Any]) -> list[str]:
    """One line per failed reply: trainfer's client names itself and its cause; Flower's own errors (a crashed
    client, a node gone) have their colour codes and line breaks taken out."""
    out = []
    for m in failed:
        text = " ".join(re.sub(r"\x1b\[[0-9;]*m", "", str(m.error.reason or "")).split())
        if not text.startswith("client "):
            text = f"node {m.metadata.src_node_id}: {text or f'error code {m.error.code}'}"
        out.append(text[:300])
    return out


def make_strategy(name: str, fraction: float, mu: float, clients: int, wait_s: float,
                  stop: threading.Event | None = None) -> Any:
    """Flower's FedAvg or FedProx, sampling with a deadline; client-side evaluation off (the server evaluates)."""
    from flwr.app import Message, MessageType, RecordDict
    from flwr.serverapp.strategy import FedAvg, FedProx

    base = FedProx if name == "fedprox" else FedAvg

    class Strategy(base):  # type: ignore[misc, valid-type]
        def configure_train(self, server_round: int, arrays: Any, config: Any, grid: Any) -> list[Any]:
            # Round 1 waits (up to wait_s) for every client; later rounds sample from the clients still
            # connected, so a client that died does not stop the federation: at least one must remain.
            nodes = wait_for_nodes(grid, clients if server_round == 1 else 1, wait_s, stop)
            rng = np.random.default_rng([int(config["seed"]), server_round])
            k = max(1, min(len(nodes), math.ceil(fraction * len(nodes))))
            ids = sorted(nodes)  # 64-bit unsigned ids: chosen by position, never through a numpy array of them
            chosen = [ids[i] for i in sorted(rng.choice(len(ids), size=k, replace=False).tolist())]
            config["server-round"] = server_round
            if name == "fedprox":
                config["proximal-mu"] = mu
            record = RecordDict({self.arrayrecord_key: arrays, self.configrecord_key: config})
            return [Message(content=record, message_type=MessageType.TRAIN, dst_node_id=n) for n in chosen]

    kwargs: dict[str, Any] = {"fraction_train": fraction, "fraction_evaluate": 0.0, "min_train_nodes": 1,
                              "min_available_nodes": 1}
    if name == "fedprox":
        kwargs["proximal_mu"] = mu
    return Strategy(**kwargs)


def run_rounds(grid: Any, spec: dict[str, Any], prepared: Any, recipe: Any, progress: Any = None,
               stop: threading.Event | None = None) -> dict[str, Any]:
    """Run the federation on ``grid``; returns {"state": final weights, "rounds": [...], "clients": {...}}.

    Setting ``stop`` (from another thread) ends it with a RunError at its next wait."""
    import torch
    from flwr.app import ArrayRecord, ConfigRecord, MetricRecord

    from trainfer.models import build_model
    from trainfer.training.loop import predict_outputs
    from trainfer.training.metrics import compute_metrics

    features = prepared.features
    # Flower does not seed the initial model: seeded here, as `trainfer train` seeds its own
    torch.manual_seed(recipe.seed)
    model = build_model(recipe.model, features.input_shape, features.n_outputs)
    if recipe.privacy is not None:
        from trainfer.training.privacy import replace_batchnorm

        model, _ = replace_batchnorm(model)
    device = torch.device("cpu")
    counting = CountingGrid(grid, stop)
    strategy = make_strategy(spec["strategy"], spec["fraction"], spec["proximal_mu"], spec["clients"],
                             spec["wait_s"], stop)
    rounds: list[dict[str, Any]] = []
    clients: dict[str, dict[str, Any]] = {}
    marks = {"sent": 0, "received": 0, "t": time.perf_counter()}

    def evaluate(server_round: int, arrays: Any) -> Any:
        model.load_state_dict(arrays.to_torch_state_dict())
        val = compute_metrics(predict_outputs(model, prepared.X["val"], device, recipe.train.eval_batch_size),
                              prepared.y["val"], features.target)
        if server_round == 0:
            return MetricRecord({f"val_{k}": float(v) for k, v in val.items()})
        ok = [m for m in counting.replies if not m.has_error()]
        failed = [m for m in counting.replies if m.has_error()]
        reasons = failure_reasons(failed)
        if not ok:
            why = reasons[0] if reasons else "no client replied before the timeout"
            more = f" ({len(failed) - 1} more clients failed too)" if len(failed) > 1 else ""
            raise RunError(f"round {server_round}: no client returned weights: {why}{more}",
                           hint="check the clients' logs, or raise --round-timeout")
        row: dict[str, Any] = {"round": server_round, "epoch": server_round,
                               "clients_sampled": len(counting.replies), "clients_replied": len(ok),
                               "clients_failed": len(failed)}
        if reasons:
            row["client_errors"] = reasons[:10]
        n = sum(float(m.content.metric_records["metrics"]["num-examples"]) for m in ok)
        row["rows_replied"] = int(n)  # the replying clients' rows: each trained on them for --local-epochs
        for key in ("train_loss", "train_accuracy"):
            vals = [(float(m.content.metric_records["metrics"][key]),
                     float(m.content.metric_records["metrics"]["num-examples"])) for m in ok
                    if key in m.content.metric_records["metrics"]]
            if vals:
                row[key] = sum(v * w for v, w in vals) / n
        row.update({f"val_{k}": float(v) for k, v in val.items()})
        now = time.perf_counter()
        row.update(bytes_sent=counting.sent - marks["sent"], bytes_received=counting.received - marks["received"],
                   round_s=now - marks["t"])
        marks.update(sent=counting.sent, received=counting.received, t=now)
        for m in ok:
            mr = m.content.metric_records["metrics"]
            who = str(int(mr["client"])) if "client" in mr else str(m.metadata.src_node_id)
            c = clients.setdefault(who, {"rounds": 0, "rows": int(mr["num-examples"]), "dp_history": []})
            c["rounds"] += 1
            if "dp-noise" in mr:
                c["dp_history"].append([float(mr["dp-noise"]), float(mr["dp-sample-rate"]), int(mr["dp-steps"])])
                c["dp_delta"] = float(mr["dp-delta"])
        rounds.append(row)
        if progress is not None:
            progress(row)
        return None

    initial = ArrayRecord(model.state_dict())
    train_config = ConfigRecord({"recipe": json.dumps(recipe.model_dump(mode="json")),
                                 "features": json.dumps(features.to_dict()),
                                 "local-epochs": int(spec["local_epochs"]), "rounds": int(spec["rounds"]),
                                 "seed": int(recipe.seed), "threads": int(spec.get("client_threads") or 0)})
    result = strategy.start(grid=counting, initial_arrays=initial, num_rounds=int(spec["rounds"]),
                            timeout=float(spec["round_timeout"]), train_config=train_config, evaluate_fn=evaluate)
    return {"state": result.arrays.to_torch_state_dict(), "rounds": rounds, "clients": clients}
