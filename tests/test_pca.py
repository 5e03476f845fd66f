import numpy as np
import pytest
from sklearn.datasets import load_digits
from sklearn.decomposition import PCA

from latentstudy import pca


@pytest.fixture(scope="module")
def digits() -> np.ndarray:
    return load_digits().data / 16.0


def sse(basis, x, k):
    return pca.errors(x, pca.reconstruct(basis, x, k))["sse_per_image"]


def test_agrees_with_scikit_learn(digits):
    basis = pca.fit(digits)
    ref = PCA(n_components=20, svd_solver="full").fit(digits)
    np.testing.assert_allclose(basis.mean, ref.mean_, atol=1e-6)
    np.testing.assert_allclose(basis.explained_variance[:20], ref.explained_variance_, rtol=1e-6)
    np.testing.assert_allclose(pca.explained_ratio(basis)[:20], np.cumsum(ref.explained_variance_ratio_), atol=1e-6)
    # Components agree up to sign; reconstructions agree exactly.
    signs = np.sign(np.sum(basis.components[:20] * ref.components_, axis=1))
    np.testing.assert_allclose(basis.components[:20] * signs[:, None], ref.components_, atol=1e-6)
    np.testing.assert_allclose(pca.reconstruct(basis, digits, 20), ref.inverse_transform(ref.transform(digits)),
                               atol=1e-6)
    np.testing.assert_allclose(pca.encode(basis, digits, 20) * signs, ref.transform(digits), atol=1e-6)


def test_digits_numbers_from_the_study(digits):
    basis = pca.fit(digits)
    assert pca.components_for(basis, 0.90) == 21 and pca.components_for(basis, 0.95) == 29
    assert [round(sse(basis, digits, k), 2) for k in (2, 10, 30)] == [3.36, 1.23, 0.19]


def test_mnist_numbers_from_the_study(mnist_test):
    x = mnist_test[0]
    basis = pca.fit(x)
    expected = {2: 43.6, 5: 34.8, 10: 26.6, 16: 20.9, 20: 18.3, 30: 13.7, 50: 8.9, 64: 7.0, 100: 4.3}
    assert {k: round(sse(basis, x, k), 1) for k in expected} == expected
    assert pca.components_for(basis, 0.90) == 84 and pca.components_for(basis, 0.95) == 149


def test_sizes_at_or_above_the_input_dimension_are_exact(digits):
    basis = pca.fit(digits[:40])  # 40 examples: only 40 components exist, D = 64
    m = pca.metrics_at(basis, digits[40:80], 64)
    assert m["exact"] and m["sse_per_image"] == 0.0 and m["explained_variance_ratio"] == 1.0
    above = pca.metrics_at(basis, digits[40:80], 100)
    assert above["exact"] and above["sse_per_image"] == 0.0
    partial = pca.metrics_at(basis, digits[40:80], 50)  # more than the 40 components, fewer than D
    assert partial["components_used"] == 40 and not partial["exact"] and partial["sse_per_image"] > 0


def test_curve_agrees_with_metrics_at(digits):
    basis = pca.fit(digits[:1200])
    test = digits[1200:]
    rows = pca.curve(basis, test)
    assert len(rows) == 64
    for k in (1, 5, 30):
        assert rows[k - 1]["test_sse_per_image"] == pytest.approx(pca.metrics_at(basis, test, k)["sse_per_image"],
                                                                  rel=1e-9, abs=1e-9)
    ratios = [r["explained_variance_ratio"] for r in rows]
    assert ratios == sorted(ratios) and ratios[-1] == pytest.approx(1.0)


def test_bce_is_finite_for_reconstructions_outside_the_unit_interval(digits):
    basis = pca.fit(digits)
    m = pca.errors(digits, pca.reconstruct(basis, digits, 2))
    assert np.isfinite(m["bce_nats"]) and m["bce_nats"] > 0


def test_save_load_round_trip(digits, tmp_path):
    basis = pca.fit(digits)
    pca.save(basis, tmp_path / "b.npz")
    again = pca.load(tmp_path / "b.npz")
    np.testing.assert_array_equal(again.components, basis.components)
    assert again.total_variance == basis.total_variance


def test_residuals_are_each_examples_error_after_k_components(digits):
    basis = pca.fit(digits[:1000])
    residuals, total = pca.residuals(basis, digits[1000:])
    assert residuals.shape == (797, basis.n_components) and total.shape == (797,)
    for k in (1, 8, 30):  # the same as reconstructing with k components, example by example
        each = ((digits[1000:] - pca.reconstruct(basis, digits[1000:], k)) ** 2).sum(axis=1)
        np.testing.assert_allclose(residuals[:, k - 1], each, rtol=1e-6, atol=1e-8)
    assert (np.diff(residuals, axis=1) <= 1e-9).all() and (residuals[:, 0] <= total).all()
