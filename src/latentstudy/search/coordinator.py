"""The coordinator (the search stage's process): creates the stores, the studies and the MLflow
parent run, starts worker processes on every device, prints progress until every unit has its
finished trials, then writes the outputs. Workers elsewhere may join through a shared storage.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

from latentstudy.config import SearchConfig, StudyConfig, StudyError
from latentstudy.search import runs, weights
from latentstudy.search.outputs import best_trials, write_outputs
from latentstudy.search.plan import ARMS, Plan, Unit, counts, make_plan, needs_work
from latentstudy.search.store import (
    create_studies,
    open_storage,
    reap_lost,
    snapshot,
    storage_url,
)


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


def run(study: StudyConfig, search: SearchConfig, prepared: Path, root: Path, models_dir: Path,
        trials_csv: Path, metrics_json: Path, study_json: Path, tracking: str | None) -> Plan:
    """The search stage: plan, create stores, run workers, write the best models and the tables."""
    from latentstudy import data
    from latentstudy.tracking import Tracker, experiment_name, require_reachable

    if tracking:
        require_reachable(tracking)
    summary = data.load_summary(prepared)
    store = root / ".latentstudy"
    plan = make_plan(study, search, summary, experiment_name(summary))
    url = storage_url(search, store)
    storage = open_storage(url, search.heartbeat_seconds, tracking)
    tracker = Tracker(tracking) if tracking else None
    if tracker:
        params = {"study": asdict(study), "search": asdict(search), "data_fingerprint": plan.fingerprint}
        plan = runs.open_study_run(plan, tracker, params)
    create_studies(plan, storage)
    runs.tidy_earlier(plan, storage, tracker, tracking, url.startswith("journal:"))
    with runs.parent_run_ends(tracker, plan.parent_run_id) if tracker else contextlib.nullcontext():
        if tracker:
            runs.restore(plan, snapshot(plan, storage), tracker)
        search_and_write(plan, storage, url, tracker, search, prepared, store, models_dir, trials_csv,
                         metrics_json, study_json)
    return plan


def search_and_write(plan: Plan, storage, url: str, tracker, search: SearchConfig, prepared: Path, store: Path,
                     models_dir: Path, trials_csv: Path, metrics_json: Path, study_json: Path) -> None:
    slots = worker_slots(search.device, search.workers_per_device, search.cpu_workers)
    checkpoints = store / "checkpoints"
    coordinate(plan, storage, url, tracker.uri if tracker else None, prepared, checkpoints, slots)
    snap = snapshot(plan, storage)
    missing = [u.study_name for u, t in snap if counts(t)["COMPLETE"] == 0]
    if len(missing) == len(plan.units):
        raise StudyError("no trial finished at any latent size; see the failure reasons above "
                         "(search.lr range, search.train settings)")
    scratch = store / "scratch"
    run_of = runs.restore(plan, snap, tracker) if tracker else {}
    found = weights.gather(plan, best_trials(snap), run_of, tracker, prepared, scratch)
    write_outputs(plan, snap, url, tracker, plan.experiment_id, prepared, models_dir, trials_csv, metrics_json,
                  study_json, scratch, found, run_of)
    if tracker:
        runs.reconcile(tracker, plan.experiment_id, plan.prefix, snap)
    shutil.rmtree(scratch, ignore_errors=True)
    for name in missing:
        print(f"[search] warning: {name} has no finished trial; it is left out of the models", flush=True)
