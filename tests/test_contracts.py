"""The typed files between stages read back to what was written, byte for byte, and an older file
that lacks a field is refused with one line."""

import json

import numpy as np
import pytest
from conftest import prepared_summary

from latentstudy.config import StudyError
from latentstudy.contracts import Summary
from latentstudy.evaluation import Evaluation, PerExample


def model(rank: int, vae: bool, labels: bool) -> dict:
    """One model's entry in the evaluate stage's key order: a VAE's bounds and the probe only where measured."""
    out = {"seed": 1, "trial": 3, "study": "s-k2-vae", "still_improving": False, "sse_per_image": 5.5,
           "bce_nats": 30.25, "distortion_nats": 28.0}
    if vae:
        out |= {"rate_nats": 4.0, "iwae_nll_nats": 31.0, "neg_elbo_mc_nats": 32.5}
    if labels:
        out["probe_accuracy"] = 0.75
    if vae:
        out |= {"neg_elbo_nats": 32.0, "active_units": 2}
    return out | {"flag": None, "replicate": 0, "rank": rank, "objective": 30.5 if rank == 0 else None}


def arm(vae: bool, labels: bool) -> dict:
    pick = model(0, vae, labels)
    out = {key: pick[key] for key in pick if key not in ("seed", "trial", "study", "replicate", "rank", "objective",
                                                          "active_units", "still_improving")}
    out |= {"latent_dim": 2, "n_params": 900, "beta": 1.5 if vae else None, "lr": 0.001, "train_seconds": 2.5,
            "trial": 3, "study": "s", "epochs_run": 40, "mse_per_pixel": 0.0859375, "models": [pick],
            "trials": [model(1, vae, labels)], "n_sane": 1, "still_improving": 0}
    if vae:
        out |= {"active_units": 2, "mu_variance": [0.5, 0.25], "collapsed_units": 0, "kl_per_dim_nats": [2.0, 2.0],
                "iwae_samples": 8}
    return out


@pytest.mark.parametrize("labels", [False, True])
def test_evaluation_json_reads_back_to_the_same_bytes(tmp_path, labels):
    pca = {"latent_dim": 2, "components_used": 2, "exact": False, "explained_variance_ratio": 0.25,
           "sse_per_image": 7.0, "mse_per_pixel": 0.109375, "bce_nats": 33.0}
    pca |= {"probe_accuracy": 0.5} if labels else {}
    with_ae = {"code": "ae", "pca_val_sse_per_image": 7.5, "pca_exact": False, "undertrained": False,
               "ae_val_sse_per_image": 5.0, "diff_val_sse_per_image": -2.5, "diff_se": 0.125}
    rows = [{"latent_dim": 2, "compression_ratio": 32.0, "phase": "grid", "reason": "", "pca": pca,
             "vae": arm(True, labels), "ae": arm(False, labels), "code": with_ae},
            {"latent_dim": 4, "compression_ratio": 16.0, "phase": "added", "reason": "why", "pca": pca, "vae": None,
             "ae": None,
             "code": {"code": "pca", "pca_val_sse_per_image": 7.5, "pca_exact": True, "undertrained": False}}]
    raw = {"input_dim": 64, "n_test": 60, "has_labels": labels, "rows": rows,
           "baseline": {"sse_per_image": 9.0, "bernoulli_nll_nats": 40.0, "gaussian_nll_nats": 50.0, "input_dim": 64}}
    raw = {key: raw[key] for key in ("input_dim", "n_test", "has_labels", "baseline", "rows")}
    written = json.dumps(raw, indent=2) + "\n"
    (tmp_path / "evaluation.json").write_text(written)
    Evaluation.load(tmp_path / "evaluation.json").save(tmp_path / "again.json")
    assert (tmp_path / "again.json").read_text() == written


def test_per_example_npz_reads_back_to_the_same_bytes(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {"baseline_sse_per_image": rng.uniform(size=5)}
    for name, quantities in (("pca", ("sse_per_image", "bce_nats")), ("vae", ("iwae_nll_nats", "probe_correct"))):
        arrays |= {f"{name}_latent_dim": np.array([2, 4]), f"{name}_rank": np.zeros(2, int),
                   f"{name}_replicate": np.zeros(2, int), f"{name}_flagged": np.array([False, True])}
        arrays |= {f"{name}_{q}": rng.uniform(size=(2, 5)).astype(np.float32) for q in quantities}
    PerExample.from_arrays(arrays).save(tmp_path / "a.npz")
    PerExample.load(tmp_path / "a.npz").save(tmp_path / "b.npz")
    assert (tmp_path / "a.npz").read_bytes() == (tmp_path / "b.npz").read_bytes()
    back = PerExample.load(tmp_path / "b.npz")
    assert set(back.arms) == {"pca", "vae"} and back.arms["vae"].values("probe_correct").shape == (2, 5)
    assert sorted(back.arrays()) == sorted(arrays) and back.arms["pca"].values("iwae_nll_nats") is None


def test_an_older_summary_without_a_field_is_refused_in_one_line(tmp_path):
    path = tmp_path / "summary.json"
    prepared_summary(has_labels=True, class_names=["a", "b"]).save(path)
    assert Summary.load(path) == prepared_summary(has_labels=True, class_names=["a", "b"])
    assert Summary.load(path).classes == 2
    raw = json.loads(path.read_text())
    del raw["class_names"]
    path.write_text(json.dumps(raw))
    with pytest.raises(StudyError, match=r"summary.json: has no 'class_names' \(written by an older version\); "
                                         r"rerun the prepare stage: dvc repro -f prepare"):
        Summary.load(path)
