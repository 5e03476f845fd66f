import numpy as np
import pytest

from latentstudy import stats


def test_bootstrap_se_of_a_mean_matches_the_analytic_se():
    x = np.random.default_rng(0).gamma(2.0, 3.0, size=(1, 500))  # skewed, like per-example losses
    draws = stats.resample([x], 2000, seed=1)
    analytic = x.std(ddof=1) / np.sqrt(x.shape[1])
    assert draws.std(ddof=1) == pytest.approx(analytic, rel=0.1)
    assert draws.mean() == pytest.approx(x.mean(), abs=analytic / 5)


def test_the_same_seed_gives_the_same_draws_and_replicates_do_not_move_the_example_draws():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(1, 50)), rng.normal(size=(3, 50))
    assert np.array_equal(stats.resample([a, b], 100, 7), stats.resample([a, b], 100, 7))
    # The examples are resampled from their own stream: adding replicates to b leaves a's column.
    more = np.concatenate([b, rng.normal(size=(2, 50))])
    assert np.array_equal(stats.resample([a, b], 100, 7)[:, 0], stats.resample([a, more], 100, 7)[:, 0])


def test_paired_differences_of_a_planted_pair():
    """Two models share the hard examples; model b is worse by 0.1 everywhere, plus a little noise."""
    rng = np.random.default_rng(0)
    hard = rng.exponential(5.0, size=400)
    a = hard + rng.normal(0, 0.05, size=400)
    b = hard + 0.1 + rng.normal(0, 0.05, size=400)
    c = stats.choose([1, 2], [b[None], a[None]], 1000, seed=0)
    assert c.best == 2 and c.diff[0] == pytest.approx(0.1, abs=0.02)
    assert c.diff_se[0] < c.se[0] / 20  # pairing removes the shared example difficulty
    assert c.diff_low[0] > 0 and c.diff_low[0] < 0.1 < c.diff_high[0]
    assert c.low[0] < c.low[1] + 0.1 < c.high[0]  # the separate intervals overlap: unpaired, no verdict
    assert c.chosen == 2 and c.shares[2] == 1.0 and c.likely == [2]


def test_seed_replicates_widen_the_interval_by_the_spread_between_seeds():
    rng = np.random.default_rng(0)
    examples = rng.normal(0, 1, size=300)
    steady = np.stack([examples + 0.01 * rng.normal(size=300) for _ in range(3)])
    seedy = np.stack([examples + shift for shift in (-0.5, 0.0, 0.5)])  # seeds disagree by a constant
    se_steady = stats.resample([steady], 1000, 0).std()
    se_seedy = stats.resample([seedy], 1000, 0).std()
    assert se_seedy > 3 * se_steady


def curve(means, n=2000, noise=1.0, seed=0) -> list[np.ndarray]:
    """Planted per-example values: a shared example effect plus each size's mean and its own noise."""
    rng = np.random.default_rng(seed)
    shared = rng.normal(0, 3.0, size=n)
    return [(shared + m + rng.normal(0, noise, size=n))[None] for m in means]


@pytest.mark.parametrize("means, tolerance, chosen", [
    ([10.0, 5.0, 2.0, 2.01, 2.0, 2.02], 0.0, 4),  # flat from k = 4 on: which of them is best is noise
    ([10.0, 5.0, 3.0, 2.5, 2.0, 1.0], 0.0, 32),  # still improving: the largest size
    ([10.0, 5.0, 2.2, 2.1, 2.0, 2.0], 0.0, 16),  # 0.2 above the best is many SEs of a paired difference
    ([10.0, 5.0, 2.2, 2.1, 2.0, 2.0], 0.1, 4),  # ... but within a practical margin of 10%
    ([2.0, 2.0, 2.0, 2.0, 2.0, 2.0], 0.0, 1),  # flat everywhere: the smallest
])
def test_one_se_rule_on_planted_curves(means, tolerance, chosen):
    ks = [1, 2, 4, 8, 16, 32]
    c = stats.choose(ks, curve(means), 500, seed=0, tolerance=tolerance)
    assert c.chosen == chosen
    assert means[ks.index(c.best)] == min(means)
    assert sum(c.shares.values()) == pytest.approx(1.0)
    assert c.chosen in c.likely
    assert c.value[ks.index(c.chosen)] <= c.threshold


def test_one_se_rule_uses_the_difference_se_of_each_size():
    means = np.array([3.0, 2.05, 2.0])
    se_pair = np.array([[0, 0.2, 0.5], [0.2, 0, 0.1], [0.5, 0.1, 0]])
    assert stats.one_se_rule(means, se_pair) == (1, 2)
    assert stats.one_se_rule(means, se_pair * 0.1) == (2, 2)
    assert stats.one_se_rule(means, se_pair * 0.1, tolerance=0.5) == (0, 2)


def test_stability_and_the_likely_set():
    shares = np.array([0.05, 0.84, 0.08, 0.03])
    assert stats.likely_set(shares) == [1, 2]
    assert stats.likely_set(np.array([0.0, 1.0])) == [1]
    # Two sizes that are equal up to noise split the picks between them.
    c = stats.choose([5, 6], curve([2.0, 2.0], n=200, noise=0.3), 400, seed=3)
    assert c.chosen == 5 and c.shares[5] > 0.5 and c.likely[0] == 5


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError):
        stats.choose([2, 1], curve([1.0, 2.0]), 100, 0)
    with pytest.raises(ValueError):
        stats.resample([np.zeros((1, 5)), np.zeros((1, 6))], 100, 0)


def test_sizes_with_and_without_replicates_compare_their_picks_with_the_seed_spread_added():
    """The search's pick at each size is its best of several trials: luckier than fresh seeds.
    Averaging replicates at one size but not the other would penalise the replicated size. The
    size without replicates borrows the measured seed spread of the nearest size with them."""
    rng = np.random.default_rng(0)
    shared = rng.exponential(3.0, size=500)
    lone = (shared + 10.0 + rng.normal(0, 0.05, 500))[None]
    replicated = np.stack([shared + m + rng.normal(0, 0.05, 500) for m in (10.0, 11.0, 12.0)])
    c = stats.choose([2, 4], [replicated, lone], 1000, seed=0)
    assert not c.averaged and c.models == [3, 1]
    assert c.value[0] == pytest.approx(10.0 + shared.mean(), abs=0.02)  # the pick, not the mean 11
    assert c.chosen == 2  # equal picks: the smaller size
    assert c.se[1] == pytest.approx(c.se[0], rel=0.2) and c.diff_se[0] > 0.3  # a seed's luck at both sizes
    assert stats.choose([2, 4], [lone, lone + 0.1], 200, seed=0).se[0] < 0.3 * c.se[0]  # none measured: none added
    same = stats.choose([2, 4], [replicated, replicated + 0.5], 200, seed=0)
    assert same.averaged and same.value[0] == pytest.approx(11.0 + shared.mean(), abs=0.02)


def test_the_search_is_resampled_too_a_rerun_may_miss_the_lucky_pick():
    """Four trials at a size, the pick 1 nat better than the other three: a resample of the four
    holds the pick with probability 1 - (3/4)^4, and otherwise takes the best other trial."""
    rng = np.random.default_rng(0)
    shared = rng.exponential(3.0, size=400)
    pick = (shared + 10.0 + rng.normal(0, 0.05, 400))[None]
    others = np.stack([shared + 11.0 + rng.normal(0, 0.05, 400) for _ in range(3)])
    held = stats.resample([pick], 4000, seed=0)[:, 0]
    searched = stats.resample([pick], 4000, seed=0, others=[others])[:, 0]
    lucky = np.abs(searched - held) < 0.5
    assert lucky.mean() == pytest.approx(1 - (3 / 4) ** 4, abs=0.03)
    assert np.allclose(searched[lucky], held[lucky])  # the same example draws either way
    assert np.all(searched[~lucky] > held[~lucky] + 0.8)


def test_a_size_whose_search_was_lucky_is_not_told_apart_from_one_whose_search_was_steady():
    """k = 2's pick looks 0.2 better than k = 4's, but k = 2's other trials are 1 worse, and k = 4's
    are as good as its pick: with the search resampled the rule cannot prefer 4 over 2."""
    rng = np.random.default_rng(1)
    shared = rng.exponential(3.0, size=500)

    def model(mean: float) -> np.ndarray:
        return shared + mean + rng.normal(0, 0.05, 500)

    small, large = model(10.2)[None], model(10.0)[None]
    small_rest = np.stack([model(11.2), model(11.3), model(11.4)])
    large_rest = np.stack([model(10.0), model(10.05), model(10.1)])
    fixed = stats.choose([2, 4], [small, large], 1000, seed=0)
    assert fixed.chosen == 4 and fixed.trials == [1, 1]  # 0.2 is many SEs of the paired difference
    searched = stats.choose([2, 4], [small, large], 1000, seed=0, others=[small_rest, large_rest])
    assert searched.trials == [4, 4] and searched.value == fixed.value  # the point values stay the picks'
    assert searched.chosen == 2 and searched.diff_se[0] > 0.2
    assert searched.se[0] > 3 * fixed.se[0] and searched.se[1] < 1.5 * fixed.se[1]


def test_other_trials_must_cover_the_same_examples():
    with pytest.raises(ValueError):
        stats.resample([np.zeros((1, 5))], 100, 0, others=[np.zeros((2, 6))])
    with pytest.raises(ValueError):
        stats.resample([np.zeros((1, 5)), np.zeros((1, 5))], 100, 0, others=[np.zeros((2, 5))])
