"""DVC stage evaluate: per-example test values of every model the search kept (best and seed
replicates, at every searched size), and of PCA at those sizes."""

import _venv  # noqa: F401  (first: one line, not a traceback, outside the project's environment)

from latentstudy import stages
from latentstudy.contracts import EvaluatePaths
from latentstudy.stages import run_stage


def main() -> None:
    paths, _ = stages.parse_paths(EvaluatePaths, __doc__, __file__)
    stages.evaluate(paths)


if __name__ == "__main__":
    run_stage(main)
