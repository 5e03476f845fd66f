"""The cross-checks that support or question the headline answer, each with its interval or
stability: the curve's knee, active units, the intrinsic dimension, and the PCA components each
explained-variance target needs."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from latentstudy import pca, stats
from latentstudy.contracts import Inputs


def knee(ks: list[int], values: list[float]) -> int | None:
    """Kneedle (Satopaa et al. 2011) for a decreasing curve on a log-k axis.

    Both axes are scaled to [0, 1]; the knee is the point farthest below the chord from the
    first to the last point. None when the curve has fewer than three points or is flat.
    """
    if len(ks) < 3:
        return None
    xs = [math.log(k) for k in ks]
    lo_x, hi_x, lo_y, hi_y = min(xs), max(xs), min(values), max(values)
    if hi_y - lo_y <= 0 or hi_x - lo_x <= 0:
        return None
    xn = [(x - lo_x) / (hi_x - lo_x) for x in xs]
    yn = [(y - lo_y) / (hi_y - lo_y) for y in values]
    # Chord from (0, y0) to (1, y_end); distance below it, positive where the curve sags.
    gaps = [yn[0] + (yn[-1] - yn[0]) * x - y for x, y in zip(xn, yn)]
    i = max(range(len(gaps)), key=lambda j: gaps[j])
    return ks[i] if gaps[i] > 0 else None


def knee_stability(choice: stats.Choice) -> tuple[int | None, dict[int, float], list[int]]:
    """The knee of the curve, how often each k is the knee over the resampled curves, and the
    90% set of knees (resamples without a knee count as none)."""
    at = knee(choice.ks, choice.value)
    picks = [knee(choice.ks, row.tolist()) for row in choice.samples]
    counts = np.array([sum(p == k for p in picks) for k in choice.ks], dtype=float) / len(picks)
    return at, {k: float(s) for k, s in zip(choice.ks, counts) if s > 0}, \
        [choice.ks[i] for i in stats.likely_set(counts)] if counts.sum() > 0 else []


def pca_components(residuals: np.ndarray, total: np.ndarray, targets: list[float], draws: int,
                   seed: int) -> dict[str, list[int]]:
    """Components PCA needs for each explained-variance target on the test split, with a 95%
    interval over resampled test examples: {target: [k, low, high]}.

    residuals: (n, r) each example's squared residual after 1..r components; total: (n,) its
    squared distance to the mean.
    """
    def needed(ratio: np.ndarray, t: float) -> int:
        hit = np.flatnonzero(ratio >= t - 1e-12)
        return int(hit[0]) + 1 if len(hit) else len(ratio)

    ratio = 1 - residuals.mean(axis=0) / max(total.mean(), 1e-300)
    boot = np.concatenate([1 - (w @ residuals) / np.maximum(w @ total, 1e-300)[:, None]
                           for w in stats.weights(len(total), draws, seed)])
    out = {}
    for t in targets:
        per_draw = np.array([needed(row, t) for row in boot])
        out[f"{t:g}"] = [needed(ratio, t), int(np.percentile(per_draw, 2.5)), int(np.percentile(per_draw, 97.5))]
    return out


@dataclass(frozen=True)
class Checks:
    """Cross-checks of the headline answer, each with its interval or stability."""

    knee: int | None
    knee_shares: dict[int, float]
    knee_likely: list[int]
    active_units: list[int]  # of each model at the headline k (the best first, then replicates)
    max_active_units: int | None
    intrinsic: dict  # prepare's estimates with their intervals and rejections
    pca_components: dict[str, list[int]]  # target -> [k, low, high] on the test split


def cross_checks(cfg, inp: Inputs, main, seed: int) -> Checks:
    """The checks of the headline answer main (recommend.Answer) on the test split; cfg: the report section."""
    knee_k, knee_shares, knee_likely = knee_stability(main.choice)
    vae_rows = {row.latent_dim: row.vae for row in inp.evaluation.rows if row.vae}
    at = vae_rows[main.k].models if main.k in vae_rows else []
    active = [m.active_units for m in at if m.flag is None and m.active_units is not None]
    sane = [r.active_units for r in vae_rows.values() if r.flag is None and r.active_units is not None]
    residuals, total = pca.residuals(inp.pca_basis, inp.x_test)
    targets = [float(t) for t in inp.pca_metrics["components_for_variance"]]
    return Checks(knee_k, knee_shares, knee_likely, active, max(sane) if sane else None,
                  inp.summary.intrinsic_dim or {}, pca_components(residuals, total, targets, cfg.bootstrap, seed))
