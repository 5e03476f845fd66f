"""Built-in data of known structure: the manifold, shape images of known intrinsic dimension,
and colour patches of the photographs bundled with scikit-learn."""

import numpy as np
import pytest
from conftest import prepare_data

from latentstudy import intrinsic
from latentstudy.config import Manifold, Patches, Shapes, StudyError
from latentstudy.data import synthetic


def test_manifold_has_the_requested_intrinsic_dimension():
    raw = synthetic.make_manifold(Manifold(intrinsic_dim=2, ambient_dim=12, n=2000, noise=0.0, seed=0))
    assert raw.x.shape == (2000, 12) and raw.x.min() >= 0 and raw.x.max() <= 1
    est = intrinsic.estimates(raw.x, 2000, 0)
    assert abs(est["twonn"] - 2) < 0.4 and abs(est["mle"] - 2) < 0.4


def test_manifold_curvature_bends_it_more():
    """Curvature scales the embedding's frequencies: a flatter manifold (the known-dimension
    benchmark's 0.5) needs fewer principal components than the default 1.5, at the same d."""
    def components_for_99(curvature: float) -> int:
        x = synthetic.make_manifold(Manifold(intrinsic_dim=3, ambient_dim=16, n=2000, curvature=curvature)).x
        eig = np.linalg.eigvalsh(np.cov(x.T))[::-1]
        return int(np.searchsorted(np.cumsum(eig) / eig.sum(), 0.99) + 1)

    assert components_for_99(0.5) < components_for_99(1.5)


@pytest.mark.parametrize("factors", [["x", "y", "scale", "rotation"], ["x", "y", "rotation"]])
def test_shapes_twonn_finds_the_number_of_free_factors(tmp_path, factors):
    """Four free factors (position, scale, rotation), and three: a grid of powers of two cannot say 3."""
    summary, splits = prepare_data(tmp_path, name="shapes", shapes={"factors": factors, "n": 3000},
                                   intrinsic_max_points=2100)
    assert summary["image_shape"] == [32, 32] and summary["n_examples"] == 3000
    assert summary["intrinsic_dim"]["twonn"] == pytest.approx(len(factors), abs=0.6)
    assert 0 <= splits["train"]["x"].min() and splits["train"]["x"].max() <= 1


def test_shapes_are_seeded_and_each_factor_changes_the_image():
    a = synthetic.make_shapes(Shapes(n=30, size=16, seed=0)).x
    np.testing.assert_array_equal(a, synthetic.make_shapes(Shapes(n=30, size=16, seed=0)).x)
    assert not np.array_equal(a, synthetic.make_shapes(Shapes(n=30, size=16, seed=1)).x)
    fixed = synthetic.make_shapes(Shapes(factors=["brightness"], n=30, size=16)).x
    share = fixed / fixed.max(axis=(1, 2), keepdims=True)
    np.testing.assert_allclose(share, share[:1].repeat(30, 0), atol=1e-6)  # one shape, only its brightness varies
    for factor in ("x", "y", "scale", "rotation", "aspect"):
        images = synthetic.make_shapes(Shapes(factors=[factor], n=30, size=16)).x
        assert np.abs(images - images[:1]).max() > 0.2, factor
        assert 0.05 < images.mean() < 0.5  # the triangle stays inside the picture


def test_shapes_factors_are_checked(tmp_path):
    with pytest.raises(StudyError, match=r"data.shapes.factors = \['x', 'x'\]; allowed: a non-empty list without "):
        prepare_data(tmp_path, name="shapes", shapes={"factors": ["x", "x"]})
    with pytest.raises(StudyError, match="data.shapes.factors = 'size' is not allowed; expected one of x | y"):
        prepare_data(tmp_path, name="shapes", shapes={"factors": ["size"]})


def test_patches_are_seeded_colour_cuts_of_the_two_photographs(tmp_path):
    raw = synthetic.make_patches(Patches(n=200, size=16, seed=0))
    assert raw.x.shape == (200, 3, 16, 16) and raw.x.dtype == np.uint8 and raw.image_shape == [3, 16, 16]
    assert sorted(set(raw.y)) == ["china", "flower"]
    np.testing.assert_array_equal(raw.x, synthetic.make_patches(Patches(n=200, size=16, seed=0)).x)
    colour = np.abs(raw.x[:, 0].astype(int) - raw.x[:, 2]).mean()
    assert colour > 5  # red and blue differ: colour photographs, not grey
    summary, _ = prepare_data(tmp_path, name="patches", patches={"n": 200, "size": 16})
    assert summary["image_shape"] == [3, 16, 16] and summary["class_names"] == ["china", "flower"]
    assert summary["scaling"]["method"] == "divide" and summary["scaling"]["divisor"] == 255.0
