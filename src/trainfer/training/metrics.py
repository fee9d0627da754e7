"""Evaluation metrics, computed in numpy from model outputs."""

from __future__ import annotations

import numpy as np

from trainfer.features import Target


def classification_metrics(logits: np.ndarray, y: np.ndarray) -> dict[str, float]:
    logits = logits.astype(np.float64)
    z = logits - logits.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    pred = logits.argmax(axis=1)
    n_classes = logits.shape[1]
    f1s = []
    for c in range(n_classes):
        tp = np.sum((pred == c) & (y == c))
        denom = np.sum(pred == c) + np.sum(y == c)
        if denom:
            f1s.append(2.0 * tp / denom)
    return {
        "accuracy": float(np.mean(pred == y)),
        "loss": float(-logp[np.arange(len(y)), y].mean()),
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
