"""The stacked engine against a textbook loop: a member trained in a stack equals the same trial
trained alone (same seed, data order and noise) to 1e-5 in float64, for MLP and conv, VAE and AE,
through slot refills, pruning, early stopping and a member that diverges."""

from __future__ import annotations

import pytest
import torch
from reference_train import data_orders, reference_train

from latentstudy import models, train
from latentstudy.config import TrainConfig
from latentstudy.feed import DeviceSplit
from latentstudy.stack import Stack

SPECS = {
    "mlp-vae": models.NetSpec(20, 3, "mlp", "bernoulli", True, (16, 8), (4,)),
    "mlp-ae": models.NetSpec(20, 3, "mlp", "gaussian", False, (16,), (4,)),
    "mlp-vae-gaussian-per-feature": models.NetSpec(20, 3, "mlp", "gaussian", True, (16, 8), (4,), scale="per_feature"),
    "conv-vae": models.NetSpec(64, 2, "conv", "bernoulli", True, (8,), (3, 4), (1, 8, 8)),
    "conv-ae": models.NetSpec(48, 2, "conv", "gaussian", False, (8,), (3,), (3, 4, 4)),
    "mlp-ae-pca-path": models.NetSpec(20, 3, "mlp", "gaussian", False, (16,), (4,), pca_path=True),
    "conv-ae-pca-path": models.NetSpec(48, 2, "conv", "gaussian", False, (8,), (3,), (3, 4, 4), pca_path=True),
}
COMPARED = ("train_loss", "train_distortion", "train_rate", "val_distortion", "val_rate", "val_neg_elbo", "val_sse")


def data(dim: int, n: int = 150, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    centres = torch.rand(4, dim, generator=g, dtype=torch.float64)
    x = (centres[torch.randint(0, 4, (n,), generator=g)] + 0.1 * torch.randn(n, dim, generator=g,
                                                                               dtype=torch.float64)).clamp(0, 1)
    return x[:110], x[110:]


def run_stack(spec, x, cfg, members, size, prune=None, **kw):
    """Train members in a stack; returns (results by key, stack epoch at which each member started)."""
    queue, results, start = list(members), {}, {}
    done = []

    def next_member():
        if not queue:
            return None
        member = queue.pop(0)
        last = done[-1] if done else None
        start[member.key] = start[last.member.key] + last.epochs_run if last else 0
        return member

    def on_done(result):
        done.append(result)
        results[result.member.key] = result

    def on_epoch(member, record):
        return prune is not None and prune(member, record)

    train.train_stack(spec, x[0], x[1], cfg, objective="neg_elbo", size=size, next_member=next_member,
                      on_done=on_done, on_epoch=on_epoch, **kw)
    return results, start


def assert_matches_reference(spec, x, cfg, result, first_seed, offset, chunk_rows=train.CHUNK_ROWS):
    m = result.member
    orders = data_orders(first_seed, len(x[0]), offset + cfg.ceiling)[offset:]
    history, best = reference_train(spec, x[0], x[1], cfg, seed=m.seed, beta=m.beta, lr=m.lr, objective="neg_elbo",
                                    orders=orders, chunk_rows=chunk_rows)
    assert len(result.history) == (len(history) if result.status == "complete" else result.epochs_run)
    for got, want in zip(result.history, history):
        for key in COMPARED:
            assert got[key] == pytest.approx(want[key], rel=1e-5, abs=1e-5), (m.key, got["epoch"], key)
    if result.status == "complete":
        for name, value in best.items():
            torch.testing.assert_close(result.state_dict[name].double(), value, rtol=0, atol=1e-5)


@pytest.mark.parametrize("name", list(SPECS))
def test_each_member_equals_the_same_trial_trained_alone(name, cpu_threads):
    spec = SPECS[name]
    x = data(spec.input_dim)
    cfg = TrainConfig(epochs=6, batch_size=16, patience=2, grad_clip=1.0, kl_warmup_epochs=2, free_bits=0.05)
    members = [train.Member(seed, beta, lr, key=key) for key, seed, beta, lr in
               [("a", 11, 1.0, 3e-3), ("b", 22, 0.5, 1e-2), ("c", 33, 2.0, 5e-3), ("d", 44, 1.0, 2e-2)]]
    # b is pruned at its epoch 3; its slot and the next finisher's go to c and d.
    results, start = run_stack(spec, x, cfg, members, size=2, chunk_rows=48,
                               prune=lambda member, record: member.key == "b" and record["epoch"] == 3)
    assert results["b"].status == "pruned" and results["b"].reason == "pruned at epoch 3"
    assert start["c"] == 3 and start["d"] > 0
    for key in "abcd":
        assert results[key].status in ("complete", "pruned")
        assert_matches_reference(spec, x, cfg, results[key], first_seed=11, offset=start[key], chunk_rows=48)


def test_a_member_that_joined_late_trains_again_alone_from_its_recorded_data_order(cpu_threads):
    # What the search does for a best trial whose weights were lost (search/weights.py).
    spec = SPECS["mlp-vae"]
    x = data(spec.input_dim)
    cfg = TrainConfig(epochs=5, batch_size=16, patience=5)
    members = [train.Member(seed, 1.0, lr, key=seed) for seed, lr in ((1, 3e-3), (2, 1e-2), (3, 5e-3))]
    results, start = run_stack(spec, x, cfg, members, size=2,
                               prune=lambda member, record: member.key == 2 and record["epoch"] == 2)
    late = results[3]
    assert start[3] == 2 and late.data_order == (1, 2)
    model = models.build(spec).double()
    model.load_state_dict(train.initial_state(spec, 3))
    again = train.train(model, x[0], x[1], cfg, beta=1.0, lr=5e-3, objective="neg_elbo", seed=3,
                        data_order=late.data_order)
    assert [r["val_neg_elbo"] for r in again.history] == pytest.approx([r["val_neg_elbo"] for r in late.history],
                                                                       rel=1e-9)
    for name, value in late.state_dict.items():
        torch.testing.assert_close(model.state_dict()[name], value.double(), rtol=0, atol=1e-9)


def test_a_diverging_member_fails_alone(cpu_threads):
    spec = SPECS["mlp-vae"]
    x = data(spec.input_dim)
    cfg = TrainConfig(epochs=4, max_epochs=4, batch_size=16, patience=4, grad_clip=0.0)
    members = [train.Member(5, 1.0, 3e-3, key="ok1"), train.Member(6, 1.0, 1e300, key="nan"),
               train.Member(7, 1.0, 4e-3, key="ok2")]
    results, _ = run_stack(spec, x, cfg, members, size=3)
    assert results["nan"].status == "failed"
    assert results["nan"].reason.startswith("non-finite training loss (nan) at epoch 1")
    for key in ("ok1", "ok2"):
        assert results[key].status == "complete" and results[key].epochs_run == 4
        assert_matches_reference(spec, x, cfg, results[key], first_seed=5, offset=0)


def test_a_staged_split_gives_the_numbers_of_a_resident_one(cpu_threads):
    spec = SPECS["mlp-vae"]
    x = data(spec.input_dim)
    cfg = TrainConfig(epochs=3, batch_size=16)
    runs = []
    for staged in (False, True):
        splits = (DeviceSplit(x[0], "cpu", staged=staged), DeviceSplit(x[1], "cpu", staged=staged))
        members = [train.Member(1, 1.0, 3e-3, key=0), train.Member(2, 0.5, 5e-3, key=1)]
        results, _ = run_stack(spec, splits, cfg, members, size=2, chunk_rows=32)
        runs.append(results)
    for key in (0, 1):
        a, b = runs[0][key], runs[1][key]
        assert [{k: v for k, v in r.items() if k != "seconds"} for r in a.history] == \
               [{k: v for k, v in r.items() if k != "seconds"} for r in b.history]
        for name in a.state_dict:
            assert torch.equal(a.state_dict[name], b.state_dict[name])


def test_members_load_and_export_ordinary_state_dicts():
    spec = SPECS["conv-vae"]
    stack = Stack(spec, 3)
    states = [train.initial_state(spec, seed) for seed in (1, 2, 3)]
    for row, state in enumerate(states):
        stack.load(row, state)
    stack.keep([2, 0])
    for row, state in zip((0, 1), (states[2], states[0])):
        exported = stack.state_dict(row)
        assert exported.keys() == state.keys()
        assert all(torch.equal(exported[k], state[k]) for k in state)
    model = models.build(spec)
    model.load_state_dict(stack.state_dict(0))
    x = torch.rand(5, spec.input_dim)
    torch.testing.assert_close(stack.encode(x)[0][0], model.encode(x)[0])


def test_each_member_is_scored_with_its_own_per_feature_scales():
    # S = D = 4: a per-feature scale of shape (S, D) must reach its own member, feature by feature.
    spec = models.NetSpec(4, 2, "mlp", "gaussian", False, (8,), scale="per_feature")
    stack = Stack(spec, 4, dtype=torch.float64)
    lone = []
    for row in range(4):
        model = models.build(spec).double()
        with torch.no_grad():
            model.log_sigma.normal_()
            model.log_sigma_offset.normal_()
        stack.load(row, model.state_dict())
        lone.append(model)
    x = torch.randn(5, 4, dtype=torch.float64)
    got = stack.terms(x, None).distortion
    for row, model in enumerate(lone):
        torch.testing.assert_close(got[row], models.forward(model, x, None).distortion)
        exported = stack.state_dict(row)
        assert all(torch.equal(exported[k], v) for k, v in model.state_dict().items())


def test_the_start_is_the_seeded_build():
    spec = SPECS["mlp-ae"]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(9)
        alone = models.build(spec).state_dict()
    assert all(torch.equal(alone[k], v) for k, v in train.initial_state(spec, 9).items())
