"""Where trials live: the Optuna storage (a journal file on one host, an RDB URL across machines),
the studies and their plan, and liveness: trials whose worker died are failed and retried, in
this study and in earlier ones (a search killed, then started again with other params).
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

from latentstudy.config import SearchConfig, StudyError
from latentstudy.search import keys
from latentstudy.search.plan import Plan, arm_objective, metric_name

HOST = socket.gethostname()


def storage_url(search: SearchConfig, store_dir: Path) -> str:
    """OPTUNA_STORAGE, else search.storage, else a journal file in the persistent store dir."""
    url = os.environ.get("OPTUNA_STORAGE") or search.storage
    return url or f"journal:{(store_dir / 'optuna.journal').resolve()}"


def journal_path(url: str) -> Path | None:
    """The journal file of a journal: URL; None for an RDB URL."""
    return Path(url.removeprefix("journal:")) if url.startswith("journal:") else None


def open_storage(url: str, heartbeat_seconds: int, tracking: str | None = None):
    """An Optuna storage for the URL; RDB storages get heartbeats that retry stale trials.

    journal:/path is a JournalStorage on a local file (one host, many processes); anything else
    is an RDB URL (postgresql://..., mysql://..., sqlite:///...).
    """
    import warnings

    import optuna
    from optuna.storages.journal import JournalStorage

    from latentstudy.search.journal import CheckedJournal

    if journal_path(url):
        return JournalStorage(CheckedJournal(journal_path(url)))
    try:
        with warnings.catch_warnings():  # heartbeats are "experimental": one warning per process
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.storages.RDBStorage(
                url, heartbeat_interval=heartbeat_seconds, grace_period=3 * heartbeat_seconds,
                heartbeat_stale_trial_callback=lambda study, trial: retry_lost(study, trial, tracking),
                engine_kwargs={"pool_pre_ping": True},
            )
    except Exception as exc:  # sqlalchemy raises many types for bad URLs and refused connections
        raise StudyError(f"search.storage / OPTUNA_STORAGE = {redact(url)!r}: cannot open ({type(exc).__name__}: "
                         f"{str(exc).splitlines()[0]}); allowed: an Optuna RDB URL or journal:/path") from None


def create_studies(plan: Plan, storage) -> None:
    """Create (or find) every unit's study and store the plan in it, before any worker starts."""
    import warnings

    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    for unit in plan.units:
        study = optuna.create_study(storage=storage, study_name=unit.study_name, direction="minimize",
                                    load_if_exists=True)
        with warnings.catch_warnings():  # set_metric_names is "experimental"
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names([metric_name(arm_objective(plan.config, unit.arm))])
        study.set_user_attr(keys.PLAN, plan.to_json())
        study.set_user_attr(keys.LATENT_DIM, unit.latent_dim)
        study.set_user_attr(keys.ARM, unit.arm)
        study.set_user_attr(keys.PHASE, unit.phase)
        if unit.reason:
            study.set_user_attr(keys.REASON, unit.reason)


def load_plan(storage, prefix: str) -> Plan:
    import optuna

    names = [n for n in optuna.study.get_all_study_names(storage) if n.startswith(prefix + "-k")]
    if not names:
        raise StudyError(f"--study {prefix}: no such study in this storage; start the coordinator "
                         "(dvc repro) first, or check the name in reports/search/study.json")
    study = optuna.load_study(study_name=names[0], storage=storage)
    return Plan.from_json(study.user_attrs[keys.PLAN])


def join(url: str, prefix: str, tracking: str | None):
    """Open a storage and the plan of an existing study, with the plan's heartbeat setting."""
    plan = load_plan(open_storage(url, 1, tracking), prefix)
    return open_storage(url, plan.config.heartbeat_seconds, tracking), plan


# --- liveness: trials whose worker died -------------------------------------------------------


def process_tag() -> dict:
    import psutil

    pid = os.getpid()
    # Set one by one and read by reapers at any moment: the pid last, so a trial with a pid has all three.
    return {keys.HOST: HOST, keys.PID_STARTED: psutil.Process(pid).create_time(), keys.PID: pid}


def process_id() -> str:
    """host:pid:start time of this process, for tags read by reapers on other runs."""
    tag = process_tag()
    return f"{tag[keys.HOST]}:{tag[keys.PID]}:{tag[keys.PID_STARTED]}"


def process_alive(ident: str) -> bool | None:
    """Whether the process named by process_id() lives; None when it ran on another host."""
    host, pid, started = ident.rsplit(":", 2)
    return _alive_here({keys.HOST: host, keys.PID: int(pid), keys.PID_STARTED: float(started)})


def _alive_here(attrs: dict) -> bool | None:
    """True/False for a trial started on this host; None when it ran elsewhere (heartbeats decide)."""
    import psutil

    if attrs.get(keys.HOST) != HOST or keys.PID not in attrs or keys.PID_STARTED not in attrs:
        return None
    try:
        return abs(psutil.Process(attrs[keys.PID]).create_time() - attrs[keys.PID_STARTED]) < 1e-3
    except psutil.Error:
        return False


def retry_lost(study, trial, tracking: str | None) -> None:
    """A trial whose worker died: enqueue its parameters (and seed) again; its MLflow run ends KILLED."""
    # The seed, and what a replicate replicates, travel with the retry.
    kept = {key: trial.user_attrs[key] for key in (keys.SEED, keys.REPLICATE_OF) if key in trial.user_attrs}
    study.enqueue_trial(trial.params, user_attrs={keys.RETRY_OF: trial.number, **kept})
    run_id = trial.user_attrs.get(keys.MLFLOW_RUN_ID)
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
        if alive is False or (alive is None and assume_single_host and keys.PID not in trial.user_attrs
                              and time.time() - trial.datetime_start.timestamp() > 60):
            try:
                failed = study._storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL)
            except optuna.exceptions.UpdateFinishedTrialError:
                failed = False  # another reaper (worker, coordinator) failed and retried it first
            if failed:
                retry_lost(study, trial, tracking)
                lost += 1
    return lost


def reap_earlier(storage, prefix: str, tracking: str | None, assume_single_host: bool) -> dict[str, int]:
    """Reap the lost trials of this storage's other latentstudy studies (earlier params, whose
    search was killed); returns {study name: trials reaped}. Their retries wait in those studies,
    and run if the user returns to those params."""
    import optuna

    reaped = {}
    for frozen in storage.get_all_studies():
        name = frozen.study_name
        if name.startswith(prefix + "-k") or keys.PLAN not in frozen.user_attrs:
            continue  # ours (reaped by the coordinator), or not a latentstudy study
        running = storage.get_all_trials(frozen._study_id, deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
        if running:
            n = reap_lost(optuna.load_study(study_name=name, storage=storage), tracking, assume_single_host)
            if n:
                reaped[name] = n
    return reaped


def snapshot(plan: Plan, storage) -> list:
    import optuna

    return [(u, optuna.load_study(study_name=u.study_name, storage=storage).get_trials(deepcopy=False))
            for u in plan.units]


def redact(url: str) -> str:
    """Storage URLs may carry passwords; keep them out of files that land in git or DVC."""
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        return f"{scheme}://***@{rest.rsplit('@', 1)[1]}"  # the last @: a password may hold one
    return url
