import pytest
import torch

from latentstudy import models, paramfile, train
from latentstudy.config import StudyError, TrainConfig


@pytest.fixture(scope="module")
def tiny():
    g = torch.Generator().manual_seed(0)
    centres = torch.rand(4, 20, generator=g)
    x = (centres[torch.randint(0, 4, (240,), generator=g)] + 0.05 * torch.randn(240, 20, generator=g)).clamp(0, 1)
    return x[:200], x[200:]


def fresh(seed=0, variational=True, latent=3):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return models.build(models.NetSpec(20, latent, "mlp", "bernoulli", variational, (32,), (8,)))


def run(tiny, cfg=None, **kw):
    args = {"beta": 1.0, "lr": 3e-3, "objective": "neg_elbo", "seed": 0, **kw}
    return train.train(fresh(), tiny[0], tiny[1], cfg or TrainConfig(epochs=8, batch_size=32), **args)


def test_same_seed_same_numbers(tiny, cpu_threads):
    a, b = run(tiny), run(tiny)

    def strip(history):  # wall time is the one field allowed to differ
        return [{k: v for k, v in r.items() if k != "seconds"} for r in history]

    assert strip(a.history) == strip(b.history)
    for key in a.state_dict:
        torch.testing.assert_close(a.state_dict[key], b.state_dict[key], rtol=0, atol=0)
    c = run(tiny, seed=1)
    assert strip(c.history) != strip(a.history)


def test_loss_goes_down_and_best_weights_are_restored(tiny, cpu_threads):
    result = run(tiny, cfg=TrainConfig(epochs=30, batch_size=32, patience=30))
    values = [r["val_neg_elbo"] for r in result.history]
    assert values[-1] < values[0]
    assert result.best["neg_elbo"] == min(values)
    assert result.best_epoch == values.index(min(values)) + 1


def test_early_stopping_stops(tiny, cpu_threads):
    result = run(tiny, cfg=TrainConfig(epochs=200, batch_size=32, patience=2), lr=3e-2)
    assert result.epochs_run < 200


def test_a_training_still_improving_at_the_cap_goes_on_and_is_marked_at_the_ceiling(tiny, cpu_threads):
    # At 4 epochs this model is still improving: it goes on past the cap (patience 30, so only the
    # late patience or the ceiling can stop it), and one still improving at the ceiling is marked.
    late = run(tiny, cfg=TrainConfig(epochs=4, max_epochs=40, batch_size=32, patience=30))
    values = [r["val_neg_elbo"] for r in late.history]
    assert late.epochs_run > 4 and late.status == "complete"
    cfg = TrainConfig(epochs=4, max_epochs=40, batch_size=32, patience=30)
    if late.epochs_run < 40:  # stopped by the late patience: no new best in its last late_patience epochs
        assert late.best_epoch == late.epochs_run - cfg.late_patience and not late.still_improving
    else:
        assert late.still_improving and late.best_epoch > 40 - cfg.late_patience
    assert late.best["neg_elbo"] == min(values)
    capped = run(tiny, cfg=TrainConfig(epochs=4, max_epochs=4, batch_size=32, patience=30))
    assert capped.epochs_run == 4 and capped.still_improving  # best at epoch 4: stopped while improving
    assert capped.best_epoch == 4


def test_a_training_that_stopped_improving_before_the_cap_is_not_marked(tiny, cpu_threads):
    result = run(tiny, cfg=TrainConfig(epochs=200, max_epochs=200, batch_size=32, patience=2), lr=3e-2)
    assert result.epochs_run < 200 and not result.still_improving


def test_max_epochs_below_the_cap_is_one_line():
    with pytest.raises(StudyError, match=r"train.max_epochs = 3 is below epochs = 5"):
        paramfile.build(TrainConfig, {"epochs": 5, "max_epochs": 3}, "params.yaml: search.train")


def test_nan_loss_raises_with_the_epoch(tiny, cpu_threads):
    with pytest.raises(train.NonFiniteLoss, match="non-finite .* at epoch 1"):
        run(tiny, lr=1e30, cfg=TrainConfig(epochs=3, batch_size=32, grad_clip=0))


def test_kl_warmup_ramps_beta_from_zero():
    assert [train.beta_at(e, 2.0, 4) for e in range(6)] == [0.0, 0.5, 1.0, 1.5, 2.0, 2.0]
    assert train.beta_at(0, 2.0, 0) == 2.0


def test_free_bits_floor_each_unit():
    kl = torch.tensor([[0.01, 1.0, 0.0], [0.03, 3.0, 0.0]])
    assert float(train.rate_penalty(kl, 0.0)) == pytest.approx(2.02)
    assert float(train.rate_penalty(kl, 0.5)) == pytest.approx(0.5 + 2.0 + 0.5)


def test_on_epoch_sees_every_epoch_and_can_stop_the_trial(tiny, cpu_threads):
    seen = []

    def stop_at_three(epoch, record):
        seen.append(epoch)
        if epoch == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run(tiny, on_epoch=stop_at_three)
    assert seen == [1, 2, 3]


def test_autoencoder_trains_with_zero_rate(tiny, cpu_threads):
    result = train.train(fresh(variational=False), tiny[0], tiny[1], TrainConfig(epochs=4, batch_size=32),
                         beta=0.0, lr=3e-3, objective="sse", seed=0)
    assert all(r["val_rate"] == 0.0 for r in result.history)


def test_stack_size_is_the_setting_or_the_device_rule():
    spec = models.NetSpec(20, 3, "mlp", "bernoulli", True, (32,), (8,))
    assert train.stack_size(5, spec, torch.device("cpu"), 64) == 5
    assert train.stack_size("auto", spec, torch.device("cpu"), 64) == train.CPU_STACK
    small, big = (train.member_bytes(models.NetSpec(d, 3, "mlp", "bernoulli", True, (32,), (8,)), 64) for d in (20, 784))
    assert 0 < small < big
