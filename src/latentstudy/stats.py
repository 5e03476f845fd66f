"""Choosing k with confidence: the paired bootstrap, the one-standard-error rule and the
stability of its choice. Pure functions on arrays, lower values always better.

Each latent size k comes as an (R_k, n) array: R_k models (the search's best and its seed
replicates) by n examples, and optionally a (T_k, n) array of its other finished search trials,
best validation objective first. One bootstrap draw resamples the n examples once, with the same
indices for every k (Efron and Tibshirani 1993: the pairing makes differences between sizes
far more precise than either size alone), and resamples each size's R_k models on its own, so
the spread between seeds enters the interval as measured. When every size has as many models, a
size's value is their mean; otherwise it is the search's pick (the first model) at every size,
with the measured seed spread in the interval of the sizes that have replicates.

The search's own luck enters the same way. Its trials at one size are draws of beta and lr; a
rerun would draw others and might pick a worse configuration. Each bootstrap draw resamples the
size's 1 + T_k trials with replacement and takes the one with the best validation objective, as
the search did (the bootstrap of a tuning procedure, as in Tsamardinos et al. 2018): when that is
not the pick, the size's value in that draw is the other trial's. With few trials per size the
pick is often missing from a resample, so the interval says how much of the curve's shape a
rerun of the search could change.

The rule (Breiman et al. 1984; Hastie, Tibshirani and Friedman, ESL 7.10): the smallest k whose
value is within one standard error of the best. The standard error is that of the paired
difference to the best size, plus an optional practical margin (tolerance x |best|).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

LEVEL = 0.95  # intervals of values and differences
SET_LEVEL = 0.9  # the set of sizes the rule picks in this share of resamples
SET_NAME = f"{SET_LEVEL:.0%} set"  # how text names it
CHUNK = 64  # bootstrap draws per matrix product


def weights(n: int, draws: int, seed: int) -> Iterator[np.ndarray]:
    """Bootstrap resamples of n examples as (b, n) chunks of weights (counts / n): the mean of a
    column of values under each resample is weights @ values. The same seed, the same resamples."""
    rng = np.random.default_rng([seed, 0])
    for start in range(0, draws, CHUNK):
        b = min(CHUNK, draws - start)
        idx = rng.integers(0, n, size=(b, n))
        yield np.bincount((np.arange(b)[:, None] * n + idx).ravel(), minlength=b * n).reshape(b, n) / n


def resample(values: list[np.ndarray], draws: int, seed: int, average: bool = True,
             others: list[np.ndarray] | None = None) -> np.ndarray:
    """(draws, K): each size's value under each bootstrap draw.

    Examples are resampled with the same indices for every size. average=True: a size's value
    is the mean over its models, which are resampled independently per size (seeds are not
    paired across sizes). average=False: a size's value is its first model's; the spread between
    its models enters each draw as one randomly drawn model's deviation from their mean. A size
    with one model borrows that spread from the nearest size with replicates (the search
    replicates only where replicates could move an answer, search.replicate_sizes), so its
    interval still holds a seed's luck.
    others[j]: size j's other search trials, best validation objective first; a draw whose
    resampled trials miss the pick takes the best of them that it holds instead.
    """
    n = values[0].shape[1]
    others = others or [np.empty((0, n))] * len(values)
    if any(v.ndim != 2 or v.shape[1] != n or len(v) == 0 for v in values) or len(others) != len(values) \
            or any(o.ndim != 2 or o.shape[1] != n for o in others):
        raise ValueError("every size needs an (models, examples) array over the same examples")
    models = np.random.default_rng([seed, 1])
    searches = np.random.default_rng([seed, 2])  # its own stream: adding trials leaves the seed draws
    spread = [j if len(v) > 1 else _nearest_replicated(values, j) for j, v in enumerate(values)]
    out = np.empty((draws, len(values)))
    start = 0
    for w in weights(n, draws, seed):
        b = len(w)
        means = [w @ v.T.astype(np.float64) for v in values]  # (b, R_k) each
        for j, o in enumerate(others):
            if average:
                pick = models.integers(0, means[j].shape[1], size=(b, means[j].shape[1]))
                col = np.take_along_axis(means[j], pick, axis=1).mean(axis=1)
            else:
                col = means[j][:, 0]
                if spread[j] is not None:
                    source = means[spread[j]]
                    pick = models.integers(0, source.shape[1], size=(b, 1))
                    col = col + np.take_along_axis(source, pick, axis=1)[:, 0] - source.mean(axis=1)
            if len(o):
                # Trials are ranked by objective (0 = the pick): the best drawn is the lowest rank.
                rank = searches.integers(0, len(o) + 1, size=(b, len(o) + 1)).min(axis=1)
                other = (w @ o.T.astype(np.float64))[np.arange(b), np.maximum(rank - 1, 0)]
                col = np.where(rank == 0, col, other)
            out[start : start + b, j] = col
        start += b
    return out


def _nearest_replicated(values: list[np.ndarray], j: int) -> int | None:
    """The index of the size nearest j (the smaller on ties) with more than one model, or None."""
    with_reps = [i for i, v in enumerate(values) if len(v) > 1]
    return min(with_reps, key=lambda i: (abs(i - j), i)) if with_reps else None


def point(values: list[np.ndarray], average: bool = True) -> np.ndarray:
    """(K,): each size's mean over models (or its first model's) of the mean over examples."""
    return np.array([(v if average else v[:1]).astype(np.float64).mean() for v in values])


def interval(draws: np.ndarray, level: float = LEVEL) -> tuple[np.ndarray, np.ndarray]:
    """Percentile interval of each column."""
    tail = (1 - level) / 2 * 100
    return np.percentile(draws, tail, axis=0), np.percentile(draws, 100 - tail, axis=0)


def pairwise_se(draws: np.ndarray) -> np.ndarray:
    """(K, K): standard error of the difference between sizes i and j (0 on the diagonal)."""
    diff = draws[:, :, None] - draws[:, None, :]
    return diff.std(axis=0, ddof=1)


def one_se_rule(means: np.ndarray, se_pair: np.ndarray, tolerance: float = 0.0) -> tuple[int, int]:
    """(chosen, best) column indices: the best is the lowest mean (the first on ties); the chosen
    is the first column within se_pair[., best] + tolerance x |best| of it. Columns are sizes in
    increasing order, so the first is the smallest k."""
    best = int(np.argmin(means))
    margin = se_pair[:, best] + tolerance * abs(means[best])
    # A relative epsilon keeps ties exact: a size equal to the best passes even when SE is 0.
    ok = means - means[best] <= margin + 1e-12 * max(1.0, abs(means[best]))
    return int(np.flatnonzero(ok)[0]), best


def stability(draws: np.ndarray, se_pair: np.ndarray, tolerance: float = 0.0) -> np.ndarray:
    """(K,): the share of bootstrap draws in which the rule picks each column (SEs held fixed)."""
    picks = np.array([one_se_rule(row, se_pair, tolerance)[0] for row in draws])
    return np.bincount(picks, minlength=draws.shape[1]) / len(draws)


def likely_set(shares: np.ndarray, level: float = SET_LEVEL) -> list[int]:
    """The fewest columns whose shares add up to level (most often picked first), sorted."""
    order = sorted(range(len(shares)), key=lambda i: (-shares[i], i))
    chosen, total = [], 0.0
    for i in order:
        chosen.append(i)
        total += shares[i]
        if total >= level - 1e-9:
            break
    return sorted(chosen)


@dataclass(frozen=True)
class Choice:
    """The rule applied to one criterion curve, with everything a report needs to show why."""

    ks: list[int]
    value: list[float]  # mean over models and examples
    se: list[float]
    low: list[float]  # 95% interval of the value
    high: list[float]
    diff: list[float]  # value minus the best size's value
    diff_se: list[float]
    diff_low: list[float]
    diff_high: list[float]
    models: list[int]  # models behind each size (1 + seed replicates)
    trials: list[int]  # the search's finished trials at each size that the resamples choose from
    averaged: bool  # values are means over each size's models (else each size's first model)
    best: int  # the best size (k, not an index)
    chosen: int
    tolerance: float
    shares: dict[int, float]  # how often the rule picks each k over the resamples
    likely: list[int]  # the 90% set of k
    draws: int
    samples: np.ndarray = field(repr=False, compare=False)  # (draws, K) the resampled curves

    @property
    def indistinguishable(self) -> list[int]:
        """The sizes the criterion cannot tell from the best: their 95% interval of the difference
        to the best includes 0 (the best itself, whose difference is 0 in every draw, among them)."""
        return [k for k, lo, hi in zip(self.ks, self.diff_low, self.diff_high) if lo <= 0 <= hi]

    @property
    def threshold(self) -> float:
        """The largest value that still counts as the best, at the chosen size's SE."""
        i, b = self.ks.index(self.chosen), self.ks.index(self.best)
        return self.value[b] + self.diff_se[i] + self.tolerance * abs(self.value[b])


def choose(ks: list[int], values: list[np.ndarray], draws: int, seed: int, tolerance: float = 0.0,
           others: list[np.ndarray] | None = None) -> Choice:
    """The one-SE rule on a curve of per-example values, with intervals and stability; others:
    each size's other search trials (see resample), or None to hold the search's picks fixed."""
    if list(ks) != sorted(set(ks)) or len(ks) != len(values) or not ks:
        raise ValueError("sizes must be strictly increasing, one array each")
    # Averaging only where every size has as many models: the first model of each size was picked
    # as the best of several trials, so a mean with fresh seeds is lower in luck than a lone pick,
    # and sizes with and without replicates would not compare like with like.
    average = len({len(v) for v in values}) == 1
    boot = resample(values, draws, seed, average, others)
    means = point(values, average)
    se_pair = pairwise_se(boot)
    chosen, best = one_se_rule(means, se_pair, tolerance)
    diffs = boot - boot[:, [best]]
    low, high = interval(boot)
    dlow, dhigh = interval(diffs)
    shares = stability(boot, se_pair, tolerance)
    return Choice(
        ks=list(ks), value=means.tolist(), se=boot.std(axis=0, ddof=1).tolist(), low=low.tolist(),
        high=high.tolist(), diff=(means - means[best]).tolist(), diff_se=se_pair[:, best].tolist(),
        diff_low=dlow.tolist(), diff_high=dhigh.tolist(), models=[len(v) for v in values], averaged=average,
        trials=[1 + len(o) for o in others] if others else [1] * len(ks),
        best=ks[best],
        chosen=ks[chosen], tolerance=tolerance, shares={k: float(s) for k, s in zip(ks, shares)},
        likely=[ks[i] for i in likely_set(shares)], draws=draws, samples=boot)
