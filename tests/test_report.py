import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import prepared_summary

from latentstudy import config, figures, page, pca, recommend, report
from latentstudy.config import StudyError
from latentstudy.contracts import Inputs, Searched, report_outputs
from latentstudy.evaluation import Evaluation, PerExample

N = 60  # test examples


def evaluation(ks=(2, 4, 8), added=(4,), flag=None) -> dict:
    rows = []
    for k in ks:
        models = [{"replicate": 0, "flag": None, "active_units": min(k, 4)}]
        vae = {"sse_per_image": 10.0 / k, "mse_per_pixel": 0.1 / k, "bce_nats": 50.0 / k, "distortion_nats": 40.0 / k + 20,
               "rate_nats": float(k), "neg_elbo_nats": 40.0 / k + 20 + k, "iwae_nll_nats": 40.0 / k + 19 + k,
               "active_units": min(k, 4), "collapsed_units": k - min(k, 4), "probe_accuracy": 0.9, "beta": 1.0,
               "lr": 1e-3, "n_params": 100, "train_seconds": 1.0, "models": models, "trials": [], "flag": None}
        ae = {"sse_per_image": 8.0 / k, "mse_per_pixel": 0.08 / k, "bce_nats": 45.0 / k, "distortion_nats": 45.0 / k,
              "probe_accuracy": 0.92, "lr": 2e-3, "n_params": 90, "train_seconds": 0.5,
              "models": [{"replicate": 0, "flag": None}], "trials": [], "flag": None}
        pca_ = {"sse_per_image": 12.0 / k, "mse_per_pixel": 0.12 / k, "bce_nats": 60.0 / k,
                "explained_variance_ratio": 1 - 1 / k, "probe_accuracy": 0.8}
        rows.append({"latent_dim": k, "compression_ratio": 64 / k, "phase": "added" if k in added else "grid",
                     "reason": "added by the search: test" if k in added else "", "pca": pca_, "ae": ae, "vae": vae})
    rows[-1]["ae"] = None  # a size whose autoencoder never finished
    if flag:
        for row in rows:
            row["vae"]["flag"] = row["vae"]["models"][0]["flag"] = flag
    return {"rows": rows, "input_dim": 64, "n_test": N, "has_labels": False}


def per_example(ks=(2, 4, 8), flagged=()) -> dict[str, np.ndarray]:
    """Planted values: the NLL falls to k = 4 and is flat after; the autoencoder's error falls."""
    rng = np.random.default_rng(0)
    hard = rng.exponential(3.0, size=N)
    nll = {2: 30.0, 4: 24.0, 8: 24.0}
    out = {"vae_latent_dim": np.array(ks), "vae_replicate": np.zeros(len(ks), int), "vae_rank": np.zeros(len(ks), int),
           "vae_flagged": np.array([k in flagged for k in ks]),
           "vae_iwae_nll_nats": np.stack([hard + nll[k] + rng.normal(0, 0.3, N) for k in ks]),
           "ae_latent_dim": np.array(ks[:-1]), "ae_replicate": np.zeros(len(ks) - 1, int),
           "ae_rank": np.zeros(len(ks) - 1, int),
           "ae_flagged": np.zeros(len(ks) - 1, bool),
           "ae_sse_per_image": np.stack([hard + 8.0 / k + rng.normal(0, 0.1, N) for k in ks[:-1]]),
           "pca_latent_dim": np.array(ks), "pca_sse_per_image": np.stack([hard + 12.0 / k for k in ks])}
    return out


def inputs(tmp_path: Path, ev=None, arrays=None) -> Inputs:
    rng = np.random.default_rng(1)
    x = rng.uniform(size=(N, 64)).astype(np.float32)
    summary = prepared_summary(n_examples=3 * N, counts={"train": N, "val": N, "test": N}, intrinsic_dim={"twonn": 5.0})
    trials = pd.DataFrame(columns=["arm", "state", "phase", "latent_dim", "number", "objective_value"])
    study = Searched("t", "journal:x", "e", None, None, [], "neg_elbo", [2, 4, 8], [], {"vae": [4]}, [], [], 0)
    return Inputs(Evaluation.from_json(ev or evaluation()), PerExample.from_arrays(arrays or per_example()), trials,
                  summary, {"components_for_variance": {"0.9": 40}}, study, x, None, tmp_path, pca.fit(x))


def test_table_has_one_row_per_size_the_ratios_and_what_the_search_added():
    table = report.build_table(Evaluation.from_json(evaluation()))
    assert table["latent_dim"].tolist() == [2, 4, 8]
    assert table.loc[0, "pca_over_vae_sse"] == pytest.approx(1.2)
    assert table.loc[0, "pca_over_ae_sse"] == pytest.approx(1.5)
    assert pd.isna(table.loc[2, "ae_sse_per_image"]) and pd.isna(table.loc[2, "pca_over_ae_sse"])
    assert table["phase"].tolist() == ["grid", "added", "grid"] and table.loc[0, "vae_models"] == 1


def test_html_table_marks_the_answer_the_added_size_and_flagged_models():
    table = report.build_table(Evaluation.from_json(evaluation(flag="far worse than trivial: planted")))
    html = page.table_html(table, 4)
    assert html.count("<tr") == 2 + 3 and html.count('class="chosen"') == 1
    chosen = html.split('class="chosen">')[1].split("</tr>")[0]
    assert 'class="added" title="added by the search: test">4+</td>' in chosen
    assert "<td>–</td>" in html  # the missing autoencoder at k = 8
    assert html.count('class="flag" title="far worse than trivial: planted"') == 3 * 9  # every VAE cell (9 columns) of 3 sizes


def test_answers_come_from_the_per_example_values(tmp_path):
    cfg = config.ReportConfig(bootstrap=200)
    rec = recommend.recommendation(cfg, inputs(tmp_path))
    assert rec.headline == "generation" and rec.latent_dim == 4
    assert rec.answers["reconstruction"].k == 4  # the autoencoder's error still falls: its best size
    assert rec.answers["representation"].choice is None  # no labels
    assert "Sizes added by the search: 4" in rec.text and rec.checks.pca_components["0.9"][0] > 0
    table = report.build_table(Evaluation.from_json(evaluation()))
    metrics = report.headline_metrics(table, rec)
    assert metrics["answers"]["generation"]["latent_dim"] == 4 and metrics["added_sizes"] == 1
    # Each size's values are in the table (table.csv), not in the metrics
    assert "latent_dims" not in metrics
    by_k = table.set_index("latent_dim")
    assert by_k.loc[4, "phase"] == "added" and pd.isna(by_k.loc[8, "ae_sse_per_image"])
    assert set(report.mlflow_metrics(report.build_table(Evaluation.from_json(evaluation())), rec)) >= {
        "generation_latent_dim", "generation_interval_low", "generation_interval_high", "generation_stability",
        "generation_ci95_low", "reconstruction_latent_dim"}


def test_one_class_labels_say_representation_does_not_apply(tmp_path):
    inp = inputs(tmp_path, ev={**evaluation(), "has_labels": True})
    inp = dataclasses.replace(inp, summary=dataclasses.replace(inp.summary, has_labels=True, class_names=["only"]))
    rec = recommend.recommendation(config.ReportConfig(bootstrap=200), inp)
    assert rec.answers["representation"].missing == "not applicable: the labels have one class"
    table = report.build_table(Evaluation.from_json(evaluation()))
    assert "no answer: not applicable: the labels have one class" in page.answers_html(rec, table)


def test_other_trials_are_resampled_with_the_search_and_a_flagged_one_is_left_out(tmp_path):
    """Planted: k = 4's other trials are 3 nats worse than its pick (a lucky search), one of them
    diverged. The answers keep the picks' values; k = 4's interval takes in the search's luck."""
    arrays = per_example()
    rng = np.random.default_rng(2)
    rows = [arrays["vae_iwae_nll_nats"][1] + shift + rng.normal(0, 0.3, N) for shift in (3.0, 3.5, 1e6)]
    for key, extra in (("vae_latent_dim", [4, 4, 4]), ("vae_replicate", [0, 0, 0]), ("vae_rank", [2, 1, 3]),
                       ("vae_flagged", [False, False, True])):
        arrays[key] = np.concatenate([arrays[key], extra])
    arrays["vae_iwae_nll_nats"] = np.concatenate([arrays["vae_iwae_nll_nats"], np.stack(rows)])
    picks, others, _ = recommend.curves(recommend.PURPOSES["generation"], inputs(tmp_path, arrays=arrays))
    assert {k: len(v) for k, v in picks.items()} == {2: 1, 4: 1, 8: 1} and len(others[4]) == 2
    assert others[4][0].mean() == pytest.approx(rows[1].mean())  # rank 1 first
    cfg = config.ReportConfig(bootstrap=400)
    held = recommend.recommendation(cfg, inputs(tmp_path)).answers["generation"]
    searched = recommend.recommendation(cfg, inputs(tmp_path, arrays=arrays)).answers["generation"]
    assert searched.choice.value == held.choice.value and searched.choice.trials == [1, 3, 1]
    assert searched.choice.se[1] > 2 * held.choice.se[1] and searched.choice.se[0] == held.choice.se[0]
    assert searched.to_dict()["curve"][1]["trials"] == 3


def test_a_flagged_model_is_never_the_answer(tmp_path):
    arrays = per_example(flagged=(4,))
    rec = recommend.recommendation(config.ReportConfig(bootstrap=200), inputs(tmp_path, arrays=arrays))
    assert rec.answers["generation"].choice.ks == [2, 8] and rec.latent_dim == 8


def test_nothing_sane_ends_the_report_with_one_line(tmp_path):
    ev = evaluation(flag="far worse than trivial: squared error 2.4e+24 per example")
    arrays = per_example(flagged=(2, 4, 8))
    with pytest.raises(StudyError) as err:
        recommend.recommendation(config.ReportConfig(bootstrap=200, purpose="generation"), inputs(tmp_path, ev, arrays))
    message = str(err.value)
    assert "no sane generation answer" in message and "k=2: far worse than trivial" in message
    assert "nothing is recommended" in message and "\n" not in message


def test_outputs_are_staged_then_moved_whole(tmp_path):
    out = tmp_path / "reports"
    paths = report_outputs(out)
    tmp = report.staging(out)
    (tmp / "figures").mkdir(parents=True)
    (tmp / "figures" / "answers.png").write_bytes(b"\x89PNG half")  # what a kill -9 left mid-write
    staged = report_outputs(tmp)
    (out / "figures").mkdir(parents=True)
    (out / "figures" / "old.png").write_bytes(b"old")
    staged["figures"].joinpath("new.png").write_bytes(b"new")
    for key in ("table", "metrics", "recommendation", "html"):
        staged[key].write_text(key)
    staged["plots"].parent.mkdir(parents=True)
    staged["plots"].write_text("plots")
    report.publish(staged, paths)
    assert sorted(p.name for p in (out / "figures").iterdir()) == ["answers.png", "new.png"]
    assert paths["html"].read_text() == "html" and paths["plots"].read_text() == "plots"
    assert not (out / "figures.old").exists()


def test_settings_are_a_collapsed_table_not_a_json_dump(tmp_path):
    inp = inputs(tmp_path)
    html = page.settings_html(page.settings_of(config.ReportConfig(), inp))
    assert html.startswith('<details id="settings"><summary>All settings')
    assert "<td>report.bootstrap</td><td>1000</td>" in html and "{" not in html


def test_pareto_front_keeps_only_undominated_points():
    pts = np.array([[1.0, 5.0], [2.0, 3.0], [2.5, 4.0], [3.0, 1.0], [0.5, 9.0]])
    front = figures.pareto_front(pts)
    assert front.tolist() == [[0.5, 9.0], [1.0, 5.0], [2.0, 3.0], [3.0, 1.0]]


def test_sample_dims_prefers_the_recommended_size():
    from latentstudy import gallery

    assert gallery.sample_dims([2, 4, 8, 16], 8, 3) == [2, 8, 16]
    assert gallery.sample_dims([4], 4, 3) == [4]


def test_the_page_lists_sizes_the_search_extended_with_their_reason(tmp_path):
    ev = evaluation()
    ev["rows"][2].update(phase="added", reason="extended by the search: on validation the generation criterion "
                                               "still improves at k = 4, the largest searched; k = 8 doubles it")
    for row in ev["rows"]:
        row["vae"]["iwae_samples"] = 8
    table = report.build_table(Evaluation.from_json(ev))
    rec = recommend.recommendation(config.ReportConfig(bootstrap=200), inputs(tmp_path, ev))
    html = page.page(config.ReportConfig(bootstrap=200), inputs(tmp_path, ev), table, rec, [], "")
    listed = html.split("Sizes the search added or extended")[1].split("</ul>")[0]
    assert "<li>k = 4: added by the search: test</li>" in listed
    assert "<li>k = 8: extended by the search: on validation the generation criterion still improves at k = 4" in listed


def test_reconstruction_takes_pca_where_it_is_the_better_code_on_validation(tmp_path):
    ev, arrays = evaluation(), per_example()
    rng = np.random.default_rng(3)
    pca_test = {2: 30.0, 4: 20.0, 8: 10.0}  # at k = 4 PCA is 18 worse than the AE (8 / 4 = 2 plus shared hardness)
    arrays.update({"pca_latent_dim": np.array([2, 4, 8]),
                   "pca_sse_per_image": np.stack([pca_test[k] + rng.normal(0, 0.1, N) for k in (2, 4, 8)])})
    for row in ev["rows"]:
        row["code"] = {"code": "pca" if row["latent_dim"] == 8 else "ae", "undertrained": False}
    rec = recommend.recommendation(config.ReportConfig(bootstrap=200), inputs(tmp_path, ev, arrays))
    a = rec.answers["reconstruction"]
    # k = 8 has no autoencoder, but PCA won there on validation: the better code stands in for it.
    assert a.choice.ks == [2, 4, 8] and a.at(8)[0] == pytest.approx(arrays["pca_sse_per_image"][2].mean())
    assert a.at(4)[0] == pytest.approx(arrays["ae_sse_per_image"][1].mean())
    ev["rows"][1]["code"] = {"code": "pca", "undertrained": True}  # an undertrained AE at k = 4: PCA stands in
    table = report.build_table(Evaluation.from_json(ev))
    assert table.recon_code.tolist() == ["ae", "pca", "pca"] and table.ae_undertrained.tolist() == [False, True, False]
    assert "PCA!</td>" in page.table_html(table, 4)
    rec = recommend.recommendation(config.ReportConfig(bootstrap=200), inputs(tmp_path, ev, arrays))
    assert rec.answers["reconstruction"].at(4)[0] == pytest.approx(arrays["pca_sse_per_image"][1].mean())


def test_sizes_the_data_cannot_tell_apart_are_said_in_plain_words(tmp_path):
    arrays = per_example()
    rng = np.random.default_rng(5)
    # Every difference far below its SE: the seeds' noise (5 nats) swamps the 0.2-nat steps.
    arrays["vae_iwae_nll_nats"] = np.stack([25.0 - 0.1 * i + rng.normal(0, 5.0, N) for i in range(3)])
    rec = recommend.recommendation(config.ReportConfig(bootstrap=300, purpose="generation"), inputs(tmp_path, arrays=arrays))
    a = rec.main
    assert a.k == 2 and a.choice.indistinguishable == [2, 4, 8] and a.cannot_tell
    assert a.plain_words().startswith("this data cannot tell k = 2 from k = 8 on the NLL bound (3 of 3 sizes")
    assert "chosen by parsimony" in a.summary() and "indistinguishable from the best {2, 4, 8}" in a.summary()
    box = page.answers_html(rec, report.build_table(Evaluation.from_json(evaluation())))
    assert "cannot tell k = 2 from k = 8" in box and "chosen by parsimony" in box
    assert rec.to_dict()["answers"]["generation"]["indistinguishable"] == [2, 4, 8]
    arrays["vae_iwae_nll_nats"] = np.stack([30.0 - 6 * i + rng.normal(0, 0.3, N) for i in range(3)])  # steep
    clear = recommend.recommendation(config.ReportConfig(bootstrap=300, purpose="generation"),
                                  inputs(tmp_path, arrays=arrays)).main
    assert clear.choice.indistinguishable == [8] and not clear.cannot_tell and clear.plain_words() is None
    # The default planted curve is flat after k = 4: two of three sizes cannot be told apart.
    flat = recommend.recommendation(config.ReportConfig(bootstrap=300, purpose="generation"), inputs(tmp_path)).main
    assert flat.choice.indistinguishable == [4, 8] and flat.cannot_tell


def test_a_vae_that_ignores_its_code_at_every_size_says_so_with_the_remedies(tmp_path):
    ev = evaluation()
    for row in ev["rows"]:
        row["vae"]["active_units"] = 1 if row["latent_dim"] == 4 else 0
    rec = recommend.recommendation(config.ReportConfig(bootstrap=200), inputs(tmp_path, ev))
    (note,) = rec.answers["generation"].notes
    assert note.startswith("the VAE ignores its code: at most one active unit at every size (posterior collapse")
    assert "search.train.free_bits" in note and "search.train.kl_warmup_epochs" in note
    table = report.build_table(Evaluation.from_json(evaluation()))
    assert "posterior collapse at every size" in page.answers_html(rec, table)
    assert recommend.recommendation(config.ReportConfig(bootstrap=200), inputs(tmp_path)).answers["generation"].notes == ()


def test_undertrained_sizes_are_counted_and_named_on_the_page(tmp_path):
    ev = evaluation()
    ev["rows"][0]["ae"]["still_improving"] = 2
    ev["rows"][1]["vae"]["still_improving"] = 1
    for row in ev["rows"]:
        row["code"] = {"code": "pca" if row["latent_dim"] == 4 else "ae", "undertrained": row["latent_dim"] == 4}
    table = report.build_table(Evaluation.from_json(ev))
    assert table.ae_still_improving[0] == 2 and table.vae_still_improving[1] == 1
    notes = page.training_notes(table)
    assert notes[0] == ("autoencoder trainings still improving at the epoch ceiling, per size: k = 2 (2); their "
                        "values are those of undertrained models: raise search.train.max_epochs.")
    assert notes[1].startswith("VAE trainings still improving at the epoch ceiling, per size: k = 4 (1)")
    assert notes[2].startswith("reconstruction: at k = 4 the autoencoder is worse than PCA by more than one SE")
    rec = recommend.recommendation(config.ReportConfig(bootstrap=200), inputs(tmp_path, ev))
    assert "k = 2 (2)" in page.answers_html(rec, table)
    assert page.training_notes(report.build_table(Evaluation.from_json(evaluation()))) == []


def test_a_vae_worse_than_a_smaller_latent_beyond_noise_is_marked(tmp_path):
    arrays = per_example()
    rng = np.random.default_rng(2)
    arrays["vae_iwae_nll_nats"] = np.stack([v + rng.normal(0, 0.1, N) for v in (30.0, 24.0, 26.0)])
    rec = recommend.recommendation(config.ReportConfig(bootstrap=200), inputs(tmp_path, arrays=arrays))
    (note,) = rec.answers["generation"].notes
    assert note.startswith("k = 8's NLL bound is 1.99 nats worse than k = 4's (SE of the difference 0.02)")


def test_hyperparameter_importance_skips_a_size_whose_trials_cannot_be_told_apart():
    from latentstudy import gallery

    rows = [{"arm": "vae", "state": "COMPLETE", "phase": "grid", "latent_dim": k, "beta": b, "lr": lr,
             "objective_value": v} for k, b, lr, v in [(2, 0.5, 1e-3, 30.0), (2, 2.0, 3e-3, 30.0),  # equal: no split
                                                          (4, 0.5, 1e-3, 28.0), (4, 2.0, 3e-3, 25.0),
                                                          (4, 1.0, 2e-3, 26.0)]]
    out = gallery.importances(pd.DataFrame(rows))
    assert list(out) == [4] and set(out[4]) == {"beta", "lr"}
