"""End to end: real `dvc repro` in a temporary git repository on tiny data, plus the stage scripts'
one-line errors and the manifold check that the recommendation finds the true dimension."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from conftest import ROOT, TINY_DATA, TINY_SEARCH, write_params

from latentstudy import stages
from latentstudy.tracking import Tracker

BIN = Path(sys.executable).parent
STAGES = ("prepare", "pca", "search", "evaluate", "report")


def tiny_params() -> dict:
    return {"data": dict(TINY_DATA, limit=400), "study": {"latent_dims": [2, 3], "seed": 0},
            "pca": {"variance_targets": [0.9, 0.95]}, "search": TINY_SEARCH,
            "evaluate": {"iwae_samples": 16}, "report": {"tolerance": 0.05}}


def sh(repo: Path, *cmd: str, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "GIT_AUTHOR_NAME": "t",
           "GIT_AUTHOR_EMAIL": "t@example.com", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.com"}
    env.pop("MLFLOW_TRACKING_URI", None)
    res = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True)
    if check and res.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({res.returncode}):\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}")
    return res


def ran(result: subprocess.CompletedProcess) -> set[str]:
    return set(re.findall(r"Running stage '(\w+)'", result.stdout + result.stderr))


def set_param(repo: Path, dotted: str, value) -> None:
    params = yaml.safe_load((repo / "params.yaml").read_text())
    *path, last = dotted.split(".")
    target = params
    for key in path:
        target = target.setdefault(key, {})
    target[last] = value
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    repo = tmp_path_factory.mktemp("project")
    for item in ("dvc.yaml", "pipeline", "src/latentstudy", ".dvcignore", ".gitignore"):
        src, dst = ROOT / item, repo / item
        if src.is_dir():
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(src, dst)
    (repo / "params.yaml").write_text(yaml.safe_dump(tiny_params(), sort_keys=False))
    sh(repo, "git", "init", "-q")
    sh(repo, "dvc", "init", "-q")
    sh(repo, "dvc", "config", "core.analytics", "false")
    sh(repo, "git", "add", "-A")
    sh(repo, "git", "commit", "-qm", "tiny study")
    first = sh(repo, "dvc", "repro")
    assert ran(first) == set(STAGES)
    return repo


@pytest.mark.e2e
def test_repro_writes_every_output(repo):
    table = pd.read_csv(repo / "reports" / "table.csv")
    assert table["latent_dim"].tolist() == [2, 3]
    for col in ("pca_sse_per_image", "ae_sse_per_image", "vae_sse_per_image", "vae_distortion_nats",
                "vae_rate_nats", "vae_neg_elbo_nats", "vae_iwae_nll_nats", "vae_active_units",
                "vae_probe_accuracy", "pca_over_vae_sse"):
        assert all(math.isfinite(v) for v in table[col]), col
    assert (table["vae_iwae_nll_nats"] <= table["vae_neg_elbo_nats"]).all()
    metrics = json.loads((repo / "reports" / "metrics.json").read_text())
    assert metrics["recommended_latent_dim"] in (2, 3)

    page = (repo / "reports" / "index.html").read_text()
    figures = sorted((repo / "reports" / "figures").glob("*.png"))
    assert len(figures) >= 7
    for fig in figures:
        assert f'id="fig-{fig.stem}"' in page
    assert page.count("data:image/png;base64,") >= len(figures)
    assert 'id="recommendation"' in page and 'id="table"' in page and 'id="explorer"' in page
    assert "http://" not in page and "https://" not in page  # self-contained: no CDN, no fetches

    assert (repo / "models" / "search" / "k2-vae.pt").is_file() and (repo / "models" / "pca.npz").is_file()
    assert not (repo / "mlruns").exists()
    tracker = Tracker(f"sqlite:///{repo / 'mlflow.db'}")
    study = json.loads((repo / "reports" / "search" / "study.json").read_text())
    exp = tracker.experiment("latentstudy-digits")
    reports = tracker.runs(exp, study["prefix"], "report")
    assert len(reports) == 1 and reports[0].data.tags["mlflow.parentRunId"] == study["parent_run_id"]
    artifacts = {a.path for a in tracker.client.list_artifacts(reports[0].info.run_id)}
    assert "reconstruction_vs_compression.json" in artifacts and "report" in artifacts
    assert reports[0].data.metrics["recommended_latent_dim"] == metrics["recommended_latent_dim"]


@pytest.mark.e2e
def test_dvc_metrics_and_plots(repo):
    shown = sh(repo, "dvc", "metrics", "show")
    assert "reports/metrics.json" in shown.stdout and "recommended_latent_dim" in shown.stdout
    sh(repo, "dvc", "plots", "show", "-o", "dvc_plots")
    rendered = (repo / "dvc_plots" / "index.html").read_text()
    assert "vae_sse_per_image" in rendered and "explained_variance_ratio" in rendered


@pytest.mark.e2e
def test_reruns_only_what_changed(repo):
    assert "Data and pipelines are up to date" in sh(repo, "dvc", "repro").stdout
    set_param(repo, "report.tolerance", 0.2)
    assert ran(sh(repo, "dvc", "repro")) == {"report"}
    set_param(repo, "pca.variance_targets", [0.8])
    assert ran(sh(repo, "dvc", "repro")) == {"pca", "report"}  # the PCA basis is unchanged: no re-evaluation
    set_param(repo, "search.beta.high", 3.0)
    assert ran(sh(repo, "dvc", "repro")) == {"search", "evaluate", "report"}


@pytest.mark.e2e
def test_dvc_experiment_with_a_new_grid(repo):
    sh(repo, "dvc", "exp", "run", "-S", "study.latent_dims=[2,4]", "-n", "grid24")
    shown = json.loads(sh(repo, "dvc", "exp", "show", "--json").stdout)
    blob = json.dumps(shown)
    assert "grid24" in blob and "recommended_latent_dim" in blob
    table = pd.read_csv(repo / "reports" / "table.csv")
    assert table["latent_dim"].tolist() == [2, 4]


@pytest.mark.e2e
def test_bad_params_fail_the_stage_with_one_line_and_no_outputs(repo):
    set_param(repo, "data.name", "file")
    set_param(repo, "data.path", "missing/own.npz")
    failed = sh(repo, "dvc", "repro", "prepare", check=False)
    assert failed.returncode != 0
    errors = [line for line in (failed.stdout + failed.stderr).splitlines() if line.startswith("error: ")]
    assert errors == ["error: data.path: missing/own.npz: file not found; allowed: an existing .npz, .npy, .csv, "
                      ".parquet or .feather file"]
    assert "Traceback" not in failed.stdout + failed.stderr
    assert not list((repo / "data" / "prepared").glob("*.npz"))


@pytest.mark.parametrize("params, fragment", [
    ({"data": {"name": "file", "path": "nope.csv"}}, "error: data.path: nope.csv: file not found"),
    ({"data": {"nmae": "digits"}}, "error: params.yaml: data.nmae is not a known key"),
    ({"data": {"split": {"train": 0.9, "val": 0.05, "test": 0.01}}}, "must sum to 1"),
])
def test_stage_script_errors_are_one_line_exit_2(tmp_path, params, fragment):
    write_params(tmp_path / "params.yaml", **params)
    res = subprocess.run([sys.executable, str(ROOT / "pipeline" / "prepare.py"), "--out", "out"], cwd=tmp_path,
                         capture_output=True, text=True)
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and fragment in lines[0]
    assert not (tmp_path / "out").exists()


def test_prepare_failure_halfway_leaves_nothing(tmp_path, monkeypatch):
    from latentstudy.data import prepare

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(prepare, "fingerprint", broken)  # after the split files are written
    params = write_params(tmp_path / "params.yaml", data=TINY_DATA)
    with pytest.raises(OSError):
        stages.prepare(params, tmp_path / "prepared", tmp_path)
    assert not (tmp_path / "prepared").exists()


@pytest.mark.e2e
def test_manifold_recommendation_finds_the_true_dimension(tmp_path, cpu_threads):
    """Three latent factors embedded in 16 dimensions: the recommended k is 3 +- 1.

    A Gaussian decoder (Bernoulli on continuous data collapses the posterior) and KL warm-up
    (without it some sizes collapse to one unit and the curve is erratic)."""
    params = write_params(
        tmp_path / "params.yaml",
        data={"name": "manifold", "manifold": {"intrinsic_dim": 3, "ambient_dim": 16, "n": 1500, "seed": 0},
              "intrinsic_max_points": 1500},
        study={"latent_dims": [1, 2, 3, 4, 6, 8], "seed": 0},
        search={"trials_per_dim": 2, "ae_trials_per_dim": 1, "beta": {"low": 0.5, "high": 1.0},
                "lr": {"low": 2.0e-3, "high": 5.0e-3}, "pruner": "none",
                "model": {"arch": "mlp", "hidden": [64, 64], "likelihood": "gaussian"},
                "train": {"epochs": 100, "batch_size": 64, "patience": 15, "kl_warmup_epochs": 20},
                "device": "cpu", "cpu_workers": 1},
        evaluate={"iwae_samples": 8}, report={"tolerance": 0.05})
    prepared, out = tmp_path / "data", tmp_path / "reports"
    stages.prepare(params, prepared, tmp_path)
    stages.pca(params, prepared, out / "pca.json", out / "curve.csv", tmp_path / "pca.npz")
    stages.search(params, prepared, tmp_path, tmp_path / "models", out / "trials.csv", out / "search.json",
                  out / "study.json", None)
    stages.evaluate(params, prepared, tmp_path / "models", tmp_path / "pca.npz", out / "evaluation.json")
    stages.report(params, prepared, out / "evaluation.json", out / "trials.csv", out / "pca.json", out / "study.json",
                  tmp_path / "models", tmp_path / "pca.npz", out, None)
    rec = json.loads((out / "recommendation.json").read_text())
    assert abs(rec["latent_dim"] - 3) <= 1, rec["text"]
    assert abs(rec["knee_latent_dim"] - 3) <= 1, rec["text"]
    assert rec["intrinsic_twonn"] == pytest.approx(3, abs=0.5)


def test_latent_sizes_far_above_the_input_dimension_stop_pca_and_search(tmp_path):
    """latent_dims: [2, 100000] once ran and wrote 2.5 GB; now the first stage that knows D refuses it."""
    from latentstudy import config, data
    from latentstudy.config import StudyError
    from latentstudy.search.plan import make_plan

    params = write_params(tmp_path / "params.yaml", data=TINY_DATA, study={"latent_dims": [2, 100000]})
    stages.prepare(params, tmp_path / "prepared", tmp_path)
    message = "study.latent_dims has 100000, above 128 = twice the data's input dimension D = 64"
    with pytest.raises(StudyError, match=message):
        stages.pca(params, tmp_path / "prepared", tmp_path / "pca.json", tmp_path / "curve.csv", tmp_path / "pca.npz")
    assert not (tmp_path / "pca.npz").exists() and not (tmp_path / "pca.json").exists()
    with pytest.raises(StudyError, match=message):
        make_plan(config.load_section(params, "study"), config.load_section(params, "search"),
                  data.load_summary(tmp_path / "prepared"), "latentstudy-digits")
