"""DVC stage prepare: read the dataset named in params.yaml (data), scale it to [0, 1], split it."""

import _venv  # noqa: F401  (first: one line, not a traceback, outside the project's environment)
import argparse
from pathlib import Path

from latentstudy import config, stages
from latentstudy.stages import run_stage


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--params", type=Path, default=Path("params.yaml"))
    p.add_argument("--out", type=Path, default=Path("data/prepared"))
    args = p.parse_args()
    stages.prepare(args.params, args.out, config.project_root(Path.cwd()))


if __name__ == "__main__":
    run_stage(main)
