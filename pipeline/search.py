"""DVC stage search: Optuna over beta and learning rate at every latent size, VAE and autoencoder."""

import _venv  # noqa: F401  (first: one line, not a traceback, outside the project's environment)
from pathlib import Path

from latentstudy import config, stages
from latentstudy.contracts import SearchPaths
from latentstudy.stages import run_stage
from latentstudy.tracking import tracking_uri


def main() -> None:
    paths, no_tracking = stages.parse_paths(SearchPaths, __doc__, __file__, tracked=True)
    root = config.project_root(Path.cwd())
    stages.search(paths, root, None if no_tracking else tracking_uri(root))


if __name__ == "__main__":
    run_stage(main)
