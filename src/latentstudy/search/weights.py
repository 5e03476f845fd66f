"""The weights of every model the search hands on (best trials, seed replicates, the other
finished trials), wherever they still are: the worker's checkpoint on this disk, its copy in
MLflow (a worker on another machine), or, when both are gone (.latentstudy/checkpoints and
mlartifacts deleted), retrained from the trial's recorded beta, learning rate and seed. Training
is seeded, so on CPU this gives back the same weights; a retrained value that differs from the
recorded one is named. Retrained weights go back where they were lost (the checkpoint path, the
trial's MLflow run), so the next run finds them.
"""

from __future__ import annotations

import contextlib
import math
from pathlib import Path

from latentstudy.data import Prepared
from latentstudy.search import keys
from latentstudy.search.plan import Plan, Unit, arm_objective


def gather(plan: Plan, kept: dict[tuple, tuple[Unit, object]], runs: dict[int, str], tracker,
           prepared: Prepared, scratch: Path) -> dict[tuple, Path]:
    """{key: a checkpoint file of its trial} for kept = {key: (unit, trial)}, retraining what is lost."""
    found, lost = {}, []
    for key, (unit, trial) in kept.items():
        path = find(trial, runs.get(trial._trial_id), tracker, scratch / unit.study_name)
        if path is None:
            lost.append((key, unit, trial))
        else:
            found[key] = path
    if lost:
        names = ", ".join(f"k={u.latent_dim} {u.arm} trial {t.number}" for _, u, t in lost)
        many = len(lost) != 1
        print(f"[search] {len(lost)} kept trial{'s' * many} lost {'their' if many else 'its'} weights (no checkpoint "
              f"on disk or in MLflow): {names}; retraining from the recorded beta, lr and seed", flush=True)
        data = {split: prepared.split(split)[0] for split in ("train", "val")}
        for i, (key, unit, trial) in enumerate(lost, 1):
            found[key] = retrain(plan, unit, trial, data, scratch / unit.study_name, tracker, runs.get(trial._trial_id))
            print(f"[search] retrained {i}/{len(lost)}: k={unit.latent_dim} {unit.arm} trial {trial.number}",
                  flush=True)
    return found


def find(trial, run_id: str | None, tracker, scratch: Path) -> Path | None:
    """The trial's checkpoint: on this disk when its worker shared it, else from its MLflow run.
    A copy that does not load counts as missing."""
    path = Path(trial.user_attrs[keys.CHECKPOINT])
    if path.is_file() and readable(path):
        return path
    if tracker is None or run_id is None:
        return None
    copy = tracker.download(run_id, f"checkpoint/{path.name}", scratch)
    return copy if copy is not None and readable(copy) else None


def readable(path: Path) -> bool:
    """Whether the checkpoint loads; a damaged one is moved aside to <name>.damaged with one line,
    so the next run sees a missing file (restored or retrained) rather than the damage again."""
    from latentstudy.models import DamagedCheckpoint, load_checkpoint

    try:
        load_checkpoint(path)
        return True
    except DamagedCheckpoint as exc:
        aside = path.with_name(path.name + ".damaged")
        with contextlib.suppress(OSError):  # a read-only store: the next run says it again
            path.replace(aside)
        print(f"[search] {path}: not a readable checkpoint ({exc.why}); moved to {aside.name}, and its trial's "
              "weights are restored from MLflow or retrained from its recorded seed", flush=True)
        return False


def retrain(plan: Plan, unit: Unit, trial, splits: dict, scratch: Path, tracker, run_id: str | None) -> Path:
    """Train the trial again with its recorded parameters and seed, on the device type it used."""
    import torch

    from latentstudy import models, pca, train
    from latentstudy.search.plan import checkpoint_meta, trial_model
    from latentstudy.search.worker import Progress

    cfg = plan.config
    recorded = str(trial.user_attrs.get(keys.DEVICE, "cpu"))
    device = torch.device("cuda" if recorded.startswith("cuda") and torch.cuda.is_available() else "cpu")
    beta, lr, seed = trial.params.get("beta", 0.0), trial.params["lr"], trial.user_attrs[keys.SEED]
    model = trial_model(plan, unit, seed, device, pca.fit(splits["train"]) if cfg.model.ae_pca_path else None)
    x_train, x_val = (torch.as_tensor(splits[s], device=device) for s in ("train", "val"))
    objective = arm_objective(cfg, unit.arm)
    progress = Progress("search", unit, cfg.train, objective)
    order = trial.user_attrs.get(keys.DATA_ORDER)  # the minibatch order of the stack it trained in
    result = train.train(model, x_train, x_val, cfg.train, beta=beta, lr=lr, objective=objective, seed=seed,
                         on_epoch=lambda _, record: progress(trial.number, record, [trial.number]),
                         data_order=tuple(order) if order else None)
    meta = checkpoint_meta(unit, trial.number, beta, lr, seed, result)
    path = Path(trial.user_attrs[keys.CHECKPOINT])
    try:
        models.save_checkpoint(path, model, meta)
    except OSError:  # the path was on the worker's machine
        path = scratch / path.name
        models.save_checkpoint(path, model, meta)
    if tracker and run_id:
        tracker.log_artifact(run_id, path, "checkpoint")
    value = result.best[objective]
    if not math.isclose(value, trial.value, rel_tol=1e-5, abs_tol=1e-6):
        print(f"[search] note: retrained k={unit.latent_dim} {unit.arm} trial {trial.number} reaches val "
              f"{objective} {value:.4f}, recorded {trial.value:.4f} ({recorded} then, {device} now: "
              "GPU kernels and other thread counts are not bitwise reproducible)", flush=True)
    return path
