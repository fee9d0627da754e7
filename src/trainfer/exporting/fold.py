"""Fold each BatchNorm into the Linear or Conv that feeds it, for inference.

In eval mode a BatchNorm is an affine map with frozen statistics, so it can be merged into the
preceding layer's weights: one fewer op per layer and the same outputs (up to float rounding).
Works on any model torch.fx can trace; returns the model unchanged (and says why) otherwise.
"""

from __future__ import annotations

import copy

import torch
from torch import fx, nn
from torch.nn.utils.fusion import fuse_conv_bn_eval, fuse_linear_bn_eval

_PAIRS = {
    (nn.Conv1d, nn.BatchNorm1d): fuse_conv_bn_eval,
    (nn.Conv2d, nn.BatchNorm2d): fuse_conv_bn_eval,
    (nn.Conv3d, nn.BatchNorm3d): fuse_conv_bn_eval,
    (nn.Linear, nn.BatchNorm1d): fuse_linear_bn_eval,
}


def fold_batchnorm(model: nn.Module) -> tuple[nn.Module, int, str | None]:
    """Return (folded copy in eval mode, number of BatchNorms folded, reason when none could be)."""
    model = copy.deepcopy(model).eval()
    try:
        gm = fx.symbolic_trace(model)
    except Exception as exc:  # custom models with data-dependent control flow cannot be traced
        return model, 0, f"torch.fx cannot trace the model ({type(exc).__name__}); BatchNorm left unfolded"
    modules = dict(gm.named_modules())
    folded = 0
    for node in list(gm.graph.nodes):
        if node.op != "call_module" or not node.args or not isinstance(node.args[0], fx.Node):
            continue
        prev = node.args[0]
        if prev.op != "call_module" or len(prev.users) != 1:
            continue
        layer, bn = modules[prev.target], modules[node.target]
        fuse = next((f for (a, b), f in _PAIRS.items() if type(layer) is a and type(bn) is b), None)
        if fuse is None or not bn.track_running_stats or bn.running_mean is None:
            continue
        if isinstance(layer, nn.Linear) and layer.out_features != bn.num_features:
            continue
        _set_module(gm, prev.target, fuse(layer, bn))
        node.replace_all_uses_with(prev)
        gm.graph.erase_node(node)
        folded += 1
    gm.graph.lint()
    gm.recompile()
    gm.delete_all_unused_submodules()
    return gm.eval(), folded, None


def _set_module(root: nn.Module, target: str, module: nn.Module) -> None:
    parent_name, _, name = target.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, name, module)


class InferenceHead(nn.Module):
    """What the bundle's graph computes: probabilities for classes, original units for regression."""

    def __init__(self, body: nn.Module, task: str, mean: float = 0.0, std: float = 1.0) -> None:
        super().__init__()
        self.body = body
        self.task = task
        self.mean, self.std = float(mean), float(std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.body(x)
        if self.task == "classification":
            return torch.softmax(out, dim=1)
        return out * self.std + self.mean


class InputAffine(nn.Module):
    """``x * scale + shift`` on the raw (imputed, one-hot) input: standardization inside the graph."""

    def __init__(self, scale: torch.Tensor, shift: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("scale", scale)
        self.register_buffer("shift", shift)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale + self.shift


def fold_input_affine(model: nn.Module, scale: torch.Tensor, shift: torch.Tensor) -> tuple[nn.Module, bool]:
    """Put ``x * scale + shift`` in front of ``model``, folded into its first Linear when the input
    feeds only that layer (W' = W diag(scale), b' = b + W shift); returns (model, folded)."""
    try:
        gm = fx.symbolic_trace(model)
    except Exception:  # untraceable custom model: keep the explicit op
        return nn.Sequential(InputAffine(scale, shift), model).eval(), False
    placeholder = next(n for n in gm.graph.nodes if n.op == "placeholder")
    users = list(placeholder.users)
    if len(users) == 1 and users[0].op == "call_module":
        layer = gm.get_submodule(users[0].target)
        if type(layer) is nn.Linear and layer.in_features == scale.numel():
            fused = nn.Linear(layer.in_features, layer.out_features, bias=True)
            with torch.no_grad():
                w = layer.weight.double()
                bias = layer.bias.double() if layer.bias is not None else torch.zeros(layer.out_features).double()
                fused.weight.copy_((w * scale.double()).float())
                fused.bias.copy_((bias + w @ shift.double()).float())
            _set_module(gm, users[0].target, fused)
            gm.recompile()
            return gm.eval(), True
    return nn.Sequential(InputAffine(scale, shift), model).eval(), False
