"""Pictures drawn from the trained models and the trials: reconstructions, prior samples,
interpolations, traversals, the 2-D latent map, the rate-distortion plane and Optuna's history.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from latentstudy import figures
from latentstudy.contracts import Inputs
from latentstudy.evaluate import latents, reconstructions
from latentstudy.models import AutoEncoder, best_path, load_checkpoint


@torch.no_grad()
def decode(model: AutoEncoder, z: np.ndarray) -> np.ndarray:
    return model.mean(model.decode(torch.as_tensor(z, dtype=torch.float32))).numpy()


def interpolation_rows(model: AutoEncoder, x: np.ndarray, pairs: list[tuple[int, int]], steps: int = 10) -> list:
    mu = latents(model, x)
    t = np.linspace(0, 1, steps)[:, None]
    return [decode(model, (1 - t) * mu[a] + t * mu[b]) for a, b in pairs]


def traversal_rows(model: AutoEncoder, x0: np.ndarray, units: list[int], steps: int = 9) -> list:
    base = latents(model, x0[None])[0]
    rows = []
    for u in units:
        z = np.repeat(base[None], steps, axis=0)
        z[:, u] = np.linspace(-3, 3, steps)
        rows.append(decode(model, z))
    return rows


def importances(trials: pd.DataFrame) -> dict[int, dict[str, float]]:
    """fANOVA importance of beta and lr per latent size, from the finished VAE trials."""
    import optuna
    from optuna.distributions import FloatDistribution

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    out = {}
    for k, sub in figures.finished_vae(trials).groupby("latent_dim"):
        if len(sub) < 2:
            continue
        dists = {p: FloatDistribution(float(sub[p].min()) * 0.999, float(sub[p].max()) * 1.001, log=True)
                 for p in ("beta", "lr")}
        study = optuna.create_study(direction="minimize")
        for _, row in sub.iterrows():
            study.add_trial(optuna.trial.create_trial(params={"beta": row.beta, "lr": row.lr},
                                                      distributions=dists, value=row.objective_value))
        evaluator = optuna.importance.FanovaImportanceEvaluator(seed=0)
        try:
            out[int(k)] = optuna.importance.get_param_importances(study, evaluator=evaluator)
        except RuntimeError:  # fANOVA finds no split among too few or too alike trials: no importance
            continue
    return out


# Over 50 lines on purpose: one figure after another, each a few lines with its condition; split,
# the conditions would be scattered over as many functions.
def draw(inp: Inputs, table: pd.DataFrame, k: int, cfg, fig_dir: Path, add) -> dict[int, AutoEncoder]:
    """Every figure drawn from the trials and the models; add(file, **title values) lists each.
    k: the size whose VAE the interpolations and traversals show. Returns the VAEs by size
    (for the explorer). Image figures become line plots for vector data."""
    from latentstudy import pca as pca_mod

    shape = inp.summary.image_shape
    ks = table["latent_dim"].tolist()
    vae, ae = best_models(inp.models_dir, ks, "vae"), best_models(inp.models_dir, ks, "ae")
    rng = np.random.default_rng(0)
    n = min(cfg.recon_examples, len(inp.x_test))
    pick = rng.choice(len(inp.x_test), size=n, replace=False)
    x = inp.x_test[pick]
    have_trials = len(figures.finished_vae(inp.trials)) > 0
    if have_trials:
        figures.rate_distortion(inp.trials, fig_dir / "rate_distortion.png")
        add("rate_distortion.png")
    if table["vae_active_units"].notna().any():
        figures.active_units(table, fig_dir / "active_units.png")
        add("active_units.png")
    rows, labels = [x], ["input"]
    for size in ks:
        if size in vae:
            rows.append(reconstructions(vae[size], x))
            labels.append(f"VAE k={size}")
        if size in ae:
            rows.append(reconstructions(ae[size], x))
            labels.append(f"AE k={size}")
        rows.append(pca_mod.reconstruct(inp.pca_basis, x, size))
        labels.append(f"PCA k={size}")
    figures.image_grid(rows, labels, shape, fig_dir / "reconstructions.png")
    add("reconstructions.png")
    show = sample_dims(sorted(vae), k, cfg.sample_dims)
    if show:
        rows = [decode(vae[s], np.random.default_rng(s).standard_normal((n, s))) for s in show]
        figures.image_grid(rows, [f"VAE k={s}" for s in show], shape, fig_dir / "samples.png")
        add("samples.png")
    best = vae.get(k)
    if best is not None and len(inp.x_test) >= 6:
        pairs = [(int(a), int(b)) for a, b in rng.choice(len(inp.x_test), size=(3, 2), replace=False)]
        figures.image_grid(interpolation_rows(best, inp.x_test, pairs), [f"pair {i + 1}" for i in range(3)], shape,
                           fig_dir / "interpolations.png")
        add("interpolations.png", k=k)
        kl = next((row.vae.kl_per_dim_nats for row in inp.evaluation.rows if row.latent_dim == k and row.vae), None)
        units = [int(u) for u in np.argsort(kl)[::-1][:6]] if kl else list(range(min(6, k)))
        figures.image_grid(traversal_rows(best, x[0], units), [f"unit {u}" for u in units], shape,
                           fig_dir / "traversals.png")
        add("traversals.png", k=k)
    if 2 in ks and (2 in vae or 2 in ae):
        codes = {}
        if 2 in ae:
            codes["autoencoder, k=2"] = latents(ae[2], inp.x_test)
        if 2 in vae:
            codes["VAE, k=2 (mu)"] = latents(vae[2], inp.x_test)
        figures.latent_scatter(codes, inp.y_test, fig_dir / "latent_2d.png")
        add("latent_2d.png")
    if have_trials:
        figures.optimisation_history(inp.trials, fig_dir / "optuna_history.png")
        add("optuna_history.png")
        imp = importances(inp.trials)
        if imp:
            figures.param_importances(imp, fig_dir / "param_importances.png")
            add("param_importances.png")
    return vae


def best_models(models_dir: Path, ks: list[int], arm: str) -> dict[int, AutoEncoder]:
    """The search's best model of the arm ("vae" or "ae") for every size that has one."""
    paths = {k: best_path(models_dir, k, arm) for k in ks}
    return {k: load_checkpoint(path)[0] for k, path in paths.items() if path.is_file()}


def sample_dims(available: list[int], recommended: int, count: int) -> list[int]:
    """A few sizes to sample from: the recommended one, the smallest and the largest."""
    chosen = []
    for k in [recommended, available[0] if available else None, available[-1] if available else None,
              *available]:
        if k is not None and k in available and k not in chosen:
            chosen.append(k)
    return sorted(chosen[:count])
