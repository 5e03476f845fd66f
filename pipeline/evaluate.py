"""DVC stage evaluate: per-example test values of every model the search kept (best and seed
replicates, at every searched size), and of PCA at those sizes."""

import _venv  # noqa: F401  (first: one line, not a traceback, outside the project's environment)
import argparse
from pathlib import Path

from latentstudy import stages
from latentstudy.stages import run_stage


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--params", type=Path, default=Path("params.yaml"))
    p.add_argument("--data", type=Path, default=Path("data/prepared"))
    p.add_argument("--models", type=Path, default=Path("models/search"))
    p.add_argument("--study", type=Path, default=Path("reports/search/study.json"))
    p.add_argument("--basis", type=Path, default=Path("models/pca.npz"))
    p.add_argument("--out", type=Path, default=Path("reports/evaluate/evaluation.json"))
    p.add_argument("--per-example", type=Path, default=Path("reports/evaluate/per_example.npz"))
    args = p.parse_args()
    stages.evaluate(args.params, args.data, args.models, args.study, args.basis, args.out, args.per_example)


if __name__ == "__main__":
    run_stage(main)
