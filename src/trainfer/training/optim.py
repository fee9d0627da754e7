"""torch's optimizers, minus the torch.compile guards that cost every training command 1.4 s.

torch wraps ``step``, ``zero_grad``, ``add_param_group`` and the state-dict methods so that torch.compile
skips them; each wrapper imports torch._dynamo on its first call (1.4 s here, more than a small run's
whole training loop). The loop runs eagerly and never compiles, so these classes call the wrapped
functions directly: the same update, bitwise, and the same state_dict format (checkpoints unchanged).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch


def _unwrapped(fn: Callable[..., Any]) -> Callable[..., Any]:
    return getattr(fn, "__wrapped__", fn)  # a torch without the wrappers: the method itself


def _eager(cls: type[torch.optim.Optimizer]) -> type[torch.optim.Optimizer]:
    step = _unwrapped(cls.step)

    def eager_step(self: torch.optim.Optimizer, closure: Callable[[], float] | None = None) -> Any:
        with torch.no_grad():  # what the removed wrapper did for a non-differentiable optimizer
            return step(self, closure)

    base = torch.optim.Optimizer
    methods = {name: _unwrapped(getattr(base, name))
               for name in ("add_param_group", "zero_grad", "state_dict", "load_state_dict")}
    return type(cls.__name__, (cls,), {**methods, "step": eager_step, "__module__": __name__,
                                       "__doc__": f"torch.optim.{cls.__name__} without torch.compile guards."})


AdamW = _eager(torch.optim.AdamW)
SGD = _eager(torch.optim.SGD)


def set_deterministic(on: bool, warn_only: bool = True) -> None:
    """torch.use_deterministic_algorithms without importing torch._inductor (and with it torch._dynamo) just to
    set inductor's copy of the flag, which only torch.compile reads; once inductor is loaded, the public call."""
    import sys

    if "torch._inductor.config" not in sys.modules and hasattr(torch._C, "_set_deterministic_algorithms"):
        torch._C._set_deterministic_algorithms(on, warn_only=warn_only)
    else:
        torch.use_deterministic_algorithms(on, warn_only=warn_only)
