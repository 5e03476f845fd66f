import numpy as np
import pytest
import torch

from latentstudy import evaluate, models, pca, train
from latentstudy.config import EvaluateConfig, TrainConfig
from latentstudy.contracts import KeptModel, SearchedSize
from latentstudy.evaluation import PerExample


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


def test_per_example_values_average_to_the_bounds(trained_vae):
    path, x, _ = trained_vae
    model, _ = models.load_checkpoint(path)
    values, per_unit = evaluate.per_example(model, x[300:], samples=16, seed=0)
    means = evaluate.vae_bounds(model, x[300:], samples=16, seed=0)
    assert {k: v.shape for k, v in values.items()} == {k: (100,) for k in (
        "sse_per_image", "bce_nats", "distortion_nats", "rate_nats", "iwae_nll_nats", "neg_elbo_mc_nats")}
    for key in ("distortion_nats", "rate_nats", "iwae_nll_nats"):
        assert values[key].mean() == pytest.approx(means[key])
    assert (values["iwae_nll_nats"] <= values["neg_elbo_mc_nats"] + 1e-9).all()  # per example, same samples
    assert per_unit.tolist() == pytest.approx(means["kl_per_dim_nats"])


def test_active_units_counts_planted_dead_units(trained_vae, tmp_path):
    path, x, _ = trained_vae
    model, meta = models.load_checkpoint(path)
    assert evaluate.active_units(evaluate.latents(model, x[300:]))[0] == 4
    head = model.encoder[-1]  # rows 0..k-1 give mu, k..2k-1 give log sigma^2
    with torch.no_grad():
        for unit in (1, 3):
            head.weight[unit].zero_()
            head.bias[unit] = 0.0
            head.weight[4 + unit].zero_()  # sigma = 1: exactly the prior
            head.bias[4 + unit] = 0.0
    assert evaluate.active_units(evaluate.latents(model, x[300:]))[0] == 2
    _, kl = evaluate.per_example(model, x[300:], samples=8, seed=0)
    assert kl[1] == pytest.approx(0.0, abs=1e-6) and kl[3] == pytest.approx(0.0, abs=1e-6)
    assert evaluate.active_units(np.array([[0.0, 1.0], [0.0, -1.0], [0.0, 0.5]]))[0] == 1


def test_linear_probe_reads_labels_from_the_code(trained_vae):
    path, x, labels = trained_vae
    model, _ = models.load_checkpoint(path)
    correct = evaluate.probe_correct(evaluate.latents(model, x[:300]), labels[:300], evaluate.latents(model, x[300:]),
                                     labels[300:], 0)
    assert correct.shape == (100,) and correct.mean() > 0.9  # three well separated clusters
    basis = pca.fit(x[:300])
    row, values = evaluate.evaluate_pca(basis, x[300:], 2, (x[:300], labels[:300], labels[300:]), 0)
    row = row.to_json()  # as evaluation.json holds it
    assert row["probe_accuracy"] > 0.9 and values["probe_correct"].mean() == row["probe_accuracy"]
    assert values["sse_per_image"].mean() == pytest.approx(row["sse_per_image"])


def test_the_nll_flag_compares_differences_in_nats_even_when_nlls_are_negative():
    # A Gaussian NLL can be negative: a ratio of signed values would flag a model 0.15 nats per
    # dimension worse than the trivial one (old rule: 6.5 > 2 + 2 x 2) and pass one 5 nats worse.
    base = {"sse_per_image": 30.0, "gaussian_nll_nats": 2.0, "input_dim": 30}
    sane = {"sse_per_image": 20.0}
    assert evaluate.flag({**sane, "iwae_nll_nats": 6.5}, base, "gaussian") is None
    assert evaluate.flag({**sane, "iwae_nll_nats": -23.55}, base, "gaussian") is None  # better than trivial
    low = {**base, "gaussian_nll_nats": -100.0}
    why = evaluate.flag({**sane, "iwae_nll_nats": 50.0}, low, "gaussian")
    assert why == ("far worse than trivial: NLL bound 50 nats, 150 nats (5 per input dimension, over 1) above the "
                   "trivial gaussian model's -100 (independent inputs around the training mean)")
    assert evaluate.flag({**sane, "iwae_nll_nats": -71.0}, low, "gaussian") is None  # 29 nats: under 1 per dim

def test_a_model_far_worse_than_the_mean_is_flagged(trained_vae, tmp_path):
    path, x, _ = trained_vae
    model, meta = models.load_checkpoint(path)
    base = evaluate.baseline(x[:300].mean(axis=0), x[300:])
    sane = {"sse_per_image": 1.0, "iwae_nll_nats": 5.0}
    assert evaluate.flag(sane, base, "bernoulli") is None
    assert evaluate.flag({**sane, "sse_per_image": 2.4e24}, base, "bernoulli", 2.27).startswith(
        "far worse than trivial: squared error 2.4e+24 per example, over 3x that of predicting the training mean "
        "(PCA at this size 2.27, mean ")
    assert "NLL bound 5.3e+10 nats" in evaluate.flag({**sane, "iwae_nll_nats": 5.3e10}, base, "bernoulli")
    assert evaluate.flag({**sane, "iwae_nll_nats": float("nan")}, base, "bernoulli") == "non-finite iwae_nll_nats"
    with torch.no_grad():  # a decoder blown up like a diverged run's
        for param in model.decoder.parameters():
            param.mul_(1e4)
    dead = tmp_path / "k4-vae.pt"
    models.save_checkpoint(dead, model, meta)
    entry = KeptModel(4, "vae", "k4-vae.pt", rank=0, replicate=0, objective=1.0)
    row, _, flags = evaluate.evaluate_size([entry], tmp_path, evaluate.Evaluator(x[300:], base, 4, 0), 1.0)
    row = row.to_json()  # as evaluation.json holds it
    assert flags[0] and flags[0].startswith("far worse than trivial") and row["flag"] == flags[0]


def test_run_keeps_every_model_per_example_and_averages_the_sane_replicates(trained_vae, tmp_path):
    path, x, labels = trained_vae
    for name in ("k4-vae.pt", "k4-vae-r1.pt", "k4-vae-t1.pt"):
        (tmp_path / name).write_bytes(path.read_bytes())
    sizes = [SearchedSize(2, "added", "because"), SearchedSize(4, "grid", "")]
    # Listed out of order on purpose: the pick, its replicate, then the size's other trial.
    kept = [KeptModel(4, "vae", "k4-vae-t1.pt", rank=1, replicate=0, objective=30.0),
            KeptModel(4, "vae", "k4-vae-r1.pt", rank=0, replicate=1, objective=29.5),
            KeptModel(4, "vae", "k4-vae.pt", rank=0, replicate=0, objective=29.0)]
    basis, cfg = pca.fit(x[:300]), EvaluateConfig(iwae_samples=4, probe_max_train=100, seed=0)
    test = evaluate.on_split(basis, x[:300], labels[:300], x[300:], labels[300:], cfg)
    evaluation, per_example = evaluate.run(sizes, kept, tmp_path, basis, test, x[300:], log=lambda line: None)
    result, arrays = evaluation.to_json(), per_example.arrays()  # as evaluation.json and per_example.npz hold them
    rows = {r["latent_dim"]: r for r in result["rows"]}
    assert rows[2]["vae"] is None and rows[2]["ae"] is None and rows[2]["pca"]["sse_per_image"] > 0
    assert rows[2]["code"]["code"] == "pca" and "ae_val_sse_per_image" not in rows[2]["code"]  # no autoencoder
    assert rows[2]["phase"] == "added" and rows[2]["reason"] == "because"
    vae = rows[4]["vae"]
    assert vae["iwae_nll_nats"] <= vae["neg_elbo_nats"] and len(vae["models"]) == 2 and vae["n_sane"] == 2
    assert [(m["replicate"], m["objective"]) for m in vae["models"]] == [(0, 29.0), (1, 29.5)]
    assert [(m["rank"], m["objective"]) for m in vae["trials"]] == [(1, 30.0)]
    assert rows[4]["compression_ratio"] == 4.0 and result["has_labels"]
    assert arrays["vae_iwae_nll_nats"].shape == (3, 100) and arrays["vae_replicate"].tolist() == [0, 1, 0]
    assert arrays["vae_rank"].tolist() == [0, 0, 1]
    assert arrays["vae_probe_correct"].shape == (3, 100) and arrays["pca_latent_dim"].tolist() == [2, 4]
    assert vae["iwae_nll_nats"] == pytest.approx(arrays["vae_iwae_nll_nats"].mean(), rel=1e-5)
    per_example.save(tmp_path / "out" / "per_example.npz")
    back = PerExample.load(tmp_path / "out" / "per_example.npz").arrays()
    assert set(back) == set(arrays) and np.array_equal(back["vae_flagged"], arrays["vae_flagged"])


def test_the_better_code_of_a_size_is_chosen_on_validation_and_a_losing_autoencoder_is_undertrained():
    rng = np.random.default_rng(0)
    pca_sse = rng.gamma(4.0, 0.5, size=500)
    worse = np.stack([pca_sse + 0.3 + rng.normal(0, 0.1, 500) for _ in range(3)])  # pick and two replicates
    better = np.stack([0.5 * pca_sse + rng.normal(0, 0.1, 500) for _ in range(3)])
    lost = evaluate.code_choice(worse, pca_sse, pca_exact=False).to_json()
    assert lost["code"] == "pca" and lost["undertrained"] and lost["diff_val_sse_per_image"] > lost["diff_se"] > 0
    # k >= PCA's components: no AE can match
    exact = evaluate.code_choice(worse, np.zeros(500), pca_exact=True).to_json()
    assert exact["code"] == "pca" and not exact["undertrained"]
    won = evaluate.code_choice(better, pca_sse, pca_exact=False).to_json()
    assert won["code"] == "ae" and not won["undertrained"]
    assert won["ae_val_sse_per_image"] == pytest.approx(better.mean())
    # Within one SE of the paired difference, whichever wins: the autoencoder is not undertrained.
    close = evaluate.code_choice(pca_sse[None] + rng.normal(0.001, 0.5, (1, 500)), pca_sse, pca_exact=False).to_json()
    assert not close["undertrained"] and close["diff_val_sse_per_image"] < close["diff_se"]
