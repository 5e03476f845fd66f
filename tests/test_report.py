import numpy as np
import pandas as pd
import pytest

from latentstudy import figures, report
from latentstudy.recommend import recommend


def evaluation(ks=(2, 4, 8)) -> dict:
    rows = []
    for k in ks:
        vae = {"sse_per_image": 10.0 / k, "mse_per_pixel": 0.1 / k, "bce_nats": 50.0 / k, "distortion_nats": 40.0 / k + 20,
               "rate_nats": float(k), "neg_elbo_nats": 40.0 / k + 20 + k, "iwae_nll_nats": 40.0 / k + 19 + k,
               "active_units": min(k, 4), "collapsed_units": k - min(k, 4), "probe_accuracy": 0.9, "beta": 1.0,
               "lr": 1e-3, "n_params": 100, "train_seconds": 1.0}
        ae = {"sse_per_image": 8.0 / k, "mse_per_pixel": 0.08 / k, "bce_nats": 45.0 / k, "distortion_nats": 45.0 / k,
              "probe_accuracy": 0.92, "lr": 2e-3, "n_params": 90, "train_seconds": 0.5}
        pca = {"sse_per_image": 12.0 / k, "mse_per_pixel": 0.12 / k, "bce_nats": 60.0 / k,
               "explained_variance_ratio": 1 - 1 / k, "probe_accuracy": 0.8}
        rows.append({"latent_dim": k, "compression_ratio": 64 / k, "pca": pca, "ae": ae, "vae": vae})
    rows[-1]["ae"] = None  # a size whose autoencoder never finished
    return {"rows": rows, "input_dim": 64, "n_test": 10, "has_labels": True}


def test_table_has_one_row_per_size_and_the_ratios():
    table = report.build_table(evaluation())
    assert table["latent_dim"].tolist() == [2, 4, 8]
    assert table.loc[0, "pca_over_vae_sse"] == pytest.approx(1.2)
    assert table.loc[0, "pca_over_ae_sse"] == pytest.approx(1.5)
    assert pd.isna(table.loc[2, "ae_sse_per_image"]) and pd.isna(table.loc[2, "pca_over_ae_sse"])


def test_html_table_marks_the_recommended_row_and_missing_cells():
    table = report.build_table(evaluation())
    html = report.table_html(table, 4)
    assert html.count("<tr") == 2 + 3 and html.count('class="chosen"') == 1
    chosen = html.split('class="chosen">')[1].split("</tr>")[0]
    assert "<td>4</td>" in chosen
    assert "<td>–</td>" in html  # the missing autoencoder at k = 8


def test_headline_metrics_follow_the_recommendation():
    table = report.build_table(evaluation())
    rec = recommend(table.latent_dim.tolist(), table.vae_distortion_nats.tolist(), table.vae_beta.tolist(),
                    table.vae_active_units.tolist(), 0.3, {}, {"0.9": 5})
    metrics = report.headline_metrics(table, rec)
    assert metrics["recommended_latent_dim"] == rec.latent_dim
    assert set(metrics["latent_dims"]) == {"k2", "k4", "k8"}
    assert metrics["latent_dims"]["k8"]["ae_sse_per_image"] is None


def test_pareto_front_keeps_only_undominated_points():
    pts = np.array([[1.0, 5.0], [2.0, 3.0], [2.5, 4.0], [3.0, 1.0], [0.5, 9.0]])
    front = figures.pareto_front(pts)
    assert front.tolist() == [[0.5, 9.0], [1.0, 5.0], [2.0, 3.0], [3.0, 1.0]]


def test_sample_dims_prefers_the_recommended_size():
    assert report.sample_dims([2, 4, 8, 16], 8, 3) == [2, 8, 16]
    assert report.sample_dims([4], 4, 3) == [4]
