"""A multilayer perceptron: [Linear -> BatchNorm -> ReLU -> Dropout] x N -> Linear head.

Built as one flat nn.Sequential so export can fold each BatchNorm into the Linear before it.
"""

from __future__ import annotations

from torch import nn


def build_mlp(input_shape: tuple[int, ...], n_outputs: int, hidden: list[int], dropout: float,
              batchnorm: bool) -> nn.Module:
    layers: list[nn.Module] = [nn.Flatten()] if len(input_shape) > 1 else []
    width = 1
    for d in input_shape:
        width *= d
    for h in hidden:
        layers.append(nn.Linear(width, h, bias=not batchnorm))  # BN's shift makes the bias redundant
        if batchnorm:
            layers.append(nn.BatchNorm1d(h))
        layers.append(nn.ReLU())
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        width = h
    layers.append(nn.Linear(width, n_outputs))
    return nn.Sequential(*layers)
