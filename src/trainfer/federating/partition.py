"""How the train split is dealt out to the clients of a simulated federation: iid, or Dirichlet over labels.

Pure numpy and seeded: the same (labels, clients, partition, seed) always gives the same partition. Dirichlet
(Hsu et al. 2019): for each class, the shares of its rows that go to each client are drawn from Dir(α); small α
gives clients few classes each (non-iid), large α approaches iid. flwr-datasets has the same partitioner, but
it would add ~260 MB of dependencies for these few lines.
"""

from __future__ import annotations

import math

import numpy as np

from trainfer.errors import ConfigError

# Dirichlet draws that leave a client without rows are drawn again, this many times, before giving up.
DIRICHLET_TRIES = 20


def parse_partition(text: str) -> tuple[str, float | None]:
    """"iid" -> ("iid", None); "dirichlet:0.5" -> ("dirichlet", 0.5); anything else a ConfigError."""
    name, _, arg = str(text).partition(":")
    if name == "iid" and not arg:
        return "iid", None
    if name == "dirichlet":
        try:
            alpha = float(arg)
        except ValueError:
            alpha = math.nan
        if not math.isfinite(alpha) or alpha <= 0:
            raise ConfigError(f"--partition {text}: the Dirichlet α must be a number above 0, not {arg!r}",
                              hint="e.g. --partition dirichlet:0.5 (smaller α: more skewed clients; 100: nearly iid)")
        return "dirichlet", alpha
    raise ConfigError(f"--partition {text!r} is not a partition",
                      hint="use iid or dirichlet:ALPHA (e.g. dirichlet:0.5)")


def partition(labels: np.ndarray, clients: int, spec: str, seed: int) -> list[np.ndarray]:
    """Positions into ``labels`` for each of ``clients`` clients (sorted, disjoint, together all of them)."""
    _, alpha = parse_partition(spec)
    n = len(labels)
    if clients < 1:
        raise ConfigError(f"--clients must be at least 1, not {clients}")
    if clients > n:
        raise ConfigError(f"--clients {clients} is more than the {n} rows of the train split: a client would get none",
                          hint=f"use --clients {n} or fewer")
    rng = np.random.default_rng([seed, 0xFED])
    if alpha is None:  # iid
        return [np.sort(part) for part in np.array_split(rng.permutation(n), clients)]
    classes = np.unique(labels)
    for _ in range(DIRICHLET_TRIES):
        parts: list[list[np.ndarray]] = [[] for _ in range(clients)]
        for c in classes:
            rows = rng.permutation(np.flatnonzero(labels == c))
            shares = rng.dirichlet(np.full(clients, alpha))
            cuts = (np.cumsum(shares)[:-1] * len(rows)).astype(int)
            for k, chunk in enumerate(np.split(rows, cuts)):
                parts[k].append(chunk)
        out = [np.sort(np.concatenate(p)).astype(np.int64) for p in parts]
        if all(len(p) for p in out):
            return out
    raise ConfigError(f"--partition {spec} left a client with no rows in {DIRICHLET_TRIES} draws "
                      f"({clients} clients, {n} rows)", hint="raise the Dirichlet α or lower --clients")


def histograms(labels: np.ndarray, parts: list[np.ndarray], classes: list[str]) -> list[dict[str, int]]:
    """Each client's rows per class, in the features' class order (labels are encoded class indices)."""
    return [{name: int((labels[p] == i).sum()) for i, name in enumerate(classes)} for p in parts]
