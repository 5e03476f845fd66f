import math

import numpy as np
import pytest
import torch

from latentstudy import models, pca
from latentstudy.config import StudyError


def make(latent=3, arch="mlp", variational=True, likelihood="bernoulli", image_shape=None, input_dim=16, seed=0):
    torch.manual_seed(seed)
    spec = models.NetSpec(input_dim, latent, arch, likelihood, variational, (32, 16), (4, 8), image_shape)
    return models.build(spec)


def test_kl_closed_form_matches_monte_carlo():
    torch.manual_seed(0)
    mu, logvar = torch.randn(4, 3), torch.randn(4, 3) * 0.5
    closed = models.kl_per_dim(mu, logvar).sum(1)
    q = torch.distributions.Normal(mu, torch.exp(0.5 * logvar))
    z = q.sample((200_000,))
    p = torch.distributions.Normal(torch.zeros(3), torch.ones(3))
    mc = (q.log_prob(z) - p.log_prob(z)).sum(-1).mean(0)
    torch.testing.assert_close(closed, mc, rtol=0.02, atol=0.01)


def test_gradients_reach_the_encoder_through_the_sample():
    model = make()
    x = torch.rand(8, 16)
    gen = torch.Generator().manual_seed(0)
    terms = models.forward(model, x, gen)
    # Only the distortion: its gradient can reach the encoder only through z = mu + sigma * eps.
    terms.distortion.mean().backward()
    first = model.encoder[0]
    assert first.weight.grad is not None and first.weight.grad.abs().sum() > 0
    mu, logvar = model.encode(x)
    z = models.reparameterise(mu, logvar, torch.Generator().manual_seed(1))
    grads = torch.autograd.grad(z.sum(), [mu, logvar])
    assert grads[0].abs().sum() > 0 and grads[1].abs().sum() > 0


@pytest.mark.parametrize("latent", [1, 16, 40])  # below, equal to and above D = 16
def test_decoder_output_always_has_the_input_dimension(latent):
    model = make(latent=latent)
    x = torch.rand(5, 16)
    assert models.reconstruct(model, x).shape == (5, 16)
    assert model.encode(x)[0].shape == (5, latent)


@pytest.mark.parametrize("shape", [(8, 8), (28, 28), (1, 7, 9), (3, 6, 6)])
def test_conv_models_fit_their_image_shape(shape):
    dim = int(np.prod(shape))
    model = make(latent=5, arch="conv", image_shape=models.chw(list(shape)), input_dim=dim)
    x = torch.rand(4, dim)
    out = model.decode(model.encode(x)[0])
    assert out.shape == (4, dim)


def test_conv_layers_beyond_the_image_size_are_a_clear_error():
    with pytest.raises(StudyError, match="halves to nothing"):
        models.conv_sizes((1, 2, 2), 3)


def test_choose_arch():
    assert models.choose_arch("auto", [8, 8], 2) == "mlp"  # two halvings leave 2 x 2
    assert models.choose_arch("auto", [16, 16], 2) == "conv"
    assert models.choose_arch("auto", [3, 32, 20], 2) == "conv"
    assert models.choose_arch("auto", [3, 32, 12], 2) == "mlp"
    assert models.choose_arch("auto", [8, 8], 1) == "conv"
    assert models.choose_arch("auto", None, 2) == "mlp"
    assert models.choose_arch("conv", [8, 8], 2) == "conv"  # asked for: as asked
    with pytest.raises(StudyError, match="no image shape"):
        models.choose_arch("conv", None, 2)


def test_autoencoder_is_deterministic_and_has_no_rate():
    model = make(variational=False)
    x = torch.rand(6, 16)
    a = models.forward(model, x, torch.Generator().manual_seed(0))
    b = models.forward(model, x, torch.Generator().manual_seed(1))
    torch.testing.assert_close(a.distortion, b.distortion)
    assert a.kl is None and float(a.rate.abs().sum()) == 0.0


def test_bernoulli_distortion_is_summed_binary_cross_entropy():
    model = make()
    x = torch.rand(3, 16)
    logits = torch.randn(3, 16)
    p = torch.sigmoid(logits)
    expected = -(x * torch.log(p) + (1 - x) * torch.log(1 - p)).sum(1)
    torch.testing.assert_close(model.distortion(x, logits), expected, rtol=1e-5, atol=1e-5)


def test_gaussian_distortion_is_the_negative_log_likelihood():
    model = make(likelihood="gaussian")
    with torch.no_grad():
        model.log_sigma.fill_(math.log(0.3))
    x, mean = torch.rand(3, 16), torch.rand(3, 16)
    expected = -torch.distributions.Normal(mean, 0.3).log_prob(x).sum(1)
    torch.testing.assert_close(model.distortion(x, mean), expected, rtol=1e-5, atol=1e-5)


def test_shared_scale_is_the_scalar_formula():
    log_sigma = torch.tensor(-0.7, dtype=torch.float64)
    x, mean = torch.randn(4, 16, dtype=torch.float64), torch.randn(4, 16, dtype=torch.float64)
    old = 0.5 * ((x - mean) ** 2).sum(1) * torch.exp(-2 * log_sigma) + 16 * (log_sigma + 0.5 * math.log(2 * math.pi))
    torch.testing.assert_close(models.distortion("gaussian", x, mean, log_sigma), old, rtol=1e-12, atol=1e-12)


def test_per_feature_scale_is_the_gaussian_nll_summed_over_features():
    model = models.build(models.NetSpec(16, 3, "mlp", "gaussian", True, (32,), scale="per_feature"))
    sigma = torch.linspace(0.1, 3.0, 16)
    with torch.no_grad():
        model.log_sigma.fill_(0.25)
        model.log_sigma_offset.copy_(sigma.log() - 0.25)
    torch.testing.assert_close(model.log_scale(), sigma.log())
    x, mean = torch.randn(5, 16), torch.randn(5, 16)
    expected = -torch.distributions.Normal(mean, sigma).log_prob(x).sum(1)
    torch.testing.assert_close(model.distortion(x, mean), expected, rtol=1e-5, atol=1e-5)
    # As evaluate.vae_terms scores K samples: (K * n, D) rows, the same scales on each.
    torch.testing.assert_close(model.distortion(x.repeat(3, 1), mean.repeat(3, 1)), expected.repeat(3))


@pytest.mark.parametrize("scale", ["shared", "per_feature"])
def test_stacked_scales_broadcast_member_by_member(scale):
    # S = D = 4: a per-feature (S, D) scale must not be read as one scale per member along D.
    S, n, D = 4, 3, 4
    log_sigma = torch.randn(S, *((D,) if scale == "per_feature" else ()), dtype=torch.float64)
    x, out = torch.randn(n, D, dtype=torch.float64), torch.randn(S, n, D, dtype=torch.float64)
    got = models.distortion("gaussian", x, out, log_sigma.view(S, 1, -1))
    for s in range(S):
        sigma = log_sigma[s].exp().expand(D)
        expected = -torch.distributions.Normal(out[s], sigma).log_prob(x).sum(1)
        torch.testing.assert_close(got[s], expected)


def test_a_checkpoint_without_a_scale_loads_as_shared(tmp_path):
    # Checkpoints written before NetSpec.scale existed hold one log sigma.
    model = make(likelihood="gaussian")
    path = tmp_path / "old.pt"
    models.save_checkpoint(path, model, {})
    blob = torch.load(path, weights_only=True)
    del blob["spec"]["scale"]
    torch.save(blob, path)
    again, _ = models.load_checkpoint(path)
    assert again.spec.scale == "shared" and again.log_scale().shape == ()


def test_checkpoint_round_trip(tmp_path):
    model = make(latent=4, arch="conv", image_shape=(1, 8, 8), input_dim=64)
    path = tmp_path / "m.pt"
    models.save_checkpoint(path, model, {"beta": 0.5, "trial": 3})
    again, meta = models.load_checkpoint(path)
    x = torch.rand(2, 64)
    torch.testing.assert_close(models.reconstruct(again, x), models.reconstruct(model.eval(), x))
    assert meta == {"beta": 0.5, "trial": 3} and again.spec == model.spec


def test_missing_checkpoint_is_one_line(tmp_path):
    with pytest.raises(StudyError, match="checkpoint not found"):
        models.load_checkpoint(tmp_path / "absent.pt")


@pytest.mark.parametrize("requested, shape, chosen", [
    ("auto", [3, 16, 16], "gaussian"), ("auto", [4, 8, 8], "gaussian"), ("auto", [28, 28], "bernoulli"),
    ("auto", [1, 28, 28], "bernoulli"), ("auto", None, "bernoulli"), ("bernoulli", [3, 8, 8], "bernoulli"),
    ("gaussian", None, "gaussian"),
])
def test_auto_likelihood_is_gaussian_for_colour_images(requested, shape, chosen):
    from latentstudy.models import choose_likelihood

    got, why = choose_likelihood(requested, shape)
    assert got == chosen and why
    assert ("colour" in why) == (requested == "auto" and chosen == "gaussian")


def test_data_outside_the_unit_interval_is_gaussian_and_never_bernoulli():
    from latentstudy.models import choose_likelihood

    for shape in (None, [8, 8]):
        got, why = choose_likelihood("auto", shape, unit_interval=False)
        assert got == "gaussian" and "standardised per feature" in why
    assert choose_likelihood("gaussian", None, unit_interval=False)[0] == "gaussian"
    with pytest.raises(StudyError, match=r"likelihood = bernoulli but the prepared data is not in \[0, 1\]"):
        choose_likelihood("bernoulli", None, unit_interval=False)


@pytest.mark.parametrize("arch, k", [("mlp", 3), ("mlp", 25), ("conv", 5)])
def test_an_autoencoder_started_at_pca_is_pca_exactly(arch, k):
    # k = 25 > D = 20: the code units past PCA's 20 components start unused, the code is exact.
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 20)) @ rng.normal(size=(20, 20)) * 0.1 + rng.uniform(size=20)
    basis = pca.fit(x)
    spec = models.NetSpec(20, k, arch, "gaussian", False, (16,), (4,), (5, 2, 2) if arch == "conv" else None,
                          pca_path=True)
    model = models.build(spec).double()
    model.load_state_dict(models.start_at_pca(model.state_dict(), spec, basis.mean, basis.components))
    with torch.no_grad():
        x_hat = models.reconstruct(model, torch.as_tensor(x)).numpy()
    np.testing.assert_allclose(x_hat, pca.reconstruct(basis, x, k), atol=1e-9)
    assert models.last_layers(model) == (["encoder.2", "decoder.2.0"] if arch == "mlp" else
                                         ["encoder.head", "decoder.deconvs.0"])


def test_a_pca_path_needs_a_deterministic_gaussian_autoencoder():
    with pytest.raises(ValueError, match="PCA path"):
        models.NetSpec(20, 3, "mlp", "bernoulli", False, pca_path=True)
    with pytest.raises(ValueError, match="PCA path"):
        models.NetSpec(20, 3, "mlp", "gaussian", True, pca_path=True)
