"""Command line: `latentstudy worker`, which joins a study's search from any machine.

A leaf: nothing in the package imports it.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from latentstudy.config import StudyError
from latentstudy.stages import run_stage
from latentstudy.tracking import require_reachable


def _worker_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--study", required=True, help="study prefix, e.g. digits-1a2b3c4d5e (reports/search/study.json)")
    p.add_argument("--storage", default=os.environ.get("OPTUNA_STORAGE"),
                   help="Optuna storage URL (default: $OPTUNA_STORAGE); postgresql://... across machines")
    p.add_argument("--tracking-uri", default=os.environ.get("MLFLOW_TRACKING_URI"),
                   help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI)")
    p.add_argument("--no-tracking", action="store_true", help="run without MLflow")
    p.add_argument("--data", type=Path, default=Path("data/prepared"), help="prepared data (same as the coordinator's)")
    p.add_argument("--checkpoints", type=Path, default=Path(".latentstudy/checkpoints"),
                   help="where trial checkpoints go (they are also uploaded to MLflow)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--workers-per-device", type=int, default=1, help="processes per GPU")
    p.add_argument("--cpu-workers", type=int, default=1, help="processes when no GPU is used")
    p.add_argument("--one", action="store_true", help=argparse.SUPPRESS)  # a single worker process
    p.add_argument("--name", default="w0", help=argparse.SUPPRESS)
    p.add_argument("--exit-with-parent", action="store_true", help=argparse.SUPPRESS)


def worker(args: argparse.Namespace) -> None:
    from latentstudy.search import coordinator, store, worker

    if not args.storage:
        raise StudyError("--storage is missing (or set OPTUNA_STORAGE); allowed: an Optuna storage URL")
    if not args.tracking_uri and not args.no_tracking:
        raise StudyError("--tracking-uri is missing (or set MLFLOW_TRACKING_URI); pass --no-tracking to run without MLflow")
    tracking = None if args.no_tracking else args.tracking_uri
    if args.one:
        if args.exit_with_parent:
            worker.exit_with_parent()
        worker.apply_thread_limit()
        storage, plan = store.join(args.storage, args.study, tracking)
        worker.worker_main(plan, storage, tracking, args.data, args.device, args.checkpoints, args.name,
                           args.storage.startswith("journal:"))
        return
    if tracking:
        require_reachable(tracking)
    store.join(args.storage, args.study, tracking)  # fail here, once, if the study does not exist
    slots = coordinator.worker_slots(args.device, args.workers_per_device, args.cpu_workers)
    fwd = ["--study", args.study, "--data", str(args.data), "--checkpoints", str(args.checkpoints),
           "--exit-with-parent"]
    # Names seed each worker's sampler: with the pid, two `latentstudy worker` on one host (Slurm
    # tasks sharing a node) neither propose the same parameters nor share a name.
    procs = coordinator.launch_workers(slots, fwd, f"{store.HOST}-{os.getpid()}-", args.storage, tracking)
    codes = [p.wait() for p in procs]
    if any(codes):
        raise StudyError(f"worker processes exited with {codes}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="latentstudy", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    w = sub.add_parser("worker", help="run trials of an existing study until its budget is met")
    _worker_args(w)
    w.set_defaults(func=worker)
    args = parser.parse_args(argv)
    run_stage(lambda: args.func(args))


if __name__ == "__main__":
    main()
