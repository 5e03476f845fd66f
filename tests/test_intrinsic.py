import numpy as np
import pytest

from latentstudy import intrinsic


@pytest.mark.parametrize("d", [1, 3, 6])
def test_linear_subspace_recovers_its_dimension(d):
    rng = np.random.default_rng(d)
    latent = rng.uniform(size=(3000, d))
    x = latent @ rng.normal(size=(d, 20))  # a flat d-dimensional set in 20 dimensions
    est = intrinsic.estimates(x, 3000, 0)
    assert est["twonn"] == pytest.approx(d, rel=0.15)
    assert est["mle"] == pytest.approx(d, rel=0.15)


def test_duplicates_do_not_break_the_ratios():
    x = np.random.default_rng(0).uniform(size=(500, 2))
    est = intrinsic.estimates(np.concatenate([x, x[:100]]), 1000, 0)
    assert est["n_points"] == 500 and np.isfinite(est["twonn"])


def test_too_few_points_give_no_estimate():
    assert intrinsic.estimates(np.eye(3), 10, 0)["twonn"] is None


def test_mnist_test_set_twonn_matches_the_study(mnist_test):
    # TwoNN (Facco, d'Errico, Rodriguez and Laio 2017, Sci. Rep. 7, 12140) on the 10,000 MNIST test
    # images scaled to [0, 1] is about 13.6 (a reference value computed apart from this code).
    est = intrinsic.estimates(mnist_test[0], 10000, 0)
    assert est["twonn"] == pytest.approx(13.6, abs=0.5)


def test_digits_twonn_matches_the_study():
    from sklearn.datasets import load_digits

    est = intrinsic.estimates(load_digits().data / 16.0, 5000, 0)
    assert est["twonn"] == pytest.approx(8.9, abs=0.4)


def test_bootstrap_interval_brackets_the_estimate_and_the_truth():
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(1500, 4)) @ rng.normal(size=(4, 12))
    est = intrinsic.estimates(x, 1500, 0)
    for name in ("twonn", "mle"):
        low, high = est[f"{name}_interval"]
        assert low < est[name] < high and low < 4.6 and high > 3.4
        assert high - low < 1.5
    assert est["rejected"] == {}


def test_an_estimate_that_is_not_a_dimension_is_rejected_with_its_reason():
    assert "not a finite positive" in intrinsic.rejection(float("nan"), 10)
    assert "not a finite positive" in intrinsic.rejection(-1.0, 10)
    assert "far above the 768 input features" in intrinsic.rejection(3.1e15, 768)
    assert intrinsic.rejection(11.0, 10) is None  # noise may put a full-dimensional estimate a bit above D
    # An evenly spaced grid: every r2 / r1 is 1, so TwoNN's fit is 0 / 0. Rejected, named; MLE stays.
    est = intrinsic.estimates(np.linspace(0, 1, 300)[:, None] * np.ones((1, 5)), 300, 0)
    assert est["twonn"] is None and est["twonn_interval"] is None
    assert est["rejected"] == {"twonn": "the estimate nan is not a finite positive number"}
    assert est["mle"] == pytest.approx(1.0, abs=0.25)


def test_the_upper_estimate_is_the_largest_kept_interval_end():
    found = {"twonn": 12.8, "twonn_interval": [12.2, 13.6], "mle": 11.2, "mle_interval": [11.0, 11.4]}
    assert intrinsic.upper(found) == 13.6
    assert intrinsic.upper({**found, "twonn": None, "twonn_interval": None}) == 11.4
    assert intrinsic.upper({"twonn": 7.0, "twonn_interval": None, "mle": None}) == 7.0  # no interval: the estimate
    assert intrinsic.upper({"twonn": None, "mle": None, "rejected": {"twonn": "not finite"}}) is None
