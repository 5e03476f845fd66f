"""DVC stage pca: exact PCA of the training split, evaluated on the test split at every latent size."""

import _venv  # noqa: F401  (first: one line, not a traceback, outside the project's environment)

from latentstudy import stages
from latentstudy.contracts import PcaPaths
from latentstudy.stages import run_stage


def main() -> None:
    paths, _ = stages.parse_paths(PcaPaths, __doc__, __file__)
    stages.pca(paths)


if __name__ == "__main__":
    run_stage(main)
