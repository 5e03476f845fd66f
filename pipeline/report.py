"""DVC stage report: the answer per purpose with intervals, the table, figures, reports/index.html and the
MLflow report run."""

import _venv  # noqa: F401  (first: one line, not a traceback, outside the project's environment)
from pathlib import Path

from latentstudy import config, stages
from latentstudy.contracts import ReportPaths
from latentstudy.stages import run_stage
from latentstudy.tracking import tracking_uri


def main() -> None:
    paths, no_tracking = stages.parse_paths(ReportPaths, __doc__, __file__, tracked=True)
    stages.report(paths, None if no_tracking else tracking_uri(config.project_root(Path.cwd())))


if __name__ == "__main__":
    run_stage(main)
