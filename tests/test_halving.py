"""Successive halving among trials that train together (search/halving.py), and the stack's judge
hook in the training engine that it runs through."""

import torch

from latentstudy import models, train
from latentstudy.config import TrainConfig
from latentstudy.search import halving


def test_rungs_start_at_a_tenth_of_the_cap_and_triple_below_it():
    assert halving.rungs(150) == [15, 45, 135]
    assert halving.rungs(30) == [5, 15]  # at least MIN_RUNG epochs
    assert halving.rungs(5) == []


def test_the_best_third_goes_on_but_never_fewer_than_the_floor():
    mine = {0: 3.0, 1: 1.0, 2: 2.0, 3: 4.0}
    assert set(halving.stops(mine, {}, keep_at_least=2)) == {0, 3}  # 4 trials: ceil(4/3) = 2 go on
    assert set(halving.stops(mine, {}, keep_at_least=3)) == {3}
    assert halving.stops({5: 1.0}, {}, keep_at_least=1) == {}  # a lone trial is its unit's best


def test_members_are_ranked_with_the_units_earlier_trials_at_the_same_rung():
    earlier = {0: 1.0, 1: 1.5, 2: 9.0}
    stops = halving.stops({3: 2.0, 4: 1.2}, earlier, keep_at_least=2)
    assert set(stops) == {3}  # rank 4 of 5; trial 4 ranks 2nd and goes on, earlier trials are not ours to stop
    assert stops[3] == "rank 4 of 5 trials at this rung; the best 2 go on"
    assert set(halving.stops({3: 1.0}, {0: 1.0}, keep_at_least=1)) == {3}  # ties: the earlier trial first


def test_floor_is_half_the_budget():
    assert [halving.floor(b) for b in (1, 2, 3, 4, 6)] == [1, 1, 2, 2, 3]


def test_a_judged_member_stops_as_pruned_at_the_epoch_the_judge_sees_and_its_slot_takes_the_next():
    torch.manual_seed(0)
    x = torch.rand(96, 12)
    spec = models.NetSpec(12, 2, "mlp", "bernoulli", True, (16,), (), None)
    cfg = TrainConfig(epochs=8, batch_size=32, patience=50)
    queue = [train.Member(seed, 1.0, lr, key=seed) for seed, lr in ((0, 1e-2), (1, 1e-6), (2, 1e-2))]
    seen, done = [], []

    def judge(pairs):
        seen.append(sorted((m.key, r["epoch"]) for m, r in pairs))
        # at epoch 3 the two first members are compared: the one that barely learns stops
        if pairs and pairs[0][1]["epoch"] == 3 and len(pairs) == 2:
            worst = max(pairs, key=lambda pair: pair[1]["val_neg_elbo"])[0]
            return {worst.key: "behind"}
        return {}

    train.train_stack(spec, x[:64], x[64:], cfg, objective="neg_elbo", size=2, next_member=lambda: queue.pop(0)
                      if queue else None, on_done=done.append, judge=judge)
    pruned = [r for r in done if r.status == "pruned"]
    assert [r.member.key for r in pruned] == [1] and pruned[0].reason == "behind" and pruned[0].epochs_run == 3
    assert pruned[0].best["neg_elbo"] == pruned[0].history[-1]["val_neg_elbo"]
    assert sorted(r.member.key for r in done if r.status == "complete") == [0, 2]
    assert seen[3] == [(0, 4), (2, 1)]  # the freed slot's new member starts at its own epoch 1
