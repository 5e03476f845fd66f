"""The kept models as MLflow models, and the answers in the Model Registry.

Each kept model is logged through MLflow 3's logged-model API (create, log artifacts, finalize),
so its trial run lists it under "Logged models": a pyfunc (LatentPyfunc) whose artifacts are the
checkpoint and the scaler (packaged.DATA_FILE), with a signature and an input example of raw
rows; predict returns the codes, and unwrap_python_model().model is the packaged.LatentModel.
The report registers each purpose's chosen model as `latentstudy-<dataset>` with the purpose as
alias. Like tracking.py, this is a side channel: no stage reads its inputs from here.

Imports mlflow (seconds): only the MLflow side of the stages and latentstudy.load(uri) load it.
"""

from __future__ import annotations

import hashlib
import json
from importlib.util import find_spec
from pathlib import Path

import mlflow
import numpy as np
from mlflow.pyfunc import PythonModel

from latentstudy import __version__
from latentstudy.data import scaling
from latentstudy.packaged import DATA_FILE, LatentModel
from latentstudy.tracking import STUDY_TAG, experiment_name

MODEL_NAME = "model"  # the logged model's name on its run page
DIGEST_TAG = "latentstudy.model_digest"  # checkpoint and scaler: the same digest is the same model
FILE_TAG = "latentstudy.file"  # the checkpoint's name in models/search
EXAMPLE_ROWS = 2
ENTRY = "latentstudy.pyfunc_entry"  # the file MLflow copies into each model and runs to load it


class LatentPyfunc(PythonModel):
    """The pyfunc of a kept model: predict(raw rows) -> codes mu(x) (n, k); self.model is the
    LatentModel (encode, decode, sample, log_likelihood, ...) once MLflow has loaded it."""

    def load_context(self, context) -> None:
        data = json.loads(Path(context.artifacts["scaler"]).read_text())
        self.model = LatentModel.from_files(Path(context.artifacts["checkpoint"]), data)

    def predict(self, context, model_input, params=None) -> np.ndarray:
        return self.model.encode(model_input)


def digest(checkpoint: Path, data: dict) -> str:
    """What identifies a logged model: its weights and its scaler."""
    h = hashlib.sha256(Path(checkpoint).read_bytes())
    h.update(json.dumps(data, sort_keys=True).encode())
    return h.hexdigest()[:32]


def signature(model: LatentModel):
    """Raw rows (float64, n x D) in, codes (float32, n x k) out."""
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    return ModelSignature(inputs=Schema([TensorSpec(np.dtype("float64"), (-1, model.input_dim))]),
                          outputs=Schema([TensorSpec(np.dtype("float32"), (-1, model.latent_dim))]))


def requirements() -> list[str]:
    """The pip requirements written beside the model (latentstudy itself: `pip install .` of the project)."""
    import torch

    return [f"latentstudy=={__version__}", f"torch=={torch.__version__.split('+')[0]}", f"numpy=={np.__version__}",
            f"mlflow=={mlflow.__version__}"]


def log(client, experiment_id: str, run_id: str, checkpoint: Path, data: dict, example: np.ndarray,
        tags: dict[str, str]) -> str:
    """Log one model as a logged model of run_id (MLflow 3: created, artifacts, READY) and return its
    id. example: a few prepared rows, shown as raw rows (the input example)."""
    import tempfile

    from mlflow.entities import LoggedModelOutput, LoggedModelStatus
    from mlflow.models import Model

    model = LatentModel.from_files(checkpoint, data)
    logged = client.create_logged_model(experiment_id, name=MODEL_NAME, source_run_id=run_id,
                                        tags={**tags, DIGEST_TAG: digest(checkpoint, data),
                                              FILE_TAG: Path(checkpoint).name},
                                        params={"latent_dim": str(model.latent_dim), "arm": model.arm})
    try:
        with tempfile.TemporaryDirectory() as tmp:
            scaler, folder = Path(tmp) / DATA_FILE, Path(tmp) / "model"
            scaler.write_text(json.dumps(data, indent=2) + "\n")
            mlflow.pyfunc.save_model(
                folder, python_model=find_spec(ENTRY).origin,
                artifacts={"checkpoint": str(checkpoint), "scaler": str(scaler)},
                signature=signature(model), input_example=scaling.unapply(example, data["scaling"]),
                pip_requirements=requirements(),
                mlflow_model=Model(artifact_path=logged.artifact_location, model_uuid=logged.model_id,
                                   run_id=run_id, model_id=logged.model_id))
            client.log_outputs(run_id, models=[LoggedModelOutput(logged.model_id, step=0)])
            client.log_model_artifacts(logged.model_id, str(folder))
    except BaseException:
        client.finalize_logged_model(logged.model_id, LoggedModelStatus.FAILED)
        raise
    client.finalize_logged_model(logged.model_id, LoggedModelStatus.READY)
    return logged.model_id


def logged_models(client, experiment_id: str, study: str) -> dict[str, tuple[str, str]]:
    """{digest: (model id, source run)} of the study's READY logged models."""
    from mlflow.entities import LoggedModelStatus

    out, token = {}, None
    while True:
        page = client.search_logged_models(
            [experiment_id], filter_string=f"tags.`{STUDY_TAG}` = '{study}'", max_results=100, page_token=token)
        for m in page:
            if m.status == LoggedModelStatus.READY and DIGEST_TAG in m.tags:
                out.setdefault(m.tags[DIGEST_TAG], (m.model_id, m.source_run_id))
        token = page.token
        if not token:
            return out


def registered_name(dataset: str) -> str:
    return f"latentstudy-{dataset}"


def register(client, name: str, alias: str, model_id: str, tags: dict[str, str]) -> str:
    """Point name@alias at the logged model: at its existing version, else at a new one. Returns the
    version; the alias moves when the answer changed."""
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(name)
    except MlflowException:
        client.create_registered_model(name, description="latentstudy: the chosen model of each purpose "
                                       "(aliases @generation, @reconstruction, @representation)")
    # Versions are told apart by their source, the logged model's artifact location: MLflow's sqlite
    # registry keeps no model id. For the same reason the source is that location, not models:/<id>,
    # which the registry would resolve through the process's global tracking URI, not this client's.
    logged = client.get_logged_model(model_id)
    versions = client.search_model_versions(f"name = '{name}'")
    version = next((v.version for v in versions if v.source == logged.artifact_location), None)
    if version is None:
        version = client.create_model_version(name, logged.artifact_location, run_id=logged.source_run_id,
                                              tags=tags, model_id=model_id).version
    client.set_registered_model_alias(name, alias, version)
    return str(version)


def register_answers(tracker, experiment_id: str, study: str, chosen: dict[str, Path], data: dict,
                     report_run: str, example: np.ndarray) -> dict[str, str]:
    """Each purpose's chosen model file (chosen: {purpose: models/search file}) registered as
    latentstudy-<dataset>@<purpose>: the logged model its trial run holds, or, when the tracking
    store lost it (or the search ran without MLflow), the same file logged in the report run
    (example: prepared rows for its input example). Returns {purpose: registered version}."""
    have = logged_models(tracker.client, experiment_id, study)
    name, out = experiment_name(data["dataset"], data["source"]), {}
    for purpose, path in sorted(chosen.items()):
        key = digest(path, data)
        if key not in have:
            have[key] = (log(tracker.client, experiment_id, report_run, path, data, example, {STUDY_TAG: study}),
                         report_run)
        model = LatentModel.from_files(path, data)
        out[purpose] = register(tracker.client, name, purpose, have[key][0],
                                {STUDY_TAG: study, "latent_dim": str(model.latent_dim), "arm": model.arm})
    return out
