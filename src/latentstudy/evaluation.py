"""What the evaluate stage hands the report, typed: reports/evaluate/evaluation.json (Evaluation:
each searched size's PCA values, each arm's pick with every model behind it, and the better code)
and per_example.npz (PerExample: every model's values per test example, by arm). The files keep
their content: `dvc metrics`, the tests and users' scripts read them as they were.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from latentstudy.config import ARMS, StudyError

if TYPE_CHECKING:  # annotations only: the stages that need no arrays do not import numpy here
    import numpy as np


class Record:
    """A JSON object as a dataclass, its fields in the file's key order. A field named in OPTIONAL
    is left out of the file while None, as the evaluate stage leaves it out (a VAE's values on an
    autoencoder, probe accuracy without labels); NESTED: the record type of each field that holds
    records (one, or a list). A key missing from the file takes the field's default: None, but for
a row's phase and reason and an arm's models and trials."""

    OPTIONAL: ClassVar[tuple[str, ...]] = ()
    NESTED: ClassVar[dict[str, type[Record]]] = {}

    def to_json(self) -> dict:
        out = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None and f.name in self.OPTIONAL:
                continue
            out[f.name] = ([v.to_json() for v in value] if isinstance(value, list) and f.name in self.NESTED
                           else value.to_json() if isinstance(value, Record) else value)
        return out

    @classmethod
    def from_json(cls, raw: dict):
        values = {}
        for f in fields(cls):
            if f.name not in raw:
                continue
            value, kind = raw[f.name], cls.NESTED.get(f.name)
            if kind is not None and value is not None:
                value = [kind.from_json(v) for v in value] if isinstance(value, list) else kind.from_json(value)
            values[f.name] = value
        return cls(**values)


@dataclass(frozen=True)
class Means(Record):
    """A model's means over the test examples: its errors, a VAE's bounds, the probe's accuracy."""

    OPTIONAL = ("rate_nats", "iwae_nll_nats", "neg_elbo_mc_nats", "probe_accuracy", "neg_elbo_nats")

    sse_per_image: float | None = None
    bce_nats: float | None = None
    distortion_nats: float | None = None
    rate_nats: float | None = None
    iwae_nll_nats: float | None = None
    neg_elbo_mc_nats: float | None = None
    probe_accuracy: float | None = None
    neg_elbo_nats: float | None = None


@dataclass(frozen=True)
class Trained(Record):
    """Where a model comes from, and whether it stopped still improving. ModelMeans names it after
    Means among its bases: a dataclass takes the last base's fields first, and the file has these
    keys before the means."""

    seed: int | None = None
    trial: int | None = None
    study: str | None = None
    still_improving: bool | None = None  # stopped at the epoch ceiling still improving


@dataclass(frozen=True)
class ModelMeans(Means, Trained):
    """One model's test means and facts: an arm's "models" (the pick and its seed replicates) and
    "trials" (the size's other finished trials) in evaluation.json."""

    OPTIONAL = (*Means.OPTIONAL, "active_units")

    active_units: int | None = None
    flag: str | None = None  # why it is flagged as diverged; None for a sane model
    replicate: int | None = None
    rank: int | None = None
    objective: float | None = None


@dataclass(frozen=True)
class ArmResult(Means):
    """One size's entry of an arm (vae, ae): the search's pick's means and flag, its training facts,
    every model behind it, and (VAE) its units."""

    OPTIONAL = (*Means.OPTIONAL, "active_units", "mu_variance", "collapsed_units", "kl_per_dim_nats", "iwae_samples")
    NESTED = {"models": ModelMeans, "trials": ModelMeans}

    flag: str | None = None
    latent_dim: int | None = None
    n_params: int | None = None
    beta: float | None = None
    lr: float | None = None
    train_seconds: float | None = None
    trial: int | None = None
    study: str | None = None
    epochs_run: int | None = None
    mse_per_pixel: float | None = None
    models: list[ModelMeans] = field(default_factory=list)  # the pick, then its seed replicates
    trials: list[ModelMeans] = field(default_factory=list)  # the size's other trials
    n_sane: int | None = None
    still_improving: int | None = None  # trainings of this size stopped at the ceiling still improving
    active_units: int | None = None
    mu_variance: list[float] | None = None
    collapsed_units: int | None = None
    kl_per_dim_nats: list[float] | None = None
    iwae_samples: int | None = None


@dataclass(frozen=True)
class PcaValues(Record):
    """PCA at one size on the test split (pca.metrics_at), with its probe accuracy when labelled."""

    OPTIONAL = ("probe_accuracy",)

    latent_dim: int | None = None
    components_used: int | None = None
    exact: bool | None = None
    explained_variance_ratio: float | None = None
    sse_per_image: float | None = None
    mse_per_pixel: float | None = None
    bce_nats: float | None = None
    probe_accuracy: float | None = None


@dataclass(frozen=True)
class CodeChoice(Record):
    """The better code of one size on validation (evaluate.code_choice): "ae" or "pca"."""

    OPTIONAL = ("ae_val_sse_per_image", "diff_val_sse_per_image", "diff_se")

    code: str | None = None
    pca_val_sse_per_image: float | None = None
    pca_exact: bool | None = None
    undertrained: bool | None = None
    ae_val_sse_per_image: float | None = None
    diff_val_sse_per_image: float | None = None
    diff_se: float | None = None


@dataclass(frozen=True)
class EvaluationRow(Record):
    """One searched size: PCA, each arm's entry (None: no finished trial), the better code."""

    OPTIONAL = ("code",)
    NESTED = {"pca": PcaValues, "vae": ArmResult, "ae": ArmResult, "code": CodeChoice}

    latent_dim: int
    compression_ratio: float | None = None
    phase: str = "grid"  # grid | added
    reason: str = ""  # why the search added it
    pca: PcaValues | None = None
    vae: ArmResult | None = None
    ae: ArmResult | None = None
    code: CodeChoice | None = None

    def arm(self, name: str) -> ArmResult | None:
        """The entry of an arm by its name (config.ARMS)."""
        return getattr(self, name)


@dataclass(frozen=True)
class Evaluation(Record):
    """reports/evaluate/evaluation.json: the test split's means of every searched size."""

    NESTED = {"rows": EvaluationRow}

    input_dim: int
    n_test: int
    has_labels: bool
    baseline: dict[str, float] | None = None  # the trivial model's (evaluate.baseline)
    rows: list[EvaluationRow] = field(default_factory=list)

    @property
    def added_sizes(self) -> list[int]:
        return [row.latent_dim for row in self.rows if row.phase == "added"]

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_json(), indent=2) + "\n")

    @classmethod
    def load(cls, path: Path) -> Evaluation:
        return cls.from_json(read_json(path))


@dataclass(frozen=True)
class ArmExamples:
    """One arm's models (vae, ae, pca), each a row: its size, rank, replicate and flag, and its
    per-example test values (models, n). per_example.npz names each array <arm>_<field>."""

    latent_dim: np.ndarray
    rank: np.ndarray | None = None
    replicate: np.ndarray | None = None
    flagged: np.ndarray | None = None
    sse_per_image: np.ndarray | None = None
    bce_nats: np.ndarray | None = None
    distortion_nats: np.ndarray | None = None
    rate_nats: np.ndarray | None = None
    iwae_nll_nats: np.ndarray | None = None
    neg_elbo_mc_nats: np.ndarray | None = None
    probe_correct: np.ndarray | None = None

    def values(self, quantity: str) -> np.ndarray | None:
        """(models, n) values of a quantity (a field), None when not measured."""
        return getattr(self, quantity)


@dataclass(frozen=True)
class PerExample:
    """reports/evaluate/per_example.npz: every model's per-example test values by arm, and the
    trivial model's squared error per example."""

    arms: dict[str, ArmExamples]  # the arms with at least one model
    baseline_sse_per_image: np.ndarray | None = None

    def arrays(self) -> dict[str, np.ndarray]:
        """The npz's members by name."""
        out = {f"{arm}_{f.name}": getattr(values, f.name) for arm, values in self.arms.items()
               for f in fields(ArmExamples)}
        out["baseline_sse_per_image"] = self.baseline_sse_per_image
        return {name: array for name, array in out.items() if array is not None}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> PerExample:
        arms = {arm: ArmExamples(**{f.name: arrays.get(f"{arm}_{f.name}") for f in fields(ArmExamples)})
                for arm in ("pca", *ARMS) if f"{arm}_latent_dim" in arrays}
        return cls(arms, arrays.get("baseline_sse_per_image"))

    def save(self, path: Path) -> None:
        from latentstudy import npz

        path.parent.mkdir(parents=True, exist_ok=True)
        npz.save(path, **self.arrays())

    @classmethod
    def load(cls, path: Path) -> PerExample:
        from latentstudy import npz

        return cls.from_arrays(npz.load(found(path), "evaluate"))


def read_json(path: Path) -> dict:
    return json.loads(found(path).read_text())


def found(path: Path) -> Path:
    """path, once it is there: a stage's input that an earlier stage writes."""
    if not path.is_file():
        raise StudyError(f"{path}: not found; run the stages before it (dvc repro)")
    return path
