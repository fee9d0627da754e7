"""`trainfer audit RUN`: how much a trained model leaks about its training rows, measured by attacking it.

Who is a member. Members are the run's train split; non-members are its test split, which the run never
trained on (validation rows steer early stopping, so they are neither). The split is the one recorded in
the run's split.json, on data whose fingerprint must still match.

Two attacks score every member and non-member (higher = "member"):

- **loss**: minus the target model's per-example loss (Yeom et al. 2018). Needs nothing but the model.
- **calibrated** (LiRA, offline variant, Carlini et al. 2022): an example can have a low loss because it
  was trained on or because it is easy. Reference models measure how easy: ``--references N`` models are
  trained by the same loop (``training.loop.fit``, the run's recipe, each with its own seed) on rows of the
  scored pool (members + non-members), each row going to exactly N // 2 of them. For every row, only the
  references that did NOT train on it (its N - N // 2 OUT models) are used: their logit-scaled confidence
  log(p / (1 - p)) of the true class gives the row's expected OUT confidence mu, and the score is
  (target's confidence - mu) / sigma, sigma pooled over all rows (with 2-3 OUT models a per-row spread is
  noise; the LiRA paper's "fixed variance" does the same). So the references' data are disjoint from
  every row they are used to score, and the scored non-members stay unseen by the target; references do
  see other rows of the target's train split, which is the standard offline LiRA population and needs no
  data beyond the run's. They train on (n_train + n_test) / 2 rows against the target's n_train: a shift
  of their confidence common to all rows, which ranks (AUC, thresholds) do not see.

Figures. AUC, and TPR at 1% and 0.1% FPR: the threshold is the score above which at most floor(FPR * n)
non-members lie. Intervals: percentile bootstrap (default 1000 resamples, 95%, seeded), members and
non-members resampled separately, both attacks on the same resamples. A rate of 0.1% is only a measurement
with at least 1000 non-members (one false positive allowed), 1% with 100; below that it is reported as
not measurable, not as a number.

Empirical ε. A (ε, δ)-DP training run bounds every membership test: TPR <= e^ε FPR + δ and
1 - FPR <= e^ε (1 - TPR) + δ. At each measurable threshold, a lower Clopper-Pearson bound on TPR and an
upper one on FPR give ε >= log((TPR_lo - δ) / FPR_hi) (or the swapped form); the figure is the largest over
attacks and thresholds, with the confidence split over them (Bonferroni), 95% in all. δ is the run's own
DP δ when it has one, else 1 / (10 n_train) (the `delta: auto` of DP training), so DP and non-DP runs
compare. It is an indication, not a certificate: the members were chosen by one random split rather than
one independent coin per example, and the thresholds come from the same rows (see Steinke, Nasr and
Jagielski 2023 for one-run audits with a proof). A low ε figure does not show privacy: it is a lower bound.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np

from trainfer._atomic import check_output, write_json
from trainfer.auditing import stats
from trainfer.auditing.references import confidence, loss, train_references
from trainfer.errors import ConfigError, DataError

FPRS = (0.01, 0.001)
CONFIDENCE = 0.95


def audit(run: Any, *, references: int = 4, seed: int = 0, resamples: int = 1000, write: bool = True,
          progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Attack ``run`` (a run directory or a ``trainfer.Run``) and return the audit; also written to
    RUN/audit.json unless ``write=False``.

    Example: ``trainfer.audit("runs/digits")["attacks"]["calibrated"]["auc"]``
    """
    from trainfer.data import load_dataset
    from trainfer.data.split import Split
    from trainfer.training import Run
    from trainfer.training.loop import predict_outputs

    if isinstance(references, bool) or not isinstance(references, int) or not 2 <= references <= 64:
        raise ConfigError(f"references must be a whole number from 2 to 64, not {references!r}",
                          hint="the calibrated attack needs at least 2 reference models (4 is the default)")
    if isinstance(resamples, bool) or not isinstance(resamples, int) or resamples < 100:
        raise ConfigError(f"resamples must be a whole number of at least 100, not {resamples!r}")
    run = run if isinstance(run, Run) else Run.load(run)
    if write:  # before minutes of reference training, not after
        check_output(run.path / "audit.json", kind="file", force=True, option="RUN")
    t0 = time.perf_counter()
    recorded = run.split()
    split = Split.from_dict(recorded)
    recipe = run.recipe
    # The run's data and split exactly as trained: the rows of split.json, on data with the same fingerprint.
    ds = load_dataset(recipe.data)
    if ds.fingerprint() != recorded["fingerprint"]:
        raise DataError(f"the data at {recipe.data.source!r} changed since {run.path} was trained",
                        hint="audit needs the run's own data to know which rows it trained on")
    scored = np.concatenate([split.train, split.test])
    is_member = np.r_[np.ones(len(split.train), bool), np.zeros(len(split.test), bool)]
    target = run.features.target
    y_raw = ds.y[scored]
    y = target.encode(y_raw) if target.task == "classification" else y_raw
    model = run.model
    out = predict_outputs(model, run.features.transform(ds.rows(scored)), next(model.parameters()).device,
                          recipe.train.eval_batch_size)
    t_target = time.perf_counter() - t0

    refs = train_references(recipe, ds, scored, split.val, references, seed, progress)
    out_models = ~refs.trained_on
    mu = (refs.confidence * out_models).sum(axis=1) / out_models.sum(axis=1)
    resid = (refs.confidence - mu[:, None])[out_models]
    # pooled spread of the OUT confidences around their row's mean (ddof: one mean per row was fitted)
    dof = max(int(out_models.sum()) - len(scored), 1)
    sigma = max(float(np.sqrt((resid**2).sum() / dof)), 1e-6)
    scores = {"loss": -loss(out, y_raw if target.task == "regression" else y, target),
              "calibrated": (confidence(out, y, target) - mu) / sigma}
    if progress:
        progress(f"bootstrap: {resamples} resamples")
    result = _figures(scores, is_member, resamples, seed, _delta(run, len(split.train)))
    result = {
        "run": str(run.path), "task": target.task, "data": recipe.data.source,
        "members": int(is_member.sum()), "non_members": int((~is_member).sum()),
        "members_are": "the run's train split", "non_members_are": "the run's test split (never trained on)",
        **result,
        "references": {"count": references, "trained_on_rows": refs.train_rows, "seed": seed,
                       "out_models_per_row": references - references // 2, "sigma": sigma,
                       "seconds": refs.seconds, "design": "offline LiRA: each scored row is trained on by "
                       f"{references // 2} reference(s); its score uses the other {references - references // 2}"},
        "target": {k: run.summary.get(k, {}).get("accuracy" if target.task == "classification" else "rmse")
                   for k in ("train", "test")},
        "privacy": run.summary.get("privacy"),
        "seconds": {"target": t_target, "references": sum(refs.seconds), "total": time.perf_counter() - t0},
    }
    if write:
        write_json(run.path / "audit.json", result)
    return result


def _delta(run: Any, n_train: int) -> dict[str, Any]:
    recorded = (run.summary.get("privacy") or {}).get("delta")
    if isinstance(recorded, int | float) and 0 < recorded < 1:
        return {"value": float(recorded), "source": "the run's DP delta"}
    return {"value": 1 / (10 * n_train), "source": "1/(10 n_train), as delta: auto (no DP delta recorded)"}


def _figures(scores: dict[str, np.ndarray], is_member: np.ndarray, resamples: int, seed: int,
             delta: dict[str, Any]) -> dict[str, Any]:
    n_non = int((~is_member).sum())
    measurable = [f for f in FPRS if n_non >= stats.min_non_members(f)]
    pairs = {k: (s[is_member], s[~is_member]) for k, s in scores.items()}
    ci = stats.bootstrap(pairs, measurable, resamples, seed, CONFIDENCE)
    # two one-sided bounds per (attack, FPR) pair; the largest ε of them all holds at 95% jointly
    alpha = (1 - CONFIDENCE) / max(2 * len(pairs) * len(measurable), 1)
    attacks: dict[str, Any] = {}
    best: dict[str, Any] = {"epsilon": None}
    for name, (sm, sn) in pairs.items():
        entry: dict[str, Any] = {"auc": stats.auc(sm, sn), "auc_ci95": ci[name]["auc"], "tpr_at_fpr": []}
        for f in FPRS:
            if f not in measurable:
                entry["tpr_at_fpr"].append({"fpr_target": f, "measurable": False,
                                            "why": f"needs at least {stats.min_non_members(f)} non-members "
                                                   f"(one false positive allowed); the test split has {n_non}"})
                continue
            r = stats.tpr_at(sm, sn, f)
            eps = stats.epsilon_lower_bound(r["true_positives"], len(sm), r["false_positives"], n_non,
                                            delta["value"], alpha)
            entry["tpr_at_fpr"].append({"fpr_target": f, "measurable": True, **r, "tpr_ci95": ci[name][f"tpr@{f:g}"],
                                        "epsilon_lower_bound": eps["epsilon"]})
            if best["epsilon"] is None or eps["epsilon"] > best["epsilon"]:
                best = {**eps, "attack": name, "fpr_target": f}
        attacks[name] = entry
    loss_auc, cal = attacks["loss"], attacks["calibrated"]
    leaks = any(a["auc_ci95"][0] > 0.5 for a in attacks.values())
    return {
        "attacks": attacks,
        "epsilon_lower_bound": {**best, "delta": delta["value"], "delta_source": delta["source"],
                                "confidence": CONFIDENCE, "method": "Clopper-Pearson bounds on TPR (lower) and "
                                "FPR (upper), Bonferroni over attacks and thresholds; ε >= log((TPR - δ) / FPR)"},
        "bootstrap": {"resamples": resamples, "confidence": CONFIDENCE, "seed": seed,
                      "method": "percentile; members and non-members resampled separately"},
        "leaks": leaks,
        "line": f"membership-inference AUC {_auc(loss_auc)} (loss) / {_auc(cal)} (calibrated)",
    }


def _auc(entry: dict[str, Any]) -> str:
    lo, hi = entry["auc_ci95"]
    return f"{entry['auc']:.2f} [{lo:.2f}, {hi:.2f}]"


__all__ = ["audit"]
