"""Shared fixtures: the real MNIST test files, tiny prepared datasets, and isolated stores."""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
MNIST = ROOT.parent / "shared" / "data" / "mnist"


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch):
    """No test writes to the user's stores through environment variables."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("OPTUNA_STORAGE", raising=False)


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    if not (MNIST / "t10k-images-idx3-ubyte.gz").is_file():
        pytest.skip(f"the MNIST test files are not at {MNIST}")
    return MNIST


@pytest.fixture(scope="session")
def mnist_test(mnist_dir) -> tuple[np.ndarray, np.ndarray]:
    from latentstudy.data.idx import read_idx

    images = read_idx(mnist_dir / "t10k-images-idx3-ubyte.gz").reshape(10000, -1) / 255.0
    labels = read_idx(mnist_dir / "t10k-labels-idx1-ubyte.gz")
    return images, labels


@pytest.fixture(scope="session")
def tracking_uri(tmp_path_factory) -> str:
    """One MLflow sqlite store per session: creating its schema costs seconds."""
    db = tmp_path_factory.mktemp("mlflow") / "mlflow.db"
    from latentstudy.tracking import Tracker

    Tracker(f"sqlite:///{db}").experiment("warm-up")
    return f"sqlite:///{db}"


def write_params(path: Path, **sections) -> Path:
    """A params.yaml with the given sections (dicts), YAML-dumped."""
    import yaml

    path.write_text(yaml.safe_dump(sections, sort_keys=False))
    return path


def kill_mid_search(cmd: list[str], cwd: Path, plan, storage, env: dict | None = None, complete: int = 1) -> None:
    """Start the search stage in a session of its own; once it has `complete` finished trials and
    one running in a live worker, kill -9 the whole session, as a batch system or the OOM killer
    ends a job (no worker outlives its coordinator long enough to finish the trial)."""
    from latentstudy.search import store

    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            time.sleep(0.3)
            try:
                trials = [t for _, ts in store.snapshot(plan, storage) for t in ts]
            except KeyError:  # studies not created yet
                continue
            if sum(t.state.name == "COMPLETE" for t in trials) >= complete and any(
                    t.state.name == "RUNNING" and "pid" in t.user_attrs for t in trials):
                return
        pytest.fail("the search never had finished and running trials at once")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def overridden(base: dict, **dotted) -> dict:
    """A deep copy of base with keys given as "a.b" = value replaced."""
    out = copy.deepcopy(base)
    for key, value in dotted.items():
        *path, last = key.split(".")
        target = out
        for part in path:
            target = target[part]
        target[last] = value
    return out


TINY_SEARCH = {
    "trials_per_dim": 2,
    "ae_trials_per_dim": 1,
    "max_trials_per_dim": 6,
    "beta": {"low": 0.5, "high": 2.0},
    "lr": {"low": 1.0e-3, "high": 3.0e-3},
    "pruner": "none",
    "model": {"arch": "mlp", "hidden": [32], "channels": [8]},
    # Tiny trainings stop at the cap (max_epochs = epochs), so the tests' runs stay short; the
    # extension past the cap is tested in tests/test_train.py.
    "train": {"epochs": 6, "max_epochs": 6, "batch_size": 64, "patience": 3},
    "device": "cpu",
    "cpu_workers": 1,
    "replicates": 0,  # tests that want the replicate phase ask for it
}

TINY_DATA = {"name": "digits", "limit": 300, "intrinsic_max_points": 300}


def metric_leaves(repo: Path) -> dict[str, float]:
    """Every number (booleans too) in the files dvc.yaml lists under metrics:, by file and key path."""
    import json

    import yaml

    out = {}

    def walk(prefix: str, value) -> None:
        if isinstance(value, dict):
            for key, v in value.items():
                walk(f"{prefix}.{key}", v)
        elif isinstance(value, list):
            for i, v in enumerate(value):
                walk(f"{prefix}[{i}]", v)
        elif isinstance(value, (int, float)):
            out[prefix] = value

    for stage in yaml.safe_load((repo / "dvc.yaml").read_text())["stages"].values():
        for entry in stage.get("metrics", []):
            path = next(iter(entry)) if isinstance(entry, dict) else entry
            walk(path + ":", json.loads((repo / path).read_text()))
    return out


def prepare_data(folder: Path, **data) -> tuple[dict, dict[str, dict[str, np.ndarray]]]:
    """Run prepare on the data section given as keywords into folder/prepared: (summary.json and
    the splits, read back)."""
    from latentstudy.config import DataConfig
    from latentstudy.paramfile import build
    from latentstudy.data import SPLITS, load_split, prepare

    prepare.run(build(DataConfig, data, "params.yaml: data"), folder, folder / "prepared")
    splits = {}
    for s in SPLITS:
        x, y = load_split(folder / "prepared", s)
        splits[s] = {"x": x} if y is None else {"x": x, "y": y}
    return json.loads((folder / "prepared" / "summary.json").read_text()), splits


def prepared_summary(**changes):
    """The prepare stage's summary of 180 unlabelled 8x8 images (60 a split); changes: fields to set."""
    from latentstudy.contracts import Summary

    summary = Summary(dataset="digits", source="test", n_examples=180, input_dim=64, image_shape=[8, 8],
                      counts={"train": 60, "val": 60, "test": 60}, has_labels=False, class_names=[],
                      class_counts=None, scaling={}, intrinsic_dim={}, split_seed=0, fingerprint="f" * 16)
    return dataclasses.replace(summary, **changes)


@pytest.fixture
def cpu_threads():
    """Keep torch to one thread in-process so tests do not fight the worker processes."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def pytest_report_header(config):
    return f"latentstudy tests; cpu cores: {os.cpu_count()}"
