"""What crosses a stage boundary, typed: each stage's paths (as dvc.yaml's cmd gives them), the
prepared data's summary (data/prepared/summary.json), the search's searched sizes and kept models
(reports/search/study.json), each with its load and save, and everything the report reads
(Inputs). The evaluate stage's outputs are typed beside this module, in latentstudy.evaluation.
The files keep their content: `dvc metrics`, the tests and users' scripts read them as they were.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING

from latentstudy.config import StudyError
from latentstudy.evaluation import Evaluation, PerExample, read_json

if TYPE_CHECKING:  # annotations only: the stages that need no arrays do not import them
    import numpy as np
    import pandas as pd


# --- each stage's paths, as dvc.yaml gives them (--name per field, dashes for underscores) -------


@dataclass(frozen=True)
class PreparePaths:
    params: Path
    out: Path  # the prepared folder


@dataclass(frozen=True)
class PcaPaths:
    params: Path
    data: Path  # the prepared folder
    metrics: Path
    curve: Path
    basis: Path


@dataclass(frozen=True)
class SearchPaths:
    params: Path
    data: Path
    models: Path
    trials: Path
    metrics: Path
    study: Path


@dataclass(frozen=True)
class EvaluatePaths:
    params: Path
    data: Path
    models: Path
    study: Path
    basis: Path
    out: Path  # evaluation.json
    per_example: Path


@dataclass(frozen=True)
class ReportPaths:
    params: Path
    data: Path
    evaluation: Path
    per_example: Path
    trials: Path
    pca_metrics: Path
    study: Path
    models: Path
    basis: Path
    out: Path  # the reports folder


RECOMMENDATION_FILE = "recommendation.json"  # in the report's folder: every answer (latentstudy.answers reads it)


# --- what the prepare stage hands on (data/prepared/summary.json) ---------------------------------


@dataclass(frozen=True)
class Summary:
    """data/prepared/summary.json: the data every later stage reads about, as prepare wrote it."""

    dataset: str
    source: str
    n_examples: int
    input_dim: int
    image_shape: list[int] | None  # [h, w] or [c, h, w]; None for vector data
    counts: dict[str, int]  # split -> examples
    has_labels: bool
    class_names: list[str]  # [] without labels
    class_counts: dict[str, list[int]] | None  # split -> examples per class
    scaling: dict  # the fitted scaler (latentstudy.data.scaling)
    intrinsic_dim: dict  # the estimates with their intervals and rejections (latentstudy.intrinsic)
    split_seed: int
    fingerprint: str

    @property
    def classes(self) -> int:
        return len(self.class_names)

    def to_json(self) -> dict:
        return asdict(self)

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_json(), indent=2) + "\n")

    @classmethod
    def load(cls, path: Path) -> Summary:
        if not path.is_file():
            raise StudyError(f"{path}: not found; run the prepare stage first (dvc repro)")
        raw = json.loads(path.read_text())
        missing = [f.name for f in fields(cls) if f.name not in raw]
        if missing:
            raise StudyError(f"{path}: has no {missing[0]!r} (written by an older version); rerun the prepare "
                             "stage: dvc repro -f prepare")
        return cls(**{f.name: raw[f.name] for f in fields(cls)})


# --- what the search hands on (reports/search/study.json) and what the report reads ---------------


@dataclass(frozen=True)
class KeptModel:
    """One model the search hands on. Rank 0: the best trial of its size and arm (replicate 0) and
    its seed replicates (1, 2, ...); rank 1, 2, ...: the size's other finished trials by objective."""

    latent_dim: int
    arm: str
    file: str  # in the models folder
    rank: int
    replicate: int
    objective: float | None
    seed: int | None = None
    trial: int | None = None


@dataclass(frozen=True)
class SearchedSize:
    latent_dim: int
    phase: str = "grid"  # grid | added
    reason: str = ""  # why the search added it


@dataclass(frozen=True)
class ReplicateReason:
    latent_dim: int
    arm: str
    reason: str


@dataclass(frozen=True)
class Searched:
    """reports/search/study.json: the study's stores, the sizes searched and why, the models kept."""

    prefix: str
    storage: str
    experiment: str
    experiment_id: str | None
    parent_run_id: str | None
    studies: list[str]
    objective: str
    latent_dims: list[int]
    sizes: list[SearchedSize]
    replicates: dict[str, list[int]]  # arm -> the sizes with seed replicates
    replicate_reasons: list[ReplicateReason]
    models: list[KeptModel]
    seed: int
    search: dict = field(default_factory=dict)  # the search section as it ran

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def load(cls, path: Path) -> Searched:
        raw = read_json(path)
        if "sizes" not in raw or "models" not in raw:
            raise StudyError(f"{path}: lists no searched sizes or models (an older search); rerun the search "
                             "stage: dvc repro -f search")
        known = {f.name for f in fields(cls)}
        raw = {key: value for key, value in raw.items() if key in known}
        return cls(**{**raw, "sizes": [SearchedSize(**s) for s in raw["sizes"]],
                      "models": [KeptModel(**m) for m in raw["models"]],
                      "replicate_reasons": [ReplicateReason(**r) for r in raw.get("replicate_reasons") or []],
                      "replicates": raw.get("replicates") or {}, "search": raw.get("search") or {}})


@dataclass
class Inputs:
    """Everything the report reads from the stages before it."""

    evaluation: Evaluation
    per_example: PerExample
    trials: pd.DataFrame
    summary: Summary
    pca_metrics: dict
    study: Searched
    x_test: np.ndarray
    y_test: np.ndarray | None
    models_dir: Path
    pca_basis: object


def report_outputs(out_dir: Path) -> dict[str, Path]:
    """The report stage's files in its folder (ReportPaths.out), as the stage writes them and
    `latentstudy answers` reads them."""
    return {"figures": out_dir / "figures", "plots": out_dir / "plots" / "distortion.csv",
            "table": out_dir / "table.csv", "metrics": out_dir / "metrics.json",
            "recommendation": out_dir / RECOMMENDATION_FILE, "html": out_dir / "index.html"}

