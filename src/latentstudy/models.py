"""Encoders, decoders, the VAE and the plain autoencoder, and their loss terms (all in nats).

Read top to bottom: the spec that rebuilds a model, the MLP and conv bodies, the model,
the per-example loss terms, and checkpoints. The decoder output always has the input's
dimension D; the latent size k is free (k > D is allowed).
"""

from __future__ import annotations

import io
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from latentstudy.config import StudyError, first_line, store_fault

LOG_2PI = math.log(2 * math.pi)


@dataclass(frozen=True)
class NetSpec:
    """Everything needed to rebuild a model; stored next to its weights."""

    input_dim: int
    latent_dim: int
    arch: Literal["mlp", "conv"]
    likelihood: Literal["bernoulli", "gaussian"]
    variational: bool  # VAE (True) or deterministic autoencoder (False)
    hidden: tuple[int, ...] = (256, 128)
    channels: tuple[int, ...] = (32, 64)
    image_shape: tuple[int, ...] | None = None  # (channels, height, width) for conv
    # The Gaussian decoder's learned log sigma: one for every feature, or one per feature (the shared one
    # plus a per-feature offset). shared is what checkpoints written before this field held; the study's
    # default is search.model.gaussian_scale.
    scale: Literal["shared", "per_feature"] = "shared"
    # Autoencoder only: a linear path x -> z -> x_hat beside the nonlinear body, started at PCA
    # (start_at_pca), so that at every size the model starts at the best linear code of its size.
    pca_path: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "hidden", tuple(self.hidden))
        object.__setattr__(self, "channels", tuple(self.channels))
        if self.image_shape is not None:
            object.__setattr__(self, "image_shape", tuple(self.image_shape))
        if self.pca_path and (self.variational or self.likelihood != "gaussian"):
            raise ValueError("a PCA path needs a deterministic autoencoder with a Gaussian (identity-mean) decoder")


def chw(image_shape: list[int] | tuple[int, ...] | None) -> tuple[int, int, int] | None:
    """[h, w] or [c, h, w] as (c, h, w)."""
    if image_shape is None:
        return None
    return (1, *image_shape) if len(image_shape) == 2 else tuple(image_shape)


# auto picks conv only where its stride-2 layers leave at least this many pixels a side: on smaller
# images a convolution sees little more than a dense layer does. On the 8 x 8 digits an MLP VAE
# matched the conv net's validation NLL (23.7 nats) and its grid phase ran 5x faster on CPU (docs/engine.md).
CONV_MIN_SIDE = 4


def choose_arch(arch: str, image_shape: list[int] | None, conv_layers: int) -> Literal["mlp", "conv"]:
    """search.model.arch resolved: auto is conv for images that stay at least CONV_MIN_SIDE pixels a
    side after conv_layers halvings (16 x 16 and up with two layers), else mlp."""
    if arch == "auto":
        shape = chw(image_shape)
        return "conv" if shape is not None and min(shape[1:]) >> conv_layers >= CONV_MIN_SIDE else "mlp"
    if arch == "conv" and image_shape is None:
        raise StudyError("search.model.arch = conv but the data has no image shape; allowed: mlp or auto "
                         "(or set data.image_shape)")
    return arch


def choose_likelihood(likelihood: str, image_shape: list[int] | None,
                      unit_interval: bool = True) -> tuple[Literal["bernoulli", "gaussian"], str]:
    """The decoder's likelihood, and why: `auto` is Gaussian for colour images and for data outside
    [0, 1] (unit_interval False: standardised, see data.scaling.in_unit_interval), else Bernoulli.
    Bernoulli on data outside [0, 1] is refused: its likelihood is not defined there."""
    if likelihood == "bernoulli" and not unit_interval:
        raise StudyError("search.model.likelihood = bernoulli but the prepared data is not in [0, 1] (data.scaling "
                         "standard); allowed: gaussian or auto, or data.scaling minmax | minmax_global")
    if likelihood != "auto":
        return likelihood, "set in search.model.likelihood"
    if not unit_interval:
        return "gaussian", ("search.model.likelihood auto chose it for data standardised per feature (real values, "
                            "not in [0, 1]), which a Gaussian with a learned scale models")
    if image_shape is not None and chw(image_shape)[0] > 1:
        return "gaussian", ("search.model.likelihood auto chose it for colour images: natural images' pixel "
                            "intensities are continuous, which a Gaussian with a learned scale models")
    return "bernoulli", ("search.model.likelihood auto chose it for grey-scale or vector data in [0, 1], "
                         "read as the probability of each input being on")


# --- bodies -----------------------------------------------------------------------------------


def mlp(sizes: list[int]) -> nn.Sequential:
    """Linear layers with ReLU between them (none after the last)."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def conv_sizes(image_shape: tuple[int, int, int], layers: int) -> list[tuple[int, int]]:
    """Spatial size before each stride-2 conv and after the last: 28 -> 14 -> 7, 8 -> 4 -> 2."""
    _, h, w = image_shape
    sizes = [(h, w)]
    for _ in range(layers):
        h, w = h // 2, w // 2
        if h < 1 or w < 1:
            raise StudyError(
                f"search.model.channels has {layers} conv layers but a {image_shape[1]}x{image_shape[2]} "
                f"image halves to nothing; allowed: at most {len(sizes) - 1} layers for this image size"
            )
        sizes.append((h, w))
    return sizes


class ConvEncoder(nn.Module):
    def __init__(self, image_shape: tuple[int, int, int], channels: tuple[int, ...], out_dim: int):
        super().__init__()
        self.image_shape = image_shape
        sizes = conv_sizes(image_shape, len(channels))
        ins = (image_shape[0], *channels[:-1])
        self.convs = nn.ModuleList(nn.Conv2d(a, b, 4, stride=2, padding=1) for a, b in zip(ins, channels))
        self.head = nn.Linear(channels[-1] * sizes[-1][0] * sizes[-1][1], out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.view(-1, *self.image_shape)  # -1, not len(x): a TorchScript trace keeps the batch free
        for conv in self.convs:
            h = F.relu(conv(h))
        return self.head(h.flatten(1))


class ConvDecoder(nn.Module):
    def __init__(self, image_shape: tuple[int, int, int], channels: tuple[int, ...], latent_dim: int):
        super().__init__()
        self.sizes = conv_sizes(image_shape, len(channels))
        self.start = (channels[-1], *self.sizes[-1])
        self.head = nn.Linear(latent_dim, channels[-1] * self.sizes[-1][0] * self.sizes[-1][1])
        outs = (image_shape[0], *channels[:-1])
        self.deconvs = nn.ModuleList()
        # Walk back up the encoder's sizes; output_padding restores odd sizes (7 -> 14 -> 28, 3 -> 7).
        for i in reversed(range(len(channels))):
            (th, tw), (sh, sw) = self.sizes[i], self.sizes[i + 1]
            self.deconvs.append(nn.ConvTranspose2d(channels[i], outs[i], 4, stride=2, padding=1,
                                                   output_padding=(th - 2 * sh, tw - 2 * sw)))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.head(z)).view(-1, *self.start)
        for i, deconv in enumerate(self.deconvs):
            h = deconv(h)
            if i < len(self.deconvs) - 1:
                h = F.relu(h)
        return h.flatten(1)


# --- the model --------------------------------------------------------------------------------


class AutoEncoder(nn.Module):
    """A VAE (diagonal-Gaussian q(z|x)) when spec.variational, else a deterministic autoencoder.

    The encoder emits mu and log sigma^2 (VAE) or z itself (AE). The decoder emits Bernoulli
    logits or Gaussian means; the Gaussian's scale is learned: one log sigma (spec.scale shared)
    or one per output feature (per_feature).
    """

    def __init__(self, spec: NetSpec):
        super().__init__()
        self.spec = spec
        enc_out = 2 * spec.latent_dim if spec.variational else spec.latent_dim
        if spec.arch == "conv":
            shape = chw(spec.image_shape)
            self.encoder = ConvEncoder(shape, spec.channels, enc_out)
            self.decoder = ConvDecoder(shape, spec.channels, spec.latent_dim)
        else:
            self.encoder = mlp([spec.input_dim, *spec.hidden, enc_out])
            self.decoder = nn.Sequential(nn.Linear(spec.latent_dim, spec.hidden[-1]), nn.ReLU(),
                                         mlp([*reversed(spec.hidden), spec.input_dim]))
        if spec.likelihood == "gaussian":
            self.log_sigma = nn.Parameter(torch.zeros(()))
            if spec.scale == "per_feature":
                # Feature d's log sigma is the shared one plus its own offset: the shared part gets every
                # feature's gradient and falls as fast as a shared scale does. One (D,) vector alone
                # lagged far behind on colour patches (benchmarks/gaussian_scale.py).
                self.log_sigma_offset = nn.Parameter(torch.zeros(spec.input_dim))
        if spec.pca_path:
            self.pca_encoder = nn.Linear(spec.input_dim, spec.latent_dim)
            self.pca_decoder = nn.Linear(spec.latent_dim, spec.input_dim)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(mu, log sigma^2) of q(z|x); for the autoencoder (z, None)."""
        h = self.encoder(x)
        if not self.spec.variational:
            return (h + self.pca_encoder(x) if self.spec.pca_path else h), None
        mu, logvar = h.chunk(2, dim=1)
        return mu, logvar

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Decoder output: Bernoulli logits or Gaussian means, shape (n, D)."""
        out = self.decoder(z)
        return out + self.pca_decoder(z) if self.spec.pca_path else out

    def mean(self, out: torch.Tensor) -> torch.Tensor:
        """The reconstruction in data space: E[x|z]."""
        return torch.sigmoid(out) if self.spec.likelihood == "bernoulli" else out

    def distortion(self, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """-log p(x|z) per example, in nats, summed over the D outputs."""
        return distortion(self.spec.likelihood, x, out, self.log_scale())

    def log_scale(self) -> torch.Tensor | None:
        """The Gaussian decoder's log sigma: () shared, (D,) per feature; None for Bernoulli."""
        if self.spec.likelihood != "gaussian":
            return None
        offset = getattr(self, "log_sigma_offset", None)
        return self.log_sigma if offset is None else self.log_sigma + offset


def distortion(likelihood: str, x: torch.Tensor, out: torch.Tensor, log_sigma: torch.Tensor | None) -> torch.Tensor:
    """-log p(x|z) in nats, summed over the last (D) dimension. out may carry leading dimensions
    that x lacks (a stack's members). log_sigma broadcasts against out: () or (D,) for one model,
    shared or per feature; (S, 1, 1) or (S, 1, D) for a stack of S. out is cast to x's dtype: bf16
    autocast outputs are scored in full precision."""
    out = out.to(x.dtype)
    if likelihood == "bernoulli":
        return F.binary_cross_entropy_with_logits(out, x.expand_as(out), reduction="none").sum(-1)
    per_feature = 0.5 * (x - out) ** 2 * torch.exp(-2 * log_sigma) + log_sigma
    return per_feature.sum(-1) + 0.5 * x.shape[-1] * LOG_2PI


def last_layers(model: AutoEncoder) -> list[str]:
    """The state_dict prefixes of the encoder's and the decoder's last weighted layer."""
    weighted = (nn.Linear, nn.Conv2d, nn.ConvTranspose2d)
    return [f"{part}.{[n for n, m in getattr(model, part).named_modules() if isinstance(m, weighted)][-1]}"
            for part in ("encoder", "decoder")]


def start_at_pca(state: dict[str, torch.Tensor], spec: NetSpec, mean: np.ndarray,
                 components: np.ndarray) -> dict[str, torch.Tensor]:
    """An autoencoder's initial weights (state, e.g. train.initial_state's) changed so that it is
    exactly PCA with the top k components (rows of `components`, (r, D)) around `mean`: the linear
    path encodes z = V (x - mean) and decodes mean + V^T z, and the nonlinear body's last layers
    start at zero, so it adds nothing until training finds something better than the linear code.
    Code units past PCA's r components start unused (zero rows)."""
    with torch.device("meta"):
        template = build(spec)
    k, r = spec.latent_dim, min(spec.latent_dim, len(components))
    dtype = state["pca_encoder.weight"].dtype
    v = torch.zeros(k, spec.input_dim, dtype=torch.float64)
    v[:r] = torch.as_tensor(np.asarray(components[:r], dtype=np.float64))
    m = torch.as_tensor(np.asarray(mean, dtype=np.float64))
    out = dict(state)
    out.update({"pca_encoder.weight": v, "pca_encoder.bias": -(v @ m), "pca_decoder.weight": v.T.contiguous(),
                "pca_decoder.bias": m})
    for prefix in last_layers(template):
        for name in (f"{prefix}.weight", f"{prefix}.bias"):
            out[name] = torch.zeros_like(state[name])
    return {name: value.to(dtype) for name, value in out.items()}


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def kl_per_dim(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, sigma^2) || N(0, 1)) for each example and latent unit, closed form (nats)."""
    return 0.5 * (mu.pow(2) + logvar.exp() - logvar - 1)


def reparameterise(mu: torch.Tensor, logvar: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    eps = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
    return mu + torch.exp(0.5 * logvar) * eps


@dataclass
class Terms:
    """Per-example loss terms of one forward pass."""

    distortion: torch.Tensor  # (n,) nats
    kl: torch.Tensor | None  # (n, k) nats per unit, None for the autoencoder
    mu: torch.Tensor  # (n, k) the latent code: mu(x), or z for the autoencoder

    @property
    def rate(self) -> torch.Tensor:
        return self.kl.sum(1) if self.kl is not None else torch.zeros_like(self.distortion)


def forward(model: AutoEncoder, x: torch.Tensor, generator: torch.Generator | None) -> Terms:
    """Encode, sample z = mu + sigma * eps (VAE only) and decode: the terms of the loss."""
    mu, logvar = model.encode(x)
    if logvar is None:
        return Terms(model.distortion(x, model.decode(mu)), None, mu)
    z = reparameterise(mu, logvar, generator)
    return Terms(model.distortion(x, model.decode(z)), kl_per_dim(mu, logvar), mu)


def reconstruct(model: AutoEncoder, x: torch.Tensor) -> torch.Tensor:
    """The reconstruction used for squared errors: decode z = mu(x), no sampling."""
    mu, _ = model.encode(x)
    return model.mean(model.decode(mu))


# --- checkpoints ------------------------------------------------------------------------------


def build(spec: NetSpec) -> AutoEncoder:
    return AutoEncoder(spec)


def best_path(models_dir: Path, latent_dim: int, arm: str) -> Path:
    """Where the search stage keeps its best model of one latent size and arm ("vae" or "ae")."""
    return Path(models_dir) / f"k{latent_dim}-{arm}.pt"


def save_checkpoint(path: Path, model: AutoEncoder, meta: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")  # two runs may write one trial's file at once
    blob = io.BytesIO()  # written by Python, not torch's C++ writer: a full disk keeps its errno
    torch.save({"spec": asdict(model.spec), "state_dict": state, "meta": meta}, blob)
    try:
        tmp.write_bytes(blob.getvalue())
        tmp.replace(path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        fault = store_fault(path, exc)
        if fault is None:
            raise
        raise fault from None


class DamagedCheckpoint(StudyError):
    """A checkpoint file that is there but does not load (truncated, overwritten, another format)."""

    def __init__(self, path: Path, why: str):
        super().__init__(f"{path}: not a readable checkpoint ({why}); restore it with `dvc checkout --force "
                         f"{Path(path).parent}`, or write it again from the search's store with "
                         "`dvc repro -f -s search`")
        self.why = why


def load_checkpoint(path: Path, device: str | torch.device = "cpu") -> tuple[AutoEncoder, dict]:
    """(the model in eval mode, its meta). A damaged file names itself and the commands that give
    a kept model back: the DVC cache's copy, or the search stage, which writes it from its store."""
    try:
        blob = torch.load(path, map_location=device, weights_only=True)
        model = AutoEncoder(NetSpec(**blob["spec"]))
        model.load_state_dict(blob["state_dict"])
        meta = blob["meta"]
    except FileNotFoundError:
        raise StudyError(f"{path}: checkpoint not found; run the search stage first (dvc repro)") from None
    # A damaged file fails anywhere from the zip reader to the unpickler to the state dict.
    except Exception as exc:  # noqa: BLE001
        raise DamagedCheckpoint(path, first_line(exc)) from None
    return model.to(device).eval(), meta

