"""Test-split evaluation of the best VAE and autoencoder of every latent size, and PCA at k.

All per-example quantities are in nats averaged over test examples; squared errors use
z = mu(x). Definitions: distortion and rate reported apart (Alemi et al. 2018, "Fixing a Broken
ELBO"), the importance-weighted bound (Burda, Grosse and Salakhutdinov 2016, "Importance Weighted
Autoencoders"), active units (the same paper); the README's table "What the study reports".
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from latentstudy import pca as pca_mod
from latentstudy.models import AutoEncoder, best_path, kl_per_dim, load_checkpoint, n_params, reconstruct

ACTIVE_THRESHOLD = 0.01  # Burda et al. 2016: Cov_x(E_q[z_u | x]) > 0.01
CHUNK = 256


@torch.no_grad()
def latents(model: AutoEncoder, x: np.ndarray) -> np.ndarray:
    """mu(x) (VAE) or z(x) (autoencoder) for every row of x."""
    xt = torch.as_tensor(x)
    return torch.cat([model.encode(xt[i : i + CHUNK])[0] for i in range(0, len(xt), CHUNK)]).numpy()


@torch.no_grad()
def reconstructions(model: AutoEncoder, x: np.ndarray) -> np.ndarray:
    xt = torch.as_tensor(x)
    return torch.cat([reconstruct(model, xt[i : i + CHUNK]) for i in range(0, len(xt), CHUNK)]).numpy()


@torch.no_grad()
def vae_bounds(model: AutoEncoder, x: np.ndarray, samples: int, seed: int) -> dict[str, float]:
    """Distortion (MC over K samples), rate (closed form), D + R, and the IWAE-K bound.

    log w_i = log p(x|z_i) + log p(z_i) - log q(z_i|x); the IWAE bound is log mean_i w_i, never
    below the mean of log w_i, so the reported -IWAE is at most the same samples' negative ELBO.
    """
    gen = torch.Generator().manual_seed(seed)
    xt = torch.as_tensor(x)
    sums = np.zeros(4)
    per_unit = None
    chunk = max(1, CHUNK * 16 // samples)
    for i in range(0, len(xt), chunk):
        xb = xt[i : i + chunk]
        mu, logvar = model.encode(xb)
        kl = kl_per_dim(mu, logvar)
        std = torch.exp(0.5 * logvar)
        eps = torch.randn((samples, *mu.shape), generator=gen)
        z = mu + std * eps  # (K, n, k)
        xk = xb.expand(samples, *xb.shape).reshape(-1, xb.shape[1])
        log_px = -model.distortion(xk, model.decode(z.reshape(-1, z.shape[-1]))).view(samples, -1)
        log_pz = -0.5 * (z.pow(2) + math.log(2 * math.pi)).sum(-1)
        log_qz = -0.5 * (eps.pow(2) + math.log(2 * math.pi) + logvar).sum(-1)
        log_w = log_px + log_pz - log_qz
        iwae = torch.logsumexp(log_w, 0) - math.log(samples)
        sums += [(-log_px.mean(0)).sum().item(), kl.sum(1).sum().item(), (-iwae).sum().item(),
                 (-log_w.mean(0)).sum().item()]
        per_unit = kl.sum(0) if per_unit is None else per_unit + kl.sum(0)
    d, r, iwae_nll, elbo_mc = sums / len(x)
    return {"distortion_nats": d, "rate_nats": r, "neg_elbo_nats": d + r, "iwae_nll_nats": iwae_nll,
            "neg_elbo_mc_nats": elbo_mc, "kl_per_dim_nats": (per_unit / len(x)).tolist(),
            "iwae_samples": samples}


def unit_variance(mu: np.ndarray) -> np.ndarray:
    """Var_x of each unit's mean code over the rows of mu (zeros for a single row)."""
    return mu.var(axis=0, ddof=1) if len(mu) > 1 else np.zeros(mu.shape[1])


def active_units(mu: np.ndarray, threshold: float = ACTIVE_THRESHOLD) -> tuple[int, list[float]]:
    """Units whose mean code varies across inputs by more than the threshold."""
    var = unit_variance(mu)
    return int((var > threshold).sum()), var.tolist()


def probe_accuracy(f_train: np.ndarray, y_train: np.ndarray, f_test: np.ndarray, y_test: np.ndarray,
                   seed: int) -> float:
    """Test accuracy of a logistic regression on standardised features (a linear probe)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if len(np.unique(y_train)) < 2:
        return float("nan")
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, random_state=seed))
    clf.fit(f_train, y_train)
    return float(clf.score(f_test, y_test))


def evaluate_model(path: Path, x_test: np.ndarray, probe: tuple | None, samples: int, seed: int) -> dict:
    """Everything the table reports for one trained model (VAE or autoencoder)."""
    model, meta = load_checkpoint(path)
    mu = latents(model, x_test)
    out = {"latent_dim": model.spec.latent_dim, "n_params": n_params(model), "beta": meta.get("beta"),
           "lr": meta.get("lr"), "train_seconds": meta.get("seconds"), "trial": meta.get("trial"),
           "study": meta.get("study"), "epochs_run": meta.get("epochs_run")}
    out.update(pca_mod.errors(x_test, reconstructions(model, x_test)))
    if model.spec.variational:
        out.update(vae_bounds(model, x_test, samples, seed))
        out["active_units"], out["mu_variance"] = active_units(mu)
        out["collapsed_units"] = model.spec.latent_dim - out["active_units"]
    else:
        with torch.no_grad():
            xt = torch.as_tensor(x_test)
            out["distortion_nats"] = float(model.distortion(xt, model.decode(torch.as_tensor(mu))).mean())
    if probe is not None:
        x_train, y_train, y_test = probe
        out["probe_accuracy"] = probe_accuracy(latents(model, x_train), y_train, mu, y_test, seed)
    return out


def evaluate_pca(basis: pca_mod.PCABasis, x_test: np.ndarray, k: int, probe: tuple | None, seed: int) -> dict:
    out = pca_mod.metrics_at(basis, x_test, k)
    if probe is not None:
        x_train, y_train, y_test = probe
        used = min(k, basis.n_components)
        out["probe_accuracy"] = probe_accuracy(pca_mod.encode(basis, x_train, used), y_train,
                                               pca_mod.encode(basis, x_test, used), y_test, seed)
    return out


def run(latent_dims: list[int], models_dir: Path, basis: pca_mod.PCABasis, x_train: np.ndarray,
        y_train: np.ndarray | None, x_test: np.ndarray, y_test: np.ndarray | None, samples: int,
        probe_max_train: int, seed: int, log=print) -> dict:
    """Evaluate every latent size; sizes whose search found no model are reported as missing."""
    probe = None
    if y_train is not None and y_test is not None:
        keep = np.random.default_rng(seed).permutation(len(x_train))[:probe_max_train]
        probe = (x_train[keep], y_train[keep], y_test)
    rows = []
    for k in latent_dims:
        row = {"latent_dim": k, "compression_ratio": x_test.shape[1] / k,
               "pca": evaluate_pca(basis, x_test, k, probe, seed)}
        for arm in ("ae", "vae"):
            path = best_path(models_dir, k, arm)
            row[arm] = evaluate_model(path, x_test, probe, samples, seed) if path.is_file() else None
        rows.append(row)
        vae = row["vae"] or {}
        log(f"[evaluate] k={k:<4} PCA sse {row['pca']['sse_per_image']:.3f}"
            + (f" | AE sse {row['ae']['sse_per_image']:.3f}" if row["ae"] else " | AE missing")
            + (f" | VAE sse {vae['sse_per_image']:.3f} D {vae['distortion_nats']:.2f} R {vae['rate_nats']:.2f}"
               f" IWAE {vae['iwae_nll_nats']:.2f} AU {vae['active_units']}/{k}" if vae else " | VAE missing"))
    return {"input_dim": int(x_test.shape[1]), "n_test": int(len(x_test)), "has_labels": probe is not None,
            "rows": rows}
