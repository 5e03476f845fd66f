import pytest

from latentstudy.recommend import knee, recommend, within_tolerance

INTRINSIC = {"twonn": 3.1, "mle": 2.9}


def test_smallest_size_within_tolerance_of_the_best():
    ks = [1, 2, 4, 8, 16]
    d = [100.0, 60.0, 31.0, 30.0, 29.8]  # flattens at k = 4
    rec = recommend(ks, d, [0.5, 0.7, 0.9, 1.1, 1.3], [1, 2, 4, 5, 5], 0.05, INTRINSIC, {"0.9": 7})
    assert rec.latent_dim == 4 and rec.beta == 0.9 and rec.best_latent_dim == 16
    assert rec.threshold == pytest.approx(29.8 * 1.05)
    assert rec.knee_latent_dim == 4 and rec.active_units == 4 and rec.max_active_units == 5
    for fragment in ("k = 4", "beta = 0.9", "within 5%", "29.80", "knee", "agrees", "TwoNN 3.1", "90% needs 7"):
        assert fragment in rec.text


def test_tolerance_moves_the_choice():
    ks, d = [1, 2, 4, 8], [50.0, 40.0, 33.0, 30.0]
    assert within_tolerance(ks, d, 0.0)[0] == 8
    assert within_tolerance(ks, d, 0.12)[0] == 4
    assert within_tolerance(ks, d, 0.5)[0] == 2


def test_negative_distortions_use_the_span_of_the_curve():
    # Gaussian decoders have densities: distortion in nats can be below zero.
    ks, d = [1, 2, 4, 8], [-10.0, -50.0, -60.0, -61.0]
    chosen, threshold, best_k, best = within_tolerance(ks, d, 0.05)
    assert (best_k, best) == (8, -61.0) and threshold == pytest.approx(-61.0 + 0.05 * 51.0) and chosen == 4


def test_sizes_without_a_model_are_skipped_and_collapse_is_explained():
    rec = recommend([2, 4, 8], [None, 20.0, 19.9], [None, 1.0, 1.0], [None, 1, 1], 0.05, {}, {})
    assert rec.latent_dim == 4
    assert "3 collapsed to the prior" in rec.text


def test_knee_of_a_planted_elbow_and_of_flat_curves():
    assert knee([1, 2, 4, 8, 16, 32], [10.0, 5.0, 2.0, 1.6, 1.5, 1.45]) == 4
    assert knee([1, 2, 4], [1.0, 1.0, 1.0]) is None
    assert knee([1, 2], [3.0, 1.0]) is None


def test_nothing_to_recommend_from():
    with pytest.raises(ValueError):
        recommend([2, 4], [None, None], [None, None], [None, None], 0.05, {}, {})
