"""The coordinator (the search stage's process): creates the stores, the studies and the MLflow
parent run, starts worker processes on every device, prints progress until every unit has its
finished trials, then writes the outputs. Workers elsewhere may join through a shared storage.

It runs the search in phases, one `coordinate` each: the grid; the replicates, which retrain the
best configuration of every size and arm with more seeds; and the refinement, which adds a
latent size (then its replicates): above the grid, doubling, while the headline criterion on
validation is best at the largest size searched (up to 2 x D); then wherever the headline
purpose's one-SE rule leaves a gap of more than 1 below its choice, or above it to a size in its
90% set (at most study.refine_max sizes in all).
"""

from __future__ import annotations

import contextlib
import math
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from latentstudy.config import SearchConfig, StudyConfig, StudyError
from latentstudy.contracts import SearchPaths
from latentstudy.data import Prepared
from latentstudy.search import budget, devices, keys, runs, weights
from latentstudy.search.progress import MANY_TRIALS, planned_line, progress_line, remaining, shortfalls
from latentstudy.search.outputs import best_trials, model_trials, write_outputs
from latentstudy.search.plan import (
    ADDED,
    REPLICATE,
    Plan,
    Unit,
    counts,
    examined,
    grid_units,
    grow,
    make_plan,
    needs_work,
    next_size,
    replicate_seeds,
    replicate_unit,
    sizes,
)
from latentstudy.search.store import (
    create_studies,
    open_storage,
    reap_lost,
    snapshot,
    storage_url,
)
from latentstudy.stats import SET_NAME


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


def unit_done(unit: Unit, trials) -> bool:
    c = counts(trials)
    return not needs_work(unit, c) and c["RUNNING"] == 0


def reap_all(plan: Plan, storage, tracking: str | None, single_host: bool) -> None:
    import optuna

    for unit in plan.units:
        reap_lost(optuna.load_study(study_name=unit.study_name, storage=storage), tracking, single_host)


# Eight parameters on purpose: what a worker process is started with (it is another process, so no
# shared object), and the poll interval tests shorten. Past 50 lines by the lines that say what a
# large grid costs, which need the loop's first finished trials.
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
    done_before = sum(min(examined(u, counts(t)), u.budget) for u, t in snapshot(plan, storage))
    devices = sorted({e["CUDA_VISIBLE_DEVICES"] and f"cuda:{e['CUDA_VISIBLE_DEVICES']}" or d for d, e in slots})
    reps = sum(u.phase == REPLICATE for u in plan.units)
    print(f"[search] study {plan.prefix}: {len(plan.units)} Optuna studies ({len(sizes(plan))} latent sizes"
          f"{f', {reps} replicate units' if reps else ''}), {len(slots)} worker(s) on {', '.join(devices)}, "
          f"trials trained in stacks (search.stack {plan.config.stack})", flush=True)
    planned = sum(u.budget for u in plan.units)
    if planned > MANY_TRIALS:
        print(planned_line(plan, planned, len(slots)), flush=True)
    estimated = planned <= MANY_TRIALS  # else: once, from the first trials' pace
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
            if not estimated and (eta := remaining(plan, snap, started, done_before)):
                print(f"[search] estimate for the {planned} planned trials, at the first trials' pace: {eta} more",
                      flush=True)
                estimated = True
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
    print(progress_line(plan, snap, started, done_before, final=True), flush=True)


# --- phases after the grid ---------------------------------------------------------------------


def enqueue_once(study, params: dict, attrs: dict) -> bool:
    """Enqueue a trial unless one carrying the same attrs exists (a rerun resumes, never repeats)."""
    for t in study.get_trials(deepcopy=False):
        if all(t.user_attrs.get(key) == value for key, value in attrs.items()):
            return False
    study.enqueue_trial(params, user_attrs=attrs)
    return True


def arm_params(trial, arm: str) -> dict:
    return {"lr": trial.params["lr"], **({"beta": trial.params["beta"]} if arm == "vae" else {})}


def neighbour_start(best: dict, k: int, arm: str) -> tuple[dict, str] | None:
    """The first trial of an added size: the geometric mean of its neighbours' best parameters,
    and which neighbours they are."""
    below = [kk for kk, a in best if a == arm and kk < k]
    above = [kk for kk, a in best if a == arm and kk > k]
    near = ([max(below)] if below else []) + ([min(above)] if above else [])
    if not near:
        return None
    params = [arm_params(best[(kk, arm)], arm) for kk in near]
    mean = {name: float(math.exp(sum(math.log(p[name]) for p in params) / len(params))) for name in params[0]}
    return mean, ",".join(f"k{kk}" for kk in near)


def refine(plan: Plan, search: SearchConfig, refine_max: int, validation, run_phase, settle) -> Plan:
    """Add sizes (plan.next_size): first above the grid, doubling its largest size while the
    headline criterion's best is there, up to 2 x D; then next to the answer until it and the next
    smaller searched size are adjacent, and so is the next larger one if it is in the 90% set; at
    most refine_max sizes in all. Each added size is settled (more budget where it lags, its seed
    replicates) before the rule looks again. run_phase(plan, enqueue) trains what the plan lacks;
    settle(plan) returns the settled plan."""
    if refine_max == 0:  # off: nothing to decide, so no validation pass
        return plan
    purpose = validation.headline(plan)
    added = 0
    while True:
        answer = validation.answer(plan, purpose)
        if answer.choice is None:
            print(f"[search] refinement skipped: no {purpose} answer on validation ({answer.missing})", flush=True)
            return plan
        chosen, searched, likely = answer.k, sizes(plan), answer.choice.likely
        cap = 2 * plan.input_dim
        new = next_size(chosen, searched, likely, answer.choice.best, cap)
        if new is None or added >= refine_max:
            why = (f"the size below it is adjacent, and no larger size in its {SET_NAME} is more than 1 above"
                   if new is None else
                   f"study.refine_max = {refine_max} sizes added; raise it to resolve k further")
            print(f"[search] refinement done: on validation the {purpose} rule chooses k = {chosen} "
                  f"({answer.summary()}); {why}", flush=True)
            if answer.choice.best == searched[-1] >= cap:
                print(f"[search] note: the {purpose} criterion still improves at k = {searched[-1]} = 2 x D, "
                      "the largest size the search tries", flush=True)
            elif answer.still_improving:
                print(f"[search] note: the {purpose} criterion still improves at the largest size searched "
                      f"(k = {searched[-1]}); add larger sizes to study.latent_dims to see where it flattens",
                      flush=True)
            return plan
        reason = added_reason(purpose, chosen, likely, searched, new)
        best = best_trials(snapshot(plan, validation.storage))
        units = grid_units(plan.prefix, [new], search, ADDED, reason)
        plan = grow(plan, units)
        enqueue = {}
        for unit in units:
            start = neighbour_start(best, new, unit.arm)
            if start:
                enqueue[unit.study_name] = [(start[0], {keys.INIT_FROM: start[1]})]
        added += 1
        print(f"[search] refinement {added}/{refine_max}: adding k = {new} ({reason})", flush=True)
        run_phase(plan, enqueue)
        plan = settle(plan)


def added_reason(purpose: str, chosen: int, likely: list[int], searched: list[int], new: int) -> str:
    """Why the search adds `new`: above the largest searched size (an extension) or between two."""
    top = searched[-1]
    if new > top:
        return (f"extended by the search: on validation the {purpose} criterion still improves at k = {top}, "
                f"the largest searched; k = {new} " + ("doubles it" if new == 2 * top else "is 2 x D, the cap"))
    below = [k for k in searched if k < new]
    above = min(k for k in searched if k > new)
    return (f"added by the search: on validation the {purpose} rule chose k = {chosen}"
            + ("" if above == chosen else f", {SET_NAME} {{{', '.join(map(str, likely))}}}")
            + (f"; k = {new} lies between {below[-1]} and {above}" if below else
               f", the smallest size searched; k = {new} lies below"))


def replicate(plan: Plan, replicates: int, storage, run_phase, validation=None) -> Plan:
    """Retrain the best configuration of sizes and arms with more seeds, as enqueued trials of a
    replicate unit per size and arm. validation None (search.replicate_sizes all): every size and
    arm gets `replicates` seeds, once, so every size's value is a mean over as many models. Else
    (Validation) seeds go one at a time where they could move an answer: every contested size
    (Validation.contested) without a replicate gets one; then, while the latest seeds changed a
    purpose's chosen size (Validation.moved), each contested size gets one more, up to
    `replicates`. The answers are looked at again after every round; both decisions are made from
    the stored trials alone, so a resumed search takes the same ones."""
    if replicates == 0:
        return plan
    while True:
        best = best_trials(snapshot(plan, storage))
        have = {(u.latent_dim, u.arm): u for u in plan.units if u.phase == REPLICATE}
        moved = {}  # purposes whose chosen size the latest seeds moved
        if validation is None:
            todo = {key: (replicates, "every size and arm (search.replicate_sizes all)")
                    for key in best if key not in have}
        else:
            wanted = {key: why for key, why in validation.contested(plan).items() if key in best}
            todo = {key: (1, why) for key, why in wanted.items() if key not in have}
            if not todo:
                moved = validation.moved(plan)
            if moved:
                how = "; ".join(f"{name} k = {b} -> {a}" for name, (b, a) in moved.items())
                todo = {key: (have[key].budget + 1, f"{why}; seed {have[key].budget + 1}: the latest seeds moved "
                              f"the chosen size ({how})")
                        for key, why in wanted.items() if key in have and have[key].budget < replicates}
        if not todo:
            return plan
        units, enqueue = [], {}
        for (k, arm), (n, why) in sorted(todo.items()):
            unit = replicate_unit(plan.prefix, k, arm, n, why)
            units.append(unit)
            trial = best[(k, arm)]
            enqueue[unit.study_name] = [(arm_params(trial, arm), {keys.SEED: seed, keys.REPLICATE_OF: trial.number})
                                        for seed in replicate_seeds(trial.user_attrs[keys.SEED], n)]
        where = ", ".join(f"k = {u.latent_dim} {u.arm}" for u in units)
        print("[search] replicates: " + (f"{replicates} more seed(s) for the best configuration of {where}"
                                          if validation is None else
                                          f"one more seed for the best configuration of {where} (the sizes that "
                                          "could move an answer on validation"
                                          + (", as the latest seeds moved one)" if moved else ")")), flush=True)
        plan = grow(plan, tuple(units))
        run_phase(plan, enqueue)
        if validation is None:
            return plan


@dataclass(frozen=True)
class SearchRun:
    """What every phase of one search stage shares: its settings, files, data and stores."""

    study: StudyConfig
    search: SearchConfig
    rule: object  # validation.Rule: the report's rule, applied on validation
    paths: SearchPaths
    data: Prepared
    store: Path  # .latentstudy: the journal, checkpoints
    scratch: Path  # this run's own temporary folder (fetched and retrained weights, figures)
    url: str  # the Optuna storage's
    storage: object
    tracker: object | None


def run(study: StudyConfig, search: SearchConfig, paths: SearchPaths, root: Path, tracking: str | None,
        rule) -> Plan:
    """The search stage: plan, create stores, run workers phase by phase (grid, refinement,
    replicates), write the best and replicate models and the tables. rule: validation.Rule.
    The caller has checked that the tracking server answers."""
    from latentstudy.tracking import Tracker, experiment_name

    prepared = Prepared(paths.data)
    store = root / ".latentstudy"
    summary = prepared.summary
    plan = make_plan(study, search, summary, experiment_name(summary.dataset, summary.source))
    url = storage_url(search, store)
    storage = open_storage(url, search.heartbeat_seconds, tracking)
    tracker = Tracker(tracking) if tracking else None
    if tracker:
        params = {"study": asdict(study), "search": asdict(search), "data_fingerprint": plan.fingerprint}
        plan = runs.open_study_run(plan, tracker, params)
    create_studies(plan, storage)
    runs.tidy_earlier(plan, storage, tracker, tracking, url.startswith("journal:"))
    # Private to this run: queued DVC experiments run side by side on one store, and each
    # removes its scratch folder when it ends.
    with (runs.parent_run_ends(tracker, plan.parent_run_id) if tracker else contextlib.nullcontext(),
          tempfile.TemporaryDirectory(prefix="latentstudy-scratch-") as scratch):
        ctx = SearchRun(study, search, rule, paths, prepared, store, Path(scratch), url, storage, tracker)
        if tracker:
            runs.restore(plan, snapshot(plan, storage), tracker)
        plan = search_and_write(ctx, plan)
    return plan


# Over 50 lines on purpose: its phases close over run_phase and checkpoint (see the docstring).
def search_and_write(ctx: SearchRun, plan: Plan) -> Plan:
    """Every phase (see the module's docstring), then the stage's outputs."""
    from latentstudy.search.validation import Validation

    search, storage, tracker = ctx.search, ctx.storage, ctx.tracker
    slots = devices.worker_slots(search.device, search.workers_per_device, search.cpu_workers)
    checkpoints, scratch = ctx.store / "checkpoints", ctx.scratch

    def run_phase(plan: Plan, enqueue: dict[str, list]) -> None:
        import optuna

        create_studies(plan, storage)  # the grown plan into every study: workers load it at start
        for name, trials in enqueue.items():
            target = optuna.load_study(study_name=name, storage=storage)
            for params, attrs in trials:
                enqueue_once(target, params, attrs)
        coordinate(plan, storage, ctx.url, tracker.uri if tracker else None, ctx.paths.data, checkpoints, slots)

    def checkpoint(unit: Unit, trial) -> Path:
        # Usually on this disk: ask MLflow for the runs only when it is not. Weights lost here are
        # gathered for every kept trial at once (one line, one retraining pass), as at the end.
        on_disk = weights.find(trial, None, None, scratch)
        if on_disk is not None:
            return on_disk
        snap = snapshot(plan, storage)
        kept = model_trials(snap)
        found = weights.gather(plan, kept, runs.restore(plan, snap, tracker) if tracker else {}, tracker, ctx.data,
                               scratch)
        return next(found[key] for key, (u, t) in kept.items() if (u.study_name, t.number) == (unit.study_name,
                                                                                             trial.number))

    run_phase(plan, {})
    snap = snapshot(plan, storage)
    if all(counts(t)["COMPLETE"] == 0 for _, t in snap):
        raise StudyError("no trial finished at any latent size; see the failure reasons above "
                         "(search.lr range, search.train settings)")
    # Refinement, more budget and replicates by answer off: no validation pass, so the splits are
    # not loaded for nothing.
    by_answer = search.replicates > 0 and search.replicate_sizes == "answer"
    needed = ctx.study.refine_max or search.reinforce or by_answer
    validation = Validation(ctx.data, storage, checkpoint, ctx.rule) if needed else None

    def settle(plan: Plan) -> Plan:
        # Before the rule looks: more trials where a model lags its simpler reference, then the
        # replicates, so the refinement's rule sees each size's seed spread.
        if search.reinforce:
            plan = budget.reinforce(plan, validation, run_phase)
        return replicate(plan, search.replicates, storage, run_phase, validation if by_answer else None)

    plan = refine(settle(plan), search, ctx.study.refine_max, validation, run_phase, settle)
    write_stage_outputs(ctx, plan)
    return plan


def write_stage_outputs(ctx: SearchRun, plan: Plan) -> None:
    """The kept models, trials.csv, metrics.json and study.json; in MLflow the kept models and the
    runs in step with the storage."""
    storage, tracker, scratch = ctx.storage, ctx.tracker, ctx.scratch
    snap = snapshot(plan, storage)
    for line in shortfalls(snap):  # once, after the last phase
        print(line, flush=True)
    missing = [u.study_name for u, t in snap if counts(t)["COMPLETE"] == 0 and u.phase != REPLICATE]
    run_of = runs.restore(plan, snap, tracker) if tracker else {}
    found = weights.gather(plan, model_trials(snap), run_of, tracker, ctx.data, scratch)
    kept = write_outputs(plan, snap, ctx.url, plan.experiment_id, ctx.paths, found, run_of)
    if tracker:
        runs.log_models(tracker, plan, snap, kept, run_of, ctx.data, scratch)
        runs.reconcile(tracker, plan.experiment_id, plan.prefix, snap)
    for name in missing:
        print(f"[search] warning: {name} has no finished trial; it is left out of the models", flush=True)
