"""What the search decides on: the per-example validation values of every searched size and
arm's models, computed from their checkpoints (never from the test split), and each purpose's
one-SE rule applied to them as in the report: the best model, its seed replicates, and the
size's other trials, which the rule resamples to measure the search's own luck.
The refinement extends the grid while the headline purpose's best size is its largest, then adds
sizes where the answer sits between grid points.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from latentstudy import evaluate, pca, recommend
from latentstudy.data import Prepared
from latentstudy.search.outputs import best_trials, model_trials, replicate_trials
from latentstudy.search.plan import REPLICATE, Plan, Unit
from latentstudy.search.store import snapshot
from latentstudy.stats import SET_NAME


@dataclass(frozen=True)
class Rule:
    """The report's rule settings, applied here to the validation split."""

    headline: str  # report.purpose (auto resolves once the grid has run)
    tolerance: float
    draws: int
    seed: int
    iwae_samples: int
    probe_max_train: int


class Validation:
    """Per-example validation values of the search's best models, cached per trial."""

    def __init__(self, prepared: Prepared, storage, checkpoint: Callable[[Unit, object], Path], rule: Rule):
        """checkpoint(unit, trial): the trial's weights file, wherever they are (search.weights)."""
        self.storage, self.checkpoint, self.rule = storage, checkpoint, rule
        x_train, y_train = prepared.split("train")
        self.x_val, y_val = prepared.split("val")
        self.basis = pca.fit(x_train)  # as the pca stage fits it: the reference code of every size
        self.probe = evaluate.probe_data(x_train, y_train, y_val, rule.probe_max_train, rule.seed)
        self.classes = None if self.probe is None else len(np.unique(y_train))
        self.evaluator = evaluate.Evaluator(self.x_val, evaluate.baseline(x_train.mean(axis=0), self.x_val),
                                            rule.iwae_samples, rule.seed, self.probe)
        self._cache: dict[tuple[str, int], tuple[dict, str | None]] = {}

    def values(self, unit: Unit, trial) -> tuple[dict[str, np.ndarray], str | None]:
        """(per-example values, the reason it is flagged as diverged or None) of one trial's model."""
        key = (unit.study_name, trial.number)
        if key not in self._cache:
            from latentstudy.models import load_checkpoint

            model, _ = load_checkpoint(self.checkpoint(unit, trial))
            # The probe only where a purpose reads it: representation, from the VAE's code.
            values, _, _, why = self.evaluator.measure(model, probe=model.spec.variational)
            self._cache[key] = values, why
        return self._cache[key]

    def answer(self, plan: Plan, purpose: str, leave_out: frozenset = frozenset()) -> recommend.Answer:
        """The purpose's rule on the validation values of every searched size: its best model, that
        model's finished seed replicates and the size's other trials (a replicate or other trial
        flagged as diverged is left out); for reconstruction, each size's better code. leave_out:
        (study name, trial number) of models to leave out."""
        p = recommend.PURPOSES[purpose]
        curves, others, excluded, picked = self.curves(plan, p, leave_out)
        if purpose == "reconstruction":
            curves, others = self.better_code(curves, others, [u.latent_dim for u in plan.units])
            excluded = {k: why for k, why in excluded.items() if k not in curves}
        missing = recommend.unavailable(purpose, bool(picked), self.probe is not None, self.classes)
        return recommend.answer(p, curves, excluded, self.rule.draws, self.rule.seed, self.rule.tolerance, missing,
                                plan.input_dim, others)

    def curves(self, plan: Plan, p: recommend.Purpose,
               leave_out: frozenset = frozenset()) -> tuple[dict, dict, dict[int, str], set[int]]:
        """The purpose's per-size values (recommend.by_size) of its arm's models but those in
        leave_out, the sizes whose best model diverged, and the sizes with a best model."""
        rows: list[tuple[int, int, bool, np.ndarray]] = []  # size, rank, sane, values of each model
        picked, excluded = set(), {}
        # Sorted keys: each size's best model comes before its replicates and its other trials, which
        # are evaluated only where the best model gave the purpose's values.
        for (k, arm, rank, r), (unit, trial) in sorted(model_trials(snapshot(plan, self.storage)).items()):
            if arm != p.arm or (rank + r > 0 and k not in picked) or (unit.study_name, trial.number) in leave_out:
                continue
            values, reason = self.values(unit, trial)
            if p.quantity not in values:
                continue
            rows.append((k, rank, reason is None, values[p.quantity]))
            if rank + r == 0:
                picked.add(k)
                if reason:  # a diverged best model: its size is no candidate
                    excluded[k] = reason
        curves, others = {}, {}
        if rows:
            ks, ranks, sane, per_example = zip(*rows)
            curves, others = recommend.by_size(np.array(ks), np.array(ranks), np.array(sane), np.stack(per_example))
        return curves, others, excluded, picked

    def pca_sse(self, k: int) -> np.ndarray:
        return evaluate.squared_errors(self.x_val, pca.reconstruct(self.basis, self.x_val, k))

    def better_code(self, curves: dict[int, np.ndarray], others: dict[int, np.ndarray],
                    ks: list[int]) -> tuple[dict[int, np.ndarray], dict[int, np.ndarray]]:
        """The reconstruction curve of each size's better code, autoencoder or PCA, as evaluate
        chooses it (evaluate.code_choice), here on the validation values themselves."""
        ks = sorted(set(ks))
        pca_sse = {k: self.pca_sse(k) for k in ks}
        codes = {k: evaluate.code_choice(curves.get(k), pca_sse[k], k >= self.basis.n_components).code for k in ks}
        return recommend.with_better_code(curves, others, pca_sse, codes)

    def choices(self, plan: Plan, leave_out: frozenset = frozenset()) -> dict[str, tuple[str, object]]:
        """purpose -> (its arm, its stats.Choice on validation or None)."""
        return {name: (p.arm, self.answer(plan, name, leave_out).choice) for name, p in recommend.PURPOSES.items()}

    def contested(self, plan: Plan) -> dict[tuple[int, str], str]:
        """(size, arm) -> why seed replicates there could move an answer on validation (contested)."""
        return contested(self.choices(plan), self.basis.n_components)

    def moved(self, plan: Plan) -> dict[str, tuple[int, int]]:
        """purpose -> (its chosen size without, with) the latest seed replicate of every replicated
        size, for the purposes whose chosen size those seeds changed: the answer still moves with
        more seeds, so more could move it again (coordinator.replicate)."""
        snap = snapshot(plan, self.storage)
        names = {(u.latent_dim, u.arm): u.study_name for u, _ in snap if u.phase == REPLICATE}
        latest = frozenset((names[key], trials[-1].number) for key, trials in replicate_trials(snap).items() if trials)
        if not latest:
            return {}
        now, before = self.choices(plan), self.choices(plan, latest)
        return {name: (before[name][1].chosen, c.chosen) for name, (_, c) in now.items()
                if c is not None and before[name][1] is not None and before[name][1].chosen != c.chosen}

    def headline(self, plan: Plan) -> str:
        """The headline purpose: report.purpose, or for auto generation when a VAE finished."""
        best = best_trials(snapshot(plan, self.storage))
        return recommend.headline(self.rule.headline, any(arm == "vae" for _, arm in best))[0]


def contested(choices: dict[str, tuple[str, object]], exact_from: int) -> dict[tuple[int, str], str]:
    """(size, arm) -> why replicates there could move an answer. choices: purpose -> (its arm, its
    stats.Choice or None). For each purpose: its chosen size, its best size (whose value sets the
    one-SE threshold), the sizes of its 90% set, and the largest size below the chosen one (the
    next the rule would pick). Elsewhere a size is outside the threshold in nearly every resample,
    or above the answer and not the best, so replicates there would change neither the chosen size
    nor the 90% set. No autoencoder at k >= exact_from: PCA's exact code is reconstruction's there."""
    why: dict[tuple[int, str], list[str]] = {}
    for name, (arm, c) in choices.items():
        if c is None:
            continue
        below = [k for k in c.ks if k < c.chosen][-1:]
        roles = [(c.chosen, "its chosen size"), (c.best, "its best size")] + \
            [(k, f"in its {SET_NAME}") for k in c.likely] + [(k, "the next smaller size") for k in below]
        for k, role in roles:
            if arm == "ae" and k >= exact_from:
                continue
            reasons = why.setdefault((k, arm), [])
            if not any(r.startswith(f"{name}:") for r in reasons):  # one role per purpose, the first
                reasons.append(f"{name}: {role}")
    return {key: "could move the answer on validation (" + "; ".join(r) + ")" for key, r in sorted(why.items())}
