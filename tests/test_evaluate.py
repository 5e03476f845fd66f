import numpy as np
import pytest
import torch

from latentstudy import evaluate, models, pca, train
from latentstudy.config import TrainConfig


@pytest.fixture(scope="module")
def trained_vae(tmp_path_factory):
    """A small VAE trained on three binary prototypes with 10% of bits flipped; all 4 units active."""
    g = torch.Generator().manual_seed(0)
    centres = (torch.rand(3, 16, generator=g) > 0.5).float()
    labels = torch.randint(0, 3, (400,), generator=g)
    x = (centres[labels] - (torch.rand(400, 16, generator=g) < 0.1).float()).abs()
    torch.set_num_threads(1)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = models.build(models.NetSpec(16, 4, "mlp", "bernoulli", True, (32,), (8,)))
    train.train(model, x[:300], x[300:], TrainConfig(epochs=30, batch_size=50), beta=0.5, lr=5e-3,
                objective="neg_elbo", seed=0)
    path = tmp_path_factory.mktemp("vae") / "k4-vae.pt"
    models.save_checkpoint(path, model, {"beta": 1.0, "lr": 5e-3, "seconds": 1.0, "trial": 0})
    return path, x.numpy(), labels.numpy()


def test_iwae_bound_is_never_looser_than_the_elbo(trained_vae):
    path, x, _ = trained_vae
    model, _ = models.load_checkpoint(path)
    b = evaluate.vae_bounds(model, x[300:], samples=64, seed=0)
    assert b["iwae_nll_nats"] <= b["neg_elbo_mc_nats"]  # Jensen, on the same samples
    assert b["iwae_nll_nats"] <= b["neg_elbo_nats"]
    assert b["neg_elbo_nats"] == pytest.approx(b["distortion_nats"] + b["rate_nats"])
    one = evaluate.vae_bounds(model, x[300:], samples=1, seed=0)
    assert one["iwae_nll_nats"] == pytest.approx(one["neg_elbo_mc_nats"], rel=1e-6)
    assert b["iwae_nll_nats"] < one["iwae_nll_nats"]  # tightens with K
    assert len(b["kl_per_dim_nats"]) == 4 and sum(b["kl_per_dim_nats"]) == pytest.approx(b["rate_nats"], rel=1e-5)


def test_active_units_counts_planted_dead_units(trained_vae, tmp_path):
    path, x, _ = trained_vae
    model, meta = models.load_checkpoint(path)
    assert evaluate.evaluate_model(path, x[300:], None, samples=8, seed=0)["active_units"] == 4
    head = model.encoder[-1]  # rows 0..k-1 give mu, k..2k-1 give log sigma^2
    with torch.no_grad():
        for unit in (1, 3):
            head.weight[unit].zero_()
            head.bias[unit] = 0.0
            head.weight[4 + unit].zero_()  # sigma = 1: exactly the prior
            head.bias[4 + unit] = 0.0
    dead = tmp_path / "dead.pt"
    models.save_checkpoint(dead, model, meta)
    out = evaluate.evaluate_model(dead, x[300:], None, samples=8, seed=0)
    assert out["active_units"] == 2 and out["collapsed_units"] == 2
    assert out["kl_per_dim_nats"][1] == pytest.approx(0.0, abs=1e-6)
    assert out["kl_per_dim_nats"][3] == pytest.approx(0.0, abs=1e-6)
    assert evaluate.active_units(np.array([[0.0, 1.0], [0.0, -1.0], [0.0, 0.5]]))[0] == 1


def test_linear_probe_reads_labels_from_the_code(trained_vae):
    path, x, labels = trained_vae
    probe = (x[:300], labels[:300], labels[300:])
    out = evaluate.evaluate_model(path, x[300:], probe, samples=4, seed=0)
    assert out["probe_accuracy"] > 0.9  # three well separated clusters
    basis = pca.fit(x[:300])
    assert evaluate.evaluate_pca(basis, x[300:], 2, probe, 0)["probe_accuracy"] > 0.9


def test_run_reports_missing_models_as_missing(trained_vae, tmp_path):
    path, x, labels = trained_vae
    (tmp_path / "k4-vae.pt").write_bytes(path.read_bytes())
    result = evaluate.run([2, 4], tmp_path, pca.fit(x[:300]), x[:300], labels[:300], x[300:], labels[300:],
                          samples=4, probe_max_train=100, seed=0, log=lambda line: None)
    rows = {r["latent_dim"]: r for r in result["rows"]}
    assert rows[2]["vae"] is None and rows[2]["ae"] is None and rows[2]["pca"]["sse_per_image"] > 0
    assert rows[4]["vae"]["iwae_nll_nats"] <= rows[4]["vae"]["neg_elbo_nats"]
    assert rows[4]["compression_ratio"] == 4.0 and result["has_labels"]
