import numpy as np
import pytest
from conftest import prepared_summary

from latentstudy import checks, recommend
from latentstudy.config import StudyError
from latentstudy.checks import knee
from latentstudy.recommend import PURPOSES, answer, by_size, headline


def planted(means: dict[int, float], n=400, noise=0.2, seed=0, models=1) -> dict[int, np.ndarray]:
    rng = np.random.default_rng(seed)
    shared = rng.normal(0, 2.0, size=n)
    return {k: np.stack([shared + m + rng.normal(0, noise, size=n) for _ in range(models)]) for k, m in means.items()}


def test_generation_answer_on_a_planted_nll_curve():
    # Flat from k = 6 on: which flat size is best, and whether 6 is within one SE of it, is noise;
    # with this seed the rule picks 6, most often among the resamples, and the 90% set says how sure.
    curves = planted({2: 30.0, 4: 25.0, 6: 24.0, 8: 24.0, 16: 24.0}, seed=2)
    a = answer(PURPOSES["generation"], curves, {}, 500, 0, 0.0)
    assert a.k == 6 and a.interval() == (6, 8) and a.choice.likely == [6, 8]
    assert a.choice.shares[6] == max(a.choice.shares.values()) and a.choice.shares[4] == 0
    value, se, low, high = a.at(6)
    assert low < value < high and se > 0
    assert a.summary().startswith("k = 6, chosen in ") and "90% set {" in a.summary()
    d = a.to_dict()
    assert d["latent_dim"] == 6 and d["curve"][0]["latent_dim"] == 2 and d["curve"][0]["diff_to_best"] > 5


def test_representation_prefers_higher_accuracy_and_shows_it_as_accuracy():
    rng = np.random.default_rng(0)
    accuracy = {2: 0.5, 4: 0.8, 8: 0.9, 16: 0.9}
    curves = {k: (rng.uniform(size=(1, 2000)) < p).astype(float) for k, p in accuracy.items()}
    a = answer(PURPOSES["representation"], curves, {}, 400, 0, 0.0)
    assert a.k == 8
    value, _, low, high = a.at(8)
    assert value == pytest.approx(0.9, abs=0.03) and low < value < high <= 1.0


def test_excluded_sizes_are_left_out_and_nothing_left_is_no_answer():
    curves = planted({2: 30.0, 4: 20.0, 8: 25.0})
    a = answer(PURPOSES["generation"], curves, {4: "far worse than trivial: ..."}, 200, 0, 0.0)
    assert a.choice.ks == [2, 8] and a.k == 8
    none = answer(PURPOSES["generation"], curves, {2: "x", 4: "x", 8: "x"}, 200, 0, 0.0)
    assert none.choice is None and none.k is None and "excluded" in none.summary()


def test_still_improving_at_the_largest_size():
    a = answer(PURPOSES["reconstruction"], planted({2: 9.0, 4: 6.0, 8: 3.0}), {}, 200, 0, 0.0, input_dim=64)
    assert a.k == 8 and a.still_improving
    # At k >= D a code can be the identity: past it, larger sizes cannot help, whatever the noise says.
    assert not answer(PURPOSES["reconstruction"], planted({2: 9.0, 64: 6.0, 96: 3.0}), {}, 200, 0, 0.0,
                      input_dim=64).still_improving


def test_headline_and_purposes_the_data_cannot_serve():
    assert headline("auto", True)[0] == "generation"
    assert headline("auto", False)[0] == "reconstruction"
    assert headline("representation", True) == ("representation", "report.purpose = representation")
    assert recommend.unavailable("representation", True, False) == "the data has no labels to probe"
    assert "no VAE finished" in recommend.unavailable("generation", False, True)
    with pytest.raises(StudyError, match="report.purpose = representation but the data has no labels"):
        recommend.check_purpose("representation", has_labels=False)
    recommend.check_purpose("representation", has_labels=True)


def test_labels_of_one_class_make_representation_not_applicable():
    assert recommend.unavailable("representation", True, True, 1) == "not applicable: the labels have one class"
    assert recommend.unavailable("representation", True, True, 2) is None
    assert recommend.unavailable("generation", True, True, 1) is None
    assert prepared_summary(has_labels=True, class_names=["a"]).classes == 1
    with pytest.raises(StudyError, match="report.purpose = representation but the labels have one class"):
        recommend.check_purpose("representation", True, 1)
    recommend.check_purpose("auto", True, 1)


def test_knee_of_a_planted_elbow_and_of_flat_curves():
    assert knee([1, 2, 4, 8, 16, 32], [10.0, 5.0, 2.0, 1.6, 1.5, 1.45]) == 4
    assert knee([1, 2, 4], [1.0, 1.0, 1.0]) is None
    assert knee([1, 2], [3.0, 1.0]) is None


def test_knee_stability_over_resampled_curves():
    a = answer(PURPOSES["generation"], planted({1: 10.0, 2: 5.0, 4: 2.0, 8: 1.6, 16: 1.5, 32: 1.45}, noise=0.05),
               {}, 300, 0, 0.0)
    at, shares, likely = checks.knee_stability(a.choice)
    assert at == 4 and shares[4] > 0.9 and likely == [4]


def test_pca_components_with_an_interval():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(500, 6)) * np.array([5.0, 3.0, 1.0, 0.5, 0.2, 0.1])
    total = (x**2).sum(axis=1)
    residuals = total[:, None] - np.cumsum(x**2, axis=1)
    got = checks.pca_components(residuals, total, [0.9, 0.99], 200, 0)
    k90, lo, hi = got["0.9"]
    assert k90 == 2 and lo <= 2 <= hi
    assert got["0.99"][0] == 3  # variances 25, 9, 1, ...: 0.708, 0.963, 0.991


def test_explanation_names_the_rule_numbers_and_the_cross_checks():
    curves = planted({2: 30.0, 4: 25.0, 8: 24.9, 16: 24.8}, models=2)
    answers = {"generation": answer(PURPOSES["generation"], curves, {}, 300, 0, 0.0),
               "reconstruction": answer(PURPOSES["reconstruction"], planted({2: 5.0, 4: 3.0, 8: 2.0, 16: 1.0}),
                                        {}, 300, 0, 0.0),
               "representation": answer(PURPOSES["representation"], {}, {}, 300, 0, 0.0, "the data has no labels")}
    found = checks.Checks(4, {4: 0.8, 8: 0.2}, [4, 8], [4, 3], 7, {"twonn": 3.1, "twonn_interval": [2.8, 3.4]},
                          {"0.9": [7, 6, 8]})
    rec = recommend.Recommendation(answers, "generation", "report.purpose = auto", found)
    text = recommend.explain(rec, {"vae": [4, 8]}, [8])
    k = rec.latent_dim
    for fragment in (f"generation, k = {k}", "one SE", "Sizes with seed replicates in their interval: 4, 8",
                     "Sizes added by the search: 8", "reconstruction k = 16", "representation no answer",
                     "knee of the generation curve is at k = 4 (in 80% of resamples)", "4 active units (replicates: 3-4)",
                     "TwoNN 3.1 (95% 2.8-3.4)", "90% needs 7 (95% 6-8)", "still improves"):
        if fragment == "still improves":
            assert (fragment in text) == answers["generation"].still_improving
        else:
            assert fragment in text, fragment


def test_models_are_grouped_by_size_into_the_pick_with_its_replicates_and_the_other_trials_by_rank():
    ks = np.array([2, 2, 2, 2, 4, 4, 8])
    ranks = np.array([0, 2, 0, 1, 1, 0, 1])  # rows in any order; 8 has no rank-0 model
    sane = np.array([True, True, True, True, True, False, True])  # 4's pick diverged
    values = np.arange(7, dtype=float)[:, None] * np.ones((7, 3))
    picks, others = by_size(ks, ranks, sane, values)
    assert set(picks) == {2}  # 4 has no sane rank-0 model, 8 none at all
    assert picks[2][:, 0].tolist() == [0.0, 2.0] and others[2][:, 0].tolist() == [3.0, 1.0]  # rank 1, then 2


def test_a_stability_of_100_percent_from_parsimony_alone_is_said_in_plain_words():
    # 2 and 4 are within noise of each other, far from 8 and 16: the rule takes 2 in every resample,
    # which is parsimony, not certainty; only two of four sizes are indistinguishable.
    rng = np.random.default_rng(2)
    shared = rng.normal(0, 2.0, size=400)
    curves = {k: (shared + m + rng.normal(0, 3.0, size=400))[None] for k, m in {2: 20.0, 4: 20.3, 8: 30, 16: 31}.items()}
    a = answer(PURPOSES["generation"], curves, {}, 300, 0, 0.0)
    assert a.k == 2 and a.choice.shares[2] == 1.0 and a.choice.indistinguishable == [2, 4] and not a.cannot_tell
    assert a.plain_words().startswith("this data cannot tell k = 2 from k = 4 on the NLL bound (2 of 4 sizes")
    assert a.summary().startswith("k = 2, chosen in 100% of resamples;") and "by parsimony" in a.summary()
