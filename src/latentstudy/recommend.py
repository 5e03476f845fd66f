"""The answer to "how big should the latent space be?": one per purpose, each with its interval
and stability, the headline among them, and the cross-checks that support or question it.

Each purpose has a criterion that is comparable across k whatever beta trained the model:
- generation, the VAE as a density model: the IWAE-K bound on the test negative log-likelihood;
- reconstruction, the autoencoder as a code: the test squared error per example;
- representation (labelled data): linear-probe accuracy on the VAE's mean codes mu(x).
The rule is stats.choose: the smallest k within one standard error of the best.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np

from latentstudy import stats
from latentstudy.checks import Checks, cross_checks
from latentstudy.config import StudyError
from latentstudy.contracts import Inputs


@dataclass(frozen=True)
class Purpose:
    name: str
    arm: str  # the model family whose criterion decides: "vae" or "ae"
    quantity: str  # the per-example value (evaluate.QUANTITIES, or probe_correct)
    criterion: str  # in words, for people
    short: str  # a table header
    unit: str
    higher_is_better: bool = False

    def lowered(self, values: np.ndarray) -> np.ndarray:
        """The values oriented for the rule (lower is better): accuracy becomes error rate."""
        return 1.0 - values if self.higher_is_better else np.asarray(values, dtype=np.float64)

    def shown(self, value: float) -> float:
        """A lowered value back in the criterion's own orientation."""
        return 1.0 - value if self.higher_is_better else value


PURPOSES = {
    "generation": Purpose("generation", "vae", "iwae_nll_nats", "test negative log-likelihood bound (IWAE)",
                          "NLL bound", "nats per example"),
    "reconstruction": Purpose("reconstruction", "ae", "sse_per_image",
                              "test squared error of the better code (autoencoder or PCA, chosen on validation)",
                              "squared error", "per example"),
    "representation": Purpose("representation", "vae", "probe_correct", "linear-probe accuracy on the VAE's codes",
                              "probe accuracy", "", higher_is_better=True),
}

def unavailable(purpose: str, has_model: bool, has_labels: bool, classes: int | None = None) -> str | None:
    """Why a purpose cannot be answered for this study, or None. classes: how many classes the
    labels have, when known (a probe needs two)."""
    if purpose == "representation" and not has_labels:
        return "the data has no labels to probe"
    if purpose == "representation" and classes is not None and classes < 2:
        return "not applicable: the labels have one class"
    if not has_model:
        return f"no {'VAE' if PURPOSES[purpose].arm == 'vae' else 'autoencoder'} finished at any size"
    return None


def check_purpose(requested: str, has_labels: bool, classes: int | None = None) -> None:
    """A purpose the data cannot serve is a user error, caught before any work."""
    if requested == "representation" and not has_labels:
        raise StudyError("report.purpose = representation but the data has no labels; allowed here: auto, "
                         "generation or reconstruction (or give labels: data.labels_key)")
    if requested == "representation" and classes is not None and classes < 2:
        raise StudyError("report.purpose = representation but the labels have one class: there is nothing to "
                         "probe; allowed here: auto, generation or reconstruction (or labels of two or more classes)")


def headline(requested: str, has_vae: bool) -> tuple[str, str]:
    """(the headline purpose, why it is the headline)."""
    if requested != "auto":
        return requested, f"report.purpose = {requested}"
    if has_vae:
        return "generation", "report.purpose = auto, and the VAE arm finished: the VAE as a density model"
    return "reconstruction", "report.purpose = auto, and no sane VAE finished: the autoencoder as a code"


# --- one purpose's answer -------------------------------------------------------------------------


@dataclass(frozen=True)
class Answer:
    purpose: Purpose
    choice: stats.Choice | None
    excluded: dict[int, str] = field(default_factory=dict)  # sizes left out of the curve, and why
    missing: str | None = None  # why there is no answer at all
    input_dim: int | None = None  # D: at k >= D a code can be the identity, so larger k cannot help
    notes: tuple[str, ...] = ()  # what the reader must know to trust the answer (posterior collapse)

    @property
    def k(self) -> int | None:
        return self.choice.chosen if self.choice else None

    def at(self, k: int) -> tuple[float, float, float, float]:
        """(value, SE, 95% low, 95% high) at k, in the criterion's own orientation."""
        c, p = self.choice, self.purpose
        i = c.ks.index(k)
        ends = sorted((p.shown(c.low[i]), p.shown(c.high[i])))
        return p.shown(c.value[i]), c.se[i], ends[0], ends[1]

    @property
    def still_improving(self) -> bool:
        """The best size is the largest searched, below D: the curve may improve past the grid."""
        c = self.choice
        below_d = self.input_dim is None or c is None or c.ks[-1] < self.input_dim
        return c is not None and len(c.ks) > 1 and c.best == c.ks[-1] and below_d

    @property
    def cannot_tell(self) -> bool:
        """The criterion cannot tell most searched sizes from the best: the answer is parsimony's."""
        c = self.choice
        return c is not None and len(c.ks) > 1 and len(c.indistinguishable) > len(c.ks) / 2

    def plain_words(self) -> str | None:
        """The sentence an answer the data cannot support needs, or None: when the criterion cannot
        tell most sizes from the best, and whenever a stability of 100% comes from parsimony alone
        (the rule picks the smallest of several sizes it cannot tell apart in every resample)."""
        c = self.choice
        if c is None:
            return None
        same = c.indistinguishable
        if not (self.cannot_tell or (len(same) > 1 and c.shares[c.chosen] >= 0.995)):
            return None
        which = "the smallest" if c.chosen == same[0] else f"k = {c.chosen}, the smallest within one SE of the best,"
        return (f"this data cannot tell k = {same[0]} from k = {same[-1]} on the {self.purpose.short} ({len(same)} of "
                f"{len(c.ks)} sizes have a 95% interval of their difference to the best that includes 0); {which} "
                "is chosen by parsimony")

    def summary(self) -> str:
        """e.g. "k = 6, chosen in 84% of resamples; 90% set {5, 6}; indistinguishable from the best {5, 6, 8}",
        and the plain-words sentence when the data cannot tell the sizes apart."""
        if self.choice is None:
            return f"no answer: {self.missing}"
        c = self.choice
        words = self.plain_words()
        return (f"k = {c.chosen}, chosen in {c.shares[c.chosen]:.0%} of resamples; "
                f"{stats.SET_NAME} {_set(c.likely)}; indistinguishable from the best {_set(c.indistinguishable)}"
                + (f"; {words}" if words else ""))

    def interval(self) -> tuple[int, int] | None:
        return (min(self.choice.likely), max(self.choice.likely)) if self.choice else None

    def to_dict(self) -> dict:
        out = {"purpose": self.purpose.name, "criterion": self.purpose.criterion, "latent_dim": self.k,
               "summary": self.summary(), "missing": self.missing, "excluded": {str(k): v for k, v in self.excluded.items()},
               "notes": list(self.notes)}
        c = self.choice
        if c is None:
            return out
        value, se, low, high = self.at(c.chosen)
        out.update({
            "interval": list(self.interval()), "likely_set": c.likely, "stability": c.shares[c.chosen],
            "shares": {str(k): round(v, 4) for k, v in c.shares.items() if v > 0}, "best_latent_dim": c.best,
            "value": value, "se": se, "ci95": [low, high], "tolerance": c.tolerance, "bootstrap": c.draws,
            "still_improving": self.still_improving, "indistinguishable": c.indistinguishable,
            "cannot_tell": self.cannot_tell, "plain_words": self.plain_words(),
            "curve": [{"latent_dim": k, "value": self.at(k)[0], "se": c.se[i], "ci95": list(self.at(k)[2:]),
                       "diff_to_best": (-1 if self.purpose.higher_is_better else 1) * c.diff[i],
                       "diff_se": c.diff_se[i], "models": c.models[i], "trials": c.trials[i]}
                      for i, k in enumerate(c.ks)],
        })
        return out


def answer_line(purpose: str, headline: str, summary: str) -> str:
    """One purpose's answer as the report stage and `latentstudy answers` print it."""
    return f"{purpose}{' (headline)' if purpose == headline else ''}: {summary}"


def _set(ks: list[int]) -> str:
    return "{" + ", ".join(map(str, ks)) + "}"


def collapse_note(active_units: dict[int, int]) -> str | None:
    """The generation answer's warning when the VAE ignores its code at every size (active_units:
    each size's best sane VAE's count), or None."""
    if not active_units or max(active_units.values()) > 1:
        return None
    return ("the VAE ignores its code: at most one active unit at every size (posterior collapse at every size), "
            "so its NLL bound measures the decoder alone and cannot tell sizes apart. Remedies: free bits "
            "(search.train.free_bits, e.g. 0.5 nats), KL warm-up (search.train.kl_warmup_epochs, e.g. 20), or a "
            "likelihood that fits the data (search.model.likelihood, data.scaling)")


def by_size(ks: np.ndarray, ranks: np.ndarray, sane: np.ndarray,
            values: np.ndarray) -> tuple[dict[int, np.ndarray], dict[int, np.ndarray]]:
    """The rule's input from one row per model (its size, its rank among the size's trials, 0 for
    the pick and its seed replicates, whether it is sane, its per-example values): per size with a
    sane rank-0 model, those models (answer's curves) and the sane other trials in rank order
    (answer's others). The report and the search's validation rule both group models here."""
    picks, others = {}, {}
    for k in np.unique(ks):
        mine, rest = (ks == k) & sane & (ranks == 0), (ks == k) & sane & (ranks > 0)
        if mine.any():
            picks[int(k)] = values[mine]
            others[int(k)] = values[rest][np.argsort(ranks[rest], kind="stable")]
    return picks, others


def with_better_code(picks: dict[int, np.ndarray], others: dict[int, np.ndarray], pca: dict[int, np.ndarray],
                     codes: dict[int, str]) -> tuple[dict[int, np.ndarray], dict[int, np.ndarray]]:
    """The reconstruction curve of the better code at each size: where PCA is (codes[k] == "pca"),
    its per-example values (n,) replace the autoencoder's. PCA has no seed and no search, so it
    stands for as many identical models as the autoencoders elsewhere and has no other trials."""
    count = max((len(v) for v in picks.values()), default=1)
    picks, others = dict(picks), dict(others)
    for k, code in codes.items():
        if code == "pca" and k in pca:
            picks[k] = np.repeat(np.asarray(pca[k])[None], count, axis=0)
            others.pop(k, None)
    return picks, others


def worse_than_smaller(curves: dict[int, np.ndarray]) -> dict[int, tuple[int, float, float]]:
    """Sizes whose criterion (lower is better; (models, examples) values per size) is worse than the
    best smaller size's by more than one SE of their paired difference: {k: (that size, gap, SE)}.
    A larger latent can switch its extra units off and match a smaller one, so such a gap points at
    training, not at the data."""
    ks = sorted(curves)
    means = {k: np.asarray(curves[k], dtype=np.float64).mean(axis=0) for k in ks}
    out = {}
    for i, k in enumerate(ks[1:], start=1):
        ref = min(ks[:i], key=lambda j: means[j].mean())
        diff = means[k] - means[ref]
        se = float(diff.std(ddof=1) / math.sqrt(len(diff))) if len(diff) > 1 else 0.0
        if diff.mean() > se:
            out[k] = (ref, float(diff.mean()), se)
    return out


# Nine parameters on purpose: the curve and its exclusions, the report's rule settings (draws, seed,
# tolerance), and three optional facts; the search's validation pass and the report call it alike.
def answer(purpose: Purpose, curves: dict[int, np.ndarray], excluded: dict[int, str], draws: int, seed: int,
           tolerance: float, missing: str | None = None, input_dim: int | None = None,
           others: dict[int, np.ndarray] | None = None) -> Answer:
    """The rule on one purpose's curve: curves maps k to its (models, examples) values in the
    criterion's own orientation, others (optional) to its other search trials' values, best
    validation objective first; sizes in `excluded` (no model, diverged) are left out."""
    ks = sorted(k for k in curves if k not in excluded)
    if missing is not None or not ks:
        return Answer(purpose, None, excluded, missing or "every size is excluded (see the flagged models)",
                      input_dim)
    values = [purpose.lowered(np.asarray(curves[k], dtype=np.float64)) for k in ks]
    rest = None
    if others is not None:
        empty = np.empty((0, values[0].shape[1]))
        rest = [purpose.lowered(np.asarray(others[k], dtype=np.float64)) if k in others else empty for k in ks]
    return Answer(purpose, stats.choose(ks, values, draws, seed, tolerance, rest), excluded, None, input_dim)


@dataclass(frozen=True)
class Recommendation:
    answers: dict[str, Answer]
    headline: str
    why: str
    checks: Checks
    text: str = ""

    @property
    def main(self) -> Answer:
        return self.answers[self.headline]

    @property
    def latent_dim(self) -> int | None:
        return self.main.k

    def to_dict(self) -> dict:
        c = self.checks
        return {"headline": self.headline, "why": self.why, "latent_dim": self.latent_dim,
                "answers": {name: a.to_dict() for name, a in self.answers.items()},
                "checks": {"knee": c.knee, "knee_shares": {str(k): v for k, v in c.knee_shares.items()},
                           "knee_likely_set": c.knee_likely, "active_units": c.active_units,
                           "max_active_units": c.max_active_units, "intrinsic_dim": c.intrinsic,
                           "pca_components": c.pca_components},
                "text": self.text}


def fmt(value: float) -> str:
    return f"{value:.3f}" if abs(value) < 10 else f"{value:.2f}"


def explain(rec: Recommendation, replicated: dict[str, list[int]], added: list[int]) -> str:
    """The paragraph under the answers: the headline, why, the rule's numbers, the cross-checks."""
    a, c = rec.main, rec.checks
    if a.choice is None:
        return f"No {a.purpose.name} answer: {a.missing}."
    ch, p = a.choice, a.purpose
    value, se, *_ = a.at(ch.chosen)
    best, best_se, *_ = a.at(ch.best)
    i = ch.ks.index(ch.chosen)
    margin = f" plus the {ch.tolerance:g} x |best| margin" if ch.tolerance else ""
    parts = [f"Headline ({rec.why}): {p.name}, {a.summary()}."]
    if ch.chosen == ch.best:
        parts.append(f"k = {ch.chosen} has the best {p.criterion}, {fmt(value)} ± {fmt(se)} {p.unit}"
                     + ("" if ch.chosen == ch.ks[0] else "; every smaller size is worse by more than one SE")
                     + ".")
    else:
        parts.append(f"The best {p.criterion} is {fmt(best)} ± {fmt(best_se)} {p.unit} at k = {ch.best}; k = "
                     f"{ch.chosen} is {fmt(abs(ch.diff[i]))} {'below' if p.higher_is_better else 'above'} it, within "
                     f"one SE of the difference ({fmt(ch.diff_se[i])}){margin}, and every smaller size is not.")
    if a.still_improving:
        parts.append(f"The criterion still improves at the largest size searched (k = {ch.best}): larger sizes "
                     "may do better; list them in study.latent_dims, or raise study.refine_max.")
    reps, trials = replicated.get(p.arm, []), sorted(set(ch.trials))
    span = str(trials[0]) if len(trials) == 1 else f"{trials[0]} to {trials[-1]}"
    parts.append(f"Sizes with seed replicates in their interval: {', '.join(map(str, reps)) or 'none'}; the "
                 f"search's own trials resampled at each size: {span}."
                 + (f" Sizes added by the search: {', '.join(map(str, added))}." if added else ""))
    others = [f"{name} {other.summary()}" for name, other in rec.answers.items() if name != rec.headline]
    if others:
        parts.append("Other purposes: " + "; ".join(others) + ".")
    if c.knee is not None:
        share = c.knee_shares.get(c.knee, 0.0)
        parts.append(f"The knee of the {p.name} curve is at k = {c.knee} (in {share:.0%} of resamples).")
    if c.active_units:
        spread = f" (replicates: {min(c.active_units)}-{max(c.active_units)})" if len(c.active_units) > 1 else ""
        parts.append(f"At k = {rec.latent_dim} the VAE uses {c.active_units[0]} active "
                     f"unit{'s' * (c.active_units[0] != 1)}{spread}; across all "
                     f"sizes at most {c.max_active_units}.")
    ids = [f"{label} {c.intrinsic[key]:.1f} (95% {c.intrinsic[key + '_interval'][0]:.1f}-"
           f"{c.intrinsic[key + '_interval'][1]:.1f})" for key, label in (("twonn", "TwoNN"), ("mle", "Levina-Bickel"))
           if c.intrinsic.get(key) is not None and c.intrinsic.get(key + "_interval")]
    if ids:
        parts.append(f"The data's intrinsic dimension is estimated at {' and '.join(ids)}.")
    if c.pca_components:
        needed = ", ".join(f"{float(t):.0%} needs {k} (95% {lo}-{hi})" for t, (k, lo, hi) in c.pca_components.items())
        parts.append(f"PCA on the test split: {needed} components.")
    return " ".join(parts)


# --- the answers from the stages' outputs (contracts.Inputs) ---------------------------------------


def curves(purpose: Purpose, inp: Inputs) -> tuple[dict[int, np.ndarray], dict[int, np.ndarray], dict[int, str]]:
    """The purpose's (models, examples) values per size from the sane models only (the search's
    pick first, then its replicates); the size's other sane trials, best objective first; and the
    sizes left out with the reason (no model; the pick and its replicates all flagged)."""
    excluded = {}
    for row in inp.evaluation.rows:
        entry = row.arm(purpose.arm)
        if entry is None:
            excluded[row.latent_dim] = "no finished trial"
        elif all(m.flag for m in entry.models):
            excluded[row.latent_dim] = entry.models[0].flag
    arm = inp.per_example.arms.get(purpose.arm)
    if arm is None or arm.values(purpose.quantity) is None:
        return {}, {}, excluded
    picks, others = by_size(arm.latent_dim, arm.rank, ~arm.flagged.astype(bool), arm.values(purpose.quantity))
    codes = {row.latent_dim: row.code.code for row in inp.evaluation.rows if row.code}
    if purpose.name == "reconstruction" and "pca" in codes.values():  # the better code, chosen on validation
        pca = inp.per_example.arms["pca"]
        pca_sse = dict(zip(pca.latent_dim.tolist(), pca.sse_per_image))
        picks, others = with_better_code(picks, others, pca_sse, codes)
        excluded = {k: why for k, why in excluded.items() if codes.get(k) != "pca"}
    return picks, others, excluded


def recommendation(cfg, inp: Inputs) -> Recommendation:
    """Every purpose's answer on the test split, the headline, and the cross-checks."""
    seed = int(inp.study.seed or 0)
    answers: dict[str, Answer] = {}
    for name, purpose in PURPOSES.items():
        values, others, excluded = curves(purpose, inp)
        has_model = any(row.arm(purpose.arm) for row in inp.evaluation.rows)
        answers[name] = answer(purpose, values, excluded, cfg.bootstrap, seed, cfg.tolerance,
                               unavailable(name, has_model, inp.evaluation.has_labels, inp.summary.classes),
                               inp.evaluation.input_dim, others)
    if answers["generation"].choice is not None:
        answers["generation"] = replace(answers["generation"], notes=generation_notes(inp))
    name, why = headline(cfg.purpose, answers["generation"].choice is not None)
    main = answers[name]
    if main.choice is None:
        flagged = "; ".join(f"k={k}: {reason}" for k, reason in sorted(main.excluded.items()))
        raise StudyError(f"report: no sane {name} answer ({main.missing}{': ' + flagged if flagged else ''}); "
                         "nothing is recommended. Retrain with a narrower search.lr or search.beta range, "
                         "or pick another report.purpose")
    rec = Recommendation(answers, name, why, cross_checks(cfg, inp, main, seed))
    return replace(rec, text=explain(rec, inp.study.replicates, inp.evaluation.added_sizes))


def generation_notes(inp: Inputs) -> tuple[str, ...]:
    """What the generation answer's reader must know: a VAE that ignores its code at every size, and
    sizes whose NLL bound is worse than a smaller size's beyond noise (undertrained, even after the
    search's extra trials)."""
    active = {row.latent_dim: row.vae.active_units for row in inp.evaluation.rows
              if row.vae and row.vae.flag is None and row.vae.active_units is not None}
    notes = [collapse_note(active)]
    picks, _, _ = curves(PURPOSES["generation"], inp)
    notes += [f"k = {k}'s NLL bound is {gap:.2f} nats worse than k = {ref}'s (SE of the difference {se:.2f}): a larger "
              "latent can switch its extra units off, so this points at training, not at the data"
              for k, (ref, gap, se) in worse_than_smaller(picks).items()]
    return tuple(n for n in notes if n)
