"""Crash-consistency soak: kill -9 the search stage at seeded random moments, restarting after each,
and compare the end with an uninterrupted run of the same params.

    .venv/bin/python benchmarks/soak.py                     # the default study, 20 kills (hours on 2 cores)
    .venv/bin/python benchmarks/soak.py --kills 3 --tiny    # minutes

One CPU worker (search.cpu_workers 1, device cpu), so both runs are deterministic. It prints each
kill moment (seconds into that attempt, finished trials at the kill), any finished trial a kill
lost (gone or changed at the end), and every difference from the uninterrupted run: a finished
trial (by study, beta, lr and seed) only one run has, one that measured another value or ran other
epochs, and the search's answers (reports/search/metrics.json); exit status 1 on any.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import yaml

ROOT = Path(__file__).resolve().parents[1]
OUTS = ["--data", "data/prepared", "--models", "models/search", "--trials", "reports/search/trials.csv",
        "--metrics", "reports/search/metrics.json", "--study", "reports/search/study.json"]
# Every finished trial by what it is (a killed trial is failed and retried under a new number, with
# the same parameters and seed), and what it measured.
IDENTITY = ["study", "beta", "lr", "seed"]
MEASURED = ["objective_value", "epochs_run"]
TINY = {"data": {"name": "digits", "limit": 300, "intrinsic_max_points": 300},
        "study": {"latent_dims": [2, 4], "seed": 0, "refine_max": 0},
        "search": {"trials_per_dim": 3, "ae_trials_per_dim": 1, "max_trials_per_dim": 8, "pruner": "none",
                   "stack": 1, "model": {"arch": "mlp", "hidden": [32]}, "replicates": 0, "reinforce": False,
                   "train": {"epochs": 20, "max_epochs": 20, "batch_size": 64, "patience": 20}}}
def project(folder: Path, params: dict) -> Path:
    """A project folder with these params (one CPU worker) and its prepared data."""
    folder.mkdir(parents=True)
    params = json.loads(json.dumps(params))
    params.setdefault("search", {}).update(device="cpu", cpu_workers=1)
    (folder / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    subprocess.run([sys.executable, str(ROOT / "pipeline" / "prepare.py"), "--params", "params.yaml", "--out",
                    "data/prepared"], cwd=folder, check=True, capture_output=True)
    return folder


def search(folder: Path, kill_after: float | None = None) -> tuple[int | None, float]:
    """The search stage as `dvc repro` runs it (outputs removed first), without MLflow. kill_after:
    kill -9 its whole process group after that many seconds. (exit status or None if killed, seconds)."""
    for out in ("models/search", "reports/search"):
        shutil.rmtree(folder / out, ignore_errors=True)
    started = time.monotonic()
    proc = subprocess.Popen([sys.executable, str(ROOT / "pipeline" / "search.py"), "--params", "params.yaml", *OUTS,
                             "--no-tracking"], cwd=folder, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        code = proc.wait(timeout=kill_after)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        code = None
    return code, time.monotonic() - started


def finished_trials(folder: Path) -> dict[tuple[str, int], float]:
    """{(study, trial number): value} of every finished trial in the folder's journal (a record torn
    by the kill is cut first, as the next run does)."""
    import optuna

    from latentstudy.search.journal import CheckedJournal

    path = folder / ".latentstudy" / "optuna.journal"
    if not path.is_file():
        return {}
    storage = optuna.storages.JournalStorage(CheckedJournal(path))
    return {(s.study_name, t.number): t.value for s in storage.get_all_studies()
            for t in storage.get_all_trials(s._study_id, deepcopy=False) if t.state.name == "COMPLETE"}


def kept(folder: Path) -> dict[tuple, tuple]:
    """{(study, beta, lr, seed): (value, epochs)} of every finished trial, numbers as %.10g."""
    trials = pd.read_csv(folder / "reports/search/trials.csv")
    done = trials[trials["state"] == "COMPLETE"]
    text = lambda row, cols: tuple("-" if pd.isna(row[c]) else  # noqa: E731
                                   (f"{row[c]:.10g}" if isinstance(row[c], float) else str(row[c])) for c in cols)
    return {text(row, IDENTITY): text(row, MEASURED) for _, row in done.iterrows()}


def differences(reference: Path, soaked: Path) -> list[str]:
    """Finished trials only one run has (by study, beta, lr and seed), finished trials that measured
    another value or ran other epochs, and the search's answers."""
    a, b = kept(reference), kept(soaked)
    diffs = [f"only uninterrupted: {key}" for key in sorted(a.keys() - b.keys())]
    diffs += [f"only soaked: {key}" for key in sorted(b.keys() - a.keys())]
    diffs += [f"{key}: {a[key]} uninterrupted, {b[key]} soaked" for key in sorted(a.keys() & b.keys())
              if a[key] != b[key]]
    answers = [json.loads((f / "reports/search/metrics.json").read_text()) for f in (reference, soaked)]
    if answers[0] != answers[1]:
        diffs.append("reports/search/metrics.json differs")
    return diffs


def soak(workdir: Path, params: dict, kills: int, seed: int) -> tuple[list[str], list[str]]:
    """(finished trials a kill lost: gone or changed at the end; differences() from an uninterrupted
    run), printed as it goes."""
    reference = project(workdir / "uninterrupted", params)
    code, whole = search(reference)
    assert code == 0, f"the uninterrupted search failed ({code})"
    print(f"uninterrupted: {whole:.0f} s, {len(finished_trials(reference))} finished trials", flush=True)
    soaked = project(workdir / "soaked", params)
    rng = random.Random(seed)
    seen: dict[tuple[str, int], float] = {}
    for i in range(1, kills + 1):
        # Spread over the whole run: each attempt resumes, so the moments sum to about its length.
        moment = rng.uniform(0.2, 1.0) * whole / kills
        code, _ = search(soaked, kill_after=moment)
        seen.update(finished_trials(soaked))
        print(f"kill {i}/{kills}: at {moment:.1f} s into attempt {i}, {len(seen)} finished trials"
              + ("" if code is None else f" (the search had already ended, exit {code})"), flush=True)
    code, last = search(soaked)
    assert code == 0, f"the resumed search failed ({code})"
    print(f"resumed to the end: {last:.0f} s", flush=True)
    end = finished_trials(soaked)
    lost = [f"lost: {key} finished with {value} before a kill, {end.get(key)} at the end"
            for key, value in sorted(seen.items()) if end.get(key) != value]
    diffs = differences(reference, soaked)
    for line in lost + diffs:
        print(line)
    if not lost + diffs:
        print("no differences: kept trials and answers equal the uninterrupted run")
    return lost, diffs


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kills", type=int, default=20)
    p.add_argument("--seed", type=int, default=0, help="seeds the kill moments")
    p.add_argument("--tiny", action="store_true", help="tiny data and search instead of params.yaml's")
    p.add_argument("--workdir", type=Path, default=ROOT / ".soak", help="removed and made again")
    args = p.parse_args()
    shutil.rmtree(args.workdir, ignore_errors=True)
    params = TINY if args.tiny else yaml.safe_load((ROOT / "params.yaml").read_text())
    lost, diffs = soak(args.workdir, params, args.kills, args.seed)
    sys.exit(1 if lost or diffs else 0)


if __name__ == "__main__":
    main()
