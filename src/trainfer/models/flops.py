"""FLOPs per sample with torch's FlopCounterMode (matmul/conv/attention only; slow, so count once)."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def forward_flops(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Forward FLOPs for one sample, in eval mode (BatchNorm and activations are not counted)."""
    was_training = model.training
    model.eval()
    x = torch.zeros(1, *input_shape, device=next(model.parameters()).device)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    model.train(was_training)
    return int(counter.get_total_flops())


def training_flops(model: nn.Module, input_shape: tuple[int, ...], batch: int = 8) -> int:
    """Forward + backward FLOPs per sample, counted on a small batch in train mode."""
    was_training = model.training
    model.train()  # BatchNorm needs batch statistics, so a batch of more than one
    x = torch.randn(batch, *input_shape, device=next(model.parameters()).device)
    with FlopCounterMode(display=False) as counter:
        model(x).float().sum().backward()
    model.zero_grad(set_to_none=True)
    model.train(was_training)
    return int(counter.get_total_flops()) // batch
