"""A worker process: pulls the unit furthest from its budget, trains Optuna trials, reports every
epoch for pruning, and stores each trial's checkpoint, metrics and MLflow run.

Started by the coordinator (one per GPU times workers_per_device, or cpu_workers on CPU) or by
hand on another machine (`latentstudy worker --study <prefix>`); runs until every unit is done.
"""

from __future__ import annotations

import math
import os
import threading
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

from latentstudy.config import SearchConfig, StudyError
from latentstudy.search import keys, runs
from latentstudy.search.plan import REPLICATE, Plan, Unit, counts, needs_work, unit_seed
from latentstudy.search.store import process_tag, reap_lost


class TrialFailure(RuntimeError):
    """A trial that cannot finish (NaN loss, out of memory): recorded as FAIL with its reason."""


def _sampler(plan: Plan, unit: Unit, worker: str):
    import optuna

    # Each worker draws from its own stream: equal seeds would make parallel workers propose
    # the same first trials. A single worker (w0) is reproducible.
    seed = (unit_seed(plan, unit) + zlib.crc32(worker.encode())) % 2**31
    startup = min(10, max(2, unit.budget // 2))
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup, constant_liar=True)


def _pruner(cfg: SearchConfig):
    import optuna

    epochs = cfg.train.epochs
    if cfg.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=max(5, epochs // 5))
    if cfg.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=max(1, epochs // 10), max_resource=epochs)
    return optuna.pruners.NopPruner()


def next_unit(plan: Plan, studies: dict) -> Unit | None:
    """The unit furthest from its budget (grid order breaks ties), or None when all are done."""
    best, best_key = None, None
    for i, unit in enumerate(plan.units):
        c = counts(studies[unit.study_name].get_trials(deepcopy=False))
        if needs_work(unit, c):
            key = ((c["COMPLETE"] + c["RUNNING"]) / unit.budget, i)
            if best_key is None or key < best_key:
                best, best_key = unit, key
    return best


@dataclass
class WorkerContext:
    plan: Plan
    storage: object
    tracking: str | None
    tracker: object | None  # one MLflow client per worker process
    x_train: object  # torch tensors on the worker's device
    x_val: object
    device: object
    checkpoints: Path
    worker: str
    assume_single_host: bool


def run_worker(ctx: WorkerContext) -> int:
    """Run trials until every unit has its budget; returns the number of trials this worker ran."""
    import optuna

    # Our own line reports each failure; Optuna would add a traceback for every failed trial.
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    cfg = ctx.plan.config
    # Replicates are never pruned: each is a measurement of the seed spread, not a candidate.
    studies = {u.study_name: optuna.load_study(study_name=u.study_name, storage=ctx.storage,
                                               sampler=_sampler(ctx.plan, u, ctx.worker),
                                               pruner=optuna.pruners.NopPruner() if u.phase == REPLICATE else _pruner(cfg))
               for u in ctx.plan.units}
    ran = 0
    while (unit := next_unit(ctx.plan, studies)) is not None:
        study = studies[unit.study_name]
        reap_lost(study, ctx.tracking, ctx.assume_single_host)
        study.optimize(lambda trial: objective(ctx, unit, trial), n_trials=1, catch=(TrialFailure,),
                       gc_after_trial=False)
        ran += 1
    return ran


def objective(ctx: WorkerContext, unit: Unit, trial) -> float:
    """Train one model with the trial's beta and lr; report every epoch for pruning."""
    import optuna

    from latentstudy import models, train

    for key, value in {**process_tag(), keys.DEVICE: str(ctx.device), keys.WORKER: ctx.worker}.items():
        trial.set_user_attr(key, value)
    cfg = ctx.plan.config
    beta = trial.suggest_float("beta", cfg.beta.low, cfg.beta.high, log=True) if unit.arm == "vae" else 0.0
    lr = trial.suggest_float("lr", cfg.lr.low, cfg.lr.high, log=True)
    seed = trial.user_attrs.get(keys.SEED, (unit_seed(ctx.plan, unit) + 7919 * trial.number) % 2**31)
    trial.set_user_attr(keys.SEED, seed)
    tracker, run_id = ctx.tracker, None
    if tracker:
        run_id = tracker.start_trial(
            ctx.plan.experiment_id, ctx.plan.parent_run_id, unit.study_name, runs.run_name(unit, trial.number),
            trial.number, runs.run_params(ctx.plan, unit, beta, lr, seed, str(ctx.device),
                                          trial.user_attrs.get(keys.RETRY_OF)),
        )
        trial.set_user_attr(keys.MLFLOW_RUN_ID, run_id)
    progress = EpochProgress(ctx.worker, unit, trial.number, cfg.train.epochs)

    def on_epoch(epoch: int, record: dict) -> None:
        if tracker:
            tracker.log_metrics(run_id, {k: v for k, v in record.items() if k != "epoch"}, step=epoch)
        progress(epoch, record)
        if cfg.pruner == "none":  # no pruner: skip one storage write per epoch
            return
        trial.report(record[f"val_{cfg.objective}"], epoch)
        if trial.should_prune():
            # trials.csv shows how far a pruned trial got and what it cost, like a finished one.
            reason = f"pruned at epoch {epoch}"
            for key, value in {keys.METRICS: {k: v for k, v in record.items() if k.startswith("val_")},
                               keys.EPOCHS_RUN: epoch, keys.SECONDS: round(record["seconds"], 3),
                               keys.FAIL_REASON: reason}.items():
                trial.set_user_attr(key, value)
            raise optuna.TrialPruned(reason)

    model = trial_model(ctx.plan, unit, seed, ctx.device)
    trial.set_user_attr(keys.N_PARAMS, models.n_params(model))
    try:
        result = train.train(model, ctx.x_train, ctx.x_val, cfg.train, beta=beta, lr=lr,
                             objective=cfg.objective, seed=seed, on_epoch=on_epoch)
    except optuna.TrialPruned:
        if tracker:
            tracker.end(run_id, "FINISHED", {"optuna.state": "PRUNED"})
        raise
    except Exception as exc:  # NaN loss, out of memory, a CUDA fault: this trial fails, the study goes on
        reason = failure_reason(exc, ctx.device)
        trial.set_user_attr(keys.FAIL_REASON, reason)
        if tracker:
            tracker.end(run_id, "FAILED", {"optuna.state": "FAIL", "fail_reason": reason})
        print(f"[{ctx.worker}] k={unit.latent_dim} {unit.arm} trial {trial.number} FAILED: {reason}", flush=True)
        raise TrialFailure(reason) from None
    final = {f"val_{k}": v for k, v in result.best.items()}
    trial.set_user_attr(keys.METRICS, final)
    for key, value in {keys.EPOCHS_RUN: result.epochs_run, keys.BEST_EPOCH: result.best_epoch,
                       keys.SECONDS: round(result.seconds, 3)}.items():
        trial.set_user_attr(key, value)
    path = ctx.checkpoints / unit.study_name / f"trial-{trial.number}.pt"
    models.save_checkpoint(path, model, checkpoint_meta(unit, trial.number, beta, lr, seed, result))
    trial.set_user_attr(keys.CHECKPOINT, str(path))
    if tracker:
        tracker.log_metrics(run_id, {**{f"best_{k}": v for k, v in final.items()}, "epochs_run": result.epochs_run,
                                     "seconds": result.seconds}, flush=True)
        tracker.log_artifact(run_id, path, "checkpoint")
        tracker.end(run_id, "FINISHED", {"optuna.state": "COMPLETE"})
    value = result.best[cfg.objective]
    print(f"[{ctx.worker}] k={unit.latent_dim} {unit.arm} trial {trial.number}: val {cfg.objective} "
          f"{value:.3f} after {result.epochs_run} epochs ({result.seconds:.1f}s)", flush=True)
    return value


def trial_model(plan: Plan, unit: Unit, seed: int, device):
    """The unit's network initialised from the trial's seed: the one recipe, also used to retrain
    a best trial whose weights were lost."""
    import torch

    from latentstudy import models

    cfg = plan.config
    spec = models.NetSpec(plan.input_dim, unit.latent_dim, models.choose_arch(cfg.model.arch, plan.image_shape),
                          models.choose_likelihood(cfg.model.likelihood, plan.image_shape)[0], unit.arm == "vae",
                          tuple(cfg.model.hidden), tuple(cfg.model.channels), models.chw(plan.image_shape))
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        return models.build(spec).to(device)


def checkpoint_meta(unit: Unit, number: int, beta: float, lr: float, seed: int, result) -> dict:
    final = {f"val_{k}": v for k, v in result.best.items()}
    return {"study": unit.study_name, "trial": number, "beta": beta, "lr": lr, "seed": seed, **final,
            "seconds": result.seconds, "epochs_run": result.epochs_run}


def failure_reason(exc: Exception, device) -> str:
    import torch

    from latentstudy.train import NonFiniteLoss

    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return f"out of memory on {device}"
    if isinstance(exc, NonFiniteLoss):
        return str(exc)
    return f"{type(exc).__name__}: {exc}".splitlines()[0][:300]


class EpochProgress:
    """Within a long trial, one line every 15 s: epoch, validation value, best so far."""

    def __init__(self, worker: str, unit: Unit, number: int, epochs: int):
        self.label = f"[{worker}] k={unit.latent_dim} {unit.arm} trial {number}"
        self.epochs, self.best, self.last = epochs, math.inf, time.monotonic()

    def __call__(self, epoch: int, record: dict) -> None:
        self.best = min(self.best, record["val_neg_elbo"])
        if time.monotonic() - self.last > 15:
            self.last = time.monotonic()
            print(f"{self.label}: epoch {epoch}/{self.epochs} val neg-ELBO {record['val_neg_elbo']:.3f} "
                  f"(best {self.best:.3f})", flush=True)


def worker_main(plan: Plan, storage, tracking: str | None, prepared: Path, device: str, checkpoints: Path,
                worker: str, assume_single_host: bool) -> int:
    """Load the data onto this worker's device and run trials until the study's budget is met."""
    import torch

    from latentstudy import data
    from latentstudy.tracking import Tracker

    dev = torch.device(device)
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    summary = data.load_summary(prepared)
    if summary["fingerprint"] != plan.fingerprint:
        raise StudyError(f"{prepared}: data fingerprint {summary['fingerprint']} differs from the study's "
                         f"{plan.fingerprint}; run this worker on the same prepared data")
    x_train = torch.as_tensor(data.load_split(prepared, "train")[0], device=dev)
    x_val = torch.as_tensor(data.load_split(prepared, "val")[0], device=dev)
    tracker = Tracker(tracking) if tracking else None
    ctx = WorkerContext(plan, storage, tracking, tracker, x_train, x_val, dev, checkpoints, worker,
                        assume_single_host)
    return run_worker(ctx)


def exit_with_parent() -> None:
    """Workers started by a coordinator die with it (kill -9 included), leaving trials to reap."""
    parent = os.getppid()

    def watch() -> None:
        while True:
            time.sleep(1.0)
            if os.getppid() != parent:
                os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


def apply_thread_limit() -> None:
    """CPU workers split the machine's cores between them (the coordinator sets the share)."""
    import torch

    threads = os.environ.get("LATENTSTUDY_THREADS")
    if threads:
        torch.set_num_threads(int(threads))
