"""DVC stage search: Optuna over beta and learning rate at every latent size, VAE and autoencoder."""

import _venv  # noqa: F401  (first: one line, not a traceback, outside the project's environment)
import argparse
from pathlib import Path

from latentstudy import config, stages
from latentstudy.stages import run_stage
from latentstudy.tracking import tracking_uri


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--params", type=Path, default=Path("params.yaml"))
    p.add_argument("--data", type=Path, default=Path("data/prepared"))
    p.add_argument("--models", type=Path, default=Path("models/search"))
    p.add_argument("--trials", type=Path, default=Path("reports/search/trials.csv"))
    p.add_argument("--metrics", type=Path, default=Path("reports/search/metrics.json"))
    p.add_argument("--study", type=Path, default=Path("reports/search/study.json"))
    p.add_argument("--no-tracking", action="store_true", help="skip MLflow")
    args = p.parse_args()
    root = config.project_root(Path.cwd())
    tracking = None if args.no_tracking else tracking_uri(root)
    stages.search(args.params, args.data, root, args.models, args.trials, args.metrics, args.study, tracking)


if __name__ == "__main__":
    run_stage(main)
