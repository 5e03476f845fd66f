"""Configuration: one dataclass per params.yaml section, holding every default once and the
checks between keys; the one user-facing error. Reading params.yaml and checking each key
against these classes is paramfile.py's.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal


class StudyError(Exception):
    """A problem the user can fix (bad params, bad data, missing files). Printed as one line."""


_FULL = (errno.ENOSPC, errno.EDQUOT)
_READ_ONLY = (errno.EROFS, errno.EACCES, errno.EPERM)


def store_fault(path: Path | str, exc: BaseException) -> StudyError | None:
    """A full disk or a place that cannot be written (an OSError, or SQLite's own words for either,
    however MLflow or SQLAlchemy wrapped them) as the one line naming the path and the fix; None
    for any other error."""
    chain, cause = [], exc
    while cause is not None and len(chain) < 8:
        chain.append(cause)
        cause = cause.__cause__ or cause.__context__
    codes = {getattr(e, "errno", None) for e in chain}
    text = " ".join(str(e) for e in chain)
    folder = Path(path) if Path(path).is_dir() else Path(path).parent
    if codes & set(_FULL) or "database or disk is full" in text:
        return StudyError(f"{path}: no space left on its disk; free space there (df -h {folder}), then rerun: "
                          "the finished trials are kept")
    if codes & set(_READ_ONLY) or "readonly database" in text:
        return StudyError(f"{path}: cannot be written (read-only or permission denied); make {folder} writable "
                          "(or run from a writable copy of the project), then rerun: the finished trials are kept")
    return None


def first_line(exc: BaseException) -> str:
    """An exception as `Type: the first line of its message`, for a StudyError's one line."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def _bounds(**kw: float) -> dict:
    return {"bounds": kw}


# --- data -------------------------------------------------------------------------------------

MIN_PER_SPLIT = 10  # examples every split needs: with fewer, a test figure or an early stop rests on noise


@dataclass(frozen=True)
class Split:
    train: float = field(default=0.7, metadata=_bounds(gt=0, lt=1))
    val: float = field(default=0.15, metadata=_bounds(gt=0, lt=1))
    test: float = field(default=0.15, metadata=_bounds(gt=0, lt=1))

    def check(self, where: str) -> None:
        total = self.train + self.val + self.test
        if abs(total - 1.0) > 1e-6:
            raise StudyError(
                f"{where}: train + val + test = {total:g}; the three fractions must sum to 1"
            )


@dataclass(frozen=True)
class Manifold:
    intrinsic_dim: int = field(default=3, metadata=_bounds(ge=1))
    ambient_dim: int = field(default=24, metadata=_bounds(ge=2))
    n: int = field(default=3000, metadata=_bounds(ge=3 * MIN_PER_SPLIT))
    noise: float = field(default=0.0, metadata=_bounds(ge=0))
    # The scale of the embedding's random frequencies: higher bends the manifold more, and a
    # network then needs more data and steps to unfold it.
    curvature: float = field(default=1.5, metadata=_bounds(gt=0))
    seed: int = 0

    def check(self, where: str) -> None:
        if self.ambient_dim < self.intrinsic_dim:
            raise StudyError(
                f"{where}: ambient_dim = {self.ambient_dim} is below intrinsic_dim = "
                f"{self.intrinsic_dim}; allowed: ambient_dim >= intrinsic_dim"
            )


@dataclass(frozen=True)
class Shapes:
    """One shape per image, drawn with the listed factors free: the images' intrinsic dimension."""

    factors: list[Literal["x", "y", "scale", "rotation", "aspect", "brightness"]] = field(
        default_factory=lambda: ["x", "y", "scale", "rotation"])
    size: int = field(default=32, metadata=_bounds(ge=8, le=256))
    n: int = field(default=3000, metadata=_bounds(ge=3 * MIN_PER_SPLIT))
    seed: int = 0

    def check(self, where: str) -> None:
        if not self.factors or len(set(self.factors)) != len(self.factors):
            raise StudyError(f"{where}.factors = {self.factors}; allowed: a non-empty list without repeats "
                             "of x, y, scale, rotation, aspect, brightness")


@dataclass(frozen=True)
class Patches:
    n: int = field(default=3000, metadata=_bounds(ge=3 * MIN_PER_SPLIT))
    size: int = field(default=32, metadata=_bounds(ge=4, le=256))
    seed: int = 0


DatasetName = Literal["digits", "mnist", "fashion-mnist", "file", "images", "manifold", "shapes", "patches"]


@dataclass(frozen=True)
class DataConfig:
    name: DatasetName = "digits"
    path: str | None = None
    subset: Literal["all", "train", "test"] = "all"
    array_key: str | None = None
    labels_key: str | None = None
    image_shape: list[int] | None = None
    image_size: list[int] | None = None
    color: Literal["auto", "gray", "rgb"] = "auto"
    skip_bad_files: bool = False
    scaling: Literal["auto", "standard", "minmax", "minmax_global", "none"] = "auto"  # latentstudy.data.scaling
    limit: int | None = field(default=None, metadata=_bounds(ge=3 * MIN_PER_SPLIT))
    seed: int = 0
    split: Split = field(default_factory=Split)
    manifold: Manifold = field(default_factory=Manifold)
    shapes: Shapes = field(default_factory=Shapes)
    patches: Patches = field(default_factory=Patches)
    intrinsic_max_points: int = field(default=5000, metadata=_bounds(ge=10))

    def check(self, where: str) -> None:
        if self.name in ("file", "images") and not self.path:
            what = "a .npz, .npy, .csv, .parquet or .feather file" if self.name == "file" else "a folder of images"
            raise StudyError(f"{where}.path is empty; data.name '{self.name}' needs {what}")
        if self.image_shape is not None:
            if len(self.image_shape) not in (2, 3) or min(self.image_shape) < 1:
                raise StudyError(
                    f"{where}.image_shape = {self.image_shape}; allowed: [height, width] or "
                    "[channels, height, width] with positive sizes"
                )
        if self.image_size is not None and (len(self.image_size) != 2 or min(self.image_size) < 1):
            raise StudyError(f"{where}.image_size = {self.image_size}; allowed: [height, width] with positive sizes")


# --- study grid -------------------------------------------------------------------------------


AUTO_SIZES_BELOW = 5  # auto grid: sizes up to its top, then one above D
# The auto grid's top is at most this many times the intrinsic dimension's upper estimate. A VAE's
# best NLL and a probe's plateau lie near the data's intrinsic dimension; past a few times it, only
# reconstruction still gains, and for large D those sizes cost most of the study (MNIST, D = 784:
# k = 392 and 1176 took two thirds of the grid's time). The search still doubles the largest size
# while it is the best (study.refine_max).
AUTO_ID_FACTOR = 8


def auto_top(input_dim: int, intrinsic_high: float | None = None) -> float:
    """The auto grid's largest size below D: D / 2, or AUTO_ID_FACTOR x the intrinsic dimension's upper
    estimate where that is smaller (None: no estimate, D / 2)."""
    top = input_dim / 2
    return top if intrinsic_high is None else min(top, max(2.0, AUTO_ID_FACTOR * intrinsic_high))


def auto_sizes(input_dim: int, intrinsic_high: float | None = None) -> list[int]:
    """The default grid for D = input_dim: AUTO_SIZES_BELOW sizes spaced geometrically from 2 to the top
    (auto_top: D / 2, or 8 x the intrinsic dimension where smaller), then, where the top is D / 2, one
    size above D (1.5 x D, at most 2 x D), so the study asks whether k > D helps. D = 64 gives
    [2, 4, 8, 16, 32, 96]; MNIST (D = 784, intrinsic dimension at most 13.6) [2, 5, 15, 40, 109]. Where
    D / 2 is too small for that many distinct sizes, the sizes up to D fill in (2, 3, ... first, then 1)."""
    top = auto_top(input_dim, intrinsic_high)
    n = AUTO_SIZES_BELOW
    below = sorted({round(2 * (top / 2) ** (i / (n - 1))) for i in range(n)}) if top >= 2 else []
    fill = [k for k in [*range(2, input_dim + 1), 1] if k not in below][: max(0, n - len(below))]
    above = [min(2 * input_dim, round(1.5 * input_dim))] if top == input_dim / 2 else []
    return [*sorted(below + fill), *above]


@dataclass(frozen=True)
class StudyConfig:
    latent_dims: list[int] | Literal["auto"] = "auto"  # auto: auto_sizes of the data's input and intrinsic dimension
    seed: int = 0
    refine_max: int = field(default=4, metadata=_bounds(ge=0))  # latent sizes the search may add

    def sizes(self, input_dim: int, intrinsic_high: float | None = None) -> list[int]:
        """The grid for data of input dimension D (and intrinsic dimension at most intrinsic_high): the
        auto grid, or the explicit list once it is checked."""
        if self.latent_dims == "auto":
            return auto_sizes(input_dim, intrinsic_high)
        self.check_input_dim(input_dim)
        return list(self.latent_dims)

    def check(self, where: str) -> None:
        dims = self.latent_dims
        if dims == "auto":
            return
        if not dims or min(dims) < 1:
            raise StudyError(f"{where}.latent_dims = {dims}; allowed: a non-empty list of integers >= 1")
        if len(set(dims)) != len(dims) or sorted(dims) != dims:
            raise StudyError(f"{where}.latent_dims = {dims}; allowed: strictly increasing, no repeats")

    def check_input_dim(self, input_dim: int) -> None:
        """Latent sizes beyond twice the input dimension only add parameters (and disk): refuse them.
        For an explicit list (sizes()); the auto grid stays within that by construction."""
        limit = max(2 * input_dim, 2)
        too_big = [k for k in self.latent_dims if k > limit]
        if too_big:
            raise StudyError(
                f"study.latent_dims has {too_big[0]}, above {limit} = twice the data's input dimension "
                f"D = {input_dim}; allowed: latent sizes up to {limit} (k > D already lets a model copy its input)"
            )


# --- pca --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PCAConfig:
    variance_targets: list[float] = field(default_factory=lambda: [0.9, 0.95, 0.99])

    def check(self, where: str) -> None:
        bad = [v for v in self.variance_targets if not 0 < v <= 1]
        if bad or not self.variance_targets:
            raise StudyError(
                f"{where}.variance_targets = {self.variance_targets}; allowed: fractions in (0, 1]"
            )


# --- search -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class LogRange:
    low: float = field(default=0.1, metadata=_bounds(gt=0))
    high: float = field(default=1.0, metadata=_bounds(gt=0))

    def check(self, where: str) -> None:
        if self.high < self.low:
            raise StudyError(f"{where}: high = {self.high:g} is below low = {self.low:g}; allowed: low <= high")


@dataclass(frozen=True)
class ModelConfig:
    arch: Literal["auto", "mlp", "conv"] = "auto"
    likelihood: Literal["auto", "bernoulli", "gaussian"] = "auto"
    # The Gaussian decoder's learned sigma, one per input feature or one shared. Per feature had the lower
    # test NLL bound on average at k = 2, 4, 8, 5 seeds: by 1.3-4.3 nats on breast_cancer, 0.2-0.4 on wine
    # (within its seed spread), 29 on colour patches (benchmarks/gaussian_scale.py).
    gaussian_scale: Literal["shared", "per_feature"] = "per_feature"
    hidden: list[int] = field(default_factory=lambda: [256, 128])
    channels: list[int] = field(default_factory=lambda: [32, 64])
    # The autoencoder's linear path, started at PCA: it begins as the best linear code of its size.
    ae_pca_path: bool = True

    def check(self, where: str) -> None:
        for key in ("hidden", "channels"):
            widths = getattr(self, key)
            if not widths or min(widths) < 1:
                raise StudyError(f"{where}.{key} = {widths}; allowed: a non-empty list of integers >= 1")


@dataclass(frozen=True)
class TrainConfig:
    # A training ends on patience. One still improving at the `epochs` cap goes on while it keeps
    # improving (a new best within late_patience epochs), up to the ceiling; one still improving
    # there is marked: its value is that of an undertrained model.
    epochs: int = field(default=150, metadata=_bounds(ge=1))
    max_epochs: int | None = field(default=None, metadata=_bounds(ge=1))  # the ceiling; None: 3 x epochs
    batch_size: int = field(default=64, metadata=_bounds(ge=1))
    patience: int = field(default=15, metadata=_bounds(ge=1))
    grad_clip: float = field(default=5.0, metadata=_bounds(ge=0))
    kl_warmup_epochs: int = field(default=0, metadata=_bounds(ge=0))
    free_bits: float = field(default=0.0, metadata=_bounds(ge=0))
    bf16: bool = False

    @property
    def ceiling(self) -> int:
        return self.max_epochs or 3 * self.epochs

    @property
    def late_patience(self) -> int:
        """Past the cap a training must keep improving: a third of the patience."""
        return max(1, self.patience // 3)

    def check(self, where: str) -> None:
        if self.max_epochs is not None and self.max_epochs < self.epochs:
            raise StudyError(f"{where}.max_epochs = {self.max_epochs} is below epochs = {self.epochs}; allowed: "
                             "max_epochs >= epochs (equal: every training stops at the cap), or null (3 x epochs)")


ARMS = ("vae", "ae")  # the two models every latent size trains: the beta-VAE and the plain autoencoder


@dataclass(frozen=True)
class SearchConfig:
    trials_per_dim: int = field(default=4, metadata=_bounds(ge=1))
    ae_trials_per_dim: int = field(default=2, metadata=_bounds(ge=1))
    max_trials_per_dim: int = field(default=32, metadata=_bounds(ge=1))
    added_budget: float = field(default=0.5, metadata=_bounds(gt=0, le=1))  # share of the budgets an added size gets
    objective: Literal["neg_elbo", "distortion", "sse"] = "neg_elbo"
    beta: LogRange = field(default_factory=lambda: LogRange(0.25, 4.0))
    lr: LogRange = field(default_factory=lambda: LogRange(5e-4, 5e-3))
    pruner: Literal["stack", "median", "hyperband", "none"] = "stack"
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    stack: Literal["auto"] | int = "auto"
    workers_per_device: int = field(default=1, metadata=_bounds(ge=1))
    cpu_workers: int = field(default=2, metadata=_bounds(ge=1))
    storage: str | None = None
    heartbeat_seconds: int = field(default=20, metadata=_bounds(ge=1))
    replicates: int = field(default=2, metadata=_bounds(ge=0))  # extra seeds for a size's best config
    replicate_sizes: Literal["answer", "all"] = "answer"  # where: sizes that can move an answer, or every size
    reinforce: bool = True  # more trials where a model loses to its simpler reference on validation

    def check(self, where: str) -> None:
        if self.stack != "auto" and self.stack < 1:
            raise StudyError(f"{where}.stack = {self.stack} is out of range; allowed: auto or an integer >= 1")
        budget = max(self.trials_per_dim, self.ae_trials_per_dim)
        if self.max_trials_per_dim < budget:
            raise StudyError(
                f"{where}.max_trials_per_dim = {self.max_trials_per_dim} is below the finished-trial "
                f"budget {budget}; allowed: >= max(trials_per_dim, ae_trials_per_dim)"
            )


# --- evaluate and report ----------------------------------------------------------------------


@dataclass(frozen=True)
class EvaluateConfig:
    iwae_samples: int = field(default=100, metadata=_bounds(ge=1))
    probe_max_train: int = field(default=10000, metadata=_bounds(ge=10))
    seed: int = 0


Purpose = Literal["auto", "generation", "reconstruction", "representation"]


@dataclass(frozen=True)
class ReportConfig:
    purpose: Purpose = "auto"  # the headline answer; auto: generation when a VAE finished
    tolerance: float = field(default=0.0, metadata=_bounds(ge=0, lt=1))  # margin on top of one SE
    # Resamples of the test examples. The cap keeps a typo from a silent stall: the report's time
    # grows with it, and past 1,000 the intervals barely move.
    bootstrap: int = field(default=1000, metadata=_bounds(ge=100, le=100_000))
    title: str = "How big should the latent space be?"
    recon_examples: int = field(default=8, metadata=_bounds(ge=1, le=32))
    sample_dims: int = field(default=3, metadata=_bounds(ge=1, le=12))


SECTIONS: dict[str, type] = {
    "data": DataConfig,
    "study": StudyConfig,
    "pca": PCAConfig,
    "search": SearchConfig,
    "evaluate": EvaluateConfig,
    "report": ReportConfig,
}


def project_root(cwd: Path) -> Path:
    """The repository that owns the persistent stores (MLflow db, Optuna journal).

    `dvc exp run --temp` and queued experiments run in a copy under .dvc/tmp/exps/; their
    trials and runs still belong to the user's repository, not to the throwaway copy.
    """
    cwd = cwd.resolve()
    parts = cwd.parts
    for i in range(len(parts) - 3):
        if parts[i : i + 3] == (".dvc", "tmp", "exps"):
            return Path(*parts[:i])
    return cwd
