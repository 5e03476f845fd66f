"""The report stage writes, publishes and logs: the table, the figures, DVC metrics and plots,
the page, and an MLflow report run. The answers it shows are built in recommend.py (from the
per-example values, with the paired bootstrap).

Outputs are written into a temporary folder and moved into place once complete, so a killed
report leaves the previous outputs or the new ones, never half of a figure. The page itself is
built in page.py; the pictures drawn from the models in gallery.py.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pandas as pd

from latentstudy import figures, gallery, page, text
from latentstudy.config import ARMS
from latentstudy.contracts import Inputs, report_outputs
from latentstudy.evaluation import Evaluation
from latentstudy.recommend import Recommendation

# (table column, the row's part (an arm, pca or code; None: the row itself), its field)
COLUMNS = [
    ("compression_ratio", None, "compression_ratio"),
    ("pca_sse_per_image", "pca", "sse_per_image"),
    ("ae_sse_per_image", "ae", "sse_per_image"),
    ("vae_sse_per_image", "vae", "sse_per_image"),
    ("pca_mse_per_pixel", "pca", "mse_per_pixel"),
    ("ae_mse_per_pixel", "ae", "mse_per_pixel"),
    ("vae_mse_per_pixel", "vae", "mse_per_pixel"),
    ("pca_bce_nats", "pca", "bce_nats"),
    ("ae_bce_nats", "ae", "bce_nats"),
    ("vae_bce_nats", "vae", "bce_nats"),
    ("ae_distortion_nats", "ae", "distortion_nats"),
    ("vae_distortion_nats", "vae", "distortion_nats"),
    ("vae_rate_nats", "vae", "rate_nats"),
    ("vae_neg_elbo_nats", "vae", "neg_elbo_nats"),
    ("vae_iwae_nll_nats", "vae", "iwae_nll_nats"),
    ("vae_active_units", "vae", "active_units"),
    ("vae_collapsed_units", "vae", "collapsed_units"),
    ("pca_explained_variance", "pca", "explained_variance_ratio"),
    ("pca_probe_accuracy", "pca", "probe_accuracy"),
    ("ae_probe_accuracy", "ae", "probe_accuracy"),
    ("vae_probe_accuracy", "vae", "probe_accuracy"),
    ("vae_beta", "vae", "beta"),
    ("vae_lr", "vae", "lr"),
    ("ae_lr", "ae", "lr"),
    ("vae_params", "vae", "n_params"),
    ("ae_params", "ae", "n_params"),
    ("vae_train_seconds", "vae", "train_seconds"),
    ("ae_train_seconds", "ae", "train_seconds"),
    ("recon_code", "code", "code"),  # the better code on validation: "ae" or "pca"
    ("ae_undertrained", "code", "undertrained"),
    ("vae_still_improving", "vae", "still_improving"),
    ("ae_still_improving", "ae", "still_improving"),
    ("vae_flag", "vae", "flag"),
    ("ae_flag", "ae", "flag"),
]


def build_table(evaluation: Evaluation) -> pd.DataFrame:
    """One row per searched size: PCA and the search's best autoencoder and VAE side by side, how
    many models (seeds) stand behind each, error ratios, and flags."""
    rows = []
    for r in evaluation.rows:
        row = {"latent_dim": r.latent_dim, "phase": r.phase, "reason": r.reason}
        for col, part, name in COLUMNS:
            row[col] = getattr(r if part is None else getattr(r, part), name, None)
        for arm in ARMS:
            row[f"{arm}_models"] = (len(r.arm(arm).models) if r.arm(arm) else 0) or None
        rows.append(row)
    table = pd.DataFrame(rows)
    table["pca_over_ae_sse"] = table["pca_sse_per_image"] / table["ae_sse_per_image"]
    table["pca_over_vae_sse"] = table["pca_sse_per_image"] / table["vae_sse_per_image"]
    return table


def headline_metrics(table: pd.DataFrame, rec: Recommendation) -> dict:
    """reports/metrics.json: what `dvc metrics diff` and `dvc exp show` compare: the answers with
    their intervals and a few headline figures. Each size's values are in table.csv and the plots,
    so the metrics stay a few dozen numbers whatever the number of sizes."""
    answers = {}
    for name, a in rec.answers.items():
        if a.choice is None:
            continue
        value, se, low, high = a.at(a.k)
        lo, hi = a.interval()
        answers[name] = {"latent_dim": a.k, "interval_low": lo, "interval_high": hi,
                         "stability": round(a.choice.shares[a.k], 4), "value": round(value, 5), "se": round(se, 5),
                         "ci95_low": round(low, 5), "ci95_high": round(high, 5), "best_latent_dim": a.choice.best}
    return {"headline": rec.headline, "recommended_latent_dim": rec.latent_dim, "answers": answers,
            "knee_latent_dim": rec.checks.knee, "max_active_units": rec.checks.max_active_units,
            "searched_sizes": len(table), "added_sizes": int((table.phase == "added").sum())}


def main_figure(rec: Recommendation, table: pd.DataFrame, added: list[int], path: Path) -> None:
    """Each purpose's criterion against k with error bars, PCA alongside where it applies."""
    reference = {"reconstruction": ("PCA", "pca_sse_per_image"), "representation": ("PCA", "pca_probe_accuracy")}
    panels = []
    for name, a in rec.answers.items():
        if a.choice is None:
            continue
        c, p = a.choice, a.purpose
        at = [a.at(k) for k in c.ks]
        panel = {"title": f"{name}{' (headline)' if name == rec.headline else ''}: {p.criterion}",
                 "ylabel": f"{p.criterion.split(' (')[0]}" + (f", {p.unit}" if p.unit else ""), "ks": c.ks,
                 "value": [v[0] for v in at], "low": [v[2] for v in at], "high": [v[3] for v in at],
                 "chosen": c.chosen, "likely": c.likely}
        if name in reference and table[reference[name][1]].notna().any():
            ok = table[reference[name][1]].notna()
            panel["reference"] = (reference[name][0], table.latent_dim[ok].tolist(), table[reference[name][1]][ok].tolist())
        panels.append(panel)
    figures.criterion_curves(panels, added, path)


# --- writing and MLflow ----------------------------------------------------------------------------


def staging(out_dir: Path) -> Path:
    """Where the outputs are written before they are moved into place."""
    return out_dir / ".report.tmp"


def explorer_section(vae: dict, k: int | None, inp: Inputs) -> str:
    """The live decoder: the k=2 VAE when the study has one, else the answer's size."""
    from latentstudy import explorer

    model = vae.get(2) or vae.get(k)
    if model is None:
        return ""
    return explorer.explorer_html(model, inp.x_test, inp.y_test, inp.summary.image_shape,
                                  f"Explore the latent space (VAE, k = {model.spec.latent_dim})")


def write(cfg, inp: Inputs, table: pd.DataFrame, rec: Recommendation, paths: dict[str, Path]) -> None:
    """Every output, staged in a temporary folder, then moved over the previous ones."""
    tmp = staging(paths["html"].parent)
    shutil.rmtree(tmp, ignore_errors=True)  # what a killed run left
    staged = report_outputs(tmp)
    fig_dir = staged["figures"]
    fig_dir.mkdir(parents=True)
    figs = []

    def add(name: str, **values) -> None:
        figs.append((fig_dir / name, *text.figure(name, **values)))

    main_figure(rec, table, inp.evaluation.added_sizes, fig_dir / "answers.png")
    add("answers.png")
    figures.distortion_curves(table, rec.latent_dim, fig_dir / "distortion.png")
    add("distortion.png")
    vae_k = rec.answers["generation"].k or rec.latent_dim
    vae = gallery.draw(inp, table, vae_k, cfg, fig_dir, add)
    staged["html"].write_text(page.page(cfg, inp, table, rec, figs, explorer_section(vae, vae_k, inp)))
    table.to_csv(staged["table"], index=False)
    staged["metrics"].write_text(json.dumps(headline_metrics(table, rec), indent=2) + "\n")
    staged["recommendation"].write_text(json.dumps(rec.to_dict(), indent=2) + "\n")
    staged["plots"].parent.mkdir(parents=True, exist_ok=True)
    table[["latent_dim", "pca_sse_per_image", "ae_sse_per_image", "vae_sse_per_image", "vae_distortion_nats",
           "vae_rate_nats", "vae_iwae_nll_nats", "vae_active_units"]].to_csv(staged["plots"], index=False)
    publish(staged, paths)
    shutil.rmtree(tmp, ignore_errors=True)


def publish(staged: dict[str, Path], final: dict[str, Path]) -> None:
    """Move each staged output over its final path (a rename: each file appears whole)."""
    for key, src in staged.items():
        dst = final[key]
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            old = dst.with_name(dst.name + ".old")
            shutil.rmtree(old, ignore_errors=True)
            if dst.exists():
                dst.rename(old)
            src.rename(dst)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(src, dst)


def mlflow_metrics(table: pd.DataFrame, rec: Recommendation) -> dict[str, float]:
    """The per-purpose answers with their intervals, and each size's main values."""
    out: dict[str, float] = {"recommended_latent_dim": rec.latent_dim}
    for name, entry in headline_metrics(table, rec)["answers"].items():
        out.update({f"{name}_{key}": float(v) for key, v in entry.items()})
    for _, row in table.iterrows():
        for col in ("pca_sse_per_image", "ae_sse_per_image", "vae_sse_per_image", "vae_neg_elbo_nats",
                    "vae_iwae_nll_nats"):
            if not pd.isna(row[col]):
                out[f"{col}_k{int(row.latent_dim)}"] = float(row[col])
    return out


def log_to_mlflow(tracking: str, inp: Inputs, table: pd.DataFrame, rec: Recommendation,
                  paths: dict[str, Path], params: dict) -> str:
    """A report run nested under the study's parent run: the table, the answers, the HTML."""
    from latentstudy.tracking import Tracker

    tracker = Tracker(tracking)
    experiment_id = tracker.experiment(inp.study.experiment)
    run_id = tracker.report_run(experiment_id, inp.study.prefix, {"report": params})
    tracker.log_table(run_id, table, "reconstruction_vs_compression.json")
    tracker.log_metrics(run_id, mlflow_metrics(table, rec), flush=True)
    for key in ("html", "table", "metrics", "recommendation"):
        tracker.log_artifact(run_id, paths[key], "report")
    for png in sorted(paths["figures"].glob("*.png")):
        tracker.log_artifact(run_id, png, "report/figures")
    tracker.end(run_id, "FINISHED", {"headline": rec.headline, "recommended_latent_dim": rec.latent_dim})
    print(f"[report] MLflow report run {run_id} in experiment {inp.study.experiment}")
    return run_id


def register_answers(tracking: str, inp: Inputs, rec: Recommendation, report_run: str) -> None:
    """Each purpose's chosen model in the MLflow Model Registry as latentstudy-<dataset>@<purpose>."""
    from latentstudy import mlflow_model, packaged
    from latentstudy.tracking import Tracker, experiment_name

    chosen = {name: packaged.chosen_file(inp.models_dir, name, a.k) for name, a in rec.answers.items()
              if a.k is not None}
    chosen = {name: path for name, path in chosen.items() if path.is_file()}
    tracker = Tracker(tracking)
    data = packaged.carried(inp.summary)
    versions = mlflow_model.register_answers(tracker, tracker.experiment(inp.study.experiment), inp.study.prefix,
                                             chosen, data, report_run, inp.x_test[: mlflow_model.EXAMPLE_ROWS])
    name = experiment_name(data["dataset"], data["source"])
    for purpose, version in versions.items():
        print(f"[report] MLflow registry: {name}@{purpose} is version {version} ({chosen[purpose].name}); "
              f'load it with latentstudy.load("models:/{name}@{purpose}")')
