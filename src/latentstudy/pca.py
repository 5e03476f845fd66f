"""Exact PCA: the optimal linear latent space and the study's reference curve.

Fit: SVD of the centred training data. Reconstruction at k: x_hat = mean + (x - mean) V_k V_k^T.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from latentstudy import npz

BCE_EPS = 1e-6  # reconstructions are clipped into [eps, 1 - eps] before the log


@dataclass(frozen=True)
class PCABasis:
    mean: np.ndarray  # (D,)
    components: np.ndarray  # (r, D) right-singular vectors, rows sorted by variance
    explained_variance: np.ndarray  # (r,) variance along each component (ddof=1)
    total_variance: float  # trace of the covariance, including the directions beyond r

    @property
    def n_components(self) -> int:
        return len(self.components)

    @property
    def input_dim(self) -> int:
        return len(self.mean)


def fit(x: np.ndarray) -> PCABasis:
    x = np.asarray(x, dtype=np.float64)
    mean = x.mean(axis=0)
    centred = x - mean
    _, s, vt = np.linalg.svd(centred, full_matrices=False)
    dof = max(len(x) - 1, 1)
    var = s**2 / dof
    return PCABasis(mean, vt, var, float((centred**2).sum() / dof))


def encode(basis: PCABasis, x: np.ndarray, k: int) -> np.ndarray:
    return (np.asarray(x, dtype=np.float64) - basis.mean) @ basis.components[:k].T


def reconstruct(basis: PCABasis, x: np.ndarray, k: int) -> np.ndarray:
    """Project onto the top k components; k >= D reproduces x exactly (the identity)."""
    x = np.asarray(x, dtype=np.float64)
    if k >= basis.input_dim:
        return x.copy()
    v = basis.components[:k]
    return basis.mean + ((x - basis.mean) @ v.T) @ v


def explained_ratio(basis: PCABasis) -> np.ndarray:
    """Cumulative explained-variance ratio after 1..r components."""
    if basis.total_variance == 0:
        return np.ones(basis.n_components)
    return np.minimum(np.cumsum(basis.explained_variance) / basis.total_variance, 1.0)


def components_for(basis: PCABasis, target: float) -> int:
    """Smallest k whose cumulative explained variance reaches target."""
    ratio = explained_ratio(basis)
    hit = np.flatnonzero(ratio >= target - 1e-12)
    return int(hit[0]) + 1 if len(hit) else basis.n_components


def residuals(basis: PCABasis, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(n, components) squared residual of each example after its first 1, 2, ... components, and
    (n,) its total squared deviation from the mean: what explained-variance intervals resample."""
    centred = np.asarray(x, dtype=np.float64) - basis.mean
    total = (centred**2).sum(axis=1)
    return np.maximum(total[:, None] - np.cumsum((centred @ basis.components.T) ** 2, axis=1), 0.0), total


def errors(x: np.ndarray, x_hat: np.ndarray) -> dict[str, float]:
    """Reconstruction errors per example: squared error (summed and per pixel) and Bernoulli BCE."""
    x = np.asarray(x, dtype=np.float64)
    sq = (x - x_hat) ** 2
    p = np.clip(x_hat, BCE_EPS, 1 - BCE_EPS)
    bce = -(x * np.log(p) + (1 - x) * np.log(1 - p))
    return {
        "sse_per_image": float(sq.sum(axis=1).mean()),
        "mse_per_pixel": float(sq.mean()),
        "bce_nats": float(bce.sum(axis=1).mean()),
    }


def metrics_at(basis: PCABasis, x: np.ndarray, k: int) -> dict:
    used = min(k, basis.n_components)
    ratio = explained_ratio(basis)
    out = {
        "latent_dim": int(k),
        "components_used": int(used),
        "exact": bool(k >= basis.input_dim),
        "explained_variance_ratio": float(1.0 if k >= basis.input_dim else ratio[used - 1]),
    }
    out.update(errors(x, reconstruct(basis, x, k)))
    return out


def curve(basis: PCABasis, x: np.ndarray) -> list[dict]:
    """The whole curve, one row per number of components 1..r, on x (the test split)."""
    ratio = explained_ratio(basis)
    centred = np.asarray(x, dtype=np.float64) - basis.mean
    coords = centred @ basis.components.T
    # Residual after k components = |x - mean|^2 - sum of the first k squared coordinates.
    total = (centred**2).sum(axis=1)
    kept = np.cumsum(coords**2, axis=1)
    sse = np.maximum(total[:, None] - kept, 0.0).mean(axis=0)
    return [
        {"components": k + 1, "explained_variance_ratio": float(ratio[k]), "test_sse_per_image": float(sse[k])}
        for k in range(basis.n_components)
    ]


def save(basis: PCABasis, path: Path) -> None:
    npz.save(path, mean=basis.mean, components=basis.components,
             explained_variance=basis.explained_variance, total_variance=np.float64(basis.total_variance))


def load(path: Path) -> PCABasis:
    f = npz.load(path, "pca")
    return PCABasis(f["mean"], f["components"], f["explained_variance"], float(f["total_variance"]))
