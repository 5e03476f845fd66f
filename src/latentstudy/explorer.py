"""The latent explorer: the trained decoder, exported as JSON, runs live in the report page.

The page turns a latent z into an image with plain JavaScript (explorer.js), so the report needs
no server, no CDN and no build step, and it still works offline from file://. Everything the page
needs besides the decoder (codes of the test set, per-unit KL, start images) is computed here once.
"""

from __future__ import annotations

import base64
import html
import json
from importlib.resources import files

import numpy as np
import torch
from torch import nn

from latentstudy.evaluate import ACTIVE_THRESHOLD, unit_variance
from latentstudy.models import AutoEncoder, ConvDecoder, chw, kl_per_dim

MAX_POINTS = 2000  # dots on the latent map: enough to show its shape, small enough for the page
N_EXAMPLES = 10  # thumbnails to start from and to interpolate between
ENCODE_CHUNK = 1000  # bounds memory when encoding a large test set


# --- the decoder as JSON ----------------------------------------------------------------------


def _array(a: np.ndarray) -> dict:
    # '<f4' pins the byte order, so the page can read the bytes little-endian on any machine.
    raw = np.ascontiguousarray(a, dtype="<f4")
    return {"shape": list(raw.shape), "data": base64.b64encode(raw.tobytes()).decode("ascii")}


def _tensor(t: torch.Tensor) -> dict:
    return _array(t.detach().cpu().numpy())


def _linear(name: str, layer: nn.Linear, relu: bool) -> dict:
    # name is the module's path in the model, so a test can match the export to the state_dict.
    return {"kind": "linear", "name": name, "weight": _tensor(layer.weight), "bias": _tensor(layer.bias),
            "relu": relu}


def _mlp_layers(decoder: nn.Module) -> list[dict]:
    # The MLP decoder nests Sequentials; named_modules walks their leaves in forward order, so a
    # Linear is followed by a ReLU exactly when the next leaf is one.
    leaves = [(name, m) for name, m in decoder.named_modules() if isinstance(m, (nn.Linear, nn.ReLU))]
    return [_linear(f"decoder.{name}", m, i + 1 < len(leaves) and isinstance(leaves[i + 1][1], nn.ReLU))
            for i, (name, m) in enumerate(leaves) if isinstance(m, nn.Linear)]


def _conv_layers(decoder: ConvDecoder) -> list[dict]:
    # ConvDecoder applies its ReLUs functionally, so they are not modules: spell its forward out.
    layers = [_linear("decoder.head", decoder.head, True), {"kind": "reshape", "shape": list(decoder.start)}]
    last = len(decoder.deconvs) - 1
    for i, d in enumerate(decoder.deconvs):
        layers.append({"kind": "deconv", "name": f"decoder.deconvs.{i}", "weight": _tensor(d.weight),
                       "bias": _tensor(d.bias), "stride": list(d.stride), "padding": list(d.padding),
                       "output_padding": list(d.output_padding), "relu": i < last})
    return layers


def export_decoder(model: AutoEncoder) -> dict:
    """The decoder as JSON: layers in forward order, float32 weights in base64, and how to read its output.

    Bernoulli outputs are logits (the page applies a sigmoid); Gaussian outputs are the means, which
    the page clips to [0, 1] only for display (vectors: to the examples' range, for standardised data).
    """
    spec = model.spec
    layers = _conv_layers(model.decoder) if spec.arch == "conv" else _mlp_layers(model.decoder)
    shape = chw(spec.image_shape)
    return {"arch": spec.arch, "likelihood": spec.likelihood, "input_dim": spec.input_dim,
            "latent_dim": spec.latent_dim, "image_shape": list(shape) if shape else None, "layers": layers}


# --- what the page shows about the latent space -----------------------------------------------


@torch.no_grad()
def _codes(model: AutoEncoder, x: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """mu(x) for every row of x, and each unit's KL averaged over x (None for an autoencoder)."""
    device = next(model.parameters()).device
    mus, kl_sums = [], []
    for start in range(0, len(x), ENCODE_CHUNK):
        mu, logvar = model.encode(torch.as_tensor(x[start:start + ENCODE_CHUNK], dtype=torch.float32, device=device))
        mus.append(mu.cpu())
        if logvar is not None:
            kl_sums.append(kl_per_dim(mu, logvar).double().sum(0).cpu())
    kl = (torch.stack(kl_sums).sum(0) / len(x)).numpy() if kl_sums else None
    return torch.cat(mus).numpy(), kl


def _units(mu: np.ndarray, kl: np.ndarray | None) -> dict:
    """Per-unit facts for the sliders: display order, activity, slider range and sampling prior."""
    # The table's definition, so the page counts the same active units as the report.
    variance = unit_variance(mu.astype(np.float64))
    active = variance > ACTIVE_THRESHOLD
    # Active units first, most informative first: by KL for a VAE; an autoencoder has no KL, so by
    # how much its code varies. lexsort is stable, so ties keep the unit order.
    order = np.lexsort((-(kl if kl is not None else variance), ~active))
    lo, hi = mu.min(axis=0).astype(np.float64), mu.max(axis=0).astype(np.float64)
    pad = np.where(hi > lo, 0.1 * (hi - lo), 1.0)
    lo, hi = lo - pad, hi + pad
    if kl is not None:  # samples from the prior land within +-3; the sliders must reach them
        lo, hi = np.minimum(lo, -3.0), np.maximum(hi, 3.0)
        mean, std = np.zeros(len(variance)), np.ones(len(variance))
    else:  # an autoencoder has no prior: sample from a Gaussian fitted to its codes instead
        mean, std = mu.mean(axis=0), mu.std(axis=0)
    return {"order": order.tolist(), "active": active.tolist(), "kl": None if kl is None else kl.tolist(),
            "variance": variance.tolist(), "lo": lo.tolist(), "hi": hi.tolist(),
            "prior_mean": mean.tolist(), "prior_std": std.tolist()}


def _pick_examples(n: int, y: np.ndarray | None, rng: np.random.Generator) -> np.ndarray:
    """Test rows for the thumbnails: one per class first (in class order), so the start points differ."""
    perm = rng.permutation(n)
    if y is None:
        return perm[:N_EXAMPLES]
    _, first = np.unique(y[perm], return_index=True)
    firsts = perm[first][:N_EXAMPLES]
    return np.concatenate([firsts, perm[~np.isin(perm, firsts)]])[:N_EXAMPLES]


def _labels(y: np.ndarray | None, rows: np.ndarray) -> list[int] | None:
    return None if y is None else [int(v) for v in y[rows]]


def _summary(model: AutoEncoder, units: dict, n: int) -> str:
    spec = model.spec
    kind = "VAE" if spec.variational else "Autoencoder"
    return (f"{kind} with k = {spec.latent_dim} ({spec.arch} decoder, {spec.likelihood} likelihood): "
            f"{sum(units['active'])} of {spec.latent_dim} latent units active "
            f"(variance of mu(x) over {n} test examples &gt; {ACTIVE_THRESHOLD}).")


def explorer_html(model: AutoEncoder, x_test: np.ndarray, y_test: np.ndarray | None,
                  image_shape: list[int] | None, title: str, seed: int = 0) -> str:
    """One self-contained <section id="explorer"> with the decoder and the test set's codes inline.

    At most one explorer per page. seed picks the map's dots, the thumbnails and the page's
    sampling sequence, so the same inputs give the same page.
    """
    mu, kl = _codes(model, x_test)
    units = _units(mu, kl)
    rng = np.random.default_rng(seed)
    points = np.sort(rng.choice(len(mu), size=min(len(mu), MAX_POINTS), replace=False))
    examples = _pick_examples(len(mu), y_test, rng)
    shape = chw(image_shape)
    data = {
        "decoder": export_decoder(model), "image_shape": list(shape) if shape else None,
        "variational": model.spec.variational, "seed": seed, "units": units,
        "points": {"mu": _array(mu[points]), "labels": _labels(y_test, points)},
        "examples": {"index": examples.tolist(), "x": _array(x_test[examples]), "mu": _array(mu[examples]),
                     "labels": _labels(y_test, examples)},
    }
    # "</" inside a script element would end it early; "<\/" is the same JSON string.
    payload = json.dumps(data, separators=(",", ":")).replace("</", "<\\/")
    script = files("latentstudy").joinpath("explorer.js").read_text(encoding="utf-8")
    return _skeleton(html.escape(title), _summary(model, units, len(mu)), payload, script)


# --- the page fragment ------------------------------------------------------------------------

# Every rule is scoped to #explorer so the fragment neither leaks into nor depends on the report's CSS.
_STYLE = """
#explorer { font: 14px/1.4 system-ui, -apple-system, "Segoe UI", sans-serif; color: #222; }
#explorer [hidden] { display: none !important; }
#explorer h2 { font-size: 1.3em; margin: 0 0 0.2em; }
#explorer h3 { font-size: 1.05em; margin: 0 0 0.3em; }
#explorer h4 { font-size: 0.9em; margin: 0.8em 0 0.3em; color: #444; }
#explorer p { margin: 0.2em 0 0.8em; color: #555; }
#explorer .lx-cards { display: flex; flex-wrap: wrap; gap: 16px; align-items: flex-start; }
#explorer .lx-card { border: 1px solid #ddd; border-radius: 8px; padding: 12px 16px; background: #fafafa; }
#explorer .lx-card > p { max-width: 560px; font-size: 13px; }
#explorer .lx-row { display: flex; flex-wrap: wrap; gap: 16px; align-items: flex-start; }
#explorer figure { margin: 0; }
#explorer figcaption { font-size: 12px; color: #555; margin-top: 4px; max-width: 330px; }
#explorer canvas { display: block; background: #fff; border: 1px solid #ccc; }
#explorer .lx-px { image-rendering: pixelated; }
#explorer .lx-map { cursor: crosshair; }
#explorer .lx-key { display: inline-block; margin-right: 8px; white-space: nowrap; }
#explorer .lx-key i { display: inline-block; width: 9px; height: 9px; border-radius: 50%; margin-right: 3px; }
#explorer .lx-time { display: block; font-size: 11px; color: #888; }
#explorer .lx-controls { display: flex; flex-wrap: wrap; gap: 12px; align-items: center; margin: 10px 0 6px; font-size: 13px; }
#explorer button, #explorer select { font: inherit; }
#explorer .lx-sliders { max-height: 230px; overflow-y: auto; max-width: 560px; }
#explorer .lx-slider { display: grid; grid-template-columns: 3em 7.5em 1fr 3.5em; gap: 6px; align-items: center; font-size: 12px; }
#explorer .lx-slider.lx-dead { color: #999; }
#explorer .lx-slider output { text-align: right; font-variant-numeric: tabular-nums; }
#explorer .lx-thumbs { display: flex; flex-wrap: wrap; gap: 4px; }
#explorer .lx-thumb { padding: 1px; border: 2px solid transparent; border-radius: 4px; background: none; cursor: pointer; }
#explorer .lx-thumb.lx-on { border-color: #1f77b4; }
#explorer .lx-t { display: flex; gap: 8px; align-items: center; margin: 10px 0; font-size: 13px; }
#explorer .lx-t input { flex: 1; }
#explorer .lx-strip { display: flex; gap: 3px; }
"""


def _skeleton(title: str, summary: str, payload: str, script: str) -> str:
    """The fixed markup; explorer.js fills in the parts that depend on the model (sliders, thumbnails)."""
    return f"""<section id="explorer">
<style>{_STYLE}</style>
<h2>{title}</h2>
<p>{summary}</p>
<div class="lx-cards">
<div class="lx-card">
<h3>Roam the latent space</h3>
<p>Hover over the map to decode that z live, click to keep it. The sliders move one latent unit each,
most informative first; the thumbnails start you at a test image's mu(x).</p>
<div class="lx-row">
<figure data-lx="map-figure"><canvas class="lx-map" data-lx="map" width="320" height="320"></canvas>
<figcaption data-lx="legend"></figcaption></figure>
<figure><canvas data-lx="image"></canvas>
<figcaption>decoded E[x | z]<span class="lx-time" data-lx="time"></span></figcaption></figure>
</div>
<div class="lx-controls"><button type="button" data-lx="sample"></button>
<label><input type="checkbox" data-lx="inactive"> show inactive units<span data-lx="inactive-count"></span></label></div>
<div class="lx-sliders" data-lx="sliders"></div>
<h4>Start from a test example</h4>
<div class="lx-thumbs" data-lx="thumbs"></div>
</div>
<div class="lx-card">
<h3>Interpolate</h3>
<p>Walk the straight line between two test images' mu(x); the ends decode their reconstructions.</p>
<div class="lx-controls"><label>from <select data-lx="from"></select></label>
<label>to <select data-lx="to"></select></label></div>
<div class="lx-row">
<figure><canvas data-lx="from-image"></canvas><figcaption>from: input x</figcaption></figure>
<figure><canvas data-lx="interp-image"></canvas><figcaption>decoded at t</figcaption></figure>
<figure><canvas data-lx="to-image"></canvas><figcaption>to: input x</figcaption></figure>
</div>
<label class="lx-t">t <input type="range" data-lx="t" min="0" max="50" value="0"><output data-lx="t-value"></output></label>
<div class="lx-strip" data-lx="strip"></div>
</div>
</div>
<script type="application/json" data-lx="data">{payload}</script>
<script>{script}</script>
</section>
"""
