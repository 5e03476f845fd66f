"""MLflow: a side channel for people. Called by the stages, never calling back; no stage reads
its inputs from here. mlflow is imported on first use (it takes over a second).

Layout: one experiment per dataset, one parent run per study, one nested run per Optuna
trial (tagged with the study and trial number), and one report run nested under the parent.
Experiments are tagged as model development, so MLflow 3's UI opens them in the runs table
rather than its GenAI view.
"""

from __future__ import annotations

import contextlib

import logging
import os
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from latentstudy.config import StudyError, store_fault

STUDY_TAG = "latentstudy.study"
KIND_TAG = "latentstudy.kind"  # study | trial | report
TRIAL_TAG = "optuna.trial_number"
OPTUNA_STUDY_TAG = "optuna.study"
PARENT_TAG = "mlflow.parentRunId"
COORDINATOR_TAG = "latentstudy.coordinator"  # host:pid:start time of the process driving a study run
KIND_OF_EXPERIMENT = {"mlflow.experimentKind": "custom_model_development"}
FLUSH_SECONDS = 3.0
REACH_SECONDS = 5.0
UI_ADDRESS = "http://127.0.0.1:5000"


def tracking_uri(root: Path) -> str:
    """MLFLOW_TRACKING_URI if set, else an absolute sqlite store at the project root."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{(root / 'mlflow.db').resolve()}"


def require_reachable(uri: str, timeout: float = REACH_SECONDS) -> None:
    """Fail in one line, within seconds, when the tracking store cannot be reached.

    MLflow's own client retries a refused connection for minutes, then prints pages of
    tracebacks; one real API call with a short timeout answers the question up front.
    """
    where = f"MLFLOW_TRACKING_URI = {uri!r}" if os.environ.get("MLFLOW_TRACKING_URI") else f"tracking store {uri!r}"
    if uri.startswith("sqlite:///"):
        folder = Path(uri.removeprefix("sqlite:///")).parent
        if not folder.is_dir():
            raise StudyError(f"{where}: folder {folder} does not exist; create it or point the URI elsewhere")
        return
    if not uri.startswith(("http://", "https://")):
        return
    request = urllib.request.Request(uri.rstrip("/") + "/api/2.0/mlflow/experiments/search?max_results=1",
                                     headers=_auth_headers())
    try:
        with urllib.request.urlopen(request, timeout=timeout):
            return
    except urllib.error.HTTPError as exc:
        why = f"it answers HTTP {exc.code} {exc.reason}"
        if exc.code == 404:
            why += " (no MLflow REST API there: check the host, port and path)"
        if exc.code in (401, 403):
            why += (" (set MLFLOW_TRACKING_USERNAME/MLFLOW_TRACKING_PASSWORD or MLFLOW_TRACKING_TOKEN; an "
                    "`mlflow server` also refuses host names missing from its --allowed-hosts)")
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        why = f"no MLflow server answered within {timeout:g} s ({reason})"
    raise StudyError(f"{where}: {why}; start the server or fix the URI, unset MLFLOW_TRACKING_URI to track into "
                     "the project's mlflow.db, or run the stage with --no-tracking")


def _auth_headers() -> dict[str, str]:
    import base64

    token = os.environ.get("MLFLOW_TRACKING_TOKEN")
    user, password = os.environ.get("MLFLOW_TRACKING_USERNAME"), os.environ.get("MLFLOW_TRACKING_PASSWORD")
    if token:
        return {"Authorization": f"Bearer {token}"}
    if user and password:
        return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}
    return {}


def runs_table_url(experiment_id: str, address: str = UI_ADDRESS) -> str:
    """The experiment's runs table in the MLflow UI (not the GenAI overview)."""
    return f"{address.rstrip('/')}/#/experiments/{experiment_id}?workflowType=machine_learning"


def ui_links(uri: str, address: str = UI_ADDRESS) -> list[tuple[str, str]]:
    """(experiment, runs-table URL) for every latentstudy experiment in the store; experiments made
    before the kind tag existed get it on the way, so they open on their runs too."""
    tracker = Tracker(uri)
    return [(e.name, runs_table_url(tracker.experiment(e.name), address)) for e in tracker.experiments()]


def _missing(exc: Exception) -> bool:
    return getattr(exc, "error_code", None) == "RESOURCE_DOES_NOT_EXIST"


def experiment_name(dataset: str, source: str) -> str:
    """The MLflow experiment (and registered model) of a study on this data (summary.json's dataset
    and source): latentstudy-digits, or latentstudy-file-<stem> for a user's file."""
    if dataset == "file":
        dataset += "-" + Path(source.removeprefix("file ")).stem
    return f"latentstudy-{dataset}"


def _artifact_location(uri: str) -> str | None:
    # A local sqlite store keeps artifacts beside it (mlartifacts/), never in the working dir.
    if uri.startswith("sqlite:///"):
        return (Path(uri.removeprefix("sqlite:///")).parent / "mlartifacts").resolve().as_uri()
    return None


def _flat(params: dict, prefix: str = "") -> dict[str, str]:
    out = {}
    for key, value in params.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = str(value)[:500]
    return out


def _created(client: type, uri: str, sqlite: Path | None):
    """client(tracking_uri=uri), which creates or upgrades a SQLite store's tables: one process at
    a time while the tables are missing (queued DVC experiments start side by side on the project's
    one mlflow.db), side by side once they are there (a search's workers start together)."""
    if sqlite is None:
        return client(tracking_uri=uri)
    import fcntl

    with open(sqlite, "ab") as lock:  # an empty file is a new SQLite database
        fcntl.flock(lock, fcntl.LOCK_SH)  # waits while another process creates the tables
        if not _has_tables(sqlite):
            fcntl.flock(lock, fcntl.LOCK_EX)  # flock converts by releasing first: no deadlock
        return client(tracking_uri=uri)


def _has_tables(sqlite: Path) -> bool:
    """Whether MLflow has created its tables there (its migrations record their version last)."""
    import sqlite3

    try:
        with contextlib.closing(sqlite3.connect(f"file:{sqlite}?mode=ro", uri=True)) as db:
            return db.execute("SELECT version_num FROM alembic_version").fetchone() is not None
    except sqlite3.Error:
        return False


def _below_error(record: logging.LogRecord) -> bool:
    return record.levelno < logging.ERROR


class _StoreFaults:
    """An MlflowClient whose calls end in one line (config.store_fault) when its store is full or
    read-only, however deep in MLflow or SQLAlchemy SQLite said so."""

    def __init__(self, uri: str):
        from mlflow.tracking import MlflowClient

        self._where = uri.removeprefix("sqlite:///") if uri.startswith("sqlite:///") else uri
        # MLflow logs a database error with its traceback, then raises it: raised, it reaches us
        # (one line for a store fault, the traceback for anything else), so the log is a repeat.
        logging.getLogger("mlflow.store.db.utils").addFilter(_below_error)  # once: the same function
        sqlite = Path(self._where) if uri.startswith("sqlite:///") else None
        self._client = self._call(_created, MlflowClient, uri, sqlite)

    def __getattr__(self, name: str):
        attr = getattr(self._client, name)
        return (lambda *args, **kwargs: self._call(attr, *args, **kwargs)) if callable(attr) else attr

    def _call(self, fn, *args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            fault = store_fault(getattr(exc, "filename", None) or self._where, exc)
            if fault is None:
                raise
            raise fault from None


class Tracker:
    """A thin MlflowClient wrapper; run ids are passed explicitly, so workers share no state."""

    def __init__(self, uri: str):
        # With an `mlflow server` URI, MLflow prints a "View run" link per run and a progress bar
        # per artifact download: hundreds of lines between the search's progress lines.
        os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        self.uri = uri
        self.client = _StoreFaults(uri)
        self._pending: dict[str, list] = {}
        self._last_flush: dict[str, float] = {}

    # --- experiment and study --------------------------------------------------------------

    def experiment(self, name: str) -> str:
        """The experiment's id, created (with its artifact location) when missing; tagged so the
        UI opens it on its runs table (experiments made by older versions get the tag too)."""
        from mlflow.exceptions import MlflowException

        exp = self.client.get_experiment_by_name(name)
        if exp is None:
            try:
                return self.client.create_experiment(name, artifact_location=_artifact_location(self.uri),
                                                     tags=KIND_OF_EXPERIMENT)
            except MlflowException as exc:  # another run (a queued experiment beside this one) made it first
                if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                    raise
                exp = self.client.get_experiment_by_name(name)
        for key, value in KIND_OF_EXPERIMENT.items():
            if exp.tags.get(key) != value:
                self.client.set_experiment_tag(exp.experiment_id, key, value)
        return exp.experiment_id

    def experiments(self, prefix: str = "latentstudy-") -> list:
        return [e for e in self.client.search_experiments() if e.name.startswith(prefix)]

    def study_run(self, experiment_id: str, study: str, params: dict, tags: dict[str, str] | None = None) -> str:
        """The study's parent run: found again on resume (RUNNING again), created once."""
        run_id = self.find_study_run(experiment_id, study)
        if run_id:
            self.client.update_run(run_id, status="RUNNING")
            self.set_tags(run_id, tags or {})
            return run_id
        run = self.client.create_run(experiment_id, run_name=study,
                                     tags={STUDY_TAG: study, KIND_TAG: "study", **(tags or {})})
        self._log_params(run.info.run_id, _flat(params))
        return run.info.run_id

    def find_study_run(self, experiment_id: str, study: str) -> str | None:
        found = self.client.search_runs(
            [experiment_id], f"tags.`{STUDY_TAG}` = '{study}' and tags.`{KIND_TAG}` = 'study'", max_results=1
        )
        return found[0].info.run_id if found else None

    def running_study_runs(self, experiment_id: str) -> list:
        return self.client.search_runs([experiment_id], f"tags.`{KIND_TAG}` = 'study' and attributes.status = 'RUNNING'",
                                       max_results=1000)

    def _log_params(self, run_id: str, params: dict[str, str]) -> None:
        from mlflow.entities import Param

        items = [Param(k, v) for k, v in params.items()]
        for i in range(0, len(items), 100):
            self.client.log_batch(run_id, params=items[i : i + 100])

    # --- trials ----------------------------------------------------------------------------

    def start_trial(self, experiment_id: str, parent: str, study: str, name: str, trial: int, params: dict) -> str:
        run = self.client.create_run(
            experiment_id, run_name=name,
            tags={PARENT_TAG: parent, STUDY_TAG: study.rsplit("-k", 1)[0], KIND_TAG: "trial",
                  OPTUNA_STUDY_TAG: study, TRIAL_TAG: str(trial)},
        )
        self._log_params(run.info.run_id, _flat(params))
        return run.info.run_id

    def log_metrics(self, run_id: str, metrics: dict[str, float], step: int | None = None, flush: bool = False) -> None:
        """Buffered: one database write every few seconds, not one per epoch."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self._pending.setdefault(run_id, []).extend(
            Metric(k, float(v), now, step or 0) for k, v in metrics.items() if v is not None and v == v
        )
        if flush or time.monotonic() - self._last_flush.get(run_id, 0.0) > FLUSH_SECONDS:
            self.flush(run_id)

    def flush(self, run_id: str) -> None:
        pending = self._pending.pop(run_id, [])
        for i in range(0, len(pending), 900):
            self.client.log_batch(run_id, metrics=pending[i : i + 900])
        self._last_flush[run_id] = time.monotonic()

    def end(self, run_id: str, status: str, tags: dict[str, Any] | None = None) -> None:
        self.flush(run_id)
        for key, value in (tags or {}).items():
            self.client.set_tag(run_id, key, str(value)[:5000])
        self.client.set_terminated(run_id, status=status)

    def set_status(self, run_id: str, status: str) -> bool:
        """End a run with this status; False when the tracking store no longer has the run."""
        from mlflow.exceptions import MlflowException

        try:
            self.client.set_terminated(run_id, status=status)
        except MlflowException as exc:
            if _missing(exc):
                return False
            raise
        return True

    def runs(self, experiment_id: str, study: str, kind: str) -> list:
        flt = f"tags.`{STUDY_TAG}` = '{study}' and tags.`{KIND_TAG}` = '{kind}'"
        out, token = [], None
        while True:
            page = self.client.search_runs([experiment_id], flt, max_results=1000, page_token=token)
            out.extend(page)
            token = page.token
            if not token:
                return out

    # --- artifacts -------------------------------------------------------------------------

    def log_artifact(self, run_id: str, path: Path, folder: str | None = None) -> None:
        self.client.log_artifact(run_id, str(path), folder)

    def download(self, run_id: str, artifact: str, dest: Path) -> Path | None:
        """A run's artifact as a local file; None when the run or the artifact is gone."""
        from mlflow.exceptions import MlflowException

        dest.mkdir(parents=True, exist_ok=True)
        try:
            return Path(self.client.download_artifacts(run_id, artifact, str(dest)))
        except (MlflowException, OSError):
            return None

    def set_tags(self, run_id: str, tags: dict[str, Any]) -> None:
        for key, value in tags.items():
            self.client.set_tag(run_id, key, str(value))

    # --- the report run --------------------------------------------------------------------

    def report_run(self, experiment_id: str, study: str, params: dict) -> str:
        """A report run, nested under the study's parent run as the tracking store has it now (not
        as study.json recorded it: the store may have been deleted or replaced since the search)."""
        tags = {STUDY_TAG: study, KIND_TAG: "report"}
        parent = self.find_study_run(experiment_id, study) if study else None
        if parent:
            tags[PARENT_TAG] = parent
        run = self.client.create_run(experiment_id, run_name=f"{study}-report", tags=tags)
        self._log_params(run.info.run_id, _flat(params))
        return run.info.run_id

    def log_table(self, run_id: str, frame, name: str) -> None:
        self.client.log_table(run_id, data=frame, artifact_file=name)
