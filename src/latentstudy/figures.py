"""Figures (matplotlib, Agg backend, PNG). Each function draws one figure into a path."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def as_images(rows: np.ndarray, image_shape: list[int] | None) -> np.ndarray:
    """(n, D) -> (n, h, w) or (n, h, w, c) for imshow."""
    if image_shape is None:
        return rows
    if len(image_shape) == 2:
        return rows.reshape(len(rows), *image_shape)
    c, h, w = image_shape
    img = rows.reshape(len(rows), c, h, w).transpose(0, 2, 3, 1)
    return img[..., 0] if c == 1 else img


def image_grid(rows: list[np.ndarray], labels: list[str], image_shape: list[int] | None, path: Path,
               title: str | None = None) -> None:
    """One row of images per entry of rows (each (n, D) in [0, 1]); line plots for non-image data."""
    plt = _plt()
    n = max(len(r) for r in rows)
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
                    ax.set_ylim(-0.05, 1.05)
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
