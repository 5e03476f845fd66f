import math

import numpy as np
import pytest
import torch

from latentstudy import models
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
