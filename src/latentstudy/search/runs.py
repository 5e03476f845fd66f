"""The study's MLflow runs, kept in step with the Optuna storage, which is the record of truth.

MLflow is a side channel: when its store was deleted or replaced, the search still finishes
from the Optuna storage and the local checkpoints, and recreates the runs it needs (the parent
run, one run per finished trial). Runs are found by their tags (study and trial number), not by
the run id a worker recorded, which a new store does not know. The parent run never stays
RUNNING: it ends with the search, or is ended by the next start when its search was killed.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import asdict, replace
from pathlib import Path

from latentstudy.config import StudyError
from latentstudy.data import Prepared
from latentstudy.search import keys
from latentstudy.search.plan import REPLICATE, Plan, Unit, arm_objective
from latentstudy.search.store import load_plan, process_alive, process_id, reap_earlier, redact, snapshot
from latentstudy.tracking import COORDINATOR_TAG, OPTUNA_STUDY_TAG, STUDY_TAG, TRIAL_TAG

FINISHED_STATUS = {"COMPLETE": "FINISHED", "PRUNED": "FINISHED", "FAIL": "FAILED"}
RESTORED_TAG = "latentstudy.restored"  # a run recreated from the Optuna storage: no per-epoch curves


def run_name(unit: Unit, trial) -> str:
    """k<size>-<arm>-t<number>; a seed replicate adds -r<its number in the replicate study, from 1>
    to the name of the trial it retrains (k2-vae-t0-r1), so no two runs of a size share a name."""
    if unit.phase != REPLICATE:
        return f"k{unit.latent_dim}-{unit.arm}-t{trial.number}"
    of = trial.user_attrs.get(keys.REPLICATE_OF)
    return f"k{unit.latent_dim}-{unit.arm}{'' if of is None else f'-t{of}'}-r{trial.number + 1}"


def run_params(plan: Plan, unit: Unit, beta: float, lr: float, seed: int, device: str | None,
               retry_of: int | None) -> dict:
    """A trial run's parameters, logged by the worker and by a recreated run alike."""
    cfg = plan.config
    return {"latent_dim": unit.latent_dim, "arm": unit.arm, "beta": beta, "lr": lr, "seed": seed,
            "device": device, "model": asdict(cfg.model), "train": asdict(cfg.train),
            "objective": arm_objective(cfg, unit.arm), "retry_of": retry_of}


def open_study_run(plan: Plan, tracker, params: dict) -> Plan:
    """The experiment and the study's parent run (found, or created in a new store), in the plan."""
    experiment_id = tracker.experiment(plan.experiment)
    parent = tracker.study_run(experiment_id, plan.prefix, params, {COORDINATOR_TAG: process_id()})
    return replace(plan, experiment_id=experiment_id, parent_run_id=parent)


@contextlib.contextmanager
def parent_run_ends(tracker, run_id: str) -> Iterator[None]:
    """The parent run ends FINISHED with the search, or FAILED (KILLED on Ctrl-C) with its error."""
    try:
        yield
    except BaseException as exc:
        with contextlib.suppress(Exception):  # the error that stopped us may be the tracking store's
            tracker.set_status(run_id, "KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED")
        raise
    tracker.set_status(run_id, "FINISHED")


def _by_tags(tracker, experiment_id: str, prefix: str) -> dict[tuple[str, str], object]:
    return {(r.data.tags.get(OPTUNA_STUDY_TAG), r.data.tags.get(TRIAL_TAG)): r
            for r in tracker.runs(experiment_id, prefix, "trial")}


def restore(plan: Plan, snap: list, tracker) -> dict[int, str]:
    """{trial id: its run} for every trial the tracking store has a run for, after recreating the
    runs it lost of finished trials. Says so in one line when it recreated any. (A trial whose
    worker died before it made a run has none, then as now.)"""
    found = _by_tags(tracker, plan.experiment_id, plan.prefix)
    runs, lost = {}, []
    for unit, trials in snap:
        for t in trials:
            run = found.get((unit.study_name, str(t.number)))
            if run is not None:
                runs[t._trial_id] = run.info.run_id
            elif t.state.is_finished() and keys.MLFLOW_RUN_ID in t.user_attrs:  # a run the store lost
                lost.append((unit, t))
    for unit, t in lost:
        runs[t._trial_id] = recreate(plan, unit, t, tracker)
    if lost:
        print(f"[search] MLflow: {len(lost)} finished trials of {plan.prefix} had no run in {redact(tracker.uri)} "
              "(the tracking store was deleted or replaced); recreated their runs from the Optuna storage "
              "with parameters, final metrics and the checkpoints still on disk (per-epoch curves are lost)",
              flush=True)
    return runs


def recreate(plan: Plan, unit: Unit, trial, tracker) -> str:
    """A finished trial's run, rebuilt from what the Optuna storage holds."""
    attrs = trial.user_attrs
    run_id = tracker.start_trial(
        plan.experiment_id, plan.parent_run_id, unit.study_name, run_name(unit, trial), trial.number,
        run_params(plan, unit, trial.params.get("beta", 0.0), trial.params.get("lr"), attrs.get(keys.SEED),
                   attrs.get(keys.DEVICE), attrs.get(keys.RETRY_OF)))
    state = trial.state.name
    metrics = {k: attrs[k] for k in (keys.EPOCHS_RUN, keys.SECONDS) if attrs.get(k) is not None}
    if state == "COMPLETE":
        metrics.update({f"best_{k}": v for k, v in attrs.get(keys.METRICS, {}).items()})
        checkpoint = Path(attrs.get(keys.CHECKPOINT, ""))
        if checkpoint.is_file():
            tracker.log_artifact(run_id, checkpoint, "checkpoint")
    tracker.log_metrics(run_id, metrics, flush=True)
    lost = state == "FAIL" and not attrs.get(keys.FAIL_REASON)  # its worker died: KILLED, as reconcile has it
    tags = {RESTORED_TAG: "true", **({} if lost else {"optuna.state": state})}
    if attrs.get(keys.FAIL_REASON):
        tags["fail_reason"] = attrs[keys.FAIL_REASON]
    tracker.end(run_id, "KILLED" if lost else FINISHED_STATUS[state], tags)
    return run_id


def reconcile(tracker, experiment_id: str, prefix: str, snap: list) -> None:
    """Make every trial run's status agree with its trial's Optuna state (after kills, retries)."""
    state_of = {(unit.study_name, str(t.number)): t.state.name for unit, trials in snap for t in trials}
    for key, run in _by_tags(tracker, experiment_id, prefix).items():
        state = state_of.get(key)
        lost = state == "FAIL" and run.data.tags.get("optuna.state") != "FAIL"
        want = "KILLED" if state is None or lost else FINISHED_STATUS.get(state, "RUNNING")
        if run.info.status != want:
            tracker.set_status(run.info.run_id, want)


def tidy_earlier(plan: Plan, storage, tracker, tracking: str | None, single_host: bool) -> None:
    """Searches of earlier params killed on this host: fail and queue their lost trials (they run if
    the user returns to those params), end their MLflow runs, and say so, one line per study."""
    reaped = reap_earlier(storage, plan.prefix, tracking, single_host)
    ended = set()
    if tracker:
        for run in tracker.running_study_runs(plan.experiment_id):
            prefix = run.data.tags.get(STUDY_TAG, "")
            ident = run.data.tags.get(COORDINATOR_TAG)
            if prefix == plan.prefix or not ident or process_alive(ident) is not False:
                continue  # ours, or driven by a process alive here or on another host
            with contextlib.suppress(StudyError):  # StudyError: its trials are in another storage
                reconcile(tracker, plan.experiment_id, prefix, snapshot(load_plan(storage, prefix), storage))
            tracker.set_status(run.info.run_id, "KILLED")
            ended.add(prefix)
    for prefix in sorted(ended | {name.rsplit("-k", 1)[0] for name in reaped}):
        n = sum(count for name, count in reaped.items() if name.startswith(prefix + "-k"))
        what = [f"{n} trials it left RUNNING marked failed and queued to retry"] if n else []
        what += ["its MLflow runs ended as KILLED"] if prefix in ended else []
        print(f"[search] earlier study {prefix} (other params) was killed mid-search: {' and '.join(what)}; "
              "its finished trials are kept and resume if you return to those params", flush=True)


def log_models(tracker, plan: Plan, snap: list, kept: dict[tuple[int, str, int, int], tuple[object, Path]],
               run_of: dict[int, str], prepared: Prepared, scratch: Path) -> None:
    """Every kept model (kept: (trial, model file) by outputs.model_trials' key) as an MLflow model of
    its trial run, unless that run has it already (a search rerun that kept the same weights); in
    each size and arm's best run, its reconstructions of validation examples and the tag
    best_of_size; in every run outside the grid (the default), its phase."""
    from latentstudy import figures, models, packaged
    from latentstudy import mlflow_model as mm
    from latentstudy.search.plan import GRID

    data = packaged.carried(prepared.summary)
    x_val = prepared.split("val")[0][:8]
    have = mm.logged_models(tracker.client, plan.experiment_id, plan.prefix)
    for (k, arm, rank, r), (trial, path) in sorted(kept.items()):
        run_id = run_of.get(trial._trial_id)
        if run_id is None:
            continue
        if have.get(mm.digest(path, data), (None, None))[1] != run_id:
            mm.log(tracker.client, plan.experiment_id, run_id, path, data, x_val[: mm.EXAMPLE_ROWS],
                   {mm.STUDY_TAG: plan.prefix})
        if rank == r == 0:
            model, _ = models.load_checkpoint(path)
            strip = scratch / f"reconstructions-k{k}-{arm}.png"
            figures.reconstruction_strip(model, x_val, prepared.summary.image_shape, strip)
            tracker.log_artifact(run_id, strip, "figures")
            tracker.set_tags(run_id, {"latentstudy.best_of_size": "true"})
    for unit, trials in snap:
        for t in trials if unit.phase != GRID else []:
            if t._trial_id in run_of:
                tracker.set_tags(run_of[t._trial_id], {"latentstudy.phase": unit.phase})
