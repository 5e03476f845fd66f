"""The search: Optuna tunes beta and the learning rate at every latent size, on every device.

One Optuna study per (latent size, arm): `<prefix>-k<k>-vae` tunes beta and lr, `<prefix>-k<k>-ae`
tunes lr for the plain autoencoder. The prefix carries a hash of everything that changes a
trial's outcome (search params minus budgets and devices, the seed, the data fingerprint), so
different params never share trials and a rerun with the same params resumes.

The coordinator (the DVC stage) creates the storage, the studies and the MLflow parent run,
then starts worker processes (`latentstudy worker`), one per GPU times workers_per_device or
cpu_workers on CPU, and prints progress until every study has its finished trials. Workers on
other machines join the same studies through a shared storage URL.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path

from latentstudy.config import SearchConfig, StudyConfig, StudyError

ARMS = ("vae", "ae")
HOST = socket.gethostname()
FINISHED_STATUS = {"COMPLETE": "FINISHED", "PRUNED": "FINISHED", "FAIL": "FAILED"}
# Everything in SearchConfig changes results except these: budgets, devices, storage.
RUNTIME_KEYS = ("trials_per_dim", "ae_trials_per_dim", "max_trials_per_dim", "device",
                "workers_per_device", "cpu_workers", "storage", "heartbeat_seconds")


class TrialFailure(RuntimeError):
    """A trial that cannot finish (NaN loss, out of memory): recorded as FAIL with its reason."""


# --- the plan ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Unit:
    """One Optuna study: one latent size, one arm."""

    latent_dim: int
    arm: str
    study_name: str
    budget: int  # COMPLETE trials wanted
    limit: int  # trials started at most (failed and pruned ones count)


@dataclass(frozen=True)
class Plan:
    """What a worker anywhere needs to join the study; stored in every unit's study attrs."""

    prefix: str
    units: tuple[Unit, ...]
    search: dict  # SearchConfig as a dict
    seed: int
    input_dim: int
    image_shape: list[int] | None
    fingerprint: str
    experiment: str
    experiment_id: str | None = None  # MLflow ids, when tracking
    parent_run_id: str | None = None

    @property
    def config(self) -> SearchConfig:
        from latentstudy.config import build

        return build(SearchConfig, self.search, "plan")

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @staticmethod
    def from_json(text: str) -> "Plan":
        raw = json.loads(text)
        raw["units"] = tuple(Unit(**u) for u in raw["units"])
        return Plan(**raw)


def study_prefix(dataset: str, search: SearchConfig, seed: int, fingerprint: str) -> str:
    relevant = {k: v for k, v in asdict(search).items() if k not in RUNTIME_KEYS}
    blob = json.dumps({"search": relevant, "seed": seed, "data": fingerprint}, sort_keys=True)
    return f"{dataset}-{hashlib.sha256(blob.encode()).hexdigest()[:10]}"


def make_plan(study: StudyConfig, search: SearchConfig, summary: dict, experiment: str) -> Plan:
    from latentstudy.models import choose_arch

    choose_arch(search.model.arch, summary["image_shape"])  # fail now, not in every worker
    prefix = study_prefix(summary["dataset"], search, study.seed, summary["fingerprint"])
    units = tuple(
        Unit(k, arm, f"{prefix}-k{k}-{arm}",
             search.trials_per_dim if arm == "vae" else search.ae_trials_per_dim, search.max_trials_per_dim)
        for k in study.latent_dims for arm in ARMS
    )
    return Plan(prefix, units, asdict(search), study.seed, summary["input_dim"], summary["image_shape"],
                summary["fingerprint"], experiment)


def unit_seed(plan: Plan, unit: Unit) -> int:
    return (plan.seed * 1_000_003 + zlib.crc32(unit.study_name.encode())) % 2**31


# --- storage ----------------------------------------------------------------------------------


def storage_url(search: SearchConfig, store_dir: Path) -> str:
    """OPTUNA_STORAGE, else search.storage, else a journal file in the persistent store dir."""
    url = os.environ.get("OPTUNA_STORAGE") or search.storage
    return url or f"journal:{(store_dir / 'optuna.journal').resolve()}"


def open_storage(url: str, heartbeat_seconds: int, tracking: str | None = None):
    """An Optuna storage for the URL; RDB storages get heartbeats that retry stale trials.

    journal:/path is a JournalStorage on a local file (one host, many processes); anything else
    is an RDB URL (postgresql://..., mysql://..., sqlite:///...).
    """
    import warnings

    import optuna
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    if url.startswith("journal:"):
        path = Path(url.removeprefix("journal:"))
        path.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(path)))
    try:
        with warnings.catch_warnings():  # heartbeats are "experimental": one warning per process
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.storages.RDBStorage(
                url, heartbeat_interval=heartbeat_seconds, grace_period=3 * heartbeat_seconds,
                heartbeat_stale_trial_callback=lambda study, trial: retry_lost(study, trial, tracking),
                engine_kwargs={"pool_pre_ping": True},
            )
    except Exception as exc:  # sqlalchemy raises many types for bad URLs and refused connections
        raise StudyError(f"search.storage / OPTUNA_STORAGE = {_redact(url)!r}: cannot open ({type(exc).__name__}: "
                         f"{str(exc).splitlines()[0]}); allowed: an Optuna RDB URL or journal:/path") from None


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


def create_studies(plan: Plan, storage) -> None:
    """Create (or find) every unit's study and store the plan in it, before any worker starts."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    for unit in plan.units:
        study = optuna.create_study(storage=storage, study_name=unit.study_name, direction="minimize",
                                    load_if_exists=True)
        study.set_user_attr("plan", plan.to_json())
        study.set_user_attr("latent_dim", unit.latent_dim)
        study.set_user_attr("arm", unit.arm)


def load_plan(storage, prefix: str) -> Plan:
    import optuna

    names = [n for n in optuna.study.get_all_study_names(storage) if n.startswith(prefix + "-k")]
    if not names:
        raise StudyError(f"--study {prefix}: no such study in this storage; start the coordinator "
                         "(dvc repro) first, or check the name in reports/search/study.json")
    study = optuna.load_study(study_name=names[0], storage=storage)
    return Plan.from_json(study.user_attrs["plan"])


def join(url: str, prefix: str, tracking: str | None):
    """Open a storage and the plan of an existing study, with the plan's heartbeat setting."""
    plan = load_plan(open_storage(url, 1, tracking), prefix)
    return open_storage(url, plan.config.heartbeat_seconds, tracking), plan


# --- liveness: trials whose worker died -------------------------------------------------------


def process_tag() -> dict:
    import psutil

    pid = os.getpid()
    # Set one by one and read by reapers at any moment: "pid" last, so a trial with a pid has all three.
    return {"host": HOST, "pid_started": psutil.Process(pid).create_time(), "pid": pid}


def _alive_here(attrs: dict) -> bool | None:
    """True/False for a trial started on this host; None when it ran elsewhere (heartbeats decide)."""
    import psutil

    if attrs.get("host") != HOST or "pid" not in attrs or "pid_started" not in attrs:
        return None
    try:
        return abs(psutil.Process(attrs["pid"]).create_time() - attrs["pid_started"]) < 1e-3
    except psutil.Error:
        return False


def retry_lost(study, trial, tracking: str | None) -> None:
    """A trial whose worker died: enqueue its parameters again and mark its MLflow run KILLED."""
    study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number})
    run_id = trial.user_attrs.get("mlflow_run_id")
    if tracking and run_id:
        from latentstudy.tracking import Tracker

        Tracker(tracking).set_status(run_id, "KILLED")


def reap_lost(study, tracking: str | None, assume_single_host: bool) -> int:
    """Fail RUNNING trials whose worker is gone and retry them; returns how many.

    RDB storages detect this by heartbeat (Optuna's fail_stale_trials). Journal storages have no
    heartbeat, but live on one host, so a trial whose recorded process is dead is lost.
    """
    import warnings

    import optuna
    from optuna.trial import TrialState

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
    lost = 0
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        alive = _alive_here(trial.user_attrs)
        if alive is False or (alive is None and assume_single_host and "pid" not in trial.user_attrs
                              and time.time() - trial.datetime_start.timestamp() > 60):
            try:
                failed = study._storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL)
            except optuna.exceptions.UpdateFinishedTrialError:
                failed = False  # another reaper (worker, coordinator) failed and retried it first
            if failed:
                retry_lost(study, trial, tracking)
                lost += 1
    return lost


# --- the worker -------------------------------------------------------------------------------


def counts(trials) -> dict[str, int]:
    out = {"COMPLETE": 0, "RUNNING": 0, "WAITING": 0, "FAIL": 0, "PRUNED": 0}
    for t in trials:
        out[t.state.name] = out.get(t.state.name, 0) + 1
    return out


def needs_work(unit: Unit, c: dict[str, int]) -> bool:
    """Below budget, or a retry of a lost trial is waiting (it runs even if a racing worker already
    filled the budget: a retry that never runs would be reported as retried), within the limit."""
    started = c["COMPLETE"] + c["RUNNING"] + c["FAIL"] + c["PRUNED"]
    return (c["COMPLETE"] + c["RUNNING"] < unit.budget or c["WAITING"] > 0) and started < unit.limit


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
    studies = {u.study_name: optuna.load_study(study_name=u.study_name, storage=ctx.storage,
                                               sampler=_sampler(ctx.plan, u, ctx.worker), pruner=_pruner(cfg))
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
    import torch

    from latentstudy import models, train

    for key, value in {**process_tag(), "device": str(ctx.device), "worker": ctx.worker}.items():
        trial.set_user_attr(key, value)
    cfg = ctx.plan.config
    beta = trial.suggest_float("beta", cfg.beta.low, cfg.beta.high, log=True) if unit.arm == "vae" else 0.0
    lr = trial.suggest_float("lr", cfg.lr.low, cfg.lr.high, log=True)
    seed = (unit_seed(ctx.plan, unit) + 7919 * trial.number) % 2**31
    spec = models.NetSpec(ctx.plan.input_dim, unit.latent_dim,
                          models.choose_arch(cfg.model.arch, ctx.plan.image_shape), cfg.model.likelihood,
                          unit.arm == "vae", tuple(cfg.model.hidden), tuple(cfg.model.channels),
                          models.chw(ctx.plan.image_shape))
    tracker, run_id = ctx.tracker, None
    if tracker:
        run_id = tracker.start_trial(
            ctx.plan.experiment_id, ctx.plan.parent_run_id, unit.study_name, f"k{unit.latent_dim}-{unit.arm}-t{trial.number}",
            trial.number,
            {"latent_dim": unit.latent_dim, "arm": unit.arm, "beta": beta, "lr": lr, "seed": seed,
             "device": str(ctx.device), "model": asdict(cfg.model), "train": asdict(cfg.train),
             "objective": cfg.objective, "retry_of": trial.user_attrs.get("retry_of")},
        )
        trial.set_user_attr("mlflow_run_id", run_id)
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
            for key, value in {"metrics": {k: v for k, v in record.items() if k.startswith("val_")},
                               "epochs_run": epoch, "seconds": round(record["seconds"], 3),
                               "fail_reason": reason}.items():
                trial.set_user_attr(key, value)
            raise optuna.TrialPruned(reason)

    with torch.random.fork_rng(devices=[ctx.device] if ctx.device.type == "cuda" else []):
        torch.manual_seed(seed)
        model = models.build(spec).to(ctx.device)
    trial.set_user_attr("n_params", models.n_params(model))
    try:
        result = train.train(model, ctx.x_train, ctx.x_val, cfg.train, beta=beta, lr=lr,
                             objective=cfg.objective, seed=seed, on_epoch=on_epoch)
    except optuna.TrialPruned:
        if tracker:
            tracker.end(run_id, "FINISHED", {"optuna.state": "PRUNED"})
        raise
    except Exception as exc:  # NaN loss, out of memory, a CUDA fault: this trial fails, the study goes on
        reason = failure_reason(exc, ctx.device)
        trial.set_user_attr("fail_reason", reason)
        if tracker:
            tracker.end(run_id, "FAILED", {"optuna.state": "FAIL", "fail_reason": reason})
        print(f"[{ctx.worker}] k={unit.latent_dim} {unit.arm} trial {trial.number} FAILED: {reason}", flush=True)
        raise TrialFailure(reason) from None
    final = {f"val_{k}": v for k, v in result.best.items()}
    trial.set_user_attr("metrics", final)
    for key, value in {"epochs_run": result.epochs_run, "best_epoch": result.best_epoch,
                       "seconds": round(result.seconds, 3)}.items():
        trial.set_user_attr(key, value)
    path = ctx.checkpoints / unit.study_name / f"trial-{trial.number}.pt"
    models.save_checkpoint(path, model, {"study": unit.study_name, "trial": trial.number, "beta": beta,
                                         "lr": lr, "seed": seed, **final, "seconds": result.seconds,
                                         "epochs_run": result.epochs_run})
    trial.set_user_attr("checkpoint", str(path))
    if tracker:
        tracker.log_metrics(run_id, {**{f"best_{k}": v for k, v in final.items()}, "epochs_run": result.epochs_run,
                                     "seconds": result.seconds}, flush=True)
        tracker.log_artifact(run_id, path, "checkpoint")
        tracker.end(run_id, "FINISHED", {"optuna.state": "COMPLETE"})
    value = result.best[cfg.objective]
    print(f"[{ctx.worker}] k={unit.latent_dim} {unit.arm} trial {trial.number}: val {cfg.objective} "
          f"{value:.3f} after {result.epochs_run} epochs ({result.seconds:.1f}s)", flush=True)
    return value


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


# --- devices and launching ----------------------------------------------------------------------


def worker_slots(device: str, workers_per_device: int, cpu_workers: int) -> list[tuple[str, dict]]:
    """(torch device, extra env) per worker process: one per GPU x workers_per_device, else CPU."""
    import torch

    gpus = torch.cuda.device_count()
    if device == "cuda" and gpus == 0:
        raise StudyError("search.device = cuda but no CUDA device is visible; allowed here: auto or cpu")
    if device in ("auto", "cuda") and gpus > 0:
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        ids = visible.split(",") if visible else [str(i) for i in range(gpus)]
        return [("cuda:0", {"CUDA_VISIBLE_DEVICES": gpu_id}) for gpu_id in ids[:gpus]
                for _ in range(workers_per_device)]
    # LATENTSTUDY_THREADS set by the user wins: several workers sharing a host must not each take
    # every core (oversubscribed OpenMP threads spin and train ~10x slower). Else split the cores
    # this process may run on (a Slurm or taskset allocation, not the whole node).
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    threads = int(os.environ.get("LATENTSTUDY_THREADS") or 0) or max(1, cores // cpu_workers)
    return [("cpu", {"CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": str(threads),
                     "LATENTSTUDY_THREADS": str(threads)}) for _ in range(cpu_workers)]


def launch_workers(slots: list[tuple[str, dict]], args: list[str], tag: str, url: str,
                   tracking: str | None) -> list[subprocess.Popen]:
    """One `latentstudy worker --one` per slot. The storage URL and tracking URI go through the
    environment: on the command line `ps` would show their passwords to every user of the host."""
    stores = {"OPTUNA_STORAGE": url, **({"MLFLOW_TRACKING_URI": tracking} if tracking else {})}
    procs = []
    for i, (device, env) in enumerate(slots):
        cmd = [sys.executable, "-m", "latentstudy.cli", "worker", "--one", "--device", device,
               "--name", f"{tag}{i}", *args, *([] if tracking else ["--no-tracking"])]
        procs.append(subprocess.Popen(cmd, env={**os.environ, **env, **stores, "PYTHONUNBUFFERED": "1"}))
    return procs


# --- the coordinator ----------------------------------------------------------------------------


def snapshot(plan: Plan, storage) -> list:
    import optuna

    return [(u, optuna.load_study(study_name=u.study_name, storage=storage).get_trials(deepcopy=False))
            for u in plan.units]


def progress_line(plan: Plan, snap: list, started: float, done_before: int, final: bool = False) -> str:
    total = sum(u.budget for u in plan.units)
    complete = sum(min(counts(t)["COMPLETE"], u.budget) for u, t in snap)
    agg = counts([t for _, trials in snap for t in trials])
    best = {}
    for unit, trials in snap:
        values = [t.value for t in trials if t.state.name == "COMPLETE"]
        if values and unit.arm == "vae":
            best[unit.latent_dim] = min(values)
    elapsed = time.monotonic() - started
    new = complete - done_before
    eta = f"{_dur(elapsed / new * (total - complete))}" if new > 0 and complete < total else "-"
    bests = " ".join(f"k={k}:{v:.2f}" for k, v in sorted(best.items()))
    head = "[search] done: trials" if final else "[search] trials"
    return (f"{head} {complete}/{total} finished ({agg['RUNNING']} running, {agg['FAIL']} failed, "
            f"{agg['PRUNED']} pruned) | best VAE val objective {bests or '-'} | "
            f"elapsed {_dur(elapsed)}" + ("" if final else f" ETA {eta}"))


def shortfalls(snap: list) -> list[str]:
    """One line per unit that stopped below its budget because max_trials_per_dim trials had started."""
    lines = []
    for unit, trials in snap:
        c = counts(trials)
        if c["COMPLETE"] < unit.budget:
            lines.append(f"[search] k={unit.latent_dim} {unit.arm}: {c['COMPLETE']} of {unit.budget} trials finished; "
                         f"search.max_trials_per_dim = {unit.limit} trials started ({c['PRUNED']} pruned, "
                         f"{c['FAIL']} failed). Raise it, or prune less (search.pruner), for the full budget.")
    return lines


def _dur(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    return f"{m}m{s:02d}s" if m else f"{s}s"


def unit_done(unit: Unit, trials) -> bool:
    c = counts(trials)
    return not needs_work(unit, c) and c["RUNNING"] == 0


def reap_all(plan: Plan, storage, tracking: str | None, single_host: bool) -> None:
    import optuna

    for unit in plan.units:
        reap_lost(optuna.load_study(study_name=unit.study_name, storage=storage), tracking, single_host)


def coordinate(plan: Plan, storage, url: str, tracking: str | None, prepared: Path, checkpoints: Path,
               slots: list[tuple[str, dict]], poll: float = 2.0) -> None:
    """Run local workers and print progress until every unit is done.

    Workers elsewhere may hold trials: when ours run out of work the coordinator keeps waiting
    for those, reaps the ones whose worker died, and starts local workers again for retries.
    """
    single_host = url.startswith("journal:")
    reap_all(plan, storage, tracking, single_host)
    args = ["--study", plan.prefix, "--data", str(prepared), "--checkpoints", str(checkpoints), "--exit-with-parent"]
    started = time.monotonic()
    done_before = sum(counts(t)["COMPLETE"] for _, t in snapshot(plan, storage))
    devices = sorted({e["CUDA_VISIBLE_DEVICES"] and f"cuda:{e['CUDA_VISIBLE_DEVICES']}" or d for d, e in slots})
    print(f"[search] study {plan.prefix}: {len(plan.units)} Optuna studies "
          f"({len(plan.units) // len(ARMS)} latent sizes x {'/'.join(ARMS)}), {len(slots)} worker(s) on "
          f"{', '.join(devices)}", flush=True)
    procs: list[subprocess.Popen] = []
    last, last_time = "", 0.0
    try:
        while True:
            snap = snapshot(plan, storage)
            if all(p.poll() is not None for p in procs):
                crashed = [p.returncode for p in procs if p.returncode != 0]
                if procs and len(crashed) == len(procs):
                    raise StudyError(f"all {len(procs)} search workers exited with errors (exit codes {crashed}); "
                                     "see their output above")
                if all(unit_done(u, t) for u, t in snap):
                    break
                if any(needs_work(u, counts(t)) for u, t in snap):
                    procs = launch_workers(slots, args, "w", url, tracking)
            line = progress_line(plan, snap, started, done_before)
            key = line.split(" finished")[0] + line.split("|")[1]  # finished count and bests, not pruned ticks
            if key != last or time.monotonic() - last_time > 30:
                print(line, flush=True)
                last, last_time = key, time.monotonic()
            time.sleep(poll)
            reap_all(plan, storage, tracking, single_host)
    except BaseException:
        for p in procs:
            p.kill()
        raise
    snap = snapshot(plan, storage)
    print("\n".join([progress_line(plan, snap, started, done_before, final=True), *shortfalls(snap)]), flush=True)


def reconcile(plan: Plan, storage, tracker, experiment_id: str) -> None:
    """Make every trial run's MLflow status agree with its Optuna state (after kills, retries)."""
    state_of = {}
    for unit, trials in snapshot(plan, storage):
        for t in trials:
            if "mlflow_run_id" in t.user_attrs:
                state_of[t.user_attrs["mlflow_run_id"]] = t.state.name
    for run in tracker.runs(experiment_id, plan.prefix, "trial"):
        state = state_of.get(run.info.run_id)
        lost = state == "FAIL" and run.data.tags.get("optuna.state") != "FAIL"
        want = "KILLED" if state is None or lost else FINISHED_STATUS.get(state, "RUNNING")
        if run.info.status != want:
            tracker.set_status(run.info.run_id, want)


# --- outputs ------------------------------------------------------------------------------------

CSV_COLUMNS = ["study", "number", "latent_dim", "arm", "beta", "lr", "state", "fail_reason", "retry_of",
               "epochs_run", "best_epoch", "val_distortion_nats", "val_rate_nats", "val_neg_elbo_nats",
               "val_sse_per_image", "objective_value", "seconds", "n_params", "device", "worker", "mlflow_run_id"]


def trial_rows(snap: list) -> list[dict]:
    rows = []
    for unit, trials in snap:
        retries = {t.user_attrs["retry_of"]: t.number for t in trials if "retry_of" in t.user_attrs}
        for t in trials:
            if t.state.name == "WAITING":
                continue
            m = t.user_attrs.get("metrics", {})
            reason = t.user_attrs.get("fail_reason", "")
            if t.state.name == "FAIL" and not reason:
                reason = "worker lost (process died or stopped heartbeating)"
                if t.number in retries:
                    reason += f"; retried as trial {retries[t.number]}"
            rows.append({
                "study": unit.study_name, "number": t.number, "latent_dim": unit.latent_dim, "arm": unit.arm,
                "beta": t.params.get("beta"), "lr": t.params.get("lr"), "state": t.state.name,
                "fail_reason": reason, "retry_of": t.user_attrs.get("retry_of"),
                "epochs_run": t.user_attrs.get("epochs_run"), "best_epoch": t.user_attrs.get("best_epoch"),
                "val_distortion_nats": m.get("val_distortion"), "val_rate_nats": m.get("val_rate"),
                "val_neg_elbo_nats": m.get("val_neg_elbo"), "val_sse_per_image": m.get("val_sse"),
                "objective_value": t.value, "seconds": t.user_attrs.get("seconds"),
                "n_params": t.user_attrs.get("n_params"), "device": t.user_attrs.get("device"),
                "worker": t.user_attrs.get("worker"), "mlflow_run_id": t.user_attrs.get("mlflow_run_id"),
            })
    return rows


def best_trials(snap: list) -> dict[tuple[int, str], object]:
    best = {}
    for unit, trials in snap:
        done = [t for t in trials if t.state.name == "COMPLETE"]
        if done:
            best[(unit.latent_dim, unit.arm)] = min(done, key=lambda t: (t.value, t.number))
    return best


def fetch_checkpoint(trial, tracker, scratch: Path) -> Path:
    """The trial's checkpoint: on this disk when the worker shared it, else from MLflow."""
    path = Path(trial.user_attrs["checkpoint"])
    if path.is_file():
        return path
    if tracker is None or "mlflow_run_id" not in trial.user_attrs:
        raise StudyError(f"{path}: checkpoint of trial {trial.number} not found and no MLflow run to fetch it from")
    return tracker.download(trial.user_attrs["mlflow_run_id"], f"checkpoint/{path.name}", scratch)


def metrics_summary(plan: Plan, snap: list, best: dict) -> dict:
    out = {"study": plan.prefix, "latent_dims": {}}
    for unit, trials in snap:
        c = counts(trials)
        entry = out["latent_dims"].setdefault(f"k{unit.latent_dim}", {})
        t = best.get((unit.latent_dim, unit.arm))
        m = t.user_attrs.get("metrics", {}) if t else {}
        entry[unit.arm] = {"complete": c["COMPLETE"], "failed": c["FAIL"], "pruned": c["PRUNED"],
                           "val_neg_elbo_nats": m.get("val_neg_elbo"), "val_distortion_nats": m.get("val_distortion"),
                           "val_sse_per_image": m.get("val_sse"), "beta": t.params.get("beta") if t else None,
                           "lr": t.params.get("lr") if t else None}
    return out


def write_outputs(plan: Plan, storage, url: str, tracker, experiment_id: str | None, prepared: Path,
                  models_dir: Path, trials_csv: Path, metrics_json: Path, study_json: Path, scratch: Path) -> None:
    import pandas as pd

    from latentstudy import data, figures, models

    snap = snapshot(plan, storage)
    best = best_trials(snap)
    models_dir.mkdir(parents=True, exist_ok=True)
    summary = data.load_summary(prepared)
    x_val = data.load_split(prepared, "val")[0][:8]
    for (k, arm), trial in best.items():
        dest = models.best_path(models_dir, k, arm)
        shutil.copyfile(fetch_checkpoint(trial, tracker, scratch), dest)
        run_id = trial.user_attrs.get("mlflow_run_id")
        if tracker and run_id:
            model, _ = models.load_checkpoint(dest)
            grid = scratch / f"reconstructions-k{k}-{arm}.png"
            figures.reconstruction_strip(model, x_val, summary["image_shape"], grid)
            tracker.log_artifact(run_id, grid, "figures")
            tracker.log_artifact(run_id, dest, "model")
            tracker.set_tags(run_id, {"latentstudy.best_of_size": "true"})
    trials_csv.parent.mkdir(parents=True, exist_ok=True)
    table = pd.DataFrame(trial_rows(snap), columns=CSV_COLUMNS)
    for col in ("retry_of", "epochs_run", "best_epoch", "n_params"):
        table[col] = table[col].astype("Int64")
    table.to_csv(trials_csv, index=False)
    metrics_json.write_text(json.dumps(metrics_summary(plan, snap, best), indent=2) + "\n")
    study_json.write_text(json.dumps({
        "prefix": plan.prefix, "storage": url if url.startswith("journal:") else _redact(url),
        "experiment": plan.experiment, "experiment_id": experiment_id, "parent_run_id": plan.parent_run_id,
        "studies": [u.study_name for u in plan.units], "objective": plan.config.objective,
        "latent_dims": sorted({u.latent_dim for u in plan.units}), "seed": plan.seed, "search": plan.search,
    }, indent=2) + "\n")


def _redact(url: str) -> str:
    """Storage URLs may carry passwords; keep them out of files that land in git or DVC."""
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        return f"{scheme}://***@{rest.rsplit('@', 1)[1]}"  # the last @: a password may hold one
    return url


def run(study: StudyConfig, search: SearchConfig, prepared: Path, root: Path, models_dir: Path,
        trials_csv: Path, metrics_json: Path, study_json: Path, tracking: str | None) -> Plan:
    """The search stage: plan, create stores, run workers, write the best models and the tables."""
    import dataclasses

    from latentstudy import data
    from latentstudy.tracking import Tracker, experiment_name

    summary = data.load_summary(prepared)
    store = root / ".latentstudy"
    plan = make_plan(study, search, summary, experiment_name(summary))
    url = storage_url(search, store)
    storage = open_storage(url, search.heartbeat_seconds, tracking)
    tracker, experiment_id = None, None
    if tracking:
        tracker = Tracker(tracking)
        experiment_id = tracker.experiment(plan.experiment)
        params = {"study": asdict(study), "search": asdict(search), "data_fingerprint": plan.fingerprint}
        plan = dataclasses.replace(plan, experiment_id=experiment_id,
                                   parent_run_id=tracker.study_run(experiment_id, plan.prefix, params))
    create_studies(plan, storage)
    slots = worker_slots(search.device, search.workers_per_device, search.cpu_workers)
    checkpoints = store / "checkpoints"
    coordinate(plan, storage, url, tracking, prepared, checkpoints, slots)
    snap = snapshot(plan, storage)
    missing = [u.study_name for u, t in snap if counts(t)["COMPLETE"] == 0]
    if len(missing) == len(plan.units):
        raise StudyError("no trial finished at any latent size; see the failure reasons above "
                         "(search.lr range, search.train settings)")
    scratch = store / "scratch"
    write_outputs(plan, storage, url, tracker, experiment_id, prepared, models_dir, trials_csv, metrics_json,
                  study_json, scratch)
    if tracker:
        reconcile(plan, storage, tracker, experiment_id)
        tracker.end(plan.parent_run_id, "FINISHED")
    shutil.rmtree(scratch, ignore_errors=True)
    for name in missing:
        print(f"[search] warning: {name} has no finished trial; it is left out of the models", flush=True)
    return plan


def apply_thread_limit() -> None:
    """CPU workers split the machine's cores between them (the coordinator sets the share)."""
    import torch

    threads = os.environ.get("LATENTSTUDY_THREADS")
    if threads:
        torch.set_num_threads(int(threads))
