"""DVC stage prepare: read the dataset named in params.yaml (data), scale it to [0, 1], split it."""

import _venv  # noqa: F401  (first: one line, not a traceback, outside the project's environment)
from pathlib import Path

from latentstudy import config, stages
from latentstudy.contracts import PreparePaths
from latentstudy.stages import run_stage


def main() -> None:
    paths, _ = stages.parse_paths(PreparePaths, __doc__, __file__)
    stages.prepare(paths, config.project_root(Path.cwd()))


if __name__ == "__main__":
    run_stage(main)
