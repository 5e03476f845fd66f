"""A kept model as users take it home: the fitted scaler, the encoder and the decoder in one object
that works on raw rows in the data's own units (LatentModel). latentstudy.load returns it, every
MLflow model of a study wraps it (latentstudy.mlflow_model), and `latentstudy export` writes it as
TorchScript beside its scaler.

Rows are (n, D) in the units of the data the study read: the columns of a table (constant ones
included), or an image's pixels flattened channel-first as image_shape says ((n, h, w) and
(n, c, h, w) arrays are flattened here). Codes are (n, k). Everything runs on the CPU, without
gradients.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from latentstudy import evaluate
from latentstudy.config import EvaluateConfig, StudyError
from latentstudy.contracts import Summary
from latentstudy.data import scaling
from latentstudy.models import AutoEncoder, best_path, load_checkpoint

DATA_FILE = "scaler.json"  # what a model carries of summary.json: the scaler and the data's shape
SCRIPT_FILE = "model.torchscript.pt"
IWAE_SAMPLES = EvaluateConfig().iwae_samples  # the report's K, unless evaluate.iwae_samples changed it


def carried(summary: Summary) -> dict:
    """What a model carries of the prepared data's summary.json: the fitted scaler and what the
    rows are. The one place a model reads the summary."""
    return {key: getattr(summary, key) for key in ("dataset", "source", "input_dim", "image_shape", "scaling")}


def chosen_file(models_dir: Path, purpose: str, k: int) -> Path:
    """The model file that answers a purpose at size k: the VAE for generation and representation,
    the autoencoder for reconstruction (also where PCA was the better code: the autoencoder starts
    as PCA)."""
    from latentstudy.recommend import PURPOSES

    return best_path(models_dir, k, PURPOSES[purpose].arm)


class LatentModel:
    """One trained model of the study with its data's scaler: encode, decode, sample and score raw rows.

    net: the trained VAE (arm "vae") or autoencoder ("ae"); data: carried(summary.json); about:
    the checkpoint's record (study, trial, beta, lr, seed, validation values) and its file.
    """

    def __init__(self, net: AutoEncoder, data: dict, about: dict | None = None):
        self.net = net.eval()
        self.data = data
        self.about = dict(about or {})

    @classmethod
    def from_files(cls, checkpoint: Path, data: dict) -> LatentModel:
        """The model in a checkpoint (models/search/k8-vae.pt) with carried(summary)."""
        net, meta = load_checkpoint(Path(checkpoint))
        return cls(net, data, {**meta, "file": Path(checkpoint).name})

    @property
    def latent_dim(self) -> int:
        return self.net.spec.latent_dim

    @property
    def arm(self) -> str:
        return "vae" if self.net.spec.variational else "ae"

    @property
    def input_dim(self) -> int:
        """Features of a raw row (the scaler's dropped constants included)."""
        return scaling.raw_width(self.data["scaling"], self.net.spec.input_dim)

    @property
    def image_shape(self) -> list[int] | None:
        """[h, w] or [c, h, w] of the images, None for vectors and tables."""
        return self.data.get("image_shape")

    def __repr__(self) -> str:
        return (f"LatentModel(k={self.latent_dim}, arm={self.arm!r}, dataset={self.data.get('dataset')!r}, "
                f"inputs={self.input_dim}, scaling={self.data['scaling']['method']!r})")

    # --- raw rows in and out ---------------------------------------------------------------------

    def prepare(self, x) -> np.ndarray:
        """Raw rows scaled as the study scaled its data (float32, (n, D) as the network sees them)."""
        rows = np.asarray(x, dtype=np.float64)
        rows = rows[None] if rows.ndim == 1 else rows.reshape(len(rows), -1)
        if rows.shape[1] != self.input_dim:
            raise StudyError(f"rows of {rows.shape[1]} features; this model takes {self.input_dim} "
                             f"(the raw rows of {self.data.get('source') or self.data.get('dataset')}, "
                             "flattened channel-first for images)")
        return scaling.apply(rows, self.data["scaling"])

    def encode(self, x) -> np.ndarray:
        """The code of each raw row: mu(x) for the VAE, z(x) for the autoencoder; (n, k)."""
        return evaluate.latents(self.net, self.prepare(x))

    @torch.no_grad()
    def encode_distribution(self, x) -> tuple[np.ndarray, np.ndarray]:
        """(mu, sigma) of q(z|x) for each raw row, each (n, k); the autoencoder's code is a point
        (sigma 0)."""
        xt = torch.as_tensor(self.prepare(x))
        parts = [self.net.encode(xt[i : i + evaluate.CHUNK]) for i in range(0, len(xt), evaluate.CHUNK)]
        mu = torch.cat([m for m, _ in parts]).numpy()
        if not self.net.spec.variational:
            return mu, np.zeros_like(mu)
        return mu, torch.cat([torch.exp(0.5 * logvar) for _, logvar in parts]).numpy()

    @torch.no_grad()
    def decode(self, z) -> np.ndarray:
        """E[x|z] of each code, in raw units (n, D): Bernoulli probabilities or Gaussian means, mapped
        back through the scaler."""
        zt = torch.as_tensor(np.asarray(z, dtype=np.float32)).reshape(-1, self.latent_dim)
        out = [self.net.mean(self.net.decode(zt[i : i + evaluate.CHUNK])) for i in range(0, len(zt), evaluate.CHUNK)]
        return scaling.unapply(torch.cat(out).numpy(), self.data["scaling"])

    def reconstruct(self, x) -> np.ndarray:
        """Each raw row encoded (z = mu(x)) and decoded, in raw units: the report's reconstructions."""
        return self.decode(self.encode(x))

    def sample(self, n: int, seed: int = 0) -> np.ndarray:
        """n new rows in raw units: z ~ N(0, I) decoded. A VAE's; an autoencoder has no prior."""
        self._need_vae("sample")
        z = torch.randn((n, self.latent_dim), generator=torch.Generator().manual_seed(seed))
        return self.decode(z.numpy())

    def log_likelihood(self, x, samples: int = IWAE_SAMPLES, seed: int = 0) -> np.ndarray:
        """The IWAE lower bound on log p(x) of each raw row with `samples` importance samples, in nats
        on the prepared scale (the report's NLL bound, negated; for standardised data a change of
        units shifts it by sum log sd). A VAE's."""
        self._need_vae("log_likelihood")
        values, _ = evaluate.vae_terms(self.net, self.prepare(x), samples, seed)
        return -values["iwae_nll_nats"]

    def _need_vae(self, what: str) -> None:
        if not self.net.spec.variational:
            raise StudyError(f"{what} needs a VAE; this is the autoencoder at k = {self.latent_dim}, which has no "
                             "prior or likelihood: load the generation answer, or arm='vae'")

    # --- files -----------------------------------------------------------------------------------

    def export(self, folder: Path) -> list[Path]:
        """TorchScript of the network (SCRIPT_FILE) and the scaler it needs (DATA_FILE) in folder.

        The TorchScript module works on prepared rows, as the network does: forward(x) gives mu(x),
        decode(z) gives E[x|z]; map raw rows onto prepared ones with the scaler's "scaling"
        (latentstudy.data.scaling.apply, or its formula in docs/models.md). Each file appears whole."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        spec = self.net.spec
        with warnings.catch_warnings():  # torch 2.13 deprecates TorchScript; libtorch (C++) still loads it
            warnings.simplefilter("ignore", DeprecationWarning)
            traced = torch.jit.trace_module(Portable(self.net), {"forward": torch.zeros(2, spec.input_dim),
                                                                  "decode": torch.zeros(2, spec.latent_dim)})
        script, data = folder / SCRIPT_FILE, folder / DATA_FILE
        traced.save(str(script.with_name(script.name + ".tmp")))
        data.with_name(data.name + ".tmp").write_text(json.dumps({**self.data, "model": self.about}, indent=2) + "\n")
        for path in (script, data):
            os.replace(path.with_name(path.name + ".tmp"), path)
        return [script, data]


class Portable(nn.Module):
    """The network alone, for TorchScript: forward(x) -> mu(x), decode(z) -> E[x|z], on prepared rows."""

    def __init__(self, net: AutoEncoder):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.encode(x)[0]

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.net.mean(self.net.decode(z))
