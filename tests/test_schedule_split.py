"""Pure functions of the training side: the learning-rate schedule and the seeded, stratified split."""

from __future__ import annotations

import numpy as np
import pytest

from trainfer.data.split import Split, split_indices
from trainfer.errors import DataError
from trainfer.training.schedule import lr_at

BASE = 3e-3


def _curve(schedule: str, total: int = 200, warmup: float = 0.2) -> np.ndarray:
    return np.asarray([lr_at(s, total, BASE, schedule, warmup) for s in range(total)])


def test_onecycle_starts_low_peaks_after_warmup_and_ends_near_zero() -> None:
    total, warmup_steps = 200, 40
    lrs = _curve("onecycle", total)
    assert lrs[0] == pytest.approx(BASE / 25)
    assert lrs.max() == pytest.approx(BASE)
    assert int(lrs.argmax()) == warmup_steps
    assert lrs[warmup_steps] == pytest.approx(BASE)
    assert np.all(np.diff(lrs[: warmup_steps + 1]) > 0), "warm-up rises"
    assert np.all(np.diff(lrs[warmup_steps:]) <= 0), "annealing falls"
    assert lrs[-1] == pytest.approx(BASE / 1e4)
    assert lrs[-1] < BASE / 1000
    assert np.all(lrs > 0)


def test_cosine_warms_up_then_decays_to_zero() -> None:
    lrs = _curve("cosine", 100, 0.1)
    assert lrs[0] == pytest.approx(BASE / 10)
    assert lrs.max() == pytest.approx(BASE)
    assert lrs[-1] == pytest.approx(0.0, abs=1e-12)
    assert np.all(np.diff(lrs[10:]) <= 0)


def test_constant_and_degenerate_lengths() -> None:
    assert set(_curve("constant", 50).tolist()) == {BASE}
    assert lr_at(0, 1, BASE, "onecycle", 0.2) == BASE  # a single step trains at the base rate
    assert lr_at(0, 10, BASE, "onecycle", 0.0) == pytest.approx(BASE)  # no warm-up: start at the peak


def test_unknown_schedule_raises() -> None:
    with pytest.raises(ValueError, match="unknown schedule"):
        lr_at(0, 10, BASE, "triangle", 0.2)


# ---- split ------------------------------------------------------------------------------------

def _imbalanced_labels(seed: int = 0) -> np.ndarray:
    y = np.asarray(["a"] * 600 + ["b"] * 300 + ["c"] * 100, dtype=object)
    return np.random.default_rng(seed).permutation(y)


def test_split_partitions_every_row_exactly_once() -> None:
    y = _imbalanced_labels()
    s = split_indices(y, 0.15, 0.2, seed=0, stratify=True)
    everything = np.concatenate([s.train, s.val, s.test])
    assert len(everything) == len(y)
    assert np.array_equal(np.sort(everything), np.arange(len(y)))
    for part in (s.train, s.val, s.test):
        assert part.dtype == np.int64 and np.all(np.diff(part) > 0)


def test_split_is_stratified() -> None:
    y = _imbalanced_labels()
    s = split_indices(y, 0.15, 0.2, seed=0, stratify=True)
    for cls, count in (("a", 600), ("b", 300), ("c", 100)):
        assert np.sum(y[s.test] == cls) == round(count * 0.2)
        assert np.sum(y[s.val] == cls) == round(count * 0.15)
    assert len(s.test) == 200 and len(s.val) == 150 and len(s.train) == 650


def test_stratified_split_keeps_rare_classes_in_every_split() -> None:
    y = np.asarray([0] * 190 + [1] * 10)
    for seed in range(5):
        s = split_indices(y, 0.15, 0.15, seed=seed, stratify=True)
        for part in (s.train, s.val, s.test):
            assert set(y[part].tolist()) == {0, 1}


def test_split_is_deterministic_for_a_seed_and_varies_across_seeds() -> None:
    y = _imbalanced_labels()
    a = split_indices(y, 0.15, 0.15, seed=4, stratify=True)
    b = split_indices(y, 0.15, 0.15, seed=4, stratify=True)
    c = split_indices(y, 0.15, 0.15, seed=5, stratify=True)
    for name in ("train", "val", "test"):
        assert np.array_equal(getattr(a, name), getattr(b, name))
    assert not np.array_equal(a.test, c.test)


def test_split_round_trips_through_dict() -> None:
    s = split_indices(np.arange(100.0), 0.1, 0.2, seed=1, stratify=False)
    again = Split.from_dict(s.to_dict())
    for name in ("train", "val", "test"):
        assert np.array_equal(getattr(s, name), getattr(again, name))
    assert (len(s.train), len(s.val), len(s.test)) == (70, 10, 20)


def test_split_too_small_is_a_data_error() -> None:
    with pytest.raises(DataError, match="split is empty"):
        split_indices(np.asarray([0, 1, 0, 1]), 0.15, 0.15, seed=0, stratify=True)
