"""A textbook single-model training loop, the yardstick for the stacked engine: nn.Module,
torch.optim.Adam and clip_grad_norm_, fed the data order and noise the engine documents
(train.derived_seed), with the same early-stopping rule. Nothing here is shared with the engine
but the model, its loss terms and the seed derivation."""

from __future__ import annotations

import math

import torch

from latentstudy import models, train
from latentstudy.config import TrainConfig


def data_orders(seed: int, n: int, epochs: int) -> list[torch.Tensor]:
    """The permutations a stack whose first member has this seed draws, epoch by epoch."""
    gen = torch.Generator().manual_seed(train.derived_seed(seed, train.DATA_ORDER))
    return [torch.randperm(n, generator=gen) for _ in range(epochs)]


def _rate(kl: torch.Tensor, free_bits: float) -> torch.Tensor:
    if free_bits > 0:
        return torch.clamp(kl.mean(0), min=free_bits).sum()
    return kl.sum(1).mean()


@torch.no_grad()
def _validate(model: models.AutoEncoder, x: torch.Tensor, seed: int) -> dict[str, float]:
    gen = torch.Generator().manual_seed(train.derived_seed(seed, train.VAL_NOISE))
    d = r = sse = 0.0
    for start in range(0, len(x), train.EVAL_CHUNK):
        xb = x[start : start + train.EVAL_CHUNK]
        mu, logvar = model.encode(xb)
        if logvar is None:
            out = model.decode(mu)
        else:
            eps = torch.randn(mu.shape, generator=gen, dtype=x.dtype)
            out = model.decode(mu + torch.exp(0.5 * logvar) * eps)
            r += float(models.kl_per_dim(mu, logvar).sum())
        d += float(model.distortion(xb, out).sum())
        sse += float((xb - models.reconstruct(model, xb)).pow(2).sum())
    n = len(x)
    return {"distortion": d / n, "rate": r / n, "neg_elbo": (d + r) / n, "sse": sse / n}


def reference_train(spec: models.NetSpec, x_train: torch.Tensor, x_val: torch.Tensor, cfg: TrainConfig, *,
                    seed: int, beta: float, lr: float, objective: str, orders: list[torch.Tensor],
                    chunk_rows: int = train.CHUNK_ROWS) -> tuple[list[dict], dict]:
    """Train one model alone on the given epoch orders; returns (per-epoch records, best state)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = models.build(spec).to(x_train.dtype)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    noise = torch.Generator().manual_seed(train.derived_seed(seed, train.NOISE))
    chunk_rows = max(1, chunk_rows // cfg.batch_size) * cfg.batch_size
    history, best_value, best_state, waited = [], math.inf, None, 0
    for epoch, perm in enumerate(orders[: cfg.ceiling]):
        b = train.beta_at(epoch, beta, cfg.kl_warmup_epochs) if spec.variational else 0.0
        total = torch.zeros(3, dtype=torch.float64)
        for start in range(0, len(perm), chunk_rows):
            chunk = perm[start : start + chunk_rows]
            eps_chunk = (torch.randn(len(chunk), spec.latent_dim, generator=noise, dtype=x_train.dtype)
                         if spec.variational else None)
            for i in range(0, len(chunk), cfg.batch_size):
                xb = x_train[chunk[i : i + cfg.batch_size]]
                mu, logvar = model.encode(xb)
                if logvar is None:
                    dist, rate, penalty = model.distortion(xb, model.decode(mu)).mean(), torch.zeros(()), 0.0
                else:
                    z = mu + torch.exp(0.5 * logvar) * eps_chunk[i : i + cfg.batch_size]
                    kl = models.kl_per_dim(mu, logvar)
                    dist, rate = model.distortion(xb, model.decode(z)).mean(), kl.sum(1).mean()
                    penalty = _rate(kl, cfg.free_bits)
                loss = dist + b * penalty
                opt.zero_grad()
                loss.backward()
                if cfg.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                opt.step()
                total += torch.stack([loss.detach(), dist.detach(), rate.detach()]).double() * len(xb)
        val = _validate(model, x_val, seed)
        loss_, dist_, rate_ = (total / len(perm)).tolist()
        history.append({"epoch": epoch + 1, "train_loss": loss_, "train_distortion": dist_, "train_rate": rate_,
                        **{f"val_{k}": v for k, v in val.items()}})
        if val[objective] < best_value:
            best_value, waited = val[objective], 0
            best_state = {k: v.clone() for k, v in model.state_dict().items()}
        elif epoch >= cfg.kl_warmup_epochs:
            waited += 1
            if waited >= cfg.patience:
                break
        if epoch + 1 >= cfg.epochs and waited >= cfg.late_patience:  # past the cap only while improving
            break
    return history, best_state
