"""A worker process: takes the unit furthest from its budget and trains its trials as stacks
(train.train_stack), Optuna's ask-and-tell around each member: study.ask() fills a slot,
trial.report / should_prune run every epoch for each member, study.tell records each as it stops,
and a stopped member's slot takes a newly asked trial while the unit still needs some. Every
trial keeps its MLflow run, per-epoch metrics, checkpoint and stored facts (search/keys.py).

Started by the coordinator (one per GPU times workers_per_device, or cpu_workers on CPU) or by
hand on another machine (`latentstudy worker --study <prefix>`); runs until every unit is done,
then reloads the plan from the storage and goes on if units were added meanwhile.
"""

from __future__ import annotations

import math
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

from latentstudy.config import SearchConfig, StudyError, TrainConfig
from latentstudy.search import devices, halving, keys, runs
from latentstudy.search.liveness import Heartbeats
from latentstudy.search.plan import (
    REPLICATE,
    Plan,
    Unit,
    arm_objective,
    checkpoint_meta,
    counts,
    initial_weights,
    needs_work,
    open_slots,
    unit_seed,
    unit_spec,
)
from latentstudy.search.store import load_plan, process_tag, reap_lost


def _sampler(plan: Plan, unit: Unit, worker: str):
    import optuna

    # Each worker draws from its own stream: equal seeds would make parallel workers propose
    # the same first trials. A single worker (w0) is reproducible.
    seed = (unit_seed(plan, unit) + zlib.crc32(worker.encode())) % 2**31
    startup = min(10, max(2, unit.budget // 2))
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup, constant_liar=True)


def _pruner(cfg: SearchConfig):
    """Optuna's pruner of a grid or added unit; under `stack` none: StackTrials.judge compares."""
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
    x_train: object  # feed.DeviceSplit (or a tensor) on the worker's device
    x_val: object
    device: object
    checkpoints: Path
    worker: str
    assume_single_host: bool
    pca: object  # pca.PCABasis of the training split, where autoencoders with a PCA path start; or None
    max_stack: int | None = None  # lowered after an out-of-memory stack


def run_worker(ctx: WorkerContext) -> int:
    """Run stacks until every unit has its budget, then until no new units appear; returns the
    number of trials this worker ran."""
    import optuna

    # Our own line reports each failure; Optuna would add a traceback for every failed trial.
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    studies: dict = {}
    ran = 0
    while True:
        cfg = ctx.plan.config
        for u in ctx.plan.units:
            if u.study_name not in studies:
                # Replicates are never pruned: each is a measurement of the seed spread, not a candidate.
                pruner = optuna.pruners.NopPruner() if u.phase == REPLICATE else _pruner(cfg)
                studies[u.study_name] = optuna.load_study(study_name=u.study_name, storage=ctx.storage,
                                                          sampler=_sampler(ctx.plan, u, ctx.worker), pruner=pruner)
        while (unit := next_unit(ctx.plan, studies)) is not None:
            study = studies[unit.study_name]
            reap_lost(study, ctx.tracking, ctx.assume_single_host)
            ran += run_stack(ctx, unit, study)
        plan = load_plan(ctx.storage, ctx.plan.prefix)
        if {u.study_name for u in plan.units} <= set(studies):
            return ran
        ctx.plan = plan


def run_stack(ctx: WorkerContext, unit: Unit, study) -> int:
    """Train the unit's open trials as one stack, refilling slots while the unit needs trials;
    returns how many trials it ran. A fault of the stack (out of memory) fails its open trials."""
    import torch

    from latentstudy import models, train

    cfg = ctx.plan.config
    spec = unit_spec(ctx.plan, unit)
    size = train.stack_size(cfg.stack, spec, ctx.device, cfg.train.batch_size)
    size = min(size, ctx.max_stack or size, open_slots(unit, counts(study.get_trials(deepcopy=False))))
    if size < 1:
        return 0
    with torch.device("meta"):
        params = models.n_params(models.build(spec))
    trials = StackTrials(ctx, unit, study, spec, size, params)
    with trials.heartbeats:
        try:
            judge = trials.judge if cfg.pruner == "stack" and unit.phase != REPLICATE else None
            train.train_stack(spec, ctx.x_train, ctx.x_val, cfg.train, objective=arm_objective(cfg, unit.arm),
                              size=size, next_member=trials.ask, on_epoch=trials.epoch, on_done=trials.tell,
                              judge=judge)
        except StudyError:  # a full or read-only store: the trials stay open, retried on the rerun
            raise
        except Exception as exc:  # out of memory, a CUDA fault: this stack's trials fail, the study goes on
            if isinstance(exc, torch.cuda.OutOfMemoryError):
                ctx.max_stack = max(1, size // 2)
            trials.fail_open(devices.failure_reason(exc, ctx.device))
    return trials.asked


class StackTrials:
    """The Optuna trials and MLflow runs of one stack: ask, per-epoch report, tell."""

    def __init__(self, ctx: WorkerContext, unit: Unit, study, spec, size: int, n_params: int):
        self.ctx, self.unit, self.study, self.spec, self.size, self.n_params = ctx, unit, study, spec, size, n_params
        self.cfg = ctx.plan.config
        self.objective = arm_objective(self.cfg, unit.arm)
        self.open: dict[int, tuple[object, str | None]] = {}  # trial number -> (trial, MLflow run id)
        self.asked = 0
        self.heartbeats = Heartbeats(ctx.storage)
        self.progress = Progress(ctx.worker, unit, self.cfg.train, self.objective)

    def ask(self):
        """A newly asked trial as a stack member, or None when the unit needs no more."""
        from latentstudy import train

        if not needs_work(self.unit, counts(self.study.get_trials(deepcopy=False))):
            return None
        trial = self.study.ask()  # an enqueued trial (a retry, a replicate) comes first, with its params
        # Its heartbeat before anything else: on an RDB storage a RUNNING trial without one is never
        # found stale, so a worker killed in the next writes would leave it RUNNING for good.
        self.heartbeats.add(trial)
        ctx, cfg, unit = self.ctx, self.cfg, self.unit
        # Parameters and seed before the process facts: a trial with a pid has them, so the retry of
        # a trial killed at any later moment repeats them.
        beta = trial.suggest_float("beta", cfg.beta.low, cfg.beta.high, log=True) if unit.arm == "vae" else 0.0
        lr = trial.suggest_float("lr", cfg.lr.low, cfg.lr.high, log=True)
        seed = trial.user_attrs.get(keys.SEED, (unit_seed(ctx.plan, unit) + 7919 * trial.number) % 2**31)
        trial.set_user_attr(keys.SEED, seed)
        for key, value in {**process_tag(), keys.DEVICE: str(ctx.device), keys.WORKER: ctx.worker}.items():
            trial.set_user_attr(key, value)
        trial.set_user_attr(keys.N_PARAMS, self.n_params)
        run_id = None
        if ctx.tracker:
            params = runs.run_params(ctx.plan, unit, beta, lr, seed, str(ctx.device), trial.user_attrs.get(keys.RETRY_OF))
            run_id = ctx.tracker.start_trial(ctx.plan.experiment_id, ctx.plan.parent_run_id, unit.study_name,
                                             runs.run_name(unit, trial), trial.number,
                                             {**params, "stack": self.size})
            trial.set_user_attr(keys.MLFLOW_RUN_ID, run_id)
        self.open[trial.number] = (trial, run_id)
        self.asked += 1
        return train.Member(seed, beta, lr, key=trial.number, init=initial_weights(self.spec, seed, ctx.pca))

    def epoch(self, member, record: dict) -> bool:
        """Log the epoch; True when the pruner stops this trial."""
        trial, run_id = self.open[member.key]
        if run_id:
            self.ctx.tracker.log_metrics(run_id, {k: v for k, v in record.items() if k != "epoch"},
                                         step=record["epoch"])
        self.progress(member.key, record, sorted(self.open))
        if self.cfg.pruner in ("none", "stack"):  # none, or judged at rungs: no storage write per epoch
            return False
        trial.report(record[f"val_{self.objective}"], record["epoch"])
        return trial.should_prune()

    def judge(self, pairs: list) -> dict[int, str]:
        """search.pruner stack: at a rung, report each member's value and stop those that rank
        below the unit's best trials at that epoch (search/halving.py); {trial number: reason}."""
        rungs = set(halving.rungs(self.cfg.train.epochs))
        at = {}
        for member, record in pairs:
            if record["epoch"] in rungs:
                value = record[f"val_{self.objective}"]
                self.open[member.key][0].report(value, record["epoch"])
                at.setdefault(record["epoch"], {})[member.key] = value
        if not at:
            return {}
        trials = self.study.get_trials(deepcopy=False)
        out = {}
        for epoch, mine in at.items():
            others = {t.number: t.intermediate_values[epoch] for t in trials
                      if t.number not in self.open and epoch in t.intermediate_values}
            for number, why in halving.stops(mine, others, halving.floor(self.unit.budget)).items():
                out[number] = f"stopped at epoch {epoch}: {why}"
        return out

    def tell(self, result) -> None:
        """Store a stopped member: checkpoint and metrics when complete, its reason otherwise."""
        from optuna.trial import TrialState

        trial, run_id = self.open[result.member.key]
        tracker, unit, label = self.ctx.tracker, self.unit, f"[{self.ctx.worker}] k={self.unit.latent_dim}"
        trial.set_user_attr(keys.DATA_ORDER, list(result.data_order))
        if result.status == "failed":
            self._fail(trial, run_id, result.reason)
            return
        final = {f"val_{k}": v for k, v in result.best.items()}
        attrs = {keys.METRICS: final, keys.EPOCHS_RUN: result.epochs_run, keys.SECONDS: round(result.seconds, 3)}
        if result.status == "pruned":
            # trials.csv shows how far a pruned trial got and what it cost, like a finished one.
            for key, value in {**attrs, keys.FAIL_REASON: result.reason}.items():
                trial.set_user_attr(key, value)
            if run_id:
                tracker.end(run_id, "FINISHED", {"optuna.state": "PRUNED"})
            self._close(trial, state=TrialState.PRUNED)
            return
        for key, value in {**attrs, keys.BEST_EPOCH: result.best_epoch,
                           keys.STILL_IMPROVING: result.still_improving}.items():
            trial.set_user_attr(key, value)
        path = self._save(trial, result)
        if run_id:
            tracker.log_metrics(run_id, {**{f"best_{k}": v for k, v in final.items()},
                                         "epochs_run": result.epochs_run, "seconds": result.seconds,
                                         "still_improving": float(result.still_improving)}, flush=True)
            tracker.log_artifact(run_id, path, "checkpoint")
            tracker.end(run_id, "FINISHED", {"optuna.state": "COMPLETE",
                                             keys.STILL_IMPROVING: str(result.still_improving).lower()})
        value = result.best[self.objective]
        self._close(trial, values=value)
        late = (f"; STILL IMPROVING at the {self.cfg.train.ceiling}-epoch ceiling (undertrained: raise "
                "search.train.max_epochs)") if result.still_improving else ""
        print(f"{label} {unit.arm} trial {trial.number}: val {self.objective} {value:.3f} after "
              f"{result.epochs_run} epochs ({result.seconds:.1f}s, stack of {self.size}){late}", flush=True)

    def _save(self, trial, result) -> Path:
        from latentstudy import models

        model = models.build(self.spec)
        model.load_state_dict(result.state_dict)
        path = self.ctx.checkpoints / self.unit.study_name / f"trial-{trial.number}.pt"
        m = result.member
        models.save_checkpoint(path, model, checkpoint_meta(self.unit, trial.number, m.beta, m.lr, m.seed, result))
        trial.set_user_attr(keys.CHECKPOINT, str(path))
        return path

    def _close(self, trial, **outcome) -> None:
        self.study.tell(trial, **outcome)
        self.heartbeats.remove(trial)
        del self.open[trial.number]

    def fail_open(self, reason: str) -> None:
        for trial, run_id in list(self.open.values()):
            self._fail(trial, run_id, reason)

    def _fail(self, trial, run_id: str | None, reason: str) -> None:
        """The one way a trial fails: its reason stored and printed, its run FAILED, the study told."""
        from optuna.trial import TrialState

        trial.set_user_attr(keys.FAIL_REASON, reason)
        if run_id:
            self.ctx.tracker.end(run_id, "FAILED", {"optuna.state": "FAIL", "fail_reason": reason})
        print(f"[{self.ctx.worker}] k={self.unit.latent_dim} {self.unit.arm} trial {trial.number} FAILED: "
              f"{reason}", flush=True)
        self._close(trial, state=TrialState.FAIL)


class Progress:
    """Within long training, one line every 15 s: the open trials, the furthest epoch, the best so far."""

    def __init__(self, worker: str, unit: Unit, train_cfg: TrainConfig, objective: str):
        self.label = f"[{worker}] k={unit.latent_dim} {unit.arm}"
        self.cfg, self.objective, self.last = train_cfg, objective, time.monotonic()
        self.best, self.best_trial, self.epoch = math.inf, None, 0

    def __call__(self, number: int, record: dict, open_trials: list[int]) -> None:
        value = record[f"val_{self.objective}"]
        if value < self.best:
            self.best, self.best_trial = value, number
        self.epoch = max(self.epoch, record["epoch"])
        if time.monotonic() - self.last > 15:
            self.last = time.monotonic()
            past = self.epoch > self.cfg.epochs  # still improving past the cap, up to the ceiling
            of = f"{self.cfg.ceiling} (past the cap {self.cfg.epochs}: still improving)" if past else self.cfg.epochs
            print(f"{self.label} trials {','.join(map(str, open_trials))} (stack of {len(open_trials)}): epoch "
                  f"{self.epoch}/{of}, best val {self.objective} {self.best:.3f} (trial {self.best_trial})",
                  flush=True)


# Eight parameters on purpose: the `latentstudy worker --one` command line, one per flag.
def worker_main(plan: Plan, storage, tracking: str | None, prepared: Path, device: str, checkpoints: Path,
                worker: str, assume_single_host: bool) -> int:
    """Put the data on this worker's device and run stacks until the study's budget is met."""
    import torch

    from latentstudy import data, pca
    from latentstudy.feed import DeviceSplit
    from latentstudy.tracking import Tracker

    dev = devices.configure(device)
    summary = data.load_summary(prepared)
    if summary.fingerprint != plan.fingerprint:
        raise StudyError(f"{prepared}: data fingerprint {summary.fingerprint} differs from the study's "
                         f"{plan.fingerprint}; run this worker on the same prepared data")
    splits, basis = [], None
    for name in ("train", "val"):
        x = data.load_split(prepared, name)[0]
        if name == "train" and plan.config.model.ae_pca_path:
            basis = pca.fit(x)  # as the pca stage fits it
        split = DeviceSplit(torch.as_tensor(x), dev)
        if split.staged:
            print(f"[{worker}] the {name} split ({split.x.nbytes / 2**30:.1f} GiB) needs more than half of "
                  f"{dev}'s free memory: staged from pinned host memory a chunk at a time", flush=True)
        splits.append(split)
    tracker = Tracker(tracking) if tracking else None
    ctx = WorkerContext(plan, storage, tracking, tracker, *splits, dev, checkpoints, worker, assume_single_host, basis)
    return run_worker(ctx)


