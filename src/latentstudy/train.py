"""The training engine: whole splits resident on the device, Adam, early stopping, seeded.

No DataLoader: each epoch draws one permutation on the device and slices batches from it.
Epoch sums stay on the device; the host reads them once per epoch (the NaN check and the
history), so a CUDA step never waits on the host.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from latentstudy.config import TrainConfig
from latentstudy.models import AutoEncoder, forward, reconstruct

OBJECTIVES = ("neg_elbo", "distortion", "sse")
EVAL_CHUNK = 4096


class NonFiniteLoss(RuntimeError):
    """The loss became NaN or inf: the trial fails with this reason."""


@dataclass
class TrainResult:
    history: list[dict]  # one record per epoch
    best_epoch: int
    best: dict  # validation metrics at the best epoch
    seconds: float
    state_dict: dict = field(repr=False)

    @property
    def epochs_run(self) -> int:
        return len(self.history)


def beta_at(epoch: int, beta: float, warmup_epochs: int) -> float:
    """KL warm-up: beta ramps linearly from 0 over the first warmup_epochs epochs."""
    if warmup_epochs <= 0:
        return beta
    return beta * min(1.0, epoch / warmup_epochs)


def rate_penalty(kl: torch.Tensor, free_bits: float) -> torch.Tensor:
    """Mean rate over the batch; with free bits each unit's batch-mean KL is floored at lambda nats."""
    if free_bits > 0:
        return torch.clamp(kl.mean(0), min=free_bits).sum()
    return kl.sum(1).mean()


@torch.no_grad()
def measure(model: AutoEncoder, x: torch.Tensor, seed: int) -> dict[str, float]:
    """Validation metrics (nats per example): distortion, rate, D + R at beta = 1, squared error.

    The same seed draws the same eps every epoch, so epochs are compared on equal noise.
    """
    model.eval()
    gen = torch.Generator(device=x.device).manual_seed(seed)
    sums = torch.zeros(3, device=x.device, dtype=torch.float64)
    for start in range(0, len(x), EVAL_CHUNK):
        xb = x[start : start + EVAL_CHUNK]
        terms = forward(model, xb, gen)
        sq = (xb - reconstruct(model, xb)).pow(2).sum(1)
        sums += torch.stack([terms.distortion.sum(), terms.rate.sum(), sq.sum()]).double()
    model.train()
    d, r, sse = (sums / len(x)).tolist()
    return {"distortion": d, "rate": r, "neg_elbo": d + r, "sse": sse, "mse": sse / x.shape[1]}


def train(
    model: AutoEncoder,
    x_train: torch.Tensor,
    x_val: torch.Tensor,
    cfg: TrainConfig,
    *,
    beta: float,
    lr: float,
    objective: str,
    seed: int,
    on_epoch: Callable[[int, dict], None] | None = None,
) -> TrainResult:
    """Train until cfg.epochs or until the validation objective stops improving for cfg.patience.

    on_epoch(epoch, record) sees every epoch's record (pruning, logging, progress); it may raise
    to stop the trial. Returns the best epoch's weights and metrics.
    """
    device = x_train.device
    gen = torch.Generator(device=device).manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    use_bf16 = cfg.bf16 and device.type == "cuda"
    n = len(x_train)
    history: list[dict] = []
    best_value, best_epoch, best_state, best_metrics, waited = float("inf"), -1, None, {}, 0
    start = time.perf_counter()
    model.train()
    for epoch in range(cfg.epochs):
        beta_t = beta_at(epoch, beta, cfg.kl_warmup_epochs) if model.spec.variational else 0.0
        sums = torch.zeros(3, device=device)
        perm = torch.randperm(n, generator=gen, device=device)
        for i in range(0, n, cfg.batch_size):
            xb = x_train[perm[i : i + cfg.batch_size]]
            with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_bf16):
                terms = forward(model, xb, gen)
            dist = terms.distortion.mean()
            rate = rate_penalty(terms.kl, cfg.free_bits) if terms.kl is not None else torch.zeros((), device=device)
            loss = dist + beta_t * rate
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            sums += torch.stack([loss.detach(), dist.detach(), terms.rate.detach().mean()]) * len(xb)
        train_loss, train_d, train_r = (sums / n).tolist()
        if not all(map(_finite, (train_loss, train_d, train_r))):
            raise NonFiniteLoss(f"non-finite training loss ({train_loss}) at epoch {epoch + 1}")
        val = measure(model, x_val, seed + 1)
        if not _finite(val[objective]):
            raise NonFiniteLoss(f"non-finite validation {objective} ({val[objective]}) at epoch {epoch + 1}")
        record = {"epoch": epoch + 1, "beta": beta_t, "train_loss": train_loss, "train_distortion": train_d,
                  "train_rate": train_r, **{f"val_{k}": v for k, v in val.items()},
                  "seconds": time.perf_counter() - start}
        history.append(record)
        if on_epoch is not None:
            on_epoch(epoch + 1, record)
        if val[objective] < best_value:
            best_value, best_epoch, best_metrics, waited = val[objective], epoch + 1, val, 0
            best_state = copy.deepcopy(model.state_dict())
        elif epoch >= cfg.kl_warmup_epochs:  # the objective may rise while beta still ramps up
            waited += 1
            if waited >= cfg.patience:
                break
    model.load_state_dict(best_state)
    return TrainResult(history, best_epoch, best_metrics, time.perf_counter() - start, best_state)


def _finite(v: float) -> bool:
    return v == v and abs(v) != float("inf")
