"""Scale-out benchmark: how many trials per minute 1, 2, 3 ... worker processes get from one
PostgreSQL Optuna storage (with an `mlflow server` on PostgreSQL), and what the storage and
MLflow calls cost per trial next to training.

    .venv/bin/python benchmarks/scaleout_bench.py                 # a throwaway PostgreSQL + mlflow server
    .venv/bin/python benchmarks/scaleout_bench.py --workers 1 2 4 --trials 24 --epochs 30
    .venv/bin/python benchmarks/scaleout_bench.py --storage postgresql://u:p@db:5432/bench --no-mlflow

The workload is fixed and tiny, so the numbers isolate orchestration: a 600 x 12 "manifold"
dataset, a one-hidden-layer MLP, a fixed number of epochs (no early stopping, no pruning), one
torch thread per worker process. Every phase uses studies of its own. Nothing is asserted:
it prints two tables.

Throughput: N `latentstudy worker --one` processes run a budget of --trials trials; the rate is
COMPLETE trials / (last trial completed - first trial started) from the storage's timestamps
(process start-up excluded), also shown as the wall time including start-up.

Overhead: one worker in this process runs --overhead-trials trials against each storage (in
memory, journal file, PostgreSQL) with and without MLflow; every Optuna storage call and MLflow
client call on the worker's thread is timed (outermost call only; the heartbeat thread's calls
are not on the trial's path and are left out).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

from latentstudy import data, paramfile
from latentstudy.data import prepare as prepare_data
from latentstudy.search import coordinator, plan as planning, store, worker
from latentstudy.config import DataConfig, SearchConfig, StudyConfig

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import servers  # noqa: E402  (the throwaway PostgreSQL and mlflow server of the tests)

ONE_THREAD = {"CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1", "LATENTSTUDY_THREADS": "1"}


# --- the workload -----------------------------------------------------------------------------------


def prepare(root: Path) -> Path:
    cfg = paramfile.build(DataConfig, {"name": "manifold", "intrinsic_max_points": 300,
                                    "manifold": {"intrinsic_dim": 2, "ambient_dim": 12, "n": 600}}, "bench")
    prepare_data.run(cfg, root, root / "prepared")
    return root / "prepared"


def search_config(trials: int, epochs: int) -> SearchConfig:
    half = max(1, trials // 2)
    return paramfile.build(SearchConfig, {
        "trials_per_dim": half, "ae_trials_per_dim": trials - half, "max_trials_per_dim": 4 * trials,
        "pruner": "none", "model": {"arch": "mlp", "hidden": [32]},
        "train": {"epochs": epochs, "batch_size": 32, "patience": epochs}, "device": "cpu",
    }, "bench")


def new_plan(prepared: Path, cfg: SearchConfig, seed: int, storage, tracking: str | None) -> planning.Plan:
    """A plan of its own (the seed changes the prefix) with its studies and MLflow parent run."""
    import dataclasses

    from latentstudy.tracking import Tracker

    summary = data.load_summary(prepared)
    plan = planning.make_plan(StudyConfig(latent_dims=[2], seed=seed), cfg, summary, "latentstudy-bench")
    if tracking:
        tracker = Tracker(tracking)
        exp = tracker.experiment(plan.experiment)
        plan = dataclasses.replace(plan, experiment_id=exp, parent_run_id=tracker.study_run(exp, plan.prefix, {}))
    store.create_studies(plan, storage)
    return plan


def finished(plan: planning.Plan, storage) -> list:
    return [t for _, trials in store.snapshot(plan, storage) for t in trials if t.state.name == "COMPLETE"]


# --- throughput -------------------------------------------------------------------------------------


@contextlib.contextmanager
def quiet_children():
    """Processes started inside inherit /dev/null as stdout (the workers print a line per trial)."""
    sys.stdout.flush()
    saved = os.dup(1)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    try:
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)
        os.close(devnull)


def throughput(workers: list[int], url: str, tracking: str | None, prepared: Path, base: Path, trials: int,
               epochs: int) -> list[dict]:
    storage = store.open_storage(url, 5)
    rows = []
    for i, n in enumerate(workers):
        plan = new_plan(prepared, search_config(trials, epochs), 1000 + i, storage, tracking)
        args = ["--study", plan.prefix, "--data", str(prepared), "--checkpoints", str(base / f"ckpt-{n}")]
        started = time.monotonic()
        with quiet_children():
            procs = coordinator.launch_workers([("cpu", ONE_THREAD)] * n, args, f"bench{n}-", url, tracking)
        codes = [p.wait() for p in procs]
        wall = time.monotonic() - started
        if any(codes):
            sys.exit(f"{n} workers: exit codes {codes}")
        done = finished(plan, storage)
        span = (max(t.datetime_complete for t in done) - min(t.datetime_start for t in done)).total_seconds()
        rows.append({"workers": n, "trials": len(done), "span": span, "wall": wall,
                     "rate": 60 * len(done) / span, "wall_rate": 60 * len(done) / wall,
                     "train": sum(t.user_attrs["seconds"] for t in done) / len(done),
                     "trial": sum((t.datetime_complete - t.datetime_start).total_seconds() for t in done) / len(done)})
        print(f"  {n} worker(s): {len(done)} trials in {span:.1f} s", flush=True)
    for row in rows:
        row["ratio"] = row["rate"] / rows[0]["rate"]
    return rows


# --- overhead ---------------------------------------------------------------------------------------


class Timer:
    """Seconds and calls spent in wrapped methods, outermost call on one thread only."""

    def __init__(self, thread: threading.Thread):
        self.thread, self.seconds, self.calls, self.depth = thread, 0.0, 0, 0

    def wrap(self, obj, names) -> None:
        for name in names:
            method = getattr(obj, name, None)
            if callable(method):
                setattr(obj, name, self._timed(method))

    def _timed(self, method):
        @functools.wraps(method)
        def timed(*args, **kwargs):
            if threading.current_thread() is not self.thread or self.depth:
                return method(*args, **kwargs)
            self.depth += 1
            start = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - start
                self.calls += 1
                self.depth -= 1

        return timed


STORAGE_METHODS = [n for n in dir(__import__("optuna").storages.BaseStorage) if not n.startswith("__")] + [
    "_get_stale_trial_ids", "record_heartbeat"]
MLFLOW_METHODS = ["create_run", "log_batch", "set_tag", "set_terminated", "log_artifact", "search_runs"]


def overhead_one(name: str, storage, tracking: str | None, prepared: Path, base: Path, trials: int, epochs: int,
                 seed: int) -> dict:
    import torch

    from latentstudy.tracking import Tracker

    plan = new_plan(prepared, search_config(trials, epochs), seed, storage, tracking)
    here = threading.current_thread()
    store_timer, mlflow_timer = Timer(here), Timer(here)
    store_timer.wrap(storage, STORAGE_METHODS)
    tracker = Tracker(tracking) if tracking else None
    if tracker:
        mlflow_timer.wrap(tracker.client, MLFLOW_METHODS)
    dev = torch.device("cpu")
    x_train = torch.as_tensor(data.load_split(prepared, "train")[0])
    x_val = torch.as_tensor(data.load_split(prepared, "val")[0])
    ctx = worker.WorkerContext(plan, storage, tracking, tracker, x_train, x_val, dev, base / f"ckpt-{name}", "w0",
                               assume_single_host=True)
    started = time.perf_counter()
    with contextlib.redirect_stdout(open(os.devnull, "w")):
        worker.run_worker(ctx)
    wall = time.perf_counter() - started
    done = finished(plan, storage)
    n = len(done)
    # The per-epoch calls (trial.report, buffered metrics) happen inside training: the rest is
    # compute (training, sampling, checkpoints) with those calls taken out.
    return {"config": name, "trials": n, "trial": wall / n,
            "storage": store_timer.seconds / n, "storage_calls": store_timer.calls / n,
            "mlflow": mlflow_timer.seconds / n, "mlflow_calls": mlflow_timer.calls / n,
            "rest": (wall - store_timer.seconds - mlflow_timer.seconds) / n}


def overhead(pg_url: str, tracking: str | None, prepared: Path, base: Path, trials: int, epochs: int) -> list[dict]:
    import optuna
    import torch

    torch.set_num_threads(1)
    configs = [("in-memory", lambda: optuna.storages.InMemoryStorage(), None),
               ("journal file", lambda: store.open_storage(f"journal:{base / 'bench.journal'}", 5), None),
               ("postgresql", lambda: store.open_storage(pg_url, 5), None)]
    if tracking:
        configs += [("journal + mlflow sqlite", lambda: store.open_storage(f"journal:{base / 'b2.journal'}", 5),
                     f"sqlite:///{base / 'mlflow-local.db'}"),
                    ("postgresql + mlflow server", lambda: store.open_storage(pg_url, 5), tracking)]
    rows = []
    for i, (name, make, uri) in enumerate(configs):
        # One warm-up trial per configuration (imports, first MLflow schema use) is left out.
        overhead_one(name, make(), uri, prepared, base, 2, epochs, 2000 + 2 * i)
        rows.append(overhead_one(name, make(), uri, prepared, base, trials, epochs, 2001 + 2 * i))
        print(f"  {name}: {rows[-1]['trial']:.3f} s per trial", flush=True)
    return rows


# --- main -------------------------------------------------------------------------------------------


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2, 3])
    p.add_argument("--trials", type=int, default=18, help="finished trials per throughput phase")
    p.add_argument("--overhead-trials", type=int, default=8, help="trials per storage in the overhead table")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--storage", help="an existing PostgreSQL URL (default: start a throwaway cluster)")
    p.add_argument("--no-mlflow", action="store_true", help="no MLflow (default: a throwaway mlflow server)")
    args = p.parse_args()
    base = Path(tempfile.mkdtemp(prefix="latentstudy-bench-"))
    try:
        with contextlib.ExitStack() as stack:
            if args.storage:
                url, tracking = args.storage, None
                if not args.no_mlflow:
                    sys.exit("with --storage, pass --no-mlflow (the throwaway mlflow server needs the throwaway cluster)")
            else:
                try:
                    cluster = stack.enter_context(servers.postgres())
                except servers.Unavailable as exc:
                    sys.exit(f"{exc}; or pass --storage postgresql://...")
                url = cluster.createdb("optuna")
                tracking = None if args.no_mlflow else stack.enter_context(
                    servers.mlflow_server(cluster.createdb("mlflow"))).uri
            prepared = prepare(base)
            print(f"cpu cores: {len(os.sched_getaffinity(0))}; storage {store._redact(url)}; "
                  f"mlflow {tracking or 'off'}; {args.epochs} epochs per trial", flush=True)
            print("throughput (trials run by `latentstudy worker --one` processes):", flush=True)
            rates = throughput(args.workers, url, tracking, prepared, base, args.trials, args.epochs)
            print("overhead per trial (one worker in this process):", flush=True)
            costs = overhead(url, tracking, prepared, base, args.overhead_trials, args.epochs)
    finally:
        shutil.rmtree(base, ignore_errors=True)

    print()
    print("| workers | trials | trials/min | vs 1 worker | wall incl. start-up | s/trial training | s/trial start to end |")
    print("|---|---|---|---|---|---|---|")
    for r in rates:
        print(f"| {r['workers']} | {r['trials']} | {r['rate']:.1f} | {r['ratio']:.2f}x | {r['wall']:.1f} s "
              f"({r['wall_rate']:.1f}/min) | {r['train']:.3f} | {r['trial']:.3f} |")
    print()
    print("| storage | s/trial | Optuna storage s (calls) | MLflow s (calls) | compute and the rest s | storage + MLflow share |")
    print("|---|---|---|---|---|---|")
    for r in costs:
        share = (r["storage"] + r["mlflow"]) / r["trial"]
        print(f"| {r['config']} | {r['trial']:.3f} | {r['storage']:.3f} ({r['storage_calls']:.0f}) | "
              f"{r['mlflow']:.3f} ({r['mlflow_calls']:.0f}) | {r['rest']:.3f} | {share:.0%} |")


if __name__ == "__main__":
    main()
