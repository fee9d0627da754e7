"""Model builders: a table of names -> functions, plus user models given as ``package.module:function``."""

from __future__ import annotations

import importlib
from collections.abc import Callable

from torch import nn

from trainfer.config import ModelConfig
from trainfer.errors import ModelError
from trainfer.models.cnn import build_cnn
from trainfer.models.mlp import build_mlp

# name -> builder(input_shape, n_outputs, cfg)
MODELS: dict[str, Callable[[tuple[int, ...], int, ModelConfig], nn.Module]] = {
    "mlp": lambda shape, n, c: build_mlp(shape, n, c.hidden, c.dropout, c.batchnorm),
    "cnn": lambda shape, n, c: build_cnn(shape, n, c.channels, c.dropout, c.batchnorm),
}


def build_model(cfg: ModelConfig, input_shape: tuple[int, ...], n_outputs: int) -> nn.Module:
    """Build the network named by ``cfg.name`` for inputs of ``input_shape`` and ``n_outputs`` outputs.

    Example: ``build_model(ModelConfig(name="mlp", hidden=[64]), (64,), 10)``.
    A custom model ``pkg.mod:fn`` is called as ``fn(input_shape=..., n_outputs=..., **cfg.options)``.
    """
    if cfg.name in MODELS:
        if cfg.options:
            raise ModelError(f"model.options are for custom models; {cfg.name!r} takes hidden/channels/dropout")
        return MODELS[cfg.name](tuple(input_shape), n_outputs, cfg)
    if ":" not in cfg.name:
        raise ModelError(f"unknown model {cfg.name!r}",
                         hint=f"use one of {', '.join(MODELS)} or a custom builder as package.module:function")
    module_name, _, fn_name = cfg.name.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ModelError(f"cannot import {module_name!r} for model {cfg.name!r}: {exc}",
                         hint="make sure the module is on PYTHONPATH") from None
    fn = getattr(module, fn_name, None)
    if not callable(fn):
        raise ModelError(f"{module_name} has no function {fn_name!r}")
    try:
        model = fn(input_shape=tuple(input_shape), n_outputs=n_outputs, **cfg.options)
    except TypeError as exc:
        raise ModelError(f"{cfg.name} could not be called: {exc}",
                         hint="a custom builder takes input_shape, n_outputs and model.options as keywords") from None
    if not isinstance(model, nn.Module):
        raise ModelError(f"{cfg.name} returned {type(model).__name__}, not a torch.nn.Module")
    return model


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


__all__ = ["MODELS", "build_model", "count_parameters"]
