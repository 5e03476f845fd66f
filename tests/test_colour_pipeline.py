"""Colour end to end: real `dvc repro` on a tiny folder of RGB images, then on the built-in patches,
in one repository: conv models with three channels, the Gaussian likelihood chosen for colour,
colour figures and the explorer in the report."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import TINY_SEARCH
from matplotlib.image import imread
from PIL import Image
from test_pipeline import new_project, ran, set_param, sh

from latentstudy.config import Patches
from latentstudy.data import synthetic

pytestmark = pytest.mark.e2e
SIZE = 12


def colour_params() -> dict:
    search = {**TINY_SEARCH, "trials_per_dim": 1, "max_trials_per_dim": 3,
              # auto picks conv here: one stride-2 layer leaves 6 x 6 of the 12 x 12 images (>= 4 a side)
              "model": {"arch": "auto", "likelihood": "auto", "hidden": [32], "channels": [8]},
              "train": {"epochs": 4, "batch_size": 32, "patience": 2}}
    return {"data": {"name": "images", "path": "pics", "intrinsic_max_points": 100},
            "study": {"latent_dims": [2, 4], "seed": 0, "refine_max": 0}, "pca": {"variance_targets": [0.9]},
            "search": search, "evaluate": {"iwae_samples": 4, "probe_max_train": 100},
            # the search's rule keys (dvc.yaml lists them as its params, so they must be in the file)
            "report": {"recon_examples": 4, "purpose": "auto", "tolerance": 0.0, "bootstrap": 200}}


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    """A project whose data is a folder of 80 RGB pictures in two class folders, after `dvc repro`."""
    repo = tmp_path_factory.mktemp("colour")
    raw = synthetic.make_patches(Patches(n=80, size=SIZE, seed=5))
    for i, (pixels, label) in enumerate(zip(raw.x, raw.y)):
        (repo / "pics" / label).mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels.transpose(1, 2, 0)).save(repo / "pics" / label / f"{i:03d}.png")
    first = new_project(repo, colour_params(), "colour study")
    assert ran(first) == {"prepare", "pca", "search", "evaluate", "report"}
    assert "examples of shape" not in first.stdout and f"RGB images {SIZE}x{SIZE}" in first.stdout
    return repo


def is_colour(png) -> bool:
    image = imread(png)[..., :3]
    return float(np.abs(image[..., 0] - image[..., 2]).max()) > 0.03  # a grey colour map gives R = B exactly


def check_colour_report(repo, dataset: str) -> None:
    summary = json.loads((repo / "data" / "prepared" / "summary.json").read_text())
    assert summary["dataset"] == dataset and summary["image_shape"] == [3, SIZE, SIZE]
    blob = torch.load(repo / "models" / "search" / "k2-vae.pt", weights_only=True)
    assert blob["spec"]["arch"] == "conv" and blob["spec"]["likelihood"] == "gaussian"
    assert blob["spec"]["image_shape"] == [3, SIZE, SIZE] or tuple(blob["spec"]["image_shape"]) == (3, SIZE, SIZE)
    page = (repo / "reports" / "index.html").read_text()
    assert 'id="likelihood">VAE decoder likelihood: <b>gaussian</b>' in page and "colour images" in page
    assert 'id="explorer"' in page and f'"image_shape":[3,{SIZE},{SIZE}]' in page
    for name in ("reconstructions", "samples", "traversals", "interpolations"):
        assert is_colour(repo / "reports" / "figures" / f"{name}.png"), name


def test_a_folder_of_rgb_images_runs_in_colour(repo):
    check_colour_report(repo, "images")
    summary = json.loads((repo / "data" / "prepared" / "summary.json").read_text())
    assert summary["class_names"] == ["china", "flower"] and summary["n_examples"] == 80


def test_the_patches_dataset_runs_in_colour(repo):
    set_param(repo, "data.name", "patches")
    set_param(repo, "data.patches", {"n": 120, "size": SIZE, "seed": 0})
    assert ran(sh(repo, "dvc", "repro")) == {"prepare", "pca", "search", "evaluate", "report"}
    check_colour_report(repo, "patches")
