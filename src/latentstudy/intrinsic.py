"""Intrinsic-dimension estimates: where the distortion-versus-latent-size curve should flatten.

TwoNN (Facco et al. 2017) uses only each point's two nearest neighbours; the Levina-Bickel MLE
(2004, with MacKay and Ghahramani's averaging of inverses) uses k neighbours.
"""

from __future__ import annotations

import numpy as np


def neighbour_distances(x: np.ndarray, k: int) -> np.ndarray:
    """Distances from each point to its k nearest other points, ascending (n, k)."""
    from sklearn.neighbors import NearestNeighbors

    nn = NearestNeighbors(n_neighbors=k + 1).fit(x)
    dist, _ = nn.kneighbors(x)
    return dist[:, 1:]


def twonn(dist: np.ndarray, discard_fraction: float = 0.1) -> float:
    """TwoNN: -log(1 - F(mu)) = d log(mu), fitted through the origin; mu = r2 / r1.

    The largest `discard_fraction` of the ratios is dropped, as they are the noisiest.
    """
    mu = np.sort(dist[:, 1] / dist[:, 0])
    n = len(mu)
    keep = int(n * (1 - discard_fraction))
    log_mu = np.log(mu[:keep])
    y = -np.log(1 - np.arange(keep) / n)
    return float(np.dot(log_mu, y) / np.dot(log_mu, log_mu))


def levina_bickel(dist: np.ndarray, k_low: int = 10, k_high: int = 20) -> float:
    """MLE of Levina and Bickel, inverse-averaged over points and averaged over k."""
    estimates = []
    for k in range(k_low, k_high + 1):
        logs = np.log(dist[:, k - 1 : k] / dist[:, : k - 1])  # log(T_k / T_j), j < k
        inverse = logs.sum(axis=1) / (k - 1)
        estimates.append(1.0 / inverse.mean())
    return float(np.mean(estimates))


def estimates(x: np.ndarray, max_points: int, seed: int) -> dict:
    """Both estimates on at most max_points distinct points (seeded subsample)."""
    x = np.unique(np.asarray(x, dtype=np.float64), axis=0)  # duplicates make distance ratios 0/0
    if len(x) > max_points:
        x = x[np.random.default_rng(seed).choice(len(x), size=max_points, replace=False)]
    k_high = min(20, len(x) - 1)
    if k_high < 3:
        return {"twonn": None, "mle": None, "n_points": int(len(x)), "mle_k": None}
    k_low = min(10, k_high)
    # Centring keeps the |a|^2 + |b|^2 - 2ab distances accurate; pairs that still come out at 0
    # are duplicates in float precision and have no distance ratio.
    dist = neighbour_distances(x - x.mean(axis=0), k_high)
    dist = dist[dist[:, 0] > 0]
    return {
        "twonn": round(twonn(dist), 3),
        "mle": round(levina_bickel(dist, k_low, k_high), 3),
        "n_points": int(len(x)),
        "mle_k": [k_low, k_high],
    }
