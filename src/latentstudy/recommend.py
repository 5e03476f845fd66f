"""The recommended latent size, computed from the curves, and the paragraph that explains it.

Primary rule: the smallest k whose VAE test distortion is within `tolerance` of the best
(relative to the best distortion; relative to the curve's span when the best is not positive,
as a Gaussian decoder's distortion can be). Cross-checks: the knee of the curve (Kneedle on
log k), the active units, the data's intrinsic dimension and PCA's k for 90/95% variance.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace


@dataclass(frozen=True)
class Recommendation:
    latent_dim: int
    beta: float | None
    tolerance: float
    best_latent_dim: int
    best_distortion: float
    threshold: float
    knee_latent_dim: int | None
    active_units: int | None
    max_active_units: int | None
    intrinsic_twonn: float | None
    intrinsic_mle: float | None
    pca_components: dict[str, int]
    curve: str  # which curve: "vae" or, when no VAE finished, "ae"
    text: str

    def to_dict(self) -> dict:
        return asdict(self)


def within_tolerance(ks: list[int], values: list[float], tolerance: float) -> tuple[int, float, int, float]:
    """(smallest k within tolerance of the best, the threshold, the best k, the best value)."""
    best_i = min(range(len(values)), key=lambda i: (values[i], ks[i]))
    best = values[best_i]
    scale = abs(best) if best > 0 else (max(values) - best)
    threshold = best + tolerance * scale
    chosen = min(k for k, v in zip(ks, values) if v <= threshold)
    return chosen, threshold, ks[best_i], best


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


def recommend(ks: list[int], distortion: list[float | None], betas: list[float | None],
              active: list[int | None], tolerance: float, intrinsic: dict, pca_components: dict[str, int],
              curve: str = "vae") -> Recommendation:
    """Pick k from the distortion curve (sizes without a model are skipped) and explain why."""
    pairs = [(k, d, b, a) for k, d, b, a in zip(ks, distortion, betas, active) if d is not None]
    if not pairs:
        raise ValueError("no latent size has a trained model to recommend from")
    ks_ok = [p[0] for p in pairs]
    values = [p[1] for p in pairs]
    chosen, threshold, best_k, best = within_tolerance(ks_ok, values, tolerance)
    at = dict((p[0], p) for p in pairs)[chosen]
    knee_k = knee(ks_ok, values)
    actives = [p[3] for p in pairs if p[3] is not None]
    rec = Recommendation(
        latent_dim=chosen, beta=at[2], tolerance=tolerance, best_latent_dim=best_k, best_distortion=best,
        threshold=threshold, knee_latent_dim=knee_k, active_units=at[3],
        max_active_units=max(actives) if actives else None, intrinsic_twonn=intrinsic.get("twonn"),
        intrinsic_mle=intrinsic.get("mle"), pca_components=pca_components, curve=curve, text="")
    return replace(rec, text=explain(rec))


def explain(r: Recommendation) -> str:
    model = "VAE" if r.curve == "vae" else "autoencoder"
    parts = [
        f"Recommended latent size: k = {r.latent_dim}"
        + (f" with beta = {r.beta:.3g}." if r.beta is not None else "."),
        f"It is the smallest size whose {model} test distortion is within {r.tolerance:.0%} of the best "
        f"({r.best_distortion:.2f} nats at k = {r.best_latent_dim}; threshold {r.threshold:.2f} nats): "
        "larger latent spaces buy almost no reconstruction.",
    ]
    if r.knee_latent_dim is not None:
        agree = "agrees" if r.knee_latent_dim == r.latent_dim else "differs"
        parts.append(f"The knee of the distortion curve is at k = {r.knee_latent_dim}, which {agree}.")
    if r.active_units is not None:
        wasted = r.latent_dim - r.active_units
        parts.append(
            f"At k = {r.latent_dim} the VAE uses {r.active_units} active unit{'s' * (r.active_units != 1)}"
            + (f" ({wasted} collapsed to the prior: capacity it does not use)" if wasted > 0 else " (all of them)")
            + f"; across all sizes it never uses more than {r.max_active_units}.")
    ids = [f"TwoNN {r.intrinsic_twonn:.1f}" if r.intrinsic_twonn is not None else None,
           f"Levina-Bickel {r.intrinsic_mle:.1f}" if r.intrinsic_mle is not None else None]
    ids = [s for s in ids if s]
    if ids:
        parts.append(f"The data's intrinsic dimension is estimated at {' and '.join(ids)}: where a good "
                     "nonlinear code's distortion curve should flatten.")
    if r.pca_components:
        needed = ", ".join(f"{float(t):.0%} needs {k}" for t, k in r.pca_components.items())
        parts.append(f"A linear code (PCA) needs more for the same variance: {needed} components.")
    return " ".join(parts)
