"""Intrinsic-dimension estimates: where the distortion-versus-latent-size curve should flatten.

TwoNN (Facco et al. 2017) uses only each point's two nearest neighbours; the Levina-Bickel MLE
(2004, with MacKay and Ghahramani's averaging of inverses) uses k neighbours. Each comes with
a 95% bootstrap interval: the points' neighbour distances are computed once, and the points
are resampled (resampling raw points would add duplicates, whose distance ratios are 0/0).
An estimate that is not a finite number in (0, 2 D] says more about the data (scrambled or
degenerate features) than about its dimension: it is rejected with the reason, not reported.
"""

from __future__ import annotations

import numpy as np


def neighbour_distances(x: np.ndarray, k: int) -> np.ndarray:
    """Distances from each point to its k nearest other points, ascending (n, k)."""
    from sklearn.neighbors import NearestNeighbors

    nn = NearestNeighbors(n_neighbors=k + 1).fit(x)
    dist, _ = nn.kneighbors(x)
    return dist[:, 1:]


BOOTSTRAP = 200  # resamples for the intervals
LEVEL = 0.95


def twonn(dist: np.ndarray, discard_fraction: float = 0.1) -> float:
    """TwoNN: -log(1 - F(mu)) = d log(mu), fitted through the origin; mu = r2 / r1.

    The largest `discard_fraction` of the ratios is dropped, as they are the noisiest.
    """
    return _twonn_fit(dist[:, 1] / dist[:, 0], discard_fraction)


def _twonn_fit(ratios: np.ndarray, discard_fraction: float = 0.1) -> float:
    mu = np.sort(ratios)
    n = len(mu)
    keep = int(n * (1 - discard_fraction))
    log_mu = np.log(mu[:keep])
    y = -np.log(1 - np.arange(keep) / n)
    return float(np.dot(log_mu, y) / np.dot(log_mu, log_mu))


def _inverse_estimates(dist: np.ndarray, k_low: int, k_high: int) -> np.ndarray:
    """(n, k_high - k_low + 1): each point's inverse dimension estimate for each k."""
    cols = []
    for k in range(k_low, k_high + 1):
        logs = np.log(dist[:, k - 1 : k] / dist[:, : k - 1])  # log(T_k / T_j), j < k
        cols.append(logs.sum(axis=1) / (k - 1))
    return np.stack(cols, axis=1)


def levina_bickel(dist: np.ndarray, k_low: int = 10, k_high: int = 20) -> float:
    """MLE of Levina and Bickel, inverse-averaged over points and averaged over k."""
    return float(np.mean(1.0 / _inverse_estimates(dist, k_low, k_high).mean(axis=0)))


def bootstrap_intervals(dist: np.ndarray, k_low: int, k_high: int, seed: int,
                        draws: int = BOOTSTRAP) -> dict[str, list[float]]:
    """95% percentile intervals of both estimates over resampled points (distances held fixed)."""
    rng = np.random.default_rng([seed, 2])
    ratios = dist[:, 1] / dist[:, 0]
    inverse = _inverse_estimates(dist, k_low, k_high)
    two, mle = [], []
    for _ in range(draws):
        idx = rng.integers(0, len(dist), size=len(dist))
        two.append(_twonn_fit(ratios[idx]))
        mle.append(float(np.mean(1.0 / inverse[idx].mean(axis=0))))
    tail = (1 - LEVEL) / 2 * 100
    return {name: [round(float(np.percentile(v, tail)), 3), round(float(np.percentile(v, 100 - tail)), 3)]
            for name, v in (("twonn", two), ("mle", mle))}


def rejection(value: float, input_dim: int) -> str | None:
    """Why an estimate cannot be a dimension of data with input_dim features, or None."""
    if not np.isfinite(value) or value <= 0:
        return f"the estimate {value:.3g} is not a finite positive number"
    if value > 2 * input_dim:
        return f"the estimate {value:.3g} is far above the {input_dim} input features"
    return None


def estimates(x: np.ndarray, max_points: int, seed: int) -> dict:
    """Both estimates on at most max_points distinct points (seeded subsample)."""
    x = np.unique(np.asarray(x, dtype=np.float64), axis=0)  # duplicates make distance ratios 0/0
    if len(x) > max_points:
        x = x[np.random.default_rng(seed).choice(len(x), size=max_points, replace=False)]
    k_high = min(20, len(x) - 1)
    empty = {"twonn": None, "mle": None, "twonn_interval": None, "mle_interval": None, "n_points": int(len(x)),
             "mle_k": None, "rejected": {}}
    if k_high < 3:
        return empty
    k_low = min(10, k_high)
    # Centring keeps the |a|^2 + |b|^2 - 2ab distances accurate; pairs that still come out at 0
    # are duplicates in float precision and have no distance ratio.
    dist = neighbour_distances(x - x.mean(axis=0), k_high)
    dist = dist[dist[:, 0] > 0]
    if len(dist) < 3:
        return empty
    with np.errstate(divide="ignore", invalid="ignore"):
        values = {"twonn": twonn(dist), "mle": levina_bickel(dist, k_low, k_high)}
        intervals = bootstrap_intervals(dist, k_low, k_high, seed)
    out = {**empty, "mle_k": [k_low, k_high]}
    for name, value in values.items():
        reason = rejection(value, x.shape[1])
        if reason:
            out["rejected"][name] = reason
        else:
            out[name], out[f"{name}_interval"] = round(value, 3), intervals[name]
    return out


def upper(found: dict | None) -> float | None:
    """The largest upper end of the kept estimates' 95% intervals (the estimate itself where it has no
    interval); None when no estimate was kept. What the auto grid's top is scaled from."""
    highs = [(found.get(f"{name}_interval") or [found[name]])[-1]
             for name in ("twonn", "mle") if found and found.get(name) is not None]
    return max(highs) if highs else None
