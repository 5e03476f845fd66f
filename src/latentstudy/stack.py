"""S models of one NetSpec as one network: every parameter gains a leading member dimension.

Member s's parameters are row s of one (S, P) buffer, P being one AutoEncoder's parameter count,
in the order of the AutoEncoder's state_dict; Linear weights are kept transposed, (in, out), so
that batched matmuls read them and produce their gradients without copies. The layers' weights are views into that buffer and
backward() gathers their gradients into a twin buffer, so the optimiser, gradient clipping, NaN
masks and best-state snapshots each work on whole rows in a few large operations. A member loads from and
exports to an ordinary AutoEncoder state_dict (models.save_checkpoint then works unchanged).

MLP layers run as batched matmuls (baddbmm) on (S, batch, features). Conv layers run on
(batch, S x channels, h, w): the first as one plain convolution whose output channels are every
member's (its input is shared), the others as grouped convolutions with S groups.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from latentstudy.models import AutoEncoder, NetSpec, distortion, kl_per_dim


@dataclass
class StackTerms:
    """Per-member, per-example loss terms of one forward pass."""

    distortion: torch.Tensor  # (S, n) nats
    kl: torch.Tensor | None  # (S, n, k) nats per unit, None for autoencoders
    mu: torch.Tensor  # (S, n, k) the latent code


class Stack:
    """The parameters of S members of one spec, and the stacked forward pass."""

    def __init__(self, spec: NetSpec, size: int, device: torch.device | str = "cpu",
                 dtype: torch.dtype = torch.float32):
        self.spec = spec
        with torch.device("meta"):  # shapes and layer settings only: no memory, no random draws
            self.template = AutoEncoder(spec)
        names = {id(p): name for name, p in self.template.named_parameters()}
        transposed = {names[id(m.weight)] for m in self.template.modules() if isinstance(m, nn.Linear)}
        self.layout: list[tuple[str, torch.Size, int, bool]] = []  # (name, stored shape, offset, transposed)
        offset = 0
        for name, p in self.template.named_parameters():
            flip = name in transposed
            self.layout.append((name, p.shape[::-1] if flip else p.shape, offset, flip))
            offset += p.numel()
        self.n_params = offset
        self._names = names
        self.params = torch.zeros(size, offset, device=device, dtype=dtype)
        self.grads = torch.zeros_like(self.params)
        self._bind()

    @property
    def size(self) -> int:
        return self.params.shape[0]

    def _bind(self) -> None:
        """Each parameter as a leaf view into the row buffer: updating the rows updates the layers."""
        self.p: dict[str, torch.Tensor] = {}
        for name, shape, offset, _ in self.layout:
            n = math.prod(shape)
            self.p[name] = self.params[:, offset : offset + n].view(self.size, *shape).requires_grad_()

    def backward(self, loss: torch.Tensor) -> torch.Tensor:
        """The gradient of loss (a sum over members) as rows, in self.grads."""
        grads = torch.autograd.grad(loss, list(self.p.values()))
        return torch.cat([g.reshape(self.size, -1) for g in grads], dim=1, out=self.grads)

    def keep(self, rows: list[int]) -> None:
        """Shrink to the given members (in this order)."""
        index = torch.tensor(rows, device=self.params.device, dtype=torch.long)
        self.params = self.params.index_select(0, index)
        self.grads = torch.zeros_like(self.params)
        self._bind()

    # --- members in and out ----------------------------------------------------------------

    def load(self, row: int, state_dict: dict[str, torch.Tensor]) -> None:
        parts = [(state_dict[name].t() if flip else state_dict[name]).reshape(-1) for name, _, _, flip in self.layout]
        with torch.no_grad():
            self.params[row].copy_(torch.cat(parts))

    def state_dict(self, row: int, source: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Member row as an AutoEncoder state_dict (CPU copies); source: another (S, P) buffer
        of the same layout, such as the best-state snapshot."""
        flat = (self.params if source is None else source)[row].detach().cpu()
        out = {}
        for name, shape, offset, flip in self.layout:
            value = flat[offset : offset + math.prod(shape)].view(shape)
            out[name] = (value.t() if flip else value).clone(memory_format=torch.contiguous_format)
        return out

    # --- the forward pass --------------------------------------------------------------------

    def _w(self, module: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
        return self.p[self._names[id(module.weight)]], self.p[self._names[id(module.bias)]]

    def _linear(self, module: nn.Linear, h: torch.Tensor) -> torch.Tensor:
        w, b = self._w(module)
        if h.dim() == 2:  # the data itself: one input shared by every member
            h = h.expand(self.size, *h.shape)
        return torch.baddbmm(b.unsqueeze(1), h, w)

    def _mlp(self, body: nn.Module, h: torch.Tensor) -> torch.Tensor:
        linears = [m for m in body.modules() if isinstance(m, nn.Linear)]
        for i, module in enumerate(linears):
            h = self._linear(module, h)
            if i < len(linears) - 1:
                h = F.relu(h)
        return h

    def _conv_encoder(self, x: torch.Tensor) -> torch.Tensor:
        enc, S = self.template.encoder, self.size
        h = x.view(len(x), *enc.image_shape)
        for i, conv in enumerate(enc.convs):
            w, b = self._w(conv)
            h = F.conv2d(h, w.reshape(-1, *w.shape[2:]), b.reshape(-1), conv.stride, conv.padding,
                         groups=1 if i == 0 else S)
            h = F.relu(h)
        n, channels, hh, ww = h.shape
        h = h.view(n, S, channels // S * hh * ww).transpose(0, 1)  # (S, n, features)
        return self._linear(enc.head, h)

    def _conv_decoder(self, z: torch.Tensor) -> torch.Tensor:
        dec, S = self.template.decoder, self.size
        h = F.relu(self._linear(dec.head, z))  # (S, n, c * h * w)
        n = h.shape[1]
        c, hh, ww = dec.start
        h = h.view(S, n, c, hh, ww).transpose(0, 1).reshape(n, S * c, hh, ww)
        for i, deconv in enumerate(dec.deconvs):
            w, b = self._w(deconv)
            h = F.conv_transpose2d(h, w.reshape(-1, *w.shape[2:]), b.reshape(-1), deconv.stride, deconv.padding,
                                   deconv.output_padding, groups=S)
            if i < len(dec.deconvs) - 1:
                h = F.relu(h)
        return h.view(n, S, -1).transpose(0, 1)  # (S, n, D)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(mu, log sigma^2) per member, each (S, n, k); for autoencoders (z, None)."""
        h = self._conv_encoder(x) if self.spec.arch == "conv" else self._mlp(self.template.encoder, x)
        if not self.spec.variational:
            return (h + self._linear(self.template.pca_encoder, x) if self.spec.pca_path else h), None
        mu, logvar = h.chunk(2, dim=-1)
        return mu, logvar

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Decoder outputs (S, n, D): Bernoulli logits or Gaussian means."""
        out = self._conv_decoder(z) if self.spec.arch == "conv" else self._mlp(self.template.decoder, z)
        return out + self._linear(self.template.pca_decoder, z) if self.spec.pca_path else out

    def _distortion(self, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        if self.spec.likelihood != "gaussian":
            return distortion(self.spec.likelihood, x, out, None)
        # as AutoEncoder.log_scale, against out's (S, n, D): (S, 1, 1) shared, (S, 1, D) per feature
        log_sigma = self.p["log_sigma"].view(self.size, 1, 1)
        if "log_sigma_offset" in self.p:
            log_sigma = log_sigma + self.p["log_sigma_offset"].unsqueeze(1)
        return distortion(self.spec.likelihood, x, out, log_sigma)

    def terms(self, x: torch.Tensor, eps: torch.Tensor | None) -> StackTerms:
        """Encode the shared batch x (n, D), sample z = mu + sigma * eps (eps: (S, n, k), VAE only),
        decode: every member's loss terms."""
        mu, logvar = self.encode(x)
        if logvar is None:
            return StackTerms(self._distortion(x, self.decode(mu)), None, mu)
        z = mu + torch.exp(0.5 * logvar) * eps
        return StackTerms(self._distortion(x, self.decode(z)), kl_per_dim(mu, logvar), mu)

    def squared_error(self, x: torch.Tensor, mu: torch.Tensor) -> torch.Tensor:
        """Summed squared error per example (S, n) of the reconstruction decoded from z = mu."""
        return (x - self.template.mean(self.decode(mu).to(x.dtype))).pow(2).sum(-1)
