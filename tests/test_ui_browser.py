"""The UIs users open, in a real browser: `latentstudy ui` (make ui) opens MLflow on the study's
runs table, not its GenAI view, and `latentstudy dashboard` (make dashboard) lists the study's
Optuna studies. Each starts the real server on a real store, as a user's project has it.

Screenshots for people to look at: /tmp/latentstudy-mlflow-runs.png, latentstudy-mlflow-run-model.png (a
trial's logged model), latentstudy-mlflow-registered.png (the registry's answer), latentstudy-dashboard.png.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import optuna
import pytest
from browser import chromium
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait
from conftest import prepared_summary
from servers import free_port, stop_group, tail

from latentstudy import config, paramfile, tracking
from latentstudy.search import plan as planning, store

pytestmark = pytest.mark.browser

BIN = Path(sys.executable).parent
SHOTS = Path("/tmp")
PREFIX = "digits-0123456789"


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    yield from chromium(tmp_path_factory.mktemp("chromium-profile"), "1400,900")


@contextlib.contextmanager
def serve(project: Path, *command: str, timeout: float = 120):
    """Run a `latentstudy` UI command in the project; yield its first printed line once it answers."""
    port = free_port()
    log = project / f"{command[0]}.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([str(BIN / "latentstudy"), *command, "--port", str(port)], cwd=project,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"latentstudy {command[0]} exited with {proc.returncode}:\n{tail(log)}")
            with contextlib.suppress(OSError):
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2):
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"latentstudy {command[0]} not serving after {timeout:g} s:\n{tail(log)}")
            time.sleep(0.3)
        yield log.read_text().splitlines()[0], port
    finally:
        stop_group(proc)


def wait_for_text(browser, text: str, seconds: float = 60):
    return WebDriverWait(browser, seconds).until(
        lambda b: b.find_elements(By.XPATH, f"//*[text()[contains(., '{text}')]]"))


def test_make_ui_opens_the_runs_table_with_the_studys_parent_run(browser, tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = tracking.Tracker(uri)
    experiment = tracker.experiment("latentstudy-digits")
    parent = tracker.study_run(experiment, PREFIX, {"search": {"trials_per_dim": 4}})
    trial = tracker.start_trial(experiment, parent, f"{PREFIX}-k2-vae", "k2-vae-t0", 0, {"latent_dim": 2})
    tracker.log_metrics(trial, {"best_val_neg_elbo": 41.1}, flush=True)
    model_id = logged_and_registered(tracker, experiment, trial, tmp_path)
    tracker.end(trial, "FINISHED")
    tracker.end(parent, "FINISHED")

    with serve(tmp_path, "ui") as (first, port):
        name, link = first.split(": ", 1)
        assert name == "latentstudy-digits"
        assert link == f"http://127.0.0.1:{port}/#/experiments/{experiment}?workflowType=machine_learning"
        tracking.require_reachable(f"http://127.0.0.1:{port}")  # the up-front check passes on a live server
        browser.get(link)
        [cell] = wait_for_text(browser, PREFIX)
        browser.save_screenshot(str(SHOTS / "latentstudy-mlflow-runs.png"))
        assert cell.find_elements(By.XPATH, "ancestor::*[@role='row' or self::tr]"), "not a row of the runs table"
        assert "workflowType=machine_learning" in browser.current_url
        # The trial's MLflow model on its run page, and the answer in the registry with its alias.
        browser.get(f"http://127.0.0.1:{port}/#/experiments/{experiment}/runs/{trial}")
        assert wait_for_text(browser, "Logged models")
        WebDriverWait(browser, 30).until(lambda b: b.find_elements(By.XPATH, f"//a[contains(@href, '{model_id}')]"))
        browser.save_screenshot(str(SHOTS / "latentstudy-mlflow-run-model.png"))
        browser.get(f"http://127.0.0.1:{port}/#/models/latentstudy-digits")
        assert wait_for_text(browser, "generation")
        browser.save_screenshot(str(SHOTS / "latentstudy-mlflow-registered.png"))


def logged_and_registered(tracker, experiment: str, run: str, folder: Path) -> str:
    """A tiny VAE logged as the run's MLflow model and registered as latentstudy-digits@generation."""
    import numpy as np

    from latentstudy import mlflow_model
    from latentstudy.models import NetSpec, build, save_checkpoint

    save_checkpoint(folder / "k2-vae.pt", build(NetSpec(64, 2, "mlp", "bernoulli", True, hidden=(8,))), {})
    data = {"dataset": "digits", "source": "scikit-learn digits", "input_dim": 64, "image_shape": [8, 8],
            "scaling": {"method": "divide", "divisor": 16.0}}
    model_id = mlflow_model.log(tracker.client, experiment, run, folder / "k2-vae.pt", data,
                                np.zeros((2, 64), np.float32), {mlflow_model.STUDY_TAG: PREFIX})
    mlflow_model.register(tracker.client, "latentstudy-digits", "generation", model_id, {})
    return model_id


def test_make_dashboard_lists_the_studys_optuna_studies(browser, tmp_path):
    (tmp_path / "params.yaml").write_text("search: {trials_per_dim: 2}\n")
    summary = prepared_summary(image_shape=None, scaling={"method": "divide", "divisor": 16.0}, counts={"train": 1257})
    plan = planning.make_plan(config.StudyConfig(latent_dims=[2, 4]), paramfile.load_section(
        tmp_path / "params.yaml", "search"), summary, "latentstudy-digits")
    storage = store.open_storage(store.storage_url(plan.config, tmp_path / ".latentstudy"), 20)
    store.create_studies(plan, storage)
    for unit in plan.units:
        study = optuna.load_study(study_name=unit.study_name, storage=storage)
        study.tell(study.ask({"lr": optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True)}), 40.0)

    with serve(tmp_path, "dashboard") as (first, port):
        assert first == (f"optuna-dashboard on {tmp_path / '.latentstudy' / 'optuna.journal'}: "
                         f"http://127.0.0.1:{port}/dashboard/")
        browser.get(f"http://127.0.0.1:{port}/dashboard/")
        for unit in plan.units:
            assert wait_for_text(browser, unit.study_name), unit.study_name
        browser.save_screenshot(str(SHOTS / "latentstudy-dashboard.png"))
        study_id = storage.get_study_id_from_name(plan.units[0].study_name)
        browser.get(f"http://127.0.0.1:{port}/dashboard/studies/{study_id}/trials")  # reads the trials too
        assert wait_for_text(browser, "Trial 0")
