"""Command line: `latentstudy worker` (join a study from any machine) and `latentstudy bench`,
plus the wrapper that turns a StudyError in a DVC stage into one line and exit status 2.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

from latentstudy.config import StudyError


def run_stage(main: Callable[[], None]) -> None:
    """Run a stage's main: a user error prints one line and exits 2, with no traceback."""
    try:
        main()
    except StudyError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)


@contextlib.contextmanager
def outputs(*paths: Path) -> Iterator[None]:
    """Remove a stage's outputs if it fails, so no half-written file outlives the error."""
    try:
        yield
    except BaseException:
        for path in paths:
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            elif path.exists():
                path.unlink()
        raise


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
    from latentstudy import search

    if not args.storage:
        raise StudyError("--storage is missing (or set OPTUNA_STORAGE); allowed: an Optuna storage URL")
    if not args.tracking_uri and not args.no_tracking:
        raise StudyError("--tracking-uri is missing (or set MLFLOW_TRACKING_URI); pass --no-tracking to run without MLflow")
    tracking = None if args.no_tracking else args.tracking_uri
    if args.one:
        if args.exit_with_parent:
            search.exit_with_parent()
        search.apply_thread_limit()
        storage, plan = search.join(args.storage, args.study, tracking)
        search.worker_main(plan, storage, tracking, args.data, args.device, args.checkpoints, args.name,
                           args.storage.startswith("journal:"))
        return
    search.join(args.storage, args.study, tracking)  # fail here, once, if the study does not exist
    slots = search.worker_slots(args.device, args.workers_per_device, args.cpu_workers)
    fwd = ["--study", args.study, "--data", str(args.data), "--checkpoints", str(args.checkpoints),
           "--exit-with-parent"]
    # Names seed each worker's sampler: with the pid, two `latentstudy worker` on one host (Slurm
    # tasks sharing a node) neither propose the same parameters nor share a name.
    procs = search.launch_workers(slots, fwd, f"{search.HOST}-{os.getpid()}-", args.storage, tracking)
    codes = [p.wait() for p in procs]
    if any(codes):
        raise StudyError(f"worker processes exited with {codes}")


def bench(args: argparse.Namespace) -> None:
    from latentstudy import bench as bench_mod

    bench_mod.main(args.out, args.epochs)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="latentstudy", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    w = sub.add_parser("worker", help="run trials of an existing study until its budget is met")
    _worker_args(w)
    w.set_defaults(func=worker)
    b = sub.add_parser("bench", help="training-engine and orchestration benchmark")
    b.add_argument("--out", type=Path, default=Path("reports/bench.json"))
    b.add_argument("--epochs", type=int, default=20)
    b.set_defaults(func=bench)
    args = parser.parse_args(argv)
    run_stage(lambda: args.func(args))


if __name__ == "__main__":
    main()
