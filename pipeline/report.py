"""DVC stage report: the answer per purpose with intervals, the table, figures, reports/index.html and the
MLflow report run."""

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
    p.add_argument("--evaluation", type=Path, default=Path("reports/evaluate/evaluation.json"))
    p.add_argument("--per-example", type=Path, default=Path("reports/evaluate/per_example.npz"))
    p.add_argument("--trials", type=Path, default=Path("reports/search/trials.csv"))
    p.add_argument("--pca-metrics", type=Path, default=Path("reports/pca/metrics.json"))
    p.add_argument("--study", type=Path, default=Path("reports/search/study.json"))
    p.add_argument("--models", type=Path, default=Path("models/search"))
    p.add_argument("--basis", type=Path, default=Path("models/pca.npz"))
    p.add_argument("--out", type=Path, default=Path("reports"))
    p.add_argument("--no-tracking", action="store_true", help="skip MLflow")
    args = p.parse_args()
    tracking = None if args.no_tracking else tracking_uri(config.project_root(Path.cwd()))
    stages.report(args.params, args.data, args.evaluation, args.per_example, args.trials, args.pca_metrics,
                  args.study, args.models, args.basis, args.out, tracking)


if __name__ == "__main__":
    run_stage(main)
