"""DVC stage pca: exact PCA of the training split, evaluated on the test split at every latent size."""

import _venv  # noqa: F401  (first: one line, not a traceback, outside the project's environment)
import argparse
from pathlib import Path

from latentstudy import stages
from latentstudy.stages import run_stage


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--params", type=Path, default=Path("params.yaml"))
    p.add_argument("--data", type=Path, default=Path("data/prepared"))
    p.add_argument("--metrics", type=Path, default=Path("reports/pca/metrics.json"))
    p.add_argument("--curve", type=Path, default=Path("reports/pca/curve.csv"))
    p.add_argument("--basis", type=Path, default=Path("models/pca.npz"))
    args = p.parse_args()
    stages.pca(args.params, args.data, args.metrics, args.curve, args.basis)


if __name__ == "__main__":
    run_stage(main)
