"""`latentstudy run DATA` and `latentstudy answers`: the study on a file or folder as one DVC
experiment (`dvc exp run` with the data's `-S` overrides, in the project; params.yaml is not
edited), and the answers of the project's last report, one line per purpose, with its path.

Called by cli only; no stage imports it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from latentstudy.config import StudyError
from latentstudy.contracts import report_outputs
from latentstudy.evaluation import read_json

PURPOSES = ("auto", "generation", "reconstruction", "representation")


def project_root(cwd: Path) -> Path:
    """The DVC project holding cwd: the nearest folder, cwd or above, with dvc.yaml and .dvc/."""
    cwd = cwd.resolve()
    for folder in (cwd, *cwd.parents):
        if (folder / "dvc.yaml").is_file() and (folder / ".dvc").is_dir():
            return folder
    raise StudyError(f"{cwd}: not a DVC project (no dvc.yaml and .dvc/ here or above); run it in the latentstudy "
                     "project's folder (make study sets one up)")


def overrides(data: Path, root: Path, labels: str | None, purpose: str | None, sets: list[str]) -> list[str]:
    """The `-S key=value` overrides that point the study at data (a file, or a folder of images),
    then the user's own, which come last and so win."""
    if not data.exists():
        raise StudyError(f"{data}: not found; allowed: a .npz, .npy, .csv, .parquet or .feather file, or a folder "
                         "of images")
    images = data.is_dir()
    if images and labels:
        raise StudyError(f"--labels {labels}: an image folder's labels are its subfolders (one per class); leave "
                         "--labels out")
    path = data.resolve()
    if path.is_relative_to(root):  # inside the project: a short path in params and `dvc exp show`
        path = path.relative_to(root)
    # ++: set the key whether or not params.yaml has it (Hydra's override grammar, which -S speaks)
    out = [f"++data.name={'images' if images else 'file'}", f"++data.path={path}"]
    if not images:  # the labels of this file, not of the one params.yaml names
        out.append(f"++data.labels_key={labels or 'null'}")
    if purpose:
        out.append(f"++report.purpose={purpose}")
    for item in sets:
        if "=" not in item:
            raise StudyError(f"-S {item}: not key=value; e.g. -S search.trials_per_dim=2")
    return out + list(sets)


def _tool(name: str) -> str:
    """The environment's executable (whether or not it is on PATH), else PATH's."""
    own = Path(sys.executable).parent / name
    found = str(own) if own.is_file() else shutil.which(name)
    if not found:
        raise StudyError(f"{name} not found; install latentstudy's environment (make setup) and run it from there")
    return found


def run(data: Path, labels: str | None, purpose: str | None, sets: list[str]) -> None:
    """`dvc exp run` on data in the project holding the current folder, then the answers."""
    root = project_root(Path.cwd())
    cmd = [_tool("dvc"), "exp", "run"]
    for item in overrides(data, root, labels, purpose, sets):
        cmd += ["-S", item]
    print("latentstudy run:", " ".join(cmd[1:]), flush=True)
    # The stages call `python`: this environment's, as `make study` has it.
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    code = subprocess.run(cmd, cwd=root, env=env).returncode
    if code:
        raise StudyError(f"dvc exp run failed (exit {code}); the lines above say why")
    print_answers(root)


def answer_lines(root: Path) -> list[str]:
    """One line per purpose from the project's recommendation.json, then the report's path."""
    # Only modules the search runs too: `python -m latentstudy.cli worker` ties cli's imports to it.
    from latentstudy.recommend import answer_line
    from latentstudy.stages import cmd_paths

    out = cmd_paths(root / "pipeline" / "report.py").get("--out", Path("reports"))
    paths = report_outputs(root / out)
    rec = read_json(paths["recommendation"])
    lines = [answer_line(name, rec["headline"], a["summary"]) for name, a in rec["answers"].items()]
    html, here = paths["html"], Path.cwd().resolve()
    return [*lines, f"Report: {html.relative_to(here) if html.is_relative_to(here) else html}"]


def print_answers(root: Path) -> None:
    print("\n".join(answer_lines(root)), flush=True)
