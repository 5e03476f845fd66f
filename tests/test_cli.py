"""The `latentstudy` command: `run DATA` on a tiny CSV as a real `dvc exp run` that ends with the
answers, `answers`, and the one-line errors of `run`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from conftest import TINY_DATA, TINY_SEARCH, metric_leaves
from test_pipeline import BIN, new_project, sh

from latentstudy import cli
from latentstudy.experiment import answer_lines


def fails_with(capsys, *argv: str) -> str:
    with pytest.raises(SystemExit) as exit_:
        cli.main(list(argv))
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_.value.code == 2 and len(err) == 1, err
    return err[0]


def test_run_outside_a_dvc_project_is_one_line(tmp_path, monkeypatch, capsys):
    (tmp_path / "my.csv").write_text("a,b\n1,2\n")
    monkeypatch.chdir(tmp_path)
    assert fails_with(capsys, "run", "my.csv").startswith(f"error: {tmp_path.resolve()}: not a DVC project")


@pytest.mark.parametrize("argv, fragment", [
    (["run", "nope.csv"], "error: nope.csv: not found; allowed: a .npz, .npy, .csv, .parquet or .feather file"),
    (["run", "photos", "--labels", "y"], "error: --labels y: an image folder's labels are its subfolders"),
    (["run", "my.csv", "-S", "search.trials_per_dim"], "error: -S search.trials_per_dim: not key=value"),
    (["answers"], "reports/recommendation.json: not found; run the stages before it"),
])
def test_run_and_answers_errors_are_one_line(tmp_path, monkeypatch, capsys, argv, fragment):
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    (tmp_path / ".dvc").mkdir()
    (tmp_path / "photos").mkdir()
    (tmp_path / "my.csv").write_text("a,b\n1,2\n")
    monkeypatch.chdir(tmp_path)
    assert fragment in fails_with(capsys, *argv)


def test_overrides_point_the_study_at_the_data_and_the_users_come_last(tmp_path):
    from latentstudy.experiment import overrides

    (tmp_path / "my.csv").write_text("a\n1\n")
    (tmp_path / "photos").mkdir()
    assert overrides(tmp_path / "my.csv", tmp_path, "y", "reconstruction", ["data.limit=100"]) == [
        "++data.name=file", "++data.path=my.csv", "++data.labels_key=y", "++report.purpose=reconstruction",
        "data.limit=100"]
    outside = tmp_path / "project"
    assert overrides(tmp_path / "photos", outside, None, None, []) == [
        "++data.name=images", f"++data.path={(tmp_path / 'photos').resolve()}"]


@pytest.mark.e2e
def test_run_on_a_tiny_csv_ends_with_the_answers(tmp_path, monkeypatch, cpu_threads):
    """A table with labels, studied with `latentstudy run bc.csv --labels label`: one DVC experiment
    with the file's overrides, whose last lines are the three answers and the report's path."""
    from sklearn.datasets import load_breast_cancer

    bunch = load_breast_cancer(as_frame=True)
    bunch.data.iloc[:, :8].assign(label=bunch.target).to_csv(tmp_path / "bc.csv", index=False)
    params = {"data": TINY_DATA, "study": {"latent_dims": [2, 4], "seed": 0, "refine_max": 0},
              "pca": {"variance_targets": [0.9]},
              "search": dict(TINY_SEARCH, trials_per_dim=1),
              # dvc.yaml names these keys for the search (its rule); DVC wants them in params.yaml
              "evaluate": {"iwae_samples": 8, "probe_max_train": 1000},
              "report": {"purpose": "auto", "tolerance": 0.0, "bootstrap": 100}}
    new_project(tmp_path, params, "tiny project", repro=False)
    ran = sh(tmp_path, str(BIN / "latentstudy"), "run", "bc.csv", "--labels", "label", "-S", "data.limit=200")
    lines = ran.stdout.strip().splitlines()
    assert [line.split(":")[0] for line in lines[-4:]] == [
        "generation (headline)", "reconstruction", "representation", "Report"], lines[-6:]
    assert all(": k = " in line for line in lines[-4:-1]) and lines[-1] == "Report: reports/index.html"
    monkeypatch.chdir(tmp_path)
    assert lines[-4:] == answer_lines(tmp_path)  # what `latentstudy answers` prints

    # One DVC experiment, whose params (applied to the workspace, as dvc exp run does) name the file
    refs = sh(tmp_path, "git", "for-each-ref", "--format=%(refname)", "refs/exps").stdout.split()
    assert len([ref for ref in refs if not ref.startswith("refs/exps/exec/")]) == 1
    data = yaml.safe_load((tmp_path / "params.yaml").read_text())["data"]
    assert (data["name"], data["path"], data["labels_key"], data["limit"]) == ("file", "bc.csv", "label", 200)
    summary = json.loads((tmp_path / "data" / "prepared" / "summary.json").read_text())
    assert summary["dataset"] == "file" and summary["has_labels"] and summary["n_examples"] == 200
    # The metrics hold the answers, not per-size tables
    leaves = metric_leaves(tmp_path)
    assert len(leaves) <= 60 and "reports/metrics.json:.answers.representation.latent_dim" in leaves
    assert Path(tmp_path / "reports" / "evaluate" / "evaluation.json").is_file()  # every size's means, moved
