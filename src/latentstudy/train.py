"""The training engine: S members of one NetSpec (S trials of one study) trained as one stack.

Each member keeps what it would have alone: its initialisation (seeded exactly as models.build
under its seed), its beta and learning rate (a functional Adam with a per-member lr), KL warm-up,
free bits, gradient-norm clipping over its own parameters, early stopping with its best state,
and its own noise. A member whose loss or gradient turns non-finite fails alone at the end of
that epoch; members share no parameter and no reduction spans members, so the others never see
its values.

All members see the same minibatches: one permutation per stack epoch, drawn on the CPU (so the
same on every device) from the stack's data seed, its first member's seed. A trial's numbers
therefore depend on the data order of the stack it trained in; its result names that order
(data_order: the seed and the stack epoch it joined at), and a stack of one given that order
trains the same trial again. When a member stops (finished, early-stopped, pruned or failed) the
caller may give its slot to a new member, which starts at its own epoch 1; else the stack shrinks.

Noise: a member's generator draws its training eps once per chunk of the epoch (chunk_rows rows,
whole batches, in epoch order): S small launches per chunk, none per step. Its validation eps
comes from a generator reseeded every epoch, so epochs are compared on equal noise.

No DataLoader: a split that fits on the device lives there; one that does not is staged from
pinned host memory a chunk at a time, with the same rows in the same order, so the numbers are
the same. Epoch sums stay on the device; the host reads them once per epoch.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from latentstudy.config import TrainConfig
from latentstudy.feed import DeviceSplit, as_split
from latentstudy.models import AutoEncoder, NetSpec, build, n_params
from latentstudy.stack import Stack

EVAL_CHUNK = 4096  # validation rows per forward pass
CHUNK_ROWS = 8192  # training rows gathered (or staged) and given noise at a time
ADAM_BETAS, ADAM_EPS = (0.9, 0.999), 1e-8  # torch.optim.Adam's defaults
CLIP_EPS = 1e-6  # as torch.nn.utils.clip_grad_norm_
CPU_STACK = 8  # search.stack auto on CPU
CUDA_STACK_CAP, STACK_MEMORY_FRACTION = 64, 0.5  # search.stack auto on CUDA


class NonFiniteLoss(RuntimeError):
    """The loss became NaN or inf (raised by train(), the single-model entry point)."""


@dataclass
class Member:
    """One model to train in a stack: a trial's seed, beta and learning rate."""

    seed: int
    beta: float
    lr: float
    key: Any = None  # the caller's handle (the worker's: the Optuna trial number)
    init: dict | None = field(default=None, repr=False)  # a state_dict to start from; None: seeded build


@dataclass
class TrainResult:
    member: Member
    status: str  # complete | pruned | failed
    history: list[dict]  # one record per epoch
    best_epoch: int
    best: dict  # validation metrics at the best epoch (pruned, failed: at the last epoch)
    seconds: float
    state_dict: dict | None = field(default=None, repr=False)  # the best epoch's weights, when complete
    reason: str = ""  # why it stopped: pruned at epoch N, non-finite loss at epoch N
    still_improving: bool = False  # complete at the epoch ceiling with a new best in its last late_patience epochs
    data_order: tuple[int, int] = (0, 0)  # (seed, first stack epoch) of the minibatch order it trained on

    @property
    def epochs_run(self) -> int:
        return len(self.history)


def beta_at(epoch: int, beta: float, warmup_epochs: int) -> float:
    """KL warm-up: beta ramps linearly from 0 over the first warmup_epochs epochs."""
    if warmup_epochs <= 0:
        return beta
    return beta * min(1.0, epoch / warmup_epochs)


def rate_penalty(kl: torch.Tensor, free_bits: float) -> torch.Tensor:
    """Mean rate over the batch (kl: (..., n, k)); with free bits each unit's batch-mean KL is
    floored at lambda nats."""
    if free_bits > 0:
        return torch.clamp(kl.mean(-2), min=free_bits).sum(-1)
    return kl.sum(-1).mean(-1)


# --- how many members --------------------------------------------------------------------------


def stack_size(setting: int | str, spec: NetSpec, device: torch.device, batch_size: int) -> int:
    """search.stack: N as given; auto from the device. CPU: CPU_STACK, measured (docs/engine.md).
    CUDA: as many members as half the free memory holds, at most CUDA_STACK_CAP (not yet measured
    on a GPU: the cap is where published stacked-training gains level off)."""
    if setting != "auto":
        return int(setting)
    if device.type != "cuda":
        return CPU_STACK
    free, _ = torch.cuda.mem_get_info(device)
    return max(1, min(CUDA_STACK_CAP, int(STACK_MEMORY_FRACTION * free // member_bytes(spec, batch_size))))


def member_bytes(spec: NetSpec, batch_size: int) -> int:
    """A member's device memory, roughly: its parameters six times (weights, gathered gradient and
    its source, two Adam moments, best state) and its activations: three copies (output, ReLU,
    gradient) per training example, two per validation example, and its noise."""
    outputs: list[int] = []
    with torch.device("meta"):
        model = build(spec)
        leaves = [m for m in model.modules() if not list(m.children())]
        hooks = [m.register_forward_hook(lambda _m, _i, out: outputs.append(out[0].numel())) for m in leaves]
        model.decode(model.encode(torch.empty(1, spec.input_dim))[0])
    for hook in hooks:
        hook.remove()
    per_example = sum(outputs)
    floats = 6 * n_params(model) + (3 * batch_size + 2 * EVAL_CHUNK) * per_example + CHUNK_ROWS * spec.latent_dim
    return 4 * floats


# --- the stacked trainer ----------------------------------------------------------------------


DATA_ORDER, NOISE, VAL_NOISE = 0, 1, 2  # the generators a trial's seed starts


def derived_seed(seed: int, stream: int) -> int:
    """Separate seeds for a trial's data order (its stack's, when it comes first), training noise
    and validation noise: one seed for all three would tie the noise to the permutation."""
    return (seed * 1_000_003 + stream) % 2**63


def initial_state(spec: NetSpec, seed: int) -> dict:
    """The weights models.build draws under this seed: a member starts exactly as it would alone."""
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)
        return build(spec).state_dict()


@dataclass
class _Slot:
    """A member's bookkeeping on the host."""

    member: Member
    noise: torch.Generator
    val_noise: torch.Generator
    data_order: tuple[int, int]
    started: float = field(default_factory=time.perf_counter)
    epoch: int = 0
    history: list[dict] = field(default_factory=list)
    best_value: float = float("inf")
    best_epoch: int = -1
    best: dict = field(default_factory=dict)
    waited: int = 0


class _Trainer:
    """The stack's tensors (parameters, Adam moments, best states) and one epoch of training."""

    def __init__(self, spec: NetSpec, cfg: TrainConfig, size: int, device: torch.device, dtype: torch.dtype):
        self.spec, self.cfg, self.device = spec, cfg, device
        self.stack = Stack(spec, size, device, dtype)
        self.m, self.v, self.best = (torch.zeros_like(self.stack.params) for _ in range(3))
        self.steps = torch.zeros(size, device=device, dtype=dtype)
        self.lr = torch.zeros(size, device=device, dtype=dtype)
        self.alive = torch.ones(size, device=device, dtype=torch.bool)
        self.slots: list[_Slot | None] = [None] * size
        self.bf16 = cfg.bf16 and device.type == "cuda"

    def put(self, row: int, member: Member, data_order: tuple[int, int]) -> None:
        init = member.init if member.init is not None else initial_state(self.spec, member.seed)
        self.stack.load(row, init)
        for t in (self.m, self.v, self.best):
            t[row].zero_()
        self.steps[row], self.lr[row], self.alive[row] = 0, member.lr, True
        gens = [torch.Generator(device=self.device).manual_seed(derived_seed(member.seed, s)) for s in (NOISE, VAL_NOISE)]
        self.slots[row] = _Slot(member, *gens, data_order)

    def keep(self, rows: list[int]) -> None:
        index = torch.tensor(rows, device=self.device, dtype=torch.long)
        self.stack.keep(rows)
        self.m, self.v, self.best, self.steps, self.lr, self.alive = (
            t.index_select(0, index) for t in (self.m, self.v, self.best, self.steps, self.lr, self.alive))
        self.slots = [self.slots[r] for r in rows]

    def noise(self, gens: list[torch.Generator], rows: int) -> torch.Tensor | None:
        if not self.spec.variational:
            return None
        eps = torch.empty(len(gens), rows, self.spec.latent_dim, device=self.device, dtype=self.stack.params.dtype)
        for s, gen in enumerate(gens):
            eps[s].normal_(generator=gen)  # as torch.randn(rows, k, generator=gen)
        return eps

    def epoch(self, data: DeviceSplit, perm: torch.Tensor, chunk_rows: int) -> torch.Tensor:
        """One pass over the data in perm's order; returns per-member sums (S, 3) of loss, distortion, rate."""
        cfg = self.cfg
        betas = [beta_at(s.epoch, s.member.beta, cfg.kl_warmup_epochs) if self.spec.variational else 0.0
                 for s in self.slots]
        beta = torch.tensor(betas, device=self.device, dtype=self.stack.params.dtype)
        sums = torch.zeros(self.stack.size, 3, device=self.device, dtype=self.stack.params.dtype)
        order = data.order(perm)
        chunk_rows = max(1, chunk_rows // cfg.batch_size) * cfg.batch_size
        for start in range(0, data.n, chunk_rows):
            xc = data.rows(order[start : start + chunk_rows])
            eps = self.noise([s.noise for s in self.slots], len(xc))
            for i in range(0, len(xc), cfg.batch_size):
                sums += self.step(xc[i : i + cfg.batch_size], None if eps is None else eps[:, i : i + cfg.batch_size],
                                  beta)
        return sums

    def step(self, xb: torch.Tensor, eps: torch.Tensor | None, beta: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            terms = self.stack.terms(xb, eps)
        dist = terms.distortion.mean(1)
        if terms.kl is None:
            rate = penalty = torch.zeros_like(dist)
        else:
            rate = terms.kl.sum(-1).mean(1)
            penalty = rate_penalty(terms.kl, self.cfg.free_bits) if self.cfg.free_bits > 0 else rate
        loss = dist + beta * penalty
        grads = self.stack.backward(loss.sum())  # members share no parameter: each row is its own gradient
        with torch.no_grad():
            norm = torch.linalg.vector_norm(grads, dim=1)
            self.alive &= torch.isfinite(loss) & torch.isfinite(norm)
            clip = (self.cfg.grad_clip / (norm + CLIP_EPS)).clamp(max=1.0) if self.cfg.grad_clip > 0 else 1.0
            self.adam(grads, torch.where(self.alive, clip, 0.0))
            return torch.stack([loss, dist, rate], 1) * len(xb)

    def adam(self, grads: torch.Tensor, scale: torch.Tensor) -> None:
        """torch.optim.Adam's update on the rows, each with its member's lr, after scaling each
        row's gradient (clipping; 0 stops a dead member). Rows share nothing, so a dead member's
        NaN stays in its own row, which is dropped at the epoch's end."""
        b1, b2 = ADAM_BETAS
        self.steps += 1
        grads.mul_(scale.unsqueeze(1))
        self.m.lerp_(grads, 1 - b1)
        self.v.mul_(b2).addcmul_(grads, grads, value=1 - b2)
        # lr/bc1 * m / (sqrt(v)/sqrt(bc2) + eps) = m / ((sqrt(v) + eps*sqrt(bc2)) / (lr*sqrt(bc2)/bc1)),
        # computed in place: temporaries the size of the stack cost more than the arithmetic.
        root_bc2 = torch.sqrt(1 - b2**self.steps).unsqueeze(1)
        step = torch.where(self.alive, self.lr / (1 - b1**self.steps), 0.0).unsqueeze(1) * root_bc2
        denom = torch.sqrt(self.v, out=grads).add_(ADAM_EPS * root_bc2).div_(step)  # grads are spent: reuse them
        self.stack.params.addcdiv_(self.m, denom, value=-1.0)  # a dead row: m / inf, no change

    @torch.no_grad()
    def measure(self, data: DeviceSplit) -> torch.Tensor:
        """Validation sums per member (S, 3) in float64, per example: distortion, rate, squared error."""
        gens = [s.val_noise.manual_seed(derived_seed(s.member.seed, VAL_NOISE)) for s in self.slots]
        sums = torch.zeros(self.stack.size, 3, device=self.device, dtype=torch.float64)
        for xv in data.chunks(EVAL_CHUNK):
            terms = self.stack.terms(xv, self.noise(gens, len(xv)))
            rate = terms.kl.sum(-1).sum(1) if terms.kl is not None else torch.zeros_like(sums[:, 0])
            sq = self.stack.squared_error(xv, terms.mu).sum(1)
            sums += torch.stack([terms.distortion.sum(1), rate, sq], 1).double()
        return sums / data.n

    def snapshot(self, rows: list[int]) -> None:
        if rows:
            index = torch.tensor(rows, device=self.device, dtype=torch.long)
            self.best.index_copy_(0, index, self.stack.params.index_select(0, index))


# More than 7 parameters on purpose: the network, its data and settings, then keyword-only hooks
# (next member, per epoch, at rungs, when done). The worker, the retraining of lost weights and the
# tests each plug in other hooks; one object holding them all would hide which ones a caller sets.
def train_stack(spec: NetSpec, x_train: DeviceSplit | torch.Tensor, x_val: DeviceSplit | torch.Tensor, cfg: TrainConfig, *,
                objective: str, size: int, next_member: Callable[[], Member | None],
                on_done: Callable[[TrainResult], None], on_epoch: Callable[[Member, dict], bool] | None = None,
                judge: Callable[[list[tuple[Member, dict]]], dict[Any, str]] | None = None,
                data_order: tuple[int, int] | None = None, chunk_rows: int = CHUNK_ROWS) -> None:
    """Train members from next_member() in a stack of up to size, until it has no more to give.

    on_epoch(member, record) sees every epoch's record (logging, progress, pruning) and returns
    True to stop that member now (pruned). judge(pairs) sees, once per stack epoch, the (member,
    record) of every member going on, so members can be compared with each other at equal epochs;
    it returns {member key: reason} for those to stop now (pruned). on_done(result) gets each
    member as it stops; its slot then goes to next_member() or the stack shrinks. x_train, x_val: feed.DeviceSplit (tensors are
    taken as resident where they are); the parameters take the data's dtype. data_order: (seed,
    first epoch) of the minibatch order, to train a member again as it trained; default: the first
    member's seed, from its first epoch.
    """
    train_data, val_data = as_split(x_train), as_split(x_val)
    first = next_member()
    if first is None:
        return
    seed, epoch = data_order or (first.seed, 0)
    order = torch.Generator().manual_seed(derived_seed(seed, DATA_ORDER))
    for _ in range(epoch):  # the permutations of the epochs before this member joined its stack
        torch.randperm(train_data.n, generator=order)
    trainer = _Trainer(spec, cfg, size, train_data.device, train_data.dtype)
    trainer.put(0, first, (seed, epoch))
    for row in range(1, size):
        member = next_member()
        if member is None:
            trainer.keep(list(range(row)))
            break
        trainer.put(row, member, (seed, epoch))
    while trainer.slots:
        perm = torch.randperm(train_data.n, generator=order)
        epoch += 1
        train_sums = (trainer.epoch(train_data, perm, chunk_rows) / train_data.n).tolist()
        alive = trainer.alive.tolist()
        val = trainer.measure(val_data).tolist()
        improved, done = [], []
        for row, slot in enumerate(trainer.slots):
            result = _after_epoch(slot, spec, cfg, objective, train_sums[row], alive[row], val[row], on_epoch)
            if slot.best_epoch == slot.epoch:
                improved.append(row)
            if result is not None:
                done.append((row, result))
        if judge is not None:
            done += _judged(trainer.slots, {row for row, _ in done}, judge)
        trainer.snapshot(improved)
        empty = []
        for row, result in done:
            if result.status == "complete":
                result.state_dict = trainer.stack.state_dict(row, trainer.best)
            on_done(result)
            member = next_member()
            if member is None:
                empty.append(row)
            else:
                trainer.put(row, member, (seed, epoch))
        if empty:
            trainer.keep([r for r in range(len(trainer.slots)) if r not in empty])


# Eight parameters on purpose: one member's slot and this epoch's sums, from train_stack's loop; the
# decision (go on, stop early, stop at the ceiling, fail) is kept apart from the loop to be read alone.
def _after_epoch(slot: _Slot, spec: NetSpec, cfg: TrainConfig, objective: str, train_sums: list[float],
                 alive: bool, val: list[float], on_epoch) -> TrainResult | None:
    """Record a member's epoch and decide: go on (None), or stop with a result."""
    slot.epoch += 1
    epoch, seconds = slot.epoch, time.perf_counter() - slot.started
    loss, dist, rate = train_sums
    d, r, sse = val
    metrics = {"distortion": d, "rate": r, "neg_elbo": d + r, "sse": sse, "mse": sse / spec.input_dim}

    def stop(status: str, reason: str = "", best: dict | None = None, still_improving: bool = False) -> TrainResult:
        return _result(slot, status, reason, best, still_improving)

    if not all(map(_finite, train_sums)):
        return stop("failed", f"non-finite training loss ({loss}) at epoch {epoch}", metrics)
    if not alive:
        return stop("failed", f"non-finite gradient at epoch {epoch}", metrics)
    if not _finite(metrics[objective]):
        return stop("failed", f"non-finite validation {objective} ({metrics[objective]}) at epoch {epoch}", metrics)
    beta = beta_at(epoch - 1, slot.member.beta, cfg.kl_warmup_epochs) if spec.variational else 0.0
    record = {"epoch": epoch, "beta": beta, "train_loss": loss, "train_distortion": dist, "train_rate": rate,
              **{f"val_{k}": v for k, v in metrics.items()}, "seconds": seconds}
    slot.history.append(record)
    if on_epoch is not None and on_epoch(slot.member, record):
        return stop("pruned", f"pruned at epoch {epoch}", metrics)
    if metrics[objective] < slot.best_value:
        slot.best_value, slot.best_epoch, slot.best, slot.waited = metrics[objective], epoch, metrics, 0
    elif epoch > cfg.kl_warmup_epochs:  # the objective may rise while beta still ramps up
        slot.waited += 1
    if slot.waited >= cfg.patience:
        return stop("complete")
    if epoch >= cfg.epochs:  # past the cap: on while it still improves, up to the ceiling
        if slot.waited >= cfg.late_patience:
            return stop("complete")
        if epoch >= cfg.ceiling:
            return stop("complete", still_improving=True)
    return None


def _judged(slots: list[_Slot], stopped: set[int], judge) -> list[tuple[int, TrainResult]]:
    """The members going on that judge stops, compared at this epoch: (row, pruned result)."""
    going = [row for row in range(len(slots)) if row not in stopped]
    stops = judge([(slots[row].member, slots[row].history[-1]) for row in going])
    out = []
    for row in going:
        if slots[row].member.key in stops:
            last = {k[4:]: v for k, v in slots[row].history[-1].items() if k.startswith("val_")}
            out.append((row, _result(slots[row], "pruned", stops[slots[row].member.key], last)))
    return out


def _result(slot: _Slot, status: str, reason: str = "", best: dict | None = None,
            still_improving: bool = False) -> TrainResult:
    return TrainResult(slot.member, status, slot.history, slot.best_epoch, best if best is not None else slot.best,
                       time.perf_counter() - slot.started, reason=reason, data_order=slot.data_order,
                       still_improving=still_improving)


# More than 7 parameters on purpose: one model's beta, lr and seed, keyword-only, as a trial records them.
def train(model: AutoEncoder, x_train: torch.Tensor, x_val: torch.Tensor, cfg: TrainConfig, *, beta: float,
          lr: float, objective: str, seed: int, on_epoch: Callable[[int, dict], None] | None = None,
          data_order: tuple[int, int] | None = None) -> TrainResult:
    """Train one model from its current weights (a stack of one); on return it holds its best
    epoch's weights. on_epoch(epoch, record) sees every epoch and may raise to stop. data_order:
    a stacked trial's recorded order, to train it again as it trained (default: its own seed's)."""
    results: list[TrainResult] = []
    members = iter([Member(seed, beta, lr, init=model.state_dict())])
    train_stack(model.spec, x_train, x_val, cfg, objective=objective, size=1, next_member=lambda: next(members, None),
                on_done=results.append, on_epoch=(lambda _, record: on_epoch(record["epoch"], record)) if on_epoch else None,
                data_order=data_order)
    result = results[0]
    if result.status == "failed":
        raise NonFiniteLoss(result.reason)
    model.load_state_dict(result.state_dict)
    return result


def _finite(v: float) -> bool:
    return v == v and abs(v) != float("inf")
