"""Figures (matplotlib, Agg backend, PNG). Each function draws one figure into a path."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from latentstudy.stats import SET_NAME


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def as_images(rows: np.ndarray, image_shape: list[int] | None) -> np.ndarray:
    """(n, D) channel-first rows -> (n, h, w) grey or (n, h, w, 3) colour images for imshow.

    RGBA is shown over white (as the report page shows it); other channel counts by their first channel.
    """
    if image_shape is None:
        return rows
    c, h, w = (1, *image_shape) if len(image_shape) == 2 else image_shape
    img = rows.reshape(len(rows), c, h, w).transpose(0, 2, 3, 1)
    if c == 3:
        return img
    if c == 4:
        alpha = np.clip(img[..., 3:], 0, 1)
        return alpha * np.clip(img[..., :3], 0, 1) + (1 - alpha)
    return img[..., 0]


def image_grid(rows: list[np.ndarray], labels: list[str], image_shape: list[int] | None, path: Path,
               title: str | None = None) -> None:
    """One row of images per entry of rows (each (n, D) in [0, 1]); line plots for non-image data,
    on [0, 1] widened to the rows' values (standardised data)."""
    plt = _plt()
    n = max(len(r) for r in rows)
    lo = min([0.0] + [float(r.min()) for r in rows if r.size])
    hi = max([1.0] + [float(r.max()) for r in rows if r.size])
    fig, axes = plt.subplots(len(rows), n, figsize=(1.1 * n + 1.2, 1.1 * len(rows) + (0.4 if title else 0)),
                             squeeze=False)
    for i, (row, label) in enumerate(zip(rows, labels)):
        imgs = as_images(np.clip(row, 0, 1), image_shape)
        for j in range(n):
            ax = axes[i, j]
            ax.set_xticks([])
            ax.set_yticks([])
            if j < len(row):
                if image_shape is None:
                    ax.plot(row[j], lw=0.8)
                    ax.set_ylim(lo - 0.05 * (hi - lo), hi + 0.05 * (hi - lo))
                else:
                    ax.imshow(imgs[j], cmap="gray", vmin=0, vmax=1, interpolation="nearest")
            else:
                ax.axis("off")
        axes[i, 0].set_ylabel(label, rotation=0, ha="right", va="center", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def reconstruction_strip(model, x: np.ndarray, image_shape: list[int] | None, path: Path) -> None:
    """Originals above their reconstructions (decoded from mu(x)) for one model."""
    import torch

    from latentstudy.models import reconstruct

    with torch.no_grad():
        recon = reconstruct(model, torch.as_tensor(x)).numpy()
    spec = model.spec
    image_grid([x, recon], ["input", f"k={spec.latent_dim}"], image_shape, path,
               f"{'VAE' if spec.variational else 'autoencoder'}, k={spec.latent_dim}: reconstructions from mu(x)")


def finished_vae(trials):
    """The search's finished (COMPLETE) VAE trials of trials.csv; seed replicates repeat a
    configuration, so they are left out of the per-size histories."""
    own = trials["phase"] != "replicate" if "phase" in trials else True
    return trials[(trials["arm"] == "vae") & (trials["state"] == "COMPLETE") & own]


def _by_size(done, draw) -> None:
    """Call draw(sub, colour, label) once per latent size, colours along viridis."""
    ks = sorted(done["latent_dim"].unique())
    cmap = _plt().get_cmap("viridis", max(len(ks), 2))
    for i, k in enumerate(ks):
        draw(done[done["latent_dim"] == k], cmap(i), f"k={k}")


def _save(fig, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    _plt().close(fig)


def _mark(ax, k: int | None) -> None:
    if k is not None:
        ax.axvline(k, color="0.35", ls="--", lw=1)
        ax.text(k, ax.get_ylim()[1], f" recommended k={k}", va="top", ha="left", fontsize=8, color="0.25")


def _log_k_axis(ax, ks: list[int]) -> None:
    ax.set_xscale("log", base=2)
    ax.set_xticks(ks)
    ax.set_xticklabels([str(k) for k in ks])
    ax.minorticks_off()
    ax.set_xlabel("latent size k")
    ax.grid(alpha=0.3)


def criterion_curves(panels: list[dict], added: list[int], path: Path) -> None:
    """The main figure: one panel per purpose, its criterion against k with 95% error bars.

    Each panel: {"title", "ylabel", "ks", "value", "low", "high", "chosen", "likely", and
    optionally "reference": (label, ks, values)}. Sizes the search added are hollow markers;
    the chosen k is a dashed line and the 90% set a shaded band.
    """
    plt = _plt()
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4.2), squeeze=False)
    for ax, p in zip(axes[0], panels):
        ks, value = np.array(p["ks"]), np.array(p["value"])
        err = np.vstack([value - np.array(p["low"]), np.array(p["high"]) - value])
        ax.errorbar(ks, value, yerr=err, fmt="-", color="tab:blue", ecolor="tab:blue", capsize=3, lw=1.3,
                    label="model (95% interval)")
        grid = ~np.isin(ks, added)
        ax.plot(ks[grid], value[grid], "o", color="tab:blue", ms=5)
        if (~grid).any():
            ax.plot(ks[~grid], value[~grid], "o", mfc="white", mec="tab:red", mew=1.5, ms=7,
                    label="added by the search")
        if p.get("reference"):
            label, rks, rvalues = p["reference"]
            ax.plot(rks, rvalues, "s--", color="0.5", ms=3, lw=1, label=label)
        lo, hi = min(p["likely"]), max(p["likely"])
        ax.axvspan(lo / 1.12, hi * 1.12, color="tab:green", alpha=0.12, label=f"{SET_NAME} of the rule")
        ax.axvline(p["chosen"], color="tab:green", ls="--", lw=1.2)
        ax.set_title(p["title"], fontsize=10)
        ax.set_ylabel(p["ylabel"])
        _log_k_axis(ax, sorted(set(p["ks"]) | set(p.get("reference", (None, [], []))[1])))
        ax.text(p["chosen"], 1.0, f" k={p['chosen']}", transform=ax.get_xaxis_transform(), va="top", ha="left",
                fontsize=8, color="darkgreen")
        ax.legend(fontsize=7)
    _save(fig, path)


def distortion_curves(table, recommended: int | None, path: Path) -> None:
    """Left: squared error per image for PCA, AE and VAE. Right: the VAE's D, R, D + R and IWAE bound."""
    plt = _plt()
    ks = table["latent_dim"].tolist()
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for col, label, style in (("pca_sse_per_image", "PCA", "s-"), ("ae_sse_per_image", "autoencoder", "^-"),
                              ("vae_sse_per_image", "VAE (z = mu)", "o-")):
        left.plot(ks, table[col], style, label=label)
    left.set_ylabel("squared error per test image")
    left.set_title("Reconstruction against compression")
    _log_k_axis(left, ks)
    left.legend()
    _mark(left, recommended)
    for col, label, style in (("vae_distortion_nats", "distortion D", "o-"), ("vae_rate_nats", "rate R", "v-"),
                              ("vae_neg_elbo_nats", "D + R (negative ELBO)", "D-"),
                              ("vae_iwae_nll_nats", "IWAE bound", "x--")):
        right.plot(ks, table[col], style, label=label)
    right.set_ylabel("nats per test example")
    right.set_title("VAE: distortion, rate and bounds")
    _log_k_axis(right, ks)
    right.legend(fontsize=8)
    _mark(right, recommended)
    _save(fig, path)


def pareto_front(points: np.ndarray) -> np.ndarray:
    """Points (rate, distortion) not dominated by another with lower-or-equal rate and distortion."""
    order = np.lexsort((points[:, 1], points[:, 0]))
    front, best = [], np.inf
    for i in order:
        if points[i, 1] < best:
            front.append(points[i])
            best = points[i, 1]
    return np.array(front)


def rate_distortion(trials, path: Path) -> None:
    """Every finished VAE trial in the rate-distortion plane (validation split), coloured by k."""
    plt = _plt()
    done = finished_vae(trials)
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    _by_size(done, lambda sub, colour, label: ax.scatter(
        sub["val_rate_nats"], sub["val_distortion_nats"], color=colour, label=label, s=28, edgecolor="white", lw=0.5))
    if len(done):
        front = pareto_front(done[["val_rate_nats", "val_distortion_nats"]].to_numpy(float))
        ax.step(front[:, 0], front[:, 1], where="post", color="crimson", lw=1.2, label="Pareto front")
    ax.set_xlabel("rate R (nats)")
    ax.set_ylabel("distortion D (nats)")
    ax.set_title("Rate-distortion plane: every finished VAE trial")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    _save(fig, path)


def active_units(table, path: Path) -> None:
    plt = _plt()
    ks = table["latent_dim"].tolist()
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(ks, ks, color="0.6", ls=":", label="all units active (AU = k)")
    ax.plot(ks, table["vae_active_units"], "o-", label="active units of the best VAE")
    ax.set_yscale("log", base=2)
    ax.set_ylabel("active units")
    ax.set_title("Active units against latent size")
    _log_k_axis(ax, ks)
    ax.legend()
    _save(fig, path)


def latent_scatter(codes: dict[str, np.ndarray], labels: np.ndarray | None, path: Path) -> None:
    """2-D codes side by side (e.g. autoencoder and VAE), coloured by label."""
    plt = _plt()
    fig, axes = plt.subplots(1, len(codes), figsize=(5 * len(codes), 4.6), squeeze=False)
    for ax, (name, z) in zip(axes[0], codes.items()):
        colour = {"c": labels, "cmap": "tab10"} if labels is not None else {"color": "tab:blue"}
        points = ax.scatter(z[:, 0], z[:, 1], s=6, **colour)
        if name.lower().startswith("vae"):
            ax.add_patch(plt.Circle((0, 0), 1.0, fill=False, color="0.4", ls="--", lw=1))
        ax.set_title(name)
        ax.set_aspect("equal", adjustable="datalim")
        ax.grid(alpha=0.3)
    if labels is not None:
        fig.colorbar(points, ax=axes[0].tolist(), label="label", shrink=0.8)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def optimisation_history(trials, path: Path) -> None:
    """Objective of each finished VAE trial in order, per latent size, with the best so far."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 4.2))

    def draw(sub, colour, label):
        ax.plot(sub["number"], sub["objective_value"], "o", color=colour, ms=4, alpha=0.6)
        ax.step(sub["number"], sub["objective_value"].cummin(), where="post", color=colour, label=label)

    _by_size(finished_vae(trials).sort_values("number"), draw)
    ax.set_xlabel("trial number (within its latent size)")
    ax.set_ylabel("validation objective")
    ax.set_title("Optuna optimisation history (line: best so far)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    _save(fig, path)


def param_importances(importances: dict[int, dict[str, float]], path: Path) -> None:
    """fANOVA importances of beta and lr per latent size (grouped bars)."""
    plt = _plt()
    ks = sorted(importances)
    names = sorted({n for imp in importances.values() for n in imp})
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    width = 0.8 / max(len(names), 1)
    for j, name in enumerate(names):
        ax.bar([i + j * width for i in range(len(ks))], [importances[k].get(name, 0.0) for k in ks], width,
               label=name)
    ax.set_xticks([i + width * (len(names) - 1) / 2 for i in range(len(ks))])
    ax.set_xticklabels([f"k={k}" for k in ks])
    ax.set_ylabel("importance (fANOVA)")
    ax.set_ylim(0, 1)
    ax.set_title("Which hyperparameter mattered, per latent size")
    ax.legend()
    ax.grid(alpha=0.3, axis="y")
    _save(fig, path)
