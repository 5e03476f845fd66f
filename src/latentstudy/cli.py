"""Command line: `latentstudy run DATA`, the study on a file or folder as a DVC experiment, and
`latentstudy answers`, the last report's answers; `latentstudy worker`, which joins a study's search
from any machine; the UIs on the study's stores: `latentstudy ui` (MLflow) and `latentstudy
dashboard` (optuna-dashboard); and `latentstudy export`, which writes a chosen model as TorchScript
beside its scaler.

A leaf: nothing in the package imports it.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from latentstudy.config import ARMS, StudyError
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
    from latentstudy.search import coordinator, devices, liveness, store, worker

    if not args.storage:
        raise StudyError("--storage is missing (or set OPTUNA_STORAGE); allowed: an Optuna storage URL")
    if not args.tracking_uri and not args.no_tracking:
        raise StudyError("--tracking-uri is missing (or set MLFLOW_TRACKING_URI); pass --no-tracking to run without MLflow")
    tracking = None if args.no_tracking else args.tracking_uri
    if args.one:
        if args.exit_with_parent:
            liveness.exit_with_parent()
        devices.apply_thread_limit()
        storage, plan = store.join(args.storage, args.study, tracking)
        worker.worker_main(plan, storage, tracking, args.data, args.device, args.checkpoints, args.name,
                           args.storage.startswith("journal:"))
        return
    if tracking:
        require_reachable(tracking)
    store.join(args.storage, args.study, tracking)  # fail here, once, if the study does not exist
    slots = devices.worker_slots(args.device, args.workers_per_device, args.cpu_workers)
    fwd = ["--study", args.study, "--data", str(args.data), "--checkpoints", str(args.checkpoints),
           "--exit-with-parent"]
    # Names seed each worker's sampler: with the pid, two `latentstudy worker` on one host (Slurm
    # tasks sharing a node) neither propose the same parameters nor share a name.
    procs = coordinator.launch_workers(slots, fwd, f"{store.HOST}-{os.getpid()}-", args.storage, tracking)
    codes = [p.wait() for p in procs]
    if any(codes):
        raise StudyError(f"worker processes exited with {codes}")


def ui(args: argparse.Namespace) -> None:
    """Print the runs-table link of every latentstudy experiment, then serve the MLflow UI."""
    from latentstudy import config, tracking
    from latentstudy.search.store import redact

    uri = tracking.tracking_uri(config.project_root(Path.cwd()))
    tracking.require_reachable(uri)
    remote = uri.startswith(("http://", "https://"))  # that server is the UI already
    address = uri if remote else f"http://{args.host}:{args.port}"
    links = tracking.ui_links(uri, address)
    for name, link in links:
        print(f"{name}: {link}", flush=True)
    if not links:
        print(f"no latentstudy experiment in {redact(uri)} yet: run the study first (make study)", flush=True)
    if not remote:
        # One worker and no GenAI job runner: a local UI for one person starts in seconds, not tens.
        # The store URI goes through the environment: a database URL's password stays out of `ps`.
        os.environ.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
        os.environ["MLFLOW_BACKEND_STORE_URI"] = uri
        mlflow = Path(sys.executable).parent / "mlflow"  # the venv's, whether or not it is on PATH
        os.execv(mlflow, [str(mlflow), "ui", "--host", args.host, "--port", str(args.port), "--workers", "1"])


def dashboard(args: argparse.Namespace) -> None:
    """optuna-dashboard on the study's Optuna storage (the journal file, or the storage URL). Served
    from this process with the storage opened here: a URL's password stays off every command line."""
    import optuna_dashboard

    from latentstudy import config, paramfile
    from latentstudy.search import store

    root = config.project_root(Path.cwd())
    search = paramfile.load_section(args.params, "search")
    url = store.storage_url(search, root / ".latentstudy")
    journal = store.journal_path(url)
    if journal and not journal.is_file():
        raise StudyError(f"{journal}: no Optuna journal yet; run the study first (make study)")
    storage = store.open_storage(url, search.heartbeat_seconds)
    print(f"optuna-dashboard on {journal or store.redact(url)}: http://{args.host}:{args.port}/dashboard/",
          flush=True)
    optuna_dashboard.run_server(storage, host=args.host, port=args.port)


def run(args: argparse.Namespace) -> None:
    from latentstudy import experiment

    experiment.run(args.data, args.labels, args.purpose, args.set)


def answers(args: argparse.Namespace) -> None:
    from latentstudy import experiment

    experiment.print_answers(experiment.project_root(Path.cwd()))


def _run_args(p: argparse.ArgumentParser) -> None:
    from latentstudy.experiment import PURPOSES

    p.add_argument("data", type=Path, help="a .npz, .npy, .csv, .parquet or .feather file, or a folder of images")
    p.add_argument("--labels", help="the table column (or .npz key) holding labels, if any")
    p.add_argument("--purpose", choices=PURPOSES, help="the headline purpose (report.purpose)")
    p.add_argument("-S", "--set", action="append", default=[], metavar="KEY=VALUE",
                   help="any other parameter, as dvc exp run -S takes it (repeat for more)")


def export(args: argparse.Namespace) -> None:
    """The chosen model (or one size and arm) as files: TorchScript and its scaler."""
    from latentstudy import api

    model = api.load(args.uri, purpose=args.purpose, k=args.k, arm=args.arm, project=args.project)
    files = model.export(args.to)
    print(f"{model}: wrote " + ", ".join(str(f) for f in files))


def _export_args(p: argparse.ArgumentParser) -> None:
    from latentstudy.experiment import PURPOSES

    p.add_argument("--to", type=Path, required=True, help="folder to write into (created)")
    p.add_argument("--purpose", choices=PURPOSES, help="whose chosen model (default: the headline answer)")
    p.add_argument("--k", type=int, help="a latent size instead of an answer")
    p.add_argument("--arm", choices=ARMS, default="vae", help="with --k: the VAE or the autoencoder")
    p.add_argument("--uri", help="an MLflow model URI instead, e.g. models:/latentstudy-digits@generation")
    p.add_argument("--project", type=Path, default=Path("."), help="the study's folder (default: here)")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="latentstudy", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="run the study on a file or folder (dvc exp run with its -S overrides), then "
                                   "print the answers")
    _run_args(r)
    r.set_defaults(func=run)
    a = sub.add_parser("answers", help="the last report's answers, one line per purpose, and its path")
    a.set_defaults(func=answers)
    w = sub.add_parser("worker", help="run trials of an existing study until its budget is met")
    _worker_args(w)
    w.set_defaults(func=worker)
    u = sub.add_parser("ui", help="the MLflow UI on the study's tracking store; prints each experiment's runs link")
    d = sub.add_parser("dashboard", help="optuna-dashboard on the study's Optuna storage")
    d.add_argument("--params", type=Path, default=Path("params.yaml"), help="for search.storage")
    for p, port in ((u, 5000), (d, 8080)):
        p.add_argument("--host", default="127.0.0.1")
        p.add_argument("--port", type=int, default=port)
    u.set_defaults(func=ui)
    d.set_defaults(func=dashboard)
    e = sub.add_parser("export", help="write a chosen model as TorchScript and its scaler (scaler.json)")
    _export_args(e)
    e.set_defaults(func=export)
    args = parser.parse_args(argv)
    run_stage(lambda: args.func(args))


if __name__ == "__main__":
    main()
