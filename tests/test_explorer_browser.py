"""The explorer in a real browser: Debian's headless Chromium driven through Selenium.

The page's JavaScript decoder must agree with PyTorch, and the map, sliders, interpolation and
sampling must respond the way a reader drives them. One browser serves the whole module.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from browser import chromium
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import Select

from latentstudy.explorer import explorer_html
from latentstudy.models import AutoEncoder, NetSpec, forward, kl_per_dim

pytestmark = pytest.mark.browser

SCREENSHOT = Path(__file__).resolve().parents[1] / "reports" / "explorer.png"


def make_model(arch: str, latent_dim: int, image_shape: tuple[int, ...] | None, **options) -> AutoEncoder:
    torch.manual_seed(0)
    input_dim = int(np.prod(image_shape)) if image_shape else 12
    spec = NetSpec(input_dim, latent_dim, arch, options.pop("likelihood", "bernoulli"),
                   options.pop("variational", True), image_shape=image_shape, **options)
    return AutoEncoder(spec).eval()


def torch_decode(model: AutoEncoder, z) -> np.ndarray:
    with torch.no_grad():
        return model.mean(model.decode(torch.as_tensor(np.asarray(z, dtype=np.float32)))).numpy()


def torch_mu(model: AutoEncoder, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model.encode(torch.as_tensor(x, dtype=torch.float32))[0].numpy()


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    yield from chromium(tmp_path_factory.mktemp("chromium-profile"), "1400,1000",
                        {"goog:loggingPrefs": {"browser": "SEVERE"}})


@pytest.fixture(scope="module")
def open_explorer(browser, tmp_path_factory):
    """Writes a minimal page around the fragment, opens it from file:// and checks the script ran."""
    folder = tmp_path_factory.mktemp("pages")

    def open_page(model: AutoEncoder, x: np.ndarray, y: np.ndarray | None, image_shape: list[int] | None,
                  title: str = "Latent explorer"):
        page = folder / f"page{len(list(folder.iterdir()))}.html"
        page.write_text("<!doctype html><html><body>" + explorer_html(model, x, y, image_shape, title)
                        + "</body></html>", encoding="utf-8")
        browser.get(page.as_uri())
        errors = browser.get_log("browser")
        assert not errors, errors
        assert browser.execute_script("return typeof window.latentExplorer") == "object"
        return browser

    return open_page


def state(browser) -> dict:
    return browser.execute_script("return window.latentExplorer.state()")


@pytest.fixture(scope="module")
def digits_vae() -> tuple[AutoEncoder, np.ndarray, np.ndarray]:
    """A 2-D VAE on scikit-learn's 8x8 digits, trained a few hundred steps: a map worth looking at."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x, y = (digits.data / 16).astype(np.float32), digits.target
    model = make_model("mlp", 2, (1, 8, 8), hidden=(64, 32))
    gen = torch.Generator().manual_seed(0)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    xt = torch.as_tensor(x)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # batches this small only pay for thread hand-offs, badly so on a busy machine
    try:
        model.train()
        for _ in range(600):
            terms = forward(model, xt[torch.randint(len(xt), (128,), generator=gen)], gen)
            loss = (terms.distortion + terms.rate).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
    finally:
        torch.set_num_threads(threads)
    return model.eval(), x, y


def random_inputs(model: AutoEncoder, n: int = 60) -> np.ndarray:
    return np.random.default_rng(0).random((n, model.spec.input_dim), dtype=np.float32)


# --- 1. the JavaScript decoder is PyTorch's -----------------------------------------------------

PARITY = {
    "mlp-28x28": dict(arch="mlp", latent_dim=3, image_shape=(1, 28, 28)),
    "conv-28x28": dict(arch="conv", latent_dim=2, image_shape=(1, 28, 28)),
    "conv-8x8": dict(arch="conv", latent_dim=5, image_shape=(1, 8, 8)),
    "conv-12x10-output-padding": dict(arch="conv", latent_dim=4, image_shape=(1, 12, 10), channels=(4, 8)),
    "mlp-vector-gaussian": dict(arch="mlp", latent_dim=4, image_shape=None, likelihood="gaussian", hidden=(32, 16)),
    "conv-rgb-16x16-gaussian": dict(arch="conv", latent_dim=3, image_shape=(3, 16, 16), likelihood="gaussian",
                                    channels=(8, 16)),
    "conv-rgba-10x12": dict(arch="conv", latent_dim=2, image_shape=(4, 10, 12), channels=(6, 8)),
}


@pytest.mark.parametrize("name", PARITY)
def test_js_decoder_matches_pytorch(open_explorer, name):
    model = make_model(**PARITY[name])
    image_shape = list(model.spec.image_shape) if model.spec.image_shape else None
    browser = open_explorer(model, random_inputs(model), None, image_shape)
    zs = (torch.randn(5, model.spec.latent_dim, generator=torch.Generator().manual_seed(2)) * 2).tolist()
    got = browser.execute_script("return arguments[0].map((z) => window.latentExplorer.decode(z))", zs)
    np.testing.assert_allclose(np.array(got), torch_decode(model, zs), atol=1e-4, rtol=0)
    np.testing.assert_allclose(state(browser)["output"], torch_decode(model, [state(browser)["z"]])[0], atol=1e-4)


@pytest.mark.parametrize("name", ["conv-rgb-16x16-gaussian", "conv-rgba-10x12"])
def test_colour_images_are_drawn_in_colour(open_explorer, name):
    """The canvas shows what the figures show: RGB as it is, RGBA over white, both clipped to [0, 1]."""
    from latentstudy.figures import as_images

    model = make_model(**PARITY[name])
    browser = open_explorer(model, random_inputs(model), None, list(model.spec.image_shape))
    c, h, w = model.spec.image_shape
    pixels = browser.execute_script(
        "const canvas = document.querySelector('#explorer [data-lx=\"image\"]');"
        "return Array.from(canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data);")
    shown = np.array(pixels).reshape(h, w, 4)
    expected = 255 * as_images(np.clip(torch_decode(model, [state(browser)["z"]]), 0, 1), [c, h, w])[0]
    assert np.abs(shown[..., :3] - expected).max() <= 1  # ImageData rounds to whole levels
    assert (shown[..., 3] == 255).all()
    assert np.abs(shown[..., 0] - shown[..., 1]).max() > 1  # colour, not grey


@pytest.mark.parametrize("arch", ["mlp", "conv"])
def test_decode_time_in_the_page(open_explorer, arch):
    model = make_model(arch, 10, (1, 28, 28))  # the default sizes: MLP 256/128, conv channels 32/64
    browser = open_explorer(model, random_inputs(model), None, [28, 28])
    ms = browser.execute_script("""
        const z = Array.from({length: 10}, (_, i) => Math.sin(i));
        for (let i = 0; i < 20; i++) window.latentExplorer.decode(z);
        const start = performance.now();
        for (let i = 0; i < 200; i++) window.latentExplorer.decode(z);
        return (performance.now() - start) / 200;""")
    print(f"\n{arch} decoder, 28x28, k=10: {ms:.3f} ms per image in the page "
          f"(last UI decode {state(browser)['decodeMs']:.2f} ms)")


# --- 2. the 2-D map -----------------------------------------------------------------------------


def test_moving_on_the_map_decodes_there(open_explorer, digits_vae):
    model, x, y = digits_vae
    browser = open_explorer(model, x, y, [8, 8])
    canvas = browser.find_element(By.CSS_SELECTOR, '#explorer [data-lx="map"]')
    ActionChains(browser).move_to_element_with_offset(canvas, -90, -70).perform()
    first = state(browser)
    ActionChains(browser).move_to_element_with_offset(canvas, 100, 60).click().perform()
    second = state(browser)
    ax, ay = first["mapUnits"]
    assert first["z"][ax] < second["z"][ax] and first["z"][ay] > second["z"][ay]  # x grows right, y up
    assert np.abs(np.subtract(first["output"], second["output"])).max() > 0.05
    np.testing.assert_allclose(second["output"], torch_decode(model, [second["z"]])[0], atol=1e-4)
    # The click kept that point: leaving the map does not undo it.
    ActionChains(browser).move_to_element(browser.find_element(By.CSS_SELECTOR, "#explorer h2")).perform()
    assert state(browser)["z"] == second["z"]
    browser.execute_script("window.latentExplorer.setMapPoint(1.5, -0.5)")
    assert (state(browser)["z"][ax], state(browser)["z"][ay]) == (1.5, -0.5)


# --- 3. interpolation ---------------------------------------------------------------------------


def test_interpolation_ends_are_the_two_reconstructions(open_explorer, digits_vae):
    model, x, y = digits_vae
    browser = open_explorer(model, x, y, [8, 8])
    Select(browser.find_element(By.CSS_SELECTOR, '#explorer [data-lx="from"]')).select_by_index(2)
    Select(browser.find_element(By.CSS_SELECTOR, '#explorer [data-lx="to"]')).select_by_index(7)
    slider = browser.find_element(By.CSS_SELECTOR, '#explorer [data-lx="t"]')
    rows = state(browser)["examples"]
    recon = torch_decode(model, torch_mu(model, x[[rows[2], rows[7]]]))
    slider.send_keys(Keys.END)
    end = state(browser)["interp"]
    slider.send_keys(Keys.HOME)
    start = state(browser)["interp"]
    assert (start["a"], start["b"], start["t"], end["t"]) == (2, 7, 0, 1)
    np.testing.assert_allclose(start["output"], recon[0], atol=1e-4)
    np.testing.assert_allclose(end["output"], recon[1], atol=1e-4)
    slider.send_keys(Keys.ARROW_RIGHT * 25)
    middle = state(browser)["interp"]
    assert middle["t"] == 0.5
    assert np.abs(np.subtract(middle["output"], start["output"])).max() > 1e-3


# --- 4. sliders for k > 2 -----------------------------------------------------------------------


def test_sliders_follow_kl_with_active_units_first(open_explorer):
    model = make_model("mlp", 6, (1, 8, 8), hidden=(32, 16))
    last = model.encoder[-1]
    with torch.no_grad():  # units 1 and 4 never vary (dead); the others clearly do, all differently
        last.weight[:6] *= 20 * torch.arange(1, 7).unsqueeze(1)
        last.weight[[1, 4]] = 0
        last.bias[[1, 4]] = 0
    x = random_inputs(model, 300)
    with torch.no_grad():
        mu, logvar = model.encode(torch.as_tensor(x))
    kl = kl_per_dim(mu, logvar).mean(0).numpy()
    expected = sorted(range(6), key=lambda u: (u in (1, 4), -kl[u]))
    browser = open_explorer(model, x, None, [8, 8])

    rows = browser.find_elements(By.CSS_SELECTOR, "#explorer .lx-slider")
    assert [int(r.get_attribute("data-unit")) for r in rows] == expected
    assert [r.is_displayed() for r in rows] == [True] * 4 + [False] * 2
    assert state(browser)["mapUnits"] == expected[:2]
    browser.find_element(By.CSS_SELECTOR, '#explorer [data-lx="inactive"]').click()
    assert all(r.is_displayed() for r in rows)

    before = state(browser)
    rows[0].find_element(By.TAG_NAME, "input").send_keys(Keys.END)
    after = state(browser)
    moved = [u for u in range(6) if after["z"][u] != before["z"][u]]
    assert moved == [expected[0]]
    assert np.abs(np.subtract(after["output"], before["output"])).max() > 1e-3


# --- 5. sampling --------------------------------------------------------------------------------


def test_sample_button_draws_a_new_z(open_explorer, digits_vae):
    model, x, y = digits_vae
    browser = open_explorer(model, x, y, [8, 8])
    button = browser.find_element(By.CSS_SELECTOR, '#explorer [data-lx="sample"]')
    assert button.text == "Sample z ~ N(0, I)"
    before = state(browser)
    button.click()
    first = state(browser)
    button.click()
    second = state(browser)
    assert before["z"] != first["z"] != second["z"]
    assert np.abs(np.subtract(first["output"], before["output"])).max() > 1e-3
    np.testing.assert_allclose(second["output"], torch_decode(model, [second["z"]])[0], atol=1e-4)


# --- 6. what it looks like ----------------------------------------------------------------------


def test_screenshot(open_explorer, digits_vae):
    model, x, y = digits_vae
    browser = open_explorer(model, x, y, [8, 8], "Latent explorer: VAE, k = 2, scikit-learn digits")
    Select(browser.find_element(By.CSS_SELECTOR, '#explorer [data-lx="to"]')).select_by_index(7)
    browser.find_element(By.CSS_SELECTOR, '#explorer [data-lx="t"]').send_keys(Keys.ARROW_RIGHT * 20)
    canvas = browser.find_element(By.CSS_SELECTOR, '#explorer [data-lx="map"]')
    ActionChains(browser).move_to_element_with_offset(canvas, 40, -30).click().perform()
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    assert browser.find_element(By.ID, "explorer").screenshot(str(SCREENSHOT))
