"""The explorer's Python side without a browser: the decoder export and the page's data block."""

from __future__ import annotations

import base64
import json
import re

import numpy as np
import pytest
import torch

from latentstudy.explorer import explorer_html, export_decoder
from latentstudy.models import AutoEncoder, NetSpec, kl_per_dim

# Decoders the page must run: both archs, odd image sizes (output_padding), RGB, non-image data.
DECODERS = {
    "mlp-28x28": dict(arch="mlp", latent_dim=3, image_shape=(1, 28, 28)),
    "conv-28x28": dict(arch="conv", latent_dim=2, image_shape=(1, 28, 28)),
    "conv-8x8": dict(arch="conv", latent_dim=5, image_shape=(1, 8, 8)),
    "conv-12x10-odd": dict(arch="conv", latent_dim=4, image_shape=(1, 12, 10), channels=(4, 8)),
    "conv-28x28-3-layers": dict(arch="conv", latent_dim=3, image_shape=(1, 28, 28), channels=(8, 8, 16)),
    "conv-rgb-8x8": dict(arch="conv", latent_dim=2, image_shape=(3, 8, 8), channels=(8, 16)),
    "mlp-vector-gaussian": dict(arch="mlp", latent_dim=4, likelihood="gaussian", hidden=(32, 16)),
}


def make_model(arch: str, latent_dim: int, image_shape: tuple[int, ...] | None = None,
               likelihood: str = "bernoulli", variational: bool = True, **sizes) -> AutoEncoder:
    torch.manual_seed(0)
    input_dim = int(np.prod(image_shape)) if image_shape else 12
    spec = NetSpec(input_dim, latent_dim, arch, likelihood, variational, image_shape=image_shape, **sizes)
    return AutoEncoder(spec).eval()


def unpack(entry: dict) -> np.ndarray:
    return np.frombuffer(base64.b64decode(entry["data"]), dtype="<f4").reshape(entry["shape"])


def data_block(fragment: str) -> dict:
    match = re.search(r'<script type="application/json" data-lx="data">(.*?)</script>', fragment, re.S)
    assert match, "the fragment has no data block"
    return json.loads(match.group(1))


# --- a NumPy decoder written only from the export: agreeing with PyTorch proves it complete ----


def transposed_conv(x: np.ndarray, w: np.ndarray, b: np.ndarray, layer: dict) -> np.ndarray:
    """Each kernel tap scatters the whole (strided) input into an uncropped output; padding crops it."""
    n, _, h, wd = x.shape
    _, c_out, kh, kw = w.shape
    (sy, sx), (py, px), (oy, ox) = layer["stride"], layer["padding"], layer["output_padding"]
    full = np.zeros((n, c_out, (h - 1) * sy + kh + oy, (wd - 1) * sx + kw + ox))
    for ky in range(kh):
        for kx in range(kw):
            tap = np.einsum("nchw,co->nohw", x, w[:, :, ky, kx])
            full[:, :, ky:ky + (h - 1) * sy + 1:sy, kx:kx + (wd - 1) * sx + 1:sx] += tap
    out_h, out_w = full.shape[2] - 2 * py, full.shape[3] - 2 * px
    return full[:, :, py:py + out_h, px:px + out_w] + b[None, :, None, None]


def reference_decode(exported: dict, z: np.ndarray) -> np.ndarray:
    h = z.astype(np.float64)
    for layer in exported["layers"]:
        if layer["kind"] == "reshape":
            h = h.reshape(len(h), *layer["shape"])
            continue
        w, b = unpack(layer["weight"]).astype(np.float64), unpack(layer["bias"]).astype(np.float64)
        h = h @ w.T + b if layer["kind"] == "linear" else transposed_conv(h, w, b, layer)
        if layer["relu"]:
            h = np.maximum(h, 0)
    h = h.reshape(len(h), -1)
    return 1 / (1 + np.exp(-h)) if exported["likelihood"] == "bernoulli" else h


@pytest.mark.parametrize("name", DECODERS)
def test_export_round_trips_to_the_state_dict(name):
    model = make_model(**DECODERS[name])
    exported = json.loads(json.dumps(export_decoder(model)))
    tensors = {f"{layer['name']}.{part}": unpack(layer[part])
               for layer in exported["layers"] if layer["kind"] != "reshape" for part in ("weight", "bias")}
    state = {key: value for key, value in model.state_dict().items() if key.startswith("decoder.")}
    assert tensors.keys() == state.keys()
    for key, value in state.items():
        np.testing.assert_array_equal(tensors[key], value.numpy(), err_msg=key)
    assert exported["input_dim"] == model.spec.input_dim and exported["latent_dim"] == model.spec.latent_dim


@pytest.mark.parametrize("name", DECODERS)
def test_numpy_forward_of_the_export_matches_pytorch(name):
    model = make_model(**DECODERS[name])
    z = torch.randn(6, model.spec.latent_dim, generator=torch.Generator().manual_seed(1)) * 2
    with torch.no_grad():
        expected = model.mean(model.decode(z)).numpy()
    got = reference_decode(export_decoder(model), z.numpy())
    assert got.shape == (6, model.spec.input_dim)
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)


def test_conv_export_records_output_padding():
    layers = export_decoder(make_model(**DECODERS["conv-12x10-odd"]))["layers"]
    assert [layer["output_padding"] for layer in layers if layer["kind"] == "deconv"] == [[0, 1], [0, 0]]


# --- the fragment -----------------------------------------------------------------------------


def test_fragment_is_self_contained_and_has_no_urls():
    model = make_model(**DECODERS["conv-8x8"])
    x = np.random.default_rng(0).random((300, 64), dtype=np.float32)
    y = np.arange(300) % 4
    fragment = explorer_html(model, x, y, [8, 8], "Explorer <b>&</b>")
    assert fragment.startswith('<section id="explorer">') and fragment.rstrip().endswith("</section>")
    assert fragment.count("<section") == 1
    assert fragment.count("</script>") == 2  # neither the data nor the code ends its script early
    assert "http://" not in fragment and "https://" not in fragment and " src=" not in fragment
    assert "Explorer &lt;b&gt;&amp;&lt;/b&gt;" in fragment
    assert "window.latentExplorer" in fragment
    data = data_block(fragment)
    assert data["image_shape"] == [1, 8, 8]
    assert data["decoder"]["arch"] == "conv"
    assert unpack(data["points"]["mu"]).shape == (300, 5)
    assert data["examples"]["labels"][:4] == [0, 1, 2, 3]  # one start image per class first
    with torch.no_grad():
        mu, _ = model.encode(torch.as_tensor(x[data["examples"]["index"]]))
    np.testing.assert_allclose(unpack(data["examples"]["mu"]), mu.numpy(), atol=1e-6)


def test_fragment_caps_the_map_points_and_handles_vectors_without_labels():
    model = make_model(**DECODERS["mlp-vector-gaussian"])
    x = np.random.default_rng(0).random((2500, 12))
    data = data_block(explorer_html(model, x, None, None, "vectors", seed=3))
    assert data["image_shape"] is None and data["points"]["labels"] is None
    assert unpack(data["points"]["mu"]).shape == (2000, 4)
    assert len(data["examples"]["index"]) == 10 and data["seed"] == 3


def planted_dead_units(variational: bool, dead: list[int]) -> AutoEncoder:
    """A 6-unit model whose code units in `dead` are constant: their encoder rows are zeroed."""
    model = make_model("mlp", 6, (1, 8, 8), variational=variational, hidden=(32, 16))
    last = model.encoder[-1]
    with torch.no_grad():
        last.weight[:6] *= 20 * torch.arange(1, 7).unsqueeze(1)  # live units clearly active, all different
        last.weight[dead] = 0
        last.bias[dead] = 0
    return model


def test_active_units_come_first_ordered_by_kl():
    model = planted_dead_units(True, [1, 4])
    x = np.random.default_rng(0).random((400, 64), dtype=np.float32)
    units = data_block(explorer_html(model, x, None, [8, 8], "dead units"))["units"]
    with torch.no_grad():
        mu, logvar = model.encode(torch.as_tensor(x))
    kl = kl_per_dim(mu, logvar).mean(0).numpy()
    active = (mu.var(0, unbiased=False) > 0.01).tolist()
    assert active == [True, False, True, True, False, True]
    assert units["active"] == active
    np.testing.assert_allclose(units["kl"], kl, rtol=1e-4)
    live = sorted((u for u in range(6) if active[u]), key=lambda u: -kl[u])
    assert units["order"] == live + sorted([1, 4], key=lambda u: -kl[u])


def test_autoencoder_orders_by_code_variance():
    model = planted_dead_units(False, [0, 3])
    x = np.random.default_rng(1).random((400, 64), dtype=np.float32)
    units = data_block(explorer_html(model, x, None, [8, 8], "autoencoder"))["units"]
    with torch.no_grad():
        code, _ = model.encode(torch.as_tensor(x))
    variance = code.var(0, unbiased=False).numpy()
    assert units["kl"] is None
    assert units["active"] == [False, True, True, False, True, True]
    assert units["order"][:4] == sorted([1, 2, 4, 5], key=lambda u: -variance[u])
    assert sorted(units["order"][4:]) == [0, 3]
    np.testing.assert_allclose(units["prior_std"], np.sqrt(variance), rtol=1e-4)
