"""A small ResNet-style CNN: a conv stem, one residual block per stage, global pooling, a head.

Every convolution is followed directly by its BatchNorm, so export can fold each pair.
"""

from __future__ import annotations

import torch
from torch import nn


def _conv_bn(c_in: int, c_out: int, stride: int = 1, kernel: int = 3) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=kernel // 2, bias=False),
        nn.BatchNorm2d(c_out),
    )


class ResidualBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = _conv_bn(c_in, c_out, stride)
        self.conv2 = _conv_bn(c_out, c_out)
        # 1x1 projection when the shape changes, identity otherwise (as in ResNet).
        self.shortcut = _conv_bn(c_in, c_out, stride, kernel=1) if stride != 1 or c_in != c_out else nn.Identity()
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.conv1(x))
        out = self.conv2(out)
        return self.relu(out + self.shortcut(x))


class SmallResNet(nn.Module):
    def __init__(self, in_channels: int, n_outputs: int, channels: list[int], dropout: float) -> None:
        super().__init__()
        self.stem = nn.Sequential(_conv_bn(in_channels, channels[0]), nn.ReLU())
        blocks = []
        c = channels[0]
        for i, width in enumerate(channels):
            blocks.append(ResidualBlock(c, width, stride=1 if i == 0 else 2))
            c = width
        self.blocks = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.head = nn.Linear(c, n_outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.stem(x))
        return self.head(self.dropout(torch.flatten(self.pool(x), 1)))


def build_cnn(input_shape: tuple[int, ...], n_outputs: int, channels: list[int], dropout: float,
              batchnorm: bool) -> nn.Module:
    from trainfer.errors import ModelError

    if len(input_shape) != 3:
        raise ModelError(f"cnn needs image input (channels, height, width), got input shape {input_shape}",
                         hint="use --model mlp for tables")
    if not batchnorm:
        raise ModelError("the cnn always uses BatchNorm; remove model.batchnorm=false")
    if not channels:
        raise ModelError("model.channels must list at least one stage width, e.g. [32, 64]")
    return SmallResNet(input_shape[0], n_outputs, channels, dropout)
