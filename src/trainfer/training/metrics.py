"""Evaluation metrics, computed in numpy from model outputs."""

from __future__ import annotations

import numpy as np

from trainfer.features import Target


def classification_metrics(logits: np.ndarray, y: np.ndarray) -> dict[str, float]:
    # Row by row in chunks: each row's log-probability is computed alone, so the chunks change no bit of the
    # result, and a split of millions of rows (a streamed run's train split) needs no (n, classes) float64 copies.
    n = len(y)
    pred = np.empty(n, dtype=np.int64)
    nll = np.empty(n, dtype=np.float64)
    for i in range(0, n, 65536):
        block = logits[i:i + 65536].astype(np.float64)
        z = block - block.max(axis=1, keepdims=True)
        logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
        pred[i:i + 65536] = block.argmax(axis=1)
        nll[i:i + 65536] = -logp[np.arange(len(block)), y[i:i + 65536]]
    n_classes = logits.shape[1]
    f1s = []
    for c in range(n_classes):
        tp = np.sum((pred == c) & (y == c))
        denom = np.sum(pred == c) + np.sum(y == c)
        if denom:
            f1s.append(2.0 * tp / denom)
    return {
        "accuracy": float(np.mean(pred == y)),
        "loss": float(nll.mean()),
        "f1_macro": float(np.mean(f1s)) if f1s else 0.0,
    }


def regression_metrics(outputs: np.ndarray, y: np.ndarray, target: Target) -> dict[str, float]:
    """rmse/mae in the target's original units; loss is the MSE the model was trained on."""
    pred = outputs.reshape(-1).astype(np.float64)
    y = y.astype(np.float64)
    loss = float(np.mean((pred - y) ** 2))
    pred_u, y_u = pred * target.std + target.mean, y * target.std + target.mean
    err = pred_u - y_u
    ss_tot = float(np.sum((y_u - y_u.mean()) ** 2)) or 1.0
    return {
        "rmse": float(np.sqrt(np.mean(err**2))),
        "mae": float(np.mean(np.abs(err))),
        "r2": float(1.0 - np.sum(err**2) / ss_tot),
        "loss": loss,
    }


def compute_metrics(outputs: np.ndarray, y: np.ndarray, target: Target) -> dict[str, float]:
    if target.task == "classification":
        return classification_metrics(outputs, y)
    return regression_metrics(outputs, y, target)


def monitor(task: str) -> tuple[str, str]:
    """The validation metric early stopping watches, and whether higher is better."""
    return ("accuracy", "max") if task == "classification" else ("rmse", "min")
