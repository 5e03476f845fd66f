"""The Python API, re-exported by the package: latentstudy.load (a model of the study that works on
raw rows) and latentstudy.answers (the answers with their intervals), read from a project's outputs
(the folders its dvc.yaml gives the report stage) or, for load, from MLflow.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from latentstudy.config import ARMS, StudyError
from latentstudy.contracts import RECOMMENDATION_FILE
from latentstudy.models import best_path
from latentstudy.recommend import PURPOSES
from latentstudy.packaged import LatentModel


@dataclass(frozen=True)
class PurposeAnswer:
    """One purpose's answer: the chosen latent size and how sure the study is of it."""

    purpose: str
    criterion: str  # what decides, in words (e.g. the test NLL bound)
    latent_dim: int | None  # the chosen k; None when the purpose has no answer (see missing)
    interval: tuple[int, int] | None  # the range of the sizes the rule picks in 90% of resamples
    likely_set: list[int]  # those sizes
    stability: float | None  # the share of resamples that pick latent_dim
    value: float | None  # the criterion at latent_dim (test split)
    se: float | None  # its standard error
    ci95: tuple[float, float] | None
    indistinguishable: list[int]  # sizes whose 95% interval of the difference to the best includes 0
    plain_words: str | None  # said when the data cannot tell the sizes apart
    missing: str | None  # why there is no answer


@dataclass(frozen=True)
class Answers:
    """The study's answers, one per purpose, and which one is the headline."""

    headline: str
    latent_dim: int  # the headline's answer
    generation: PurposeAnswer
    reconstruction: PurposeAnswer
    representation: PurposeAnswer
    source: Path  # the file they were read from

    def __getitem__(self, purpose: str) -> PurposeAnswer:
        if purpose not in PURPOSES:
            raise StudyError(f"purpose = {purpose!r}; allowed: generation, reconstruction, representation")
        return getattr(self, purpose)


def answers(project: str | Path = ".") -> Answers:
    """The answers of the study in `project` (the folder with its dvc.yaml; default: the current
    one), as the report stage wrote them, with their intervals and stability.

    >>> a = latentstudy.answers()
    >>> a.generation.latent_dim, a.generation.interval
    """
    path = _folders(Path(project))["reports"] / RECOMMENDATION_FILE
    if not path.is_file():
        raise StudyError(f"{path}: not found; run the study first (make study, or dvc repro)")
    rec = json.loads(path.read_text())
    each = {name: _answer(name, rec["answers"].get(name) or {"missing": "not in this report"})
            for name in PURPOSES}
    return Answers(rec["headline"], rec["latent_dim"], **each, source=path)


def _answer(name: str, a: dict) -> PurposeAnswer:
    pair = lambda v: tuple(v) if v else None  # noqa: E731
    return PurposeAnswer(name, a.get("criterion", ""), a.get("latent_dim"), pair(a.get("interval")),
                         a.get("likely_set", []), a.get("stability"), a.get("value"), a.get("se"), pair(a.get("ci95")),
                         a.get("indistinguishable", []), a.get("plain_words"), a.get("missing"))


def load(uri: str | None = None, *, purpose: str | None = None, k: int | None = None, arm: str = "vae",
         project: str | Path = ".") -> LatentModel:
    """A model of the study, with its data's scaler: encode, decode, reconstruct, sample and
    log_likelihood work on raw rows in the data's own units (see latentstudy.packaged.LatentModel).

    - load(): the headline answer's model; load(purpose="generation"): that purpose's chosen model
      (the VAE for generation and representation, the autoencoder for reconstruction);
    - load(k=8, arm="ae"): the best model of that size and arm ("vae" or "ae");
    - load("models:/latentstudy-digits@generation"), or any MLflow model URI (runs:/, models:/<id>):
      from MLflow, through the project's tracking store (MLFLOW_TRACKING_URI, else its mlflow.db).

    project: the study's folder (where its dvc.yaml is; default: the current one).
    """
    from latentstudy import data, packaged

    project = Path(project)
    if uri is not None:
        return _from_mlflow(uri, project)
    if arm not in ARMS:
        raise StudyError(f"arm = {arm!r}; allowed: {', '.join(ARMS)}")
    folders = _folders(project)
    if k is None:
        found = answers(project)
        answer = found[purpose or found.headline]
        if answer.latent_dim is None:
            raise StudyError(f"the study has no {answer.purpose} answer ({answer.missing}); load another purpose "
                             "or a size: load(k=..., arm=...)")
        path = packaged.chosen_file(folders["models"], answer.purpose, answer.latent_dim)
    else:
        path = best_path(folders["models"], k, arm)
    if not path.is_file():
        kept = sorted(p.name for p in folders["models"].glob("k*.pt"))
        raise StudyError(f"{path}: not found; the study kept {', '.join(kept) or 'no models'} (run it: dvc repro)")
    return LatentModel.from_files(path, packaged.carried(data.load_summary(folders["data"])))


def _folders(project: Path) -> dict[str, Path]:
    """The prepared data, models and reports folders, as the project's dvc.yaml gives them to the report stage."""
    from latentstudy.stages import cmd_paths

    given = cmd_paths(project / "pipeline" / "report.py")
    if not given:
        raise StudyError(f"{project.resolve()}: no dvc.yaml with the report stage; pass project= the study's "
                         "folder, or load a models:/ URI")
    return {"data": project / given["--data"], "models": project / given["--models"], "reports": project / given["--out"]}


def _from_mlflow(uri: str, project: Path) -> LatentModel:
    import tempfile

    import mlflow
    from mlflow.exceptions import MlflowException

    from latentstudy.config import project_root
    from latentstudy.tracking import tracking_uri

    store = tracking_uri(project_root(project))
    with tempfile.TemporaryDirectory() as tmp:
        try:
            local = mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=tmp, tracking_uri=store,
                                                        registry_uri=store)
        except MlflowException as exc:
            raise StudyError(f"{uri}: {exc.message}; check the URI and the tracking store (MLFLOW_TRACKING_URI, "
                             "else the project's mlflow.db)") from None
        return mlflow.pyfunc.load_model(local).unwrap_python_model().model
