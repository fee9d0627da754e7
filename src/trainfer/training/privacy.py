"""Differentially private training: an adapter that makes the one loop step with DP-SGD (Opacus).

What changes for a recipe with a ``privacy:`` section: BatchNorm becomes GroupNorm (batch statistics mix
examples, which per-example privacy forbids); each step's batch is Poisson-sampled (every training row joins
with probability q, so batch sizes vary); each example's gradient is clipped to ``max_grad_norm`` and Gaussian
noise is added (Opacus's DPOptimizer); an accountant adds up ε. What stays: the loop (training/loop.py), its
schedule, validation, checkpoints and metrics. The loop asks this adapter for its batches, its optimizer and
its loss, and hands it the checkpoint to fill and to restore from.
"""

from __future__ import annotations

import secrets
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

from trainfer.config import PrivacyConfig
from trainfer.errors import ConfigError, ModelError

# Each GroupNorm group gets at least this many channels. Opacus's own fix uses 32 groups whatever the width:
# a 64-unit layer then has 2 channels per group and even non-private training collapsed to 10% on digits;
# 8 channels per group kept 96.9% (DEPENDENCY-NOTES.md).
MIN_CHANNELS_PER_GROUP = 8
# The least noise multiplier find_noise considers: below it ε is ~50 or more (no guarantee worth the name) and the
# PRV accountant slows down steeply (measured: see find_noise).
MIN_NOISE = 0.3
_BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


def group_count(channels: int) -> int:
    """GroupNorm groups for ``channels``: the most groups that divide them with >= 8 channels each (64 -> 8)."""
    return max((g for g in range(1, channels // MIN_CHANNELS_PER_GROUP + 1) if channels % g == 0), default=1)


def replace_batchnorm(model: nn.Module) -> tuple[nn.Module, list[str]]:
    """``model`` with every BatchNorm replaced by a GroupNorm of ``group_count`` groups (in place; the root
    is returned in case it was a BatchNorm itself), and one "64 units: 8 groups" entry per replaced layer.

    Pure torch and deterministic: Run.load applies it again to rebuild a DP run's model.
    """
    changes: list[str] = []

    def swap(bn: nn.Module) -> nn.Module:
        channels = bn.num_features
        groups = group_count(channels)
        changes.append(f"{channels} units: {groups} group{'s' if groups > 1 else ''}")
        return nn.GroupNorm(groups, channels, eps=bn.eps, affine=bn.affine)

    if isinstance(model, _BATCHNORMS):
        return swap(model), changes
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, _BATCHNORMS):
                setattr(parent, name, swap(child))
    return model, changes


def conversion_line(changes: list[str]) -> str | None:
    """The one line a run shows about its converted model, or None when nothing was converted."""
    if not changes:
        return None
    return (f"privacy: {len(changes)} BatchNorm layer{'s' if len(changes) > 1 else ''} replaced by GroupNorm "
            f"({', '.join(changes)}): batch statistics are not differentially private")


def prepare_model(model: nn.Module) -> tuple[nn.Module, list[str]]:
    """Convert ``model`` for DP-SGD, or raise ModelError naming what Opacus cannot train (before any work)."""
    model, changes = replace_batchnorm(model)
    from opacus.grad_sample import GradSampleModule
    from opacus.validators import ModuleValidator

    errors = [*ModuleValidator.validate(model, strict=False), *GradSampleModule.validate(model, strict=False)]
    if errors:
        reason = " ".join(str(e) for e in errors[:2]).replace("\n", " ")
        raise ModelError(f"DP-SGD cannot train this model: {reason}",
                         hint="BatchNorm is converted to GroupNorm; other layers that keep state across examples "
                              "(buffers in a trainable layer, recurrent layers) must be replaced in the model")
    return model, changes


def resolve_delta(cfg: PrivacyConfig, n_train: int) -> float:
    """δ: as given, or 1/(10·n) for ``auto`` (well below the 1/n at which one row may leak outright)."""
    return 1.0 / (10 * n_train) if cfg.delta == "auto" else float(cfg.delta)


def epsilon_of(accountant: str, history: list[tuple[float, float, int]], delta: float) -> float:
    """ε spent by ``history`` [(noise multiplier, sample rate, steps), ...] at ``delta``, by Opacus's accountant."""
    if not history:
        return 0.0
    from opacus.accountants import create_accountant

    acc = create_accountant(mechanism=accountant)
    acc.history = [tuple(h) for h in history]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "optimal order is the largest alpha": a looser bound, still a bound
        return float(acc.get_epsilon(delta=delta))


def find_noise(cfg: PrivacyConfig, sample_rate: float, steps: int, delta: float, batch: float) -> float:
    """The noise multiplier that spends at most ``cfg.epsilon`` in ``steps`` steps, by Opacus's search.

    Noise beyond the expected batch size (its std on the mean gradient above the clipping norm, the most any
    step's signal can be) trains nothing: a target that needs more is refused, naming the smallest ε that
    these settings can reach.
    """
    from opacus.accountants.utils import get_noise_multiplier

    target = float(cfg.epsilon or 0.0)
    # One accountant call decides reachability; Opacus's search for a tiny ε would double the noise up to 1e6
    # and bisect there, minutes of PRV evaluations, only to exceed the useful noise anyway.
    floor = epsilon_of(cfg.accountant, [(batch, sample_rate, steps)], delta)
    if target < floor:
        raise _unreachable(target, steps, sample_rate, batch, floor)
    # And at the other end: Opacus bisects the noise down towards 0 for a target no noise reaches (ε 1e9), and
    # below ~0.3 one PRV evaluation takes seconds to minutes (0.1: 143 s, then inf): `--dp-epsilon 1e9` hung.
    # The ceiling is computed by RDP first (0.1 s): its ε bounds PRV's from above, so a target at or above it is
    # out of reach whatever the accountant. PRV's own ceiling, which is what a PRV run can reach, is computed only
    # for targets within a factor 2 of it, where it can matter: at noise 0.3 one PRV evaluation took 5.7 s for 600
    # steps and 95 s for 6000 (a 300-epoch digits run printed nothing for a minute and a half).
    ceiling = epsilon_of("rdp", [(MIN_NOISE, sample_rate, steps)], delta)
    if cfg.accountant != "rdp" and target >= ceiling / 2:
        ceiling = min(ceiling, epsilon_of(cfg.accountant, [(MIN_NOISE, sample_rate, steps)], delta))
    if target >= ceiling:
        raise ConfigError(
            f"privacy.epsilon={target:g} is more than DP-SGD spends here even with the least noise trainfer "
            f"searches ({MIN_NOISE:g} × the clipping norm): ε {ceiling:.3g} in {steps} steps",
            hint=f"ask for --dp-epsilon {ceiling * 0.95:.3g} or less (ε above ~10 promises little), or set "
                 "privacy.noise_multiplier directly")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            sigma = float(get_noise_multiplier(target_epsilon=target, target_delta=delta, sample_rate=sample_rate,
                                               steps=steps, accountant=cfg.accountant,
                                               # Opacus's default tolerance is 0.01 absolute: at ε 0.05 it
                                               # settled for ε 0.04, with 25% more noise than needed
                                               epsilon_tolerance=min(0.01, 0.005 * target)))
    except ValueError:  # Opacus: "The privacy budget is too low." (more than its maximal noise)
        sigma = float("inf")
    if sigma > batch:  # within the search's tolerance of the floor
        raise _unreachable(target, steps, sample_rate, batch, floor)
    return sigma


def _unreachable(target: float, steps: int, sample_rate: float, batch: float, floor: float) -> ConfigError:
    return ConfigError(
        f"privacy.epsilon={target:g} cannot be reached: {steps} steps at sampling rate {sample_rate:.3g} need "
        f"more noise than a batch of {batch:g} rows can carry; the smallest reachable ε here is {floor:.3g}",
        hint=f"use --dp-epsilon {floor * 1.05:.3g} or more, or train fewer epochs, on more data, or with a "
             "larger train.batch_size")


# torch's CPU generator state: u64 initial seed, i32 left, i32 seeded, u64 next, then mt19937's 624 words (one
# u64 each), then 40 bytes of cached normals (torch 2.x, aten CPUGeneratorImplState).
_MT_WORDS, _MT_OFFSET, _CPU_STATE_BYTES = 624, 24, 5056


def seeded_generator(noise_seed: int, stream: int, device: torch.device) -> torch.Generator:
    """Generator number ``stream`` (0: noise, 1: batches) for the run's 64-bit ``noise_seed``, using all its bits.

    ``manual_seed`` would not do on the CPU: mt19937 keeps only the low 32 bits of its seed (measured: seeds 1
    and 1 + 2**32 draw the same numbers), so a secret would have 2**32 candidates. Instead the 624-word state is
    filled from numpy's SeedSequence of (noise_seed, stream); CUDA's Philox takes a full 64-bit seed as it is.
    """
    import numpy as np

    seq = np.random.SeedSequence(noise_seed, spawn_key=(stream,))
    gen = torch.Generator(device=device)
    if gen.device.type != "cpu":
        return gen.manual_seed(int(seq.generate_state(1, dtype=np.uint64)[0]))
    raw = gen.manual_seed(0).get_state().numpy().copy()
    if raw.size != _CPU_STATE_BYTES or raw[_MT_OFFSET:_MT_OFFSET + 8].view(np.uint64)[0] != 0:
        raise RuntimeError(f"unknown torch CPU generator state layout ({raw.size} bytes): privacy.py needs updating")
    words = seq.generate_state(_MT_WORDS, dtype=np.uint32).astype(np.uint64)
    raw[_MT_OFFSET:_MT_OFFSET + 8 * _MT_WORDS] = words.view(np.uint8)
    gen.set_state(torch.from_numpy(raw))
    return gen


class PrivateTraining:
    """DP-SGD around one loop's model and optimizer: Poisson batches, per-sample clipping, noise, accounting.

    Uses Opacus's PrivacyEngine.make_private with hooks on the model itself (``wrap_model=False``), so the loop's
    ``model`` stays the module it checkpoints and evaluates. The sampler and the noise draw from their own
    generators, seeded from a secret drawn at the start of the run (or privacy.noise_seed, for experiments):
    never from the recipe's seed, which recipe.yaml and the bundle manifest carry, since whoever can replay the
    noise can subtract it. The secret, the generators' states and the accountant's history go into every
    checkpoint (and nowhere else), so a resumed run draws the same batches and noise as an uninterrupted one.
    """

    def __init__(self, cfg: PrivacyConfig, model: nn.Module, opt: torch.optim.Optimizer, n_train: int,
                 batch_size: int, epochs: int, device: torch.device, changes: list[str],
                 resumed: dict[str, Any] | None = None, tensors: dict[str, torch.Tensor] | None = None) -> None:
        from opacus import PrivacyEngine

        self.cfg, self.changes, self.n_train = cfg, changes, n_train
        # Only the length matters: Opacus turns it into the sampling rate q = 1 / (batches per epoch).
        plain = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.arange(n_train)),
                                            batch_size=batch_size)
        self.sample_rate = 1.0 / len(plain)
        self.steps_per_epoch = len(plain)
        self.expected_batch = n_train * self.sample_rate
        self.delta = resolve_delta(cfg, n_train)
        if resumed is not None:  # the recorded noise: a resumed run never searches again
            self.noise_multiplier = float(resumed["noise_multiplier"])
        elif cfg.noise_multiplier is not None:
            self.noise_multiplier = float(cfg.noise_multiplier)
        else:
            self.noise_multiplier = find_noise(cfg, self.sample_rate, self.steps_per_epoch * epochs, self.delta,
                                               self.expected_batch)
        # Never the recipe's seed (recipe.yaml and the manifest carry it): see the class docstring.
        if resumed is not None and "noise_seed" in resumed:  # the run's own secret, from its checkpoint
            self.noise_seed = int(resumed["noise_seed"])
        elif cfg.noise_seed is not None:
            self.noise_seed = int(cfg.noise_seed)
        else:
            self.noise_seed = secrets.randbits(64)
        self.noise_gen = seeded_generator(self.noise_seed, 0, device)
        self.sampler_gen = seeded_generator(self.noise_seed, 1, torch.device("cpu"))
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "secure RNG turned off": summary.json records secure_rng false
                self.engine = PrivacyEngine(accountant=cfg.accountant)
                self.hooks, self.optimizer, loader = self.engine.make_private(
                    module=model, optimizer=opt, data_loader=plain, noise_multiplier=self.noise_multiplier,
                    max_grad_norm=cfg.max_grad_norm, poisson_sampling=True, noise_generator=self.noise_gen,
                    wrap_model=False)
        except (NotImplementedError, ValueError) as exc:
            raise ModelError(f"DP-SGD cannot train this model: {exc}".replace("\n", " ")) from None
        self.sampler = loader.batch_sampler
        self.sampler.generator = self.sampler_gen
        if resumed is not None and tensors is not None:
            self.engine.accountant.history = [tuple(h) for h in resumed["history"]]
            self.noise_gen.set_state(tensors["rng.dp_noise"])
            self.sampler_gen.set_state(tensors["rng.dp_sampler"])

    def __enter__(self) -> PrivateTraining:
        # Opacus's hooks make torch warn on every run that "full backward hooks" fire with inputs that need no
        # gradient (the data never does): expected here, and no news to a user. Muted while training only.
        self._warnings = warnings.catch_warnings()
        self._warnings.__enter__()
        warnings.filterwarnings("ignore", message="Full backward hook is firing")
        return self

    def __exit__(self, *exc: object) -> None:
        self._warnings.__exit__(*exc)

    def batches(self, device: torch.device) -> Iterator[torch.Tensor]:
        """One epoch of Poisson-sampled index batches (sizes vary; one may be empty)."""
        for idx in self.sampler:
            yield torch.as_tensor(idx, dtype=torch.long).to(device)

    def loss(self, loss_fn: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
        """``loss_fn`` that gives 0 on an empty batch (its mean would be NaN): the step still adds noise and is
        counted, as DP-SGD requires, and the loop's divergence check is not fooled."""
        def loss(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return loss_fn(out, y) if len(y) else out.sum() * 0.0
        return loss

    def epsilon(self) -> float:
        return epsilon_of(self.cfg.accountant, self.engine.accountant.history, self.delta)

    @property
    def steps(self) -> int:
        return int(sum(h[2] for h in self.engine.accountant.history))

    def checkpoint_state(self) -> dict[str, Any]:
        """JSON for state.json: what a resumed run needs to account exactly as an uninterrupted one."""
        # noise_seed is the run's secret: state.json under checkpoints/ is the one place it is written
        return {"noise_multiplier": self.noise_multiplier, "sample_rate": self.sample_rate, "delta": self.delta,
                "history": [list(h) for h in self.engine.accountant.history], "noise_seed": self.noise_seed}

    def checkpoint_tensors(self) -> dict[str, torch.Tensor]:
        return {"rng.dp_noise": self.noise_gen.get_state(), "rng.dp_sampler": self.sampler_gen.get_state()}

    def summary(self) -> dict[str, Any]:
        """summary.json's ``privacy``: the guarantee and everything needed to recompute it."""
        import opacus

        return {
            "epsilon": self.epsilon(), "delta": self.delta, "target_epsilon": self.cfg.epsilon,
            "accountant": self.cfg.accountant, "noise_multiplier": self.noise_multiplier,
            "max_grad_norm": self.cfg.max_grad_norm, "sample_rate": self.sample_rate, "steps": self.steps,
            "expected_batch_size": self.expected_batch, "train_rows": self.n_train,
            "mechanism": "DP-SGD: Poisson sampling, per-example clipping (flat), Gaussian noise",
            "model_changes": conversion_line(self.changes), "secure_rng": False,
            # "secret": drawn per run and kept in its checkpoint only; "recipe": privacy.noise_seed, known to
            # whoever holds the recipe, who can then reproduce the noise (experiments only)
            "noise_seed": "secret" if self.cfg.noise_seed is None else "recipe",
            "library": f"opacus {opacus.__version__}",
        }

    def close(self) -> None:
        """Remove Opacus's hooks: the model goes back to the caller as a plain module."""
        self.hooks.cleanup()
