"""Test-split evaluation of every model the search handed on (the best of each latent size and
arm, its seed replicates, and the size's other finished trials) and of PCA at every searched size.

Every quantity is kept per test example (an npz), so each statistic of the report can be
recomputed from this stage's outputs; evaluation.json holds the means. Per example: the IWAE-K
bound on the negative log-likelihood (Burda et al. 2016), distortion D, rate R (nats), the
squared error from z = mu(x), and whether a linear probe on the code gets the label right.

A model far worse than predicting the training mean (and so than PCA at any k) is flagged, with
the reason: diverged or broken training. It is shown, never averaged in and never recommended.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from pathlib import Path

import numpy as np
import torch

from latentstudy import pca as pca_mod
from latentstudy.config import ARMS
from latentstudy.contracts import KeptModel, SearchedSize
from latentstudy.evaluation import (
    ArmExamples,
    ArmResult,
    CodeChoice,
    Evaluation,
    EvaluationRow,
    Means,
    ModelMeans,
    PcaValues,
    PerExample,
)
from latentstudy.models import AutoEncoder, kl_per_dim, load_checkpoint, n_params, reconstruct

ACTIVE_THRESHOLD = 0.01  # Burda et al. 2016: Cov_x(E_q[z_u | x]) > 0.01
CHUNK = 256
FAR = 3.0  # "far worse": more than this times the trivial model's squared error (never negative)
# "Far worse" in nats: an NLL bound more than this many nats per input dimension above the trivial
# density's. NLLs are signed (a Gaussian's can be negative), so they are compared by difference.
FAR_NATS_PER_DIM = 1.0
# Per-example arrays kept in the npz, per arm (probe_correct too, when the data has labels).
QUANTITIES = {"vae": ("iwae_nll_nats", "distortion_nats", "rate_nats", "sse_per_image"),
              "ae": ("distortion_nats", "sse_per_image"), "pca": ("sse_per_image", "bce_nats")}


@torch.no_grad()
def latents(model: AutoEncoder, x: np.ndarray) -> np.ndarray:
    """mu(x) (VAE) or z(x) (autoencoder) for every row of x."""
    xt = torch.as_tensor(x)
    return torch.cat([model.encode(xt[i : i + CHUNK])[0] for i in range(0, len(xt), CHUNK)]).numpy()


@torch.no_grad()
def reconstructions(model: AutoEncoder, x: np.ndarray) -> np.ndarray:
    xt = torch.as_tensor(x)
    return torch.cat([reconstruct(model, xt[i : i + CHUNK]) for i in range(0, len(xt), CHUNK)]).numpy()


def squared_errors(x: np.ndarray, x_hat: np.ndarray) -> np.ndarray:
    """The squared error of each example's reconstruction (n,)."""
    return ((np.asarray(x, dtype=np.float64) - x_hat) ** 2).sum(axis=1)


def example_errors(x: np.ndarray, x_hat: np.ndarray) -> dict[str, np.ndarray]:
    """Squared error and Bernoulli cross-entropy of each example's reconstruction (n,)."""
    x = np.asarray(x, dtype=np.float64)
    p = np.clip(x_hat, pca_mod.BCE_EPS, 1 - pca_mod.BCE_EPS)
    return {"sse_per_image": squared_errors(x, x_hat),
            "bce_nats": -(x * np.log(p) + (1 - x) * np.log(1 - p)).sum(axis=1)}


@torch.no_grad()
def vae_terms(model: AutoEncoder, x: np.ndarray, samples: int, seed: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Per-example D (MC over K samples), R (closed form), the IWAE-K NLL bound and the same
    samples' negative ELBO; and the mean KL of each latent unit.

    log w_i = log p(x|z_i) + log p(z_i) - log q(z_i|x); the IWAE bound is log mean_i w_i, never
    below the mean of log w_i, so -IWAE is at most the same samples' negative ELBO.
    """
    gen = torch.Generator().manual_seed(seed)
    xt = torch.as_tensor(x)
    parts: dict[str, list] = {"distortion_nats": [], "rate_nats": [], "iwae_nll_nats": [], "neg_elbo_mc_nats": []}
    per_unit = torch.zeros(model.spec.latent_dim, dtype=torch.float64)
    chunk = max(1, CHUNK * 16 // samples)
    for i in range(0, len(xt), chunk):
        xb = xt[i : i + chunk]
        mu, logvar = model.encode(xb)
        kl = kl_per_dim(mu, logvar)
        eps = torch.randn((samples, *mu.shape), generator=gen)
        z = mu + torch.exp(0.5 * logvar) * eps  # (K, n, k)
        xk = xb.expand(samples, *xb.shape).reshape(-1, xb.shape[1])
        log_px = -model.distortion(xk, model.decode(z.reshape(-1, z.shape[-1]))).view(samples, -1)
        log_pz = -0.5 * (z.pow(2) + math.log(2 * math.pi)).sum(-1)
        log_qz = -0.5 * (eps.pow(2) + math.log(2 * math.pi) + logvar).sum(-1)
        log_w = log_px + log_pz - log_qz
        parts["distortion_nats"].append(-log_px.mean(0))
        parts["rate_nats"].append(kl.sum(1))
        parts["iwae_nll_nats"].append(-(torch.logsumexp(log_w, 0) - math.log(samples)))
        parts["neg_elbo_mc_nats"].append(-log_w.mean(0))
        per_unit += kl.sum(0).double()
    values = {key: torch.cat(v).double().numpy() for key, v in parts.items()}
    return values, (per_unit / len(x)).numpy()


def vae_bounds(model: AutoEncoder, x: np.ndarray, samples: int, seed: int) -> dict[str, float]:
    """The means of vae_terms: D, R, D + R, the IWAE-K bound, and the KL of each unit."""
    values, per_unit = vae_terms(model, x, samples, seed)
    out = {key: float(v.mean()) for key, v in values.items()}
    out["neg_elbo_nats"] = out["distortion_nats"] + out["rate_nats"]
    return {**out, "kl_per_dim_nats": per_unit.tolist(), "iwae_samples": samples}


@torch.no_grad()
def per_example(model: AutoEncoder, x: np.ndarray, samples: int, seed: int) -> tuple[dict[str, np.ndarray],
                                                                                     np.ndarray | None]:
    """Every per-example quantity of one model on x (n,), VAE bounds with K samples; and a
    VAE's mean KL per latent unit (None for the autoencoder)."""
    out = example_errors(x, reconstructions(model, x))
    if model.spec.variational:
        values, per_unit = vae_terms(model, x, samples, seed)
        return {**out, **values}, per_unit
    xt = torch.as_tensor(x)
    out["distortion_nats"] = torch.cat([model.distortion(xt[i : i + CHUNK], model.decode(model.encode(
        xt[i : i + CHUNK])[0])) for i in range(0, len(xt), CHUNK)]).double().numpy()
    return out, None


def unit_variance(mu: np.ndarray) -> np.ndarray:
    """Var_x of each unit's mean code over the rows of mu (zeros for a single row)."""
    return mu.var(axis=0, ddof=1) if len(mu) > 1 else np.zeros(mu.shape[1])


def active_units(mu: np.ndarray, threshold: float = ACTIVE_THRESHOLD) -> tuple[int, list[float]]:
    """Units whose mean code varies across inputs by more than the threshold."""
    var = unit_variance(mu)
    return int((var > threshold).sum()), var.tolist()


def probe_correct(f_train: np.ndarray, y_train: np.ndarray, f_test: np.ndarray, y_test: np.ndarray,
                  seed: int) -> np.ndarray | None:
    """Per test example: does a logistic regression on standardised features (a linear probe)
    predict its label? None with fewer than two classes."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if len(np.unique(y_train)) < 2:
        return None
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, random_state=seed))
    clf.fit(f_train, y_train)
    return clf.predict(f_test) == y_test


def probe_accuracy(f_train: np.ndarray, y_train: np.ndarray, f_test: np.ndarray, y_test: np.ndarray,
                   seed: int) -> float:
    correct = probe_correct(f_train, y_train, f_test, y_test, seed)
    return float("nan") if correct is None else float(correct.mean())


# --- sanity: a model worse than the trivial one is diverged, not a candidate ----------------------


def baseline(mean: np.ndarray, x: np.ndarray) -> dict[str, float]:
    """The trivial models: predict the training mean for every example. Their squared error,
    and the NLL of independent-pixel Bernoulli and isotropic Gaussian densities around it."""
    x = np.asarray(x, dtype=np.float64)
    errs = example_errors(x, np.broadcast_to(mean, x.shape))
    sse = float(errs["sse_per_image"].mean())
    var = sse / x.shape[1]
    gaussian = 0.5 * x.shape[1] * (math.log(2 * math.pi * var) + 1) if var > 0 else float("nan")
    return {"sse_per_image": sse, "bernoulli_nll_nats": float(errs["bce_nats"].mean()),
            "gaussian_nll_nats": gaussian, "input_dim": int(x.shape[1])}


def flag(means: dict[str, float], base: dict[str, float], likelihood: str, pca_sse: float | None = None) -> str | None:
    """Why a model's test values are absurd (diverged), or None for a sane model."""
    bad = [key for key, v in means.items() if v is None or not math.isfinite(v)]
    if bad:
        return f"non-finite {bad[0]}"
    sse, ref = means["sse_per_image"], base["sse_per_image"]
    if ref > 0 and sse > FAR * ref:
        pca = f"PCA at this size {pca_sse:.3g}, " if pca_sse is not None else ""
        return (f"far worse than trivial: squared error {sse:.3g} per example, over {FAR:g}x that of "
                f"predicting the training mean ({pca}mean {ref:.3g})")
    nll, trivial, dims = means.get("iwae_nll_nats"), base.get(f"{likelihood}_nll_nats"), base["input_dim"]
    if nll is not None and trivial is not None and math.isfinite(trivial) and nll - trivial > FAR_NATS_PER_DIM * dims:
        gap = nll - trivial
        return (f"far worse than trivial: NLL bound {nll:.4g} nats, {gap:.4g} nats ({gap / dims:.3g} per input "
                f"dimension, over {FAR_NATS_PER_DIM:g}) above the trivial {likelihood} model's {trivial:.4g} "
                "(independent inputs around the training mean)")
    return None


# --- one model on one split ---------------------------------------------------------------------


def probe_data(x_train: np.ndarray, y_train: np.ndarray | None, y: np.ndarray | None, max_train: int,
               seed: int) -> tuple | None:
    """The linear probes' data: at most max_train seeded training examples with their labels, and
    the labels of the split they are scored on; None without labels."""
    if y_train is None or y is None:
        return None
    keep = np.random.default_rng(seed).permutation(len(x_train))[:max_train]
    return x_train[keep], y_train[keep], y


@dataclass(frozen=True)
class Evaluator:
    """One split's per-example values of any model, its linear probe and its flag: the test stage
    (evaluate_size) and the search's validation pass (search/validation.py) both measure with it."""

    x: np.ndarray
    base: dict[str, float]  # baseline(training mean, x)
    samples: int  # K of the importance-weighted bound
    seed: int
    probe: tuple | None = None  # probe_data's

    def measure(self, model: AutoEncoder, probe: bool = True,
                pca_sse: float | None = None) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray | None, str | None]:
        """(per-example values, with probe_correct when probed; mu (n, k); a VAE's mean KL per unit;
        why the model is flagged as diverged, or None). pca_sse: PCA's at this size, for the flag's words."""
        mu = latents(model, self.x)
        values, per_unit = per_example(model, self.x, self.samples, self.seed)
        if probe and self.probe is not None:
            x_train, y_train, y = self.probe
            correct = probe_correct(latents(model, x_train), y_train, mu, y, self.seed)
            if correct is not None:
                values["probe_correct"] = correct
        means = {k: float(values[k].mean()) for k in ("sse_per_image", "distortion_nats", "iwae_nll_nats", "rate_nats")
                 if k in values}
        return values, mu, per_unit, flag(means, self.base, model.spec.likelihood, pca_sse)


def on_split(basis: pca_mod.PCABasis, x_train: np.ndarray, y_train: np.ndarray | None, x: np.ndarray,
             y: np.ndarray | None, cfg) -> Evaluator:
    """The evaluator of one split against the training split (basis: its PCA, whose mean is the
    trivial model's); cfg: the evaluate section (iwae_samples, probe_max_train, seed)."""
    probe = probe_data(x_train, y_train, y, cfg.probe_max_train, cfg.seed)
    return Evaluator(x, baseline(basis.mean, x), cfg.iwae_samples, cfg.seed, probe)


# --- the better code at each size -----------------------------------------------------------------


def code_choice(ae_sse: np.ndarray | None, pca_sse: np.ndarray, pca_exact: bool) -> CodeChoice:
    """The better code of one size on validation: the autoencoder (ae_sse: (models, n) squared
    errors of its pick and seed replicates; None when none finished) or PCA (pca_sse: (n,)), the
    best linear code of that size. An autoencoder worse than PCA by more than one standard error of
    the paired difference is undertrained (or overfit): its value says nothing about the size. Where
    PCA is exact (k >= its components), no autoencoder can match it and none is called undertrained."""
    out = CodeChoice("pca", float(pca_sse.mean()), pca_exact, undertrained=False)
    if ae_sse is None:
        return out
    diff = np.asarray(ae_sse, dtype=np.float64).mean(axis=0) - pca_sse
    se = float(diff.std(ddof=1) / math.sqrt(len(diff))) if len(diff) > 1 else 0.0
    return replace(out, code="ae" if diff.mean() < 0 else "pca", ae_val_sse_per_image=float(ae_sse.mean()),
                   diff_val_sse_per_image=float(diff.mean()), diff_se=se,
                   undertrained=bool(diff.mean() > se) and not pca_exact)


def val_sse(entries: list[KeptModel], models_dir: Path, x_val: np.ndarray) -> np.ndarray | None:
    """(models, n) validation squared errors of a size's pick and its seed replicates (rank 0)."""
    picks = [e for e in entries if e.rank == 0]
    if not picks:
        return None
    return np.stack([squared_errors(x_val, reconstructions(load_checkpoint(models_dir / e.file)[0], x_val))
                     for e in picks])


# --- the stage ----------------------------------------------------------------------------------


def model_means(model: AutoEncoder, meta: dict, entry: KeptModel, values: dict[str, np.ndarray], mu: np.ndarray,
                flag: str | None) -> ModelMeans:
    """One model's means and facts for evaluation.json; entry: the search's, flag: Evaluator.measure's."""
    means = {key: float(v.mean()) for key, v in values.items()}
    vae = model.spec.variational
    return ModelMeans(meta.get("seed"), meta.get("trial"), meta.get("study"), bool(meta.get("still_improving", False)),
                      **{key: v for key, v in means.items() if key != "probe_correct"},
                      probe_accuracy=means.get("probe_correct"),
                      neg_elbo_nats=means["distortion_nats"] + means["rate_nats"] if vae else None,
                      active_units=active_units(mu)[0] if vae else None, flag=flag, replicate=entry.replicate,
                      rank=entry.rank, objective=entry.objective)


def evaluate_size(entries: list[KeptModel], models_dir: Path, test: Evaluator,
                  pca_sse: float) -> tuple[ArmResult | None, dict[str, np.ndarray], list[str | None]]:
    """The models of one size and arm (the search's best first, then its replicates, then the
    size's other trials): the row's entry (the best model's values and flag; the best's and its
    replicates' in models, the other trials' in trials), stacked per-example arrays, flags."""
    if not entries:
        return None, {}, []
    means, arrays = [], {}
    for entry in entries:
        model, meta = load_checkpoint(models_dir / entry.file)
        values, mu, per_unit, why = test.measure(model, pca_sse=pca_sse)
        means.append(model_means(model, meta, entry, values, mu, why))
        for key, v in values.items():
            arrays.setdefault(key, []).append(v)
        if entry is entries[0]:  # the search's best; replicates follow it
            best, best_meta, best_mu, best_kl = model, meta, mu, per_unit
    pick = means[0]
    models, others = [m for m in means if m.rank == 0], [m for m in means if m.rank > 0]
    row = ArmResult(**{f.name: getattr(pick, f.name) for f in fields(Means)}, flag=pick.flag,
                    latent_dim=best.spec.latent_dim, n_params=n_params(best), beta=best_meta.get("beta"),
                    lr=best_meta.get("lr"), train_seconds=best_meta.get("seconds"), trial=best_meta.get("trial"),
                    study=best_meta.get("study"), epochs_run=best_meta.get("epochs_run"),
                    mse_per_pixel=pick.sse_per_image / test.x.shape[1], models=models, trials=others,
                    n_sane=sum(m.flag is None for m in models),
                    # trainings of this size (pick, replicates, other trials) stopped at the ceiling still improving
                    still_improving=sum(m.still_improving for m in means))
    if best.spec.variational:
        active, variance = active_units(best_mu)
        row = replace(row, active_units=active, mu_variance=variance, collapsed_units=best.spec.latent_dim - active,
                      kl_per_dim_nats=best_kl.tolist(), iwae_samples=test.samples)
    return row, {k: np.stack(v) for k, v in arrays.items()}, [m.flag for m in means]


def evaluate_pca(basis: pca_mod.PCABasis, x_test: np.ndarray, k: int, probe: tuple | None,
                 seed: int) -> tuple[PcaValues, dict[str, np.ndarray]]:
    values = example_errors(x_test, pca_mod.reconstruct(basis, x_test, k))
    out = PcaValues(**pca_mod.metrics_at(basis, x_test, k))
    if probe is not None:
        x_train, y_train, y_test = probe
        used = min(k, basis.n_components)
        correct = probe_correct(pca_mod.encode(basis, x_train, used), y_train, pca_mod.encode(basis, x_test, used),
                                y_test, seed)
        if correct is not None:
            values["probe_correct"] = correct
            out = replace(out, probe_accuracy=float(correct.mean()))
    return out, values


def run(sizes: list[SearchedSize], models: list[KeptModel], models_dir: Path, basis: pca_mod.PCABasis,
        test: Evaluator, x_val: np.ndarray, log=print) -> tuple[Evaluation, PerExample]:
    """Evaluate every searched size (sizes: the search's, with why each was searched) and every
    model (models: the search's list of checkpoints) on the test split (test: on_split's), and pick
    each size's better code (autoencoder or PCA) on the validation split x_val. Returns
    evaluation.json and per_example.npz."""
    x_test, probe, seed = test.x, test.probe, test.seed
    rows = []
    stacks: dict[str, dict[str, list]] = {arm: {} for arm in ("pca", *ARMS)}
    for size in sizes:
        k = size.latent_dim
        pca_row, pca_values = evaluate_pca(basis, x_test, k, probe, seed)
        _append(stacks["pca"], k, 0, 0, False, pca_values)
        arms, sane = {}, {}
        for arm in ARMS:
            entries = sorted((m for m in models if m.latent_dim == k and m.arm == arm),
                             key=lambda m: (m.rank, m.replicate))
            arms[arm], values, flags = evaluate_size(entries, models_dir, test, pca_row.sse_per_image)
            for i, entry in enumerate(entries):
                _append(stacks[arm], k, entry.rank, entry.replicate, flags[i] is not None,
                        {key: v[i] for key, v in values.items()})
            sane[arm] = [e for e, f in zip(entries, flags) if f is None]
        pca_val = squared_errors(x_val, pca_mod.reconstruct(basis, x_val, k))
        row = EvaluationRow(k, x_test.shape[1] / k, size.phase, size.reason, pca_row, **arms,
                            code=code_choice(val_sse(sane["ae"], models_dir, x_val), pca_val, k >= basis.n_components))
        rows.append(row)
        log(line(row))
    baseline_sse = squared_errors(x_test, np.broadcast_to(basis.mean, x_test.shape))
    per_example = PerExample({arm: ArmExamples(**{key: np.array(items) for key, items in stack.items()})
                              for arm, stack in stacks.items() if stack}, baseline_sse)
    return Evaluation(int(x_test.shape[1]), int(len(x_test)), probe is not None, test.base, rows), per_example


def _append(stack: dict[str, list], k: int, rank: int, replicate: int, flagged: bool,
            values: dict[str, np.ndarray]) -> None:
    for key, value in {"latent_dim": k, "rank": rank, "replicate": replicate, "flagged": flagged}.items():
        stack.setdefault(key, []).append(value)
    for key, v in values.items():
        stack.setdefault(key, []).append(np.asarray(v, dtype=np.float32))


def line(row: EvaluationRow) -> str:
    k, vae, ae, code = row.latent_dim, row.vae, row.ae, row.code
    added = " (added)" if row.phase == "added" else ""
    parts = [f"[evaluate] k={k:<4}{added} PCA sse {row.pca.sse_per_image:.3f}"]
    better = f", {code.code.upper()} the better code on validation" + (
        " (AE undertrained: worse than PCA by more than one SE)" if code.undertrained else
        " (PCA is exact at this size)" if code.pca_exact else "")
    parts.append(f"AE sse {ae.sse_per_image:.3f} {_count(ae)}{better}" if ae else f"AE missing{better}")
    parts.append(f"VAE sse {vae.sse_per_image:.3f} D {vae.distortion_nats:.2f} R {vae.rate_nats:.2f} "
                 f"IWAE {vae.iwae_nll_nats:.2f} AU {vae.active_units}/{k} {_count(vae)}" if vae else "VAE missing")
    flags = [f"{arm} {_name(m)}: {m.flag}" for arm in ARMS if row.arm(arm)
             for m in [*row.arm(arm).models, *row.arm(arm).trials] if m.flag]
    return " | ".join(parts) + "".join(f"\n[evaluate] k={k} FLAGGED {f}" for f in flags)


def _count(entry: ArmResult) -> str:
    return f"({len(entry.models)} models, {len(entry.trials)} other trials)"


def _name(model: ModelMeans) -> str:
    return f"other trial {model.trial}" if model.rank else f"replicate {model.replicate}"
