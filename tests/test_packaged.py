"""A kept model as users take it home (packaged.LatentModel: raw rows in and out, TorchScript export)
and as an MLflow model (mlflow_model: logged through the logged-model API, registered with aliases)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from latentstudy import evaluate
from latentstudy.config import StudyError
from latentstudy.data import scaling
from latentstudy.models import NetSpec, build, save_checkpoint
from latentstudy.packaged import SCRIPT_FILE, LatentModel

# A table of 5 raw columns, the fourth constant (dropped by the scaler, put back by decode).
RAW = np.column_stack([np.arange(12.0), np.linspace(100, 900, 12), np.tile([1.0, 3.0], 6), np.full(12, 7.0),
                       np.sin(np.arange(12.0))])
STANDARD = {"method": "standard", "mean": [5.5, 500.0, 2.0, 0.1], "sd": [3.45, 250.0, 1.0, 0.7],
            "dropped": [{"index": 3, "name": "c", "value": 7.0}], "feature_names": None}
TABLE = {"dataset": "file", "source": "file t.csv", "input_dim": 4, "image_shape": None, "scaling": STANDARD}


def model(variational: bool = True, arch: str = "mlp", data: dict = TABLE, seed: int = 0) -> LatentModel:
    torch.manual_seed(seed)
    shape = (1, 8, 8) if arch == "conv" else None
    spec = NetSpec(data["input_dim"], 3, arch, "gaussian" if data is TABLE else "bernoulli", variational,
                   hidden=(16,), channels=(4, 8), image_shape=shape)
    return LatentModel(build(spec), data, {"trial": seed})


def test_a_model_works_on_raw_rows_in_their_units():
    m = model()
    prepared = scaling.apply(RAW, STANDARD)
    mu = m.encode(RAW)
    np.testing.assert_array_equal(mu, evaluate.latents(m.net, prepared))  # the report's codes
    sigma = m.encode_distribution(RAW)[1]
    assert mu.shape == sigma.shape == (12, 3) and (sigma > 0).all()
    back = m.reconstruct(RAW)
    assert back.shape == RAW.shape and (back[:, 3] == 7.0).all()  # the dropped constant, put back
    np.testing.assert_allclose(scaling.apply(back, STANDARD), evaluate.reconstructions(m.net, prepared), atol=1e-5)
    samples = m.sample(5, seed=1)
    assert samples.shape == (5, 5) and np.array_equal(samples, m.sample(5, seed=1))
    assert not np.array_equal(samples, m.sample(5, seed=2))
    values, _ = evaluate.vae_terms(m.net, prepared, 8, 0)
    np.testing.assert_array_equal(m.log_likelihood(RAW, samples=8), -values["iwae_nll_nats"])  # the IWAE bound
    with pytest.raises(StudyError, match="rows of 4 features; this model takes 5"):
        m.encode(RAW[:, :4])


def test_the_autoencoder_has_a_point_code_and_no_prior():
    m = model(variational=False)
    mu, sigma = m.encode_distribution(RAW)
    assert (sigma == 0).all() and np.array_equal(mu, m.encode(RAW))
    with pytest.raises(StudyError, match="sample needs a VAE"):
        m.sample(3)
    with pytest.raises(StudyError, match="log_likelihood needs a VAE"):
        m.log_likelihood(RAW)


@pytest.mark.parametrize("arch", ["mlp", "conv"])
def test_torchscript_export_gives_the_same_codes_and_means_at_any_batch_size(tmp_path, arch):
    digits = {"dataset": "digits", "source": "scikit-learn digits", "input_dim": 64, "image_shape": [8, 8],
              "scaling": {"method": "divide", "divisor": 16.0}}
    m = model(arch=arch, data=digits)
    raw = np.random.default_rng(0).integers(0, 17, size=(5, 64))  # traced with 2 rows
    files = m.export(tmp_path / "out")
    assert [f.name for f in files] == [SCRIPT_FILE, "scaler.json"] and not list((tmp_path / "out").glob("*.tmp"))
    saved = json.loads(files[1].read_text())
    assert saved["scaling"] == digits["scaling"] and saved["model"] == {"trial": 0}
    script = torch.jit.load(str(files[0]))
    with torch.no_grad():
        x = torch.as_tensor(scaling.apply(raw, saved["scaling"]))
        np.testing.assert_allclose(script(x).numpy(), m.encode(raw), atol=1e-6)
        z = torch.as_tensor(m.encode(raw))
        np.testing.assert_allclose(scaling.unapply(script.decode(z).numpy(), saved["scaling"]), m.decode(z), atol=1e-5)


def test_logged_models_load_as_pyfunc_and_the_alias_moves_with_the_answer(tmp_path, tracking_uri):
    import mlflow

    from latentstudy import mlflow_model as mm
    from latentstudy.tracking import Tracker

    tracker = Tracker(tracking_uri)
    exp = tracker.experiment("latentstudy-file-t")
    ids = {}
    for seed in (0, 1):
        m = model(seed=seed)
        save_checkpoint(tmp_path / f"k3-vae-{seed}.pt", m.net, {"trial": seed})
        run = tracker.start_trial(exp, "", "t-1-k3-vae", f"k3-vae-t{seed}", seed, {})
        ids[seed] = mm.log(tracker.client, exp, run, tmp_path / f"k3-vae-{seed}.pt", TABLE,
                           scaling.apply(RAW[:2], STANDARD), {mm.STUDY_TAG: "t-1"})
        tracker.end(run, "FINISHED")
        [out] = tracker.client.get_run(run).outputs.model_outputs  # the run page's "Logged models"
        assert out.model_id == ids[seed]
    found = mm.logged_models(tracker.client, exp, "t-1")
    assert {i for i, _ in found.values()} == set(ids.values())

    loaded = mlflow.pyfunc.load_model(tracker.client.get_logged_model(ids[1]).artifact_location)
    np.testing.assert_allclose(loaded.predict(RAW), model(seed=1).encode(RAW), atol=1e-6)
    assert loaded.metadata.get_input_schema().inputs[0].shape == (-1, 5)
    assert repr(loaded.unwrap_python_model().model).startswith("LatentModel(k=3, arm='vae'")

    name = "latentstudy-file-t"
    first = mm.register(tracker.client, name, "generation", ids[0], {})
    assert mm.register(tracker.client, name, "generation", ids[0], {}) == first  # the same answer: no new version
    second = mm.register(tracker.client, name, "generation", ids[1], {})
    assert second != first and str(tracker.client.get_model_version_by_alias(name, "generation").version) == second
    assert mm.register(tracker.client, name, "generation", ids[0], {}) == first  # back: the alias moves back
