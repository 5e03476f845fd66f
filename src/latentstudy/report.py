"""The report: the reconstruction-versus-compression table, the recommendation, the figures,
one self-contained HTML file, DVC metrics and plots, and an MLflow report run.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from latentstudy import figures
from latentstudy.evaluate import latents, reconstructions
from latentstudy.models import AutoEncoder, best_path, choose_likelihood, load_checkpoint
from latentstudy.recommend import Recommendation, recommend

# (table column, evaluation arm, evaluation key)
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
]


def build_table(evaluation: dict) -> pd.DataFrame:
    """One row per latent size: PCA, autoencoder and VAE side by side, plus error ratios."""
    rows = []
    for r in evaluation["rows"]:
        row = {"latent_dim": r["latent_dim"]}
        for col, arm, key in COLUMNS:
            source = r if arm is None else (r[arm] or {})
            row[col] = source.get(key)
        rows.append(row)
    table = pd.DataFrame(rows)
    table["pca_over_ae_sse"] = table["pca_sse_per_image"] / table["ae_sse_per_image"]
    table["pca_over_vae_sse"] = table["pca_sse_per_image"] / table["vae_sse_per_image"]
    return table


def pick_recommendation(table: pd.DataFrame, tolerance: float, summary: dict, pca_metrics: dict) -> Recommendation:
    """From the VAE distortion curve, or the autoencoder's where no VAE finished."""
    curve = "vae" if table["vae_distortion_nats"].notna().any() else "ae"
    values = [None if pd.isna(v) else float(v) for v in table[f"{curve}_distortion_nats"]]
    betas = [None if pd.isna(v) else float(v) for v in table["vae_beta"]]
    active = [None if pd.isna(v) else int(v) for v in table["vae_active_units"]]
    return recommend(table["latent_dim"].tolist(), values, betas, active, tolerance,
                     summary.get("intrinsic_dim") or {}, pca_metrics["components_for_variance"], curve)


def headline_metrics(table: pd.DataFrame, rec: Recommendation) -> dict:
    """reports/metrics.json: what `dvc metrics diff` and `dvc exp show` compare."""
    per_k = {}
    for _, row in table.iterrows():
        per_k[f"k{int(row.latent_dim)}"] = {
            c: (None if pd.isna(row[c]) else round(float(row[c]), 5))
            for c in ("pca_sse_per_image", "ae_sse_per_image", "vae_sse_per_image", "vae_distortion_nats",
                      "vae_rate_nats", "vae_neg_elbo_nats", "vae_iwae_nll_nats", "vae_active_units")
        }
    return {"recommended_latent_dim": rec.latent_dim, "recommended_beta": rec.beta,
            "knee_latent_dim": rec.knee_latent_dim, "best_vae_distortion_nats": rec.best_distortion,
            "max_active_units": rec.max_active_units, "latent_dims": per_k}


# --- pictures drawn from the models -------------------------------------------------------------


@torch.no_grad()
def decode(model: AutoEncoder, z: np.ndarray) -> np.ndarray:
    return model.mean(model.decode(torch.as_tensor(z, dtype=torch.float32))).numpy()


def interpolation_rows(model: AutoEncoder, x: np.ndarray, pairs: list[tuple[int, int]], steps: int = 10) -> list:
    mu = latents(model, x)
    t = np.linspace(0, 1, steps)[:, None]
    return [decode(model, (1 - t) * mu[a] + t * mu[b]) for a, b in pairs]


def traversal_rows(model: AutoEncoder, x0: np.ndarray, units: list[int], steps: int = 9) -> list:
    base = latents(model, x0[None])[0]
    rows = []
    for u in units:
        z = np.repeat(base[None], steps, axis=0)
        z[:, u] = np.linspace(-3, 3, steps)
        rows.append(decode(model, z))
    return rows


def importances(trials: pd.DataFrame) -> dict[int, dict[str, float]]:
    """fANOVA importance of beta and lr per latent size, from the finished VAE trials."""
    import optuna
    from optuna.distributions import FloatDistribution

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    out = {}
    for k, sub in figures.finished_vae(trials).groupby("latent_dim"):
        if len(sub) < 2:
            continue
        dists = {p: FloatDistribution(float(sub[p].min()) * 0.999, float(sub[p].max()) * 1.001, log=True)
                 for p in ("beta", "lr")}
        study = optuna.create_study(direction="minimize")
        for _, row in sub.iterrows():
            study.add_trial(optuna.trial.create_trial(params={"beta": row.beta, "lr": row.lr},
                                                      distributions=dists, value=row.objective_value))
        evaluator = optuna.importance.FanovaImportanceEvaluator(seed=0)
        out[int(k)] = optuna.importance.get_param_importances(study, evaluator=evaluator)
    return out


@dataclass
class Inputs:
    """Everything the report reads from the stages before it."""

    evaluation: dict
    trials: pd.DataFrame
    summary: dict
    pca_metrics: dict
    study: dict
    x_test: np.ndarray
    y_test: np.ndarray | None
    models_dir: Path
    pca_basis: object


def draw_figures(inp: Inputs, table: pd.DataFrame, rec: Recommendation, cfg, fig_dir: Path) -> tuple[list, dict]:
    """Every figure as (file, title, caption), and the VAEs by size (for the explorer).

    Image figures become line plots for vector data."""
    from latentstudy import pca as pca_mod

    shape = inp.summary["image_shape"]
    ks = table["latent_dim"].tolist()
    vae, ae = best_models(inp.models_dir, ks, "vae"), best_models(inp.models_dir, ks, "ae")
    rng = np.random.default_rng(0)
    n = min(cfg.recon_examples, len(inp.x_test))
    pick = rng.choice(len(inp.x_test), size=n, replace=False)
    x = inp.x_test[pick]
    out = []

    def add(name: str, title: str, caption: str) -> None:
        out.append((fig_dir / name, title, caption))

    figures.distortion_curves(table, rec.latent_dim, fig_dir / "distortion.png")
    add("distortion.png", "Distortion against latent size",
        "Look for where the curves flatten: past that k, more latent dimensions buy little reconstruction. "
        "PCA is the best linear code; the gap to the autoencoder and VAE is what nonlinearity buys.")
    have_trials = len(figures.finished_vae(inp.trials)) > 0
    if have_trials:
        figures.rate_distortion(inp.trials, fig_dir / "rate_distortion.png")
        add("rate_distortion.png", "Rate-distortion plane",
            "Each point is a finished VAE trial (validation split). Along the front, lower distortion costs "
            "rate; points with equal ELBO can sit far apart on it (Alemi et al. 2018).")
    if table["vae_active_units"].notna().any():
        figures.active_units(table, fig_dir / "active_units.png")
        add("active_units.png", "Active units",
            "Where the line falls below the dotted identity, the VAE switched units off (posterior collapse "
            "of those units): that part of k is wasted capacity.")
    rows, labels = [x], ["input"]
    for k in ks:
        if k in vae:
            rows.append(reconstructions(vae[k], x))
            labels.append(f"VAE k={k}")
        if k in ae:
            rows.append(reconstructions(ae[k], x))
            labels.append(f"AE k={k}")
        rows.append(pca_mod.reconstruct(inp.pca_basis, x, k))
        labels.append(f"PCA k={k}")
    figures.image_grid(rows, labels, shape, fig_dir / "reconstructions.png")
    add("reconstructions.png", "Reconstructions",
        "Test inputs in the first row, then each model's reconstruction at each latent size. Watch where "
        "details (strokes, thin parts) appear as k grows, and where PCA blurs what the networks keep.")
    show = sample_dims(sorted(vae), rec.latent_dim, cfg.sample_dims)
    if show:
        rows = [decode(vae[k], np.random.default_rng(k).standard_normal((n, k))) for k in show]
        figures.image_grid(rows, [f"VAE k={k}" for k in show], shape, fig_dir / "samples.png")
        add("samples.png", "Samples from the prior",
            "Decoded z ~ N(0, I). Sharp, varied samples mean the prior region is well used; blurry or repeated "
            "ones mean the decoder only learned the posterior's neighbourhood.")
    best = vae.get(rec.latent_dim)
    if best is not None and len(inp.x_test) >= 6:
        pairs = [(int(a), int(b)) for a, b in rng.choice(len(inp.x_test), size=(3, 2), replace=False)]
        figures.image_grid(interpolation_rows(best, inp.x_test, pairs), [f"pair {i + 1}" for i in range(3)], shape,
                           fig_dir / "interpolations.png")
        add("interpolations.png", f"Interpolations (VAE k={rec.latent_dim})",
            "Each row decodes points on the straight line between mu(x1) and mu(x2). Smooth, plausible "
            "in-between images mean the latent space is continuous.")
        kl = evaluation_kl(inp.evaluation, rec.latent_dim)
        units = [int(u) for u in np.argsort(kl)[::-1][:6]] if kl else list(range(min(6, rec.latent_dim)))
        figures.image_grid(traversal_rows(best, x[0], units), [f"unit {u}" for u in units], shape,
                           fig_dir / "traversals.png")
        add("traversals.png", f"Latent traversals (VAE k={rec.latent_dim})",
            "One row per latent unit (highest KL first): the unit sweeps from -3 to 3 while the others stay at "
            "mu of one test image. Rows that do not change are inactive units.")
    if 2 in ks and (2 in vae or 2 in ae):
        codes = {}
        if 2 in ae:
            codes["autoencoder, k=2"] = latents(ae[2], inp.x_test)
        if 2 in vae:
            codes["VAE, k=2 (mu)"] = latents(vae[2], inp.x_test)
        figures.latent_scatter(codes, inp.y_test, fig_dir / "latent_2d.png")
        add("latent_2d.png", "The 2-D latent space",
            "Test set codes coloured by label. The autoencoder spreads out freely; the VAE's KL term packs the "
            "codes into the unit ball (dashed) around the prior.")
    if have_trials:
        figures.optimisation_history(inp.trials, fig_dir / "optuna_history.png")
        add("optuna_history.png", "Optuna optimisation history",
            "Validation objective of each finished VAE trial, per latent size; the line is the best so far. "
            "A line still falling at the end means more trials could help.")
        imp = importances(inp.trials)
        if imp:
            figures.param_importances(imp, fig_dir / "param_importances.png")
            add("param_importances.png", "Hyperparameter importances",
                "fANOVA importance of beta and the learning rate for the validation objective at each size "
                "(few trials make this rough).")
    return out, vae


def best_models(models_dir: Path, ks: list[int], arm: str) -> dict[int, AutoEncoder]:
    """The search's best model of the arm ("vae" or "ae") for every size that has one."""
    paths = {k: best_path(models_dir, k, arm) for k in ks}
    return {k: load_checkpoint(path)[0] for k, path in paths.items() if path.is_file()}


def sample_dims(available: list[int], recommended: int, count: int) -> list[int]:
    """A few sizes to sample from: the recommended one, the smallest and the largest."""
    chosen = []
    for k in [recommended, available[0] if available else None, available[-1] if available else None,
              *available]:
        if k is not None and k in available and k not in chosen:
            chosen.append(k)
    return sorted(chosen[:count])


def evaluation_kl(evaluation: dict, k: int) -> list[float] | None:
    for row in evaluation["rows"]:
        if row["latent_dim"] == k and row["vae"]:
            return row["vae"].get("kl_per_dim_nats")
    return None


# --- HTML ----------------------------------------------------------------------------------------

CSS = """
body{font:15px/1.5 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;color:#1d232a;background:#f6f7f9}
main{max-width:1120px;margin:0 auto;padding:24px 28px 60px;background:#fff;box-shadow:0 0 12px #0001}
h1{font-size:26px;margin:0 0 4px}h2{margin-top:36px;border-bottom:2px solid #e4e7eb;padding-bottom:4px}
.meta{color:#5b6570;font-size:13px}.rec{background:#eef6ee;border-left:5px solid #2e7d32;padding:14px 18px;
border-radius:4px}.rec strong{font-size:20px}.tablewrap{overflow-x:auto}
table{border-collapse:collapse;font-size:13px;font-variant-numeric:tabular-nums;white-space:nowrap}
th,td{border:1px solid #dde1e6;padding:4px 8px;text-align:right}th{background:#f0f2f5;position:sticky;top:0}
tr.chosen td{background:#fff7d6;font-weight:600}th.group{text-align:center}
figure{margin:24px 0}figure img{max-width:100%;border:1px solid #e4e7eb}figcaption{color:#3d4650;font-size:14px}
code,pre{background:#f0f2f5;border-radius:3px;padding:1px 4px}pre{padding:10px;overflow-x:auto}
.warn{color:#a34d00}
"""

HTML_COLUMNS = [  # (group, header, column, format)
    ("", "k", "latent_dim", "{:d}"), ("", "D/k", "compression_ratio", "{:.1f}"),
    ("squared error per image", "PCA", "pca_sse_per_image", "{:.3f}"),
    ("squared error per image", "AE", "ae_sse_per_image", "{:.3f}"),
    ("squared error per image", "VAE", "vae_sse_per_image", "{:.3f}"),
    ("PCA / model error", "/AE", "pca_over_ae_sse", "{:.2f}"),
    ("PCA / model error", "/VAE", "pca_over_vae_sse", "{:.2f}"),
    ("VAE, nats per example", "D", "vae_distortion_nats", "{:.2f}"),
    ("VAE, nats per example", "R", "vae_rate_nats", "{:.2f}"),
    ("VAE, nats per example", "D+R", "vae_neg_elbo_nats", "{:.2f}"),
    ("VAE, nats per example", "IWAE", "vae_iwae_nll_nats", "{:.2f}"),
    ("VAE", "active units", "vae_active_units", "{:d}"),
    ("VAE", "beta", "vae_beta", "{:.3g}"),
    ("linear probe accuracy", "PCA", "pca_probe_accuracy", "{:.3f}"),
    ("linear probe accuracy", "AE", "ae_probe_accuracy", "{:.3f}"),
    ("linear probe accuracy", "VAE", "vae_probe_accuracy", "{:.3f}"),
]


def table_html(table: pd.DataFrame, chosen: int) -> str:
    cols = [c for c in HTML_COLUMNS if table[c[2]].notna().any()]
    groups, spans = [], []
    for group, *_ in cols:
        if groups and groups[-1] == group:
            spans[-1] += 1
        else:
            groups.append(group)
            spans.append(1)
    head1 = "".join(f'<th class="group" colspan="{s}">{html.escape(g)}</th>' for g, s in zip(groups, spans))
    head2 = "".join(f"<th>{html.escape(h)}</th>" for _, h, _, _ in cols)
    body = []
    for _, row in table.iterrows():
        cells = []
        for _, _, col, fmt in cols:
            v = row[col]
            cells.append("<td>–</td>" if pd.isna(v) else f"<td>{fmt.format(int(v) if 'd' in fmt else float(v))}</td>")
        cls = ' class="chosen"' if int(row.latent_dim) == chosen else ""
        body.append(f"<tr{cls}>{''.join(cells)}</tr>")
    return (f'<div class="tablewrap"><table><thead><tr>{head1}</tr><tr>{head2}</tr></thead>'
            f"<tbody>{''.join(body)}</tbody></table></div>")


def likelihood_html(study: dict, summary: dict) -> str:
    """Which decoder likelihood the models trained with, and why."""
    requested = study.get("search", {}).get("model", {}).get("likelihood", "auto")
    chosen, why = choose_likelihood(requested, summary["image_shape"])
    return f'<p id="likelihood">Decoder likelihood: <b>{chosen}</b> ({html.escape(why)}).</p>'


def figure_html(path: Path, title: str, caption: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return (f'<figure id="fig-{path.stem}"><h3>{html.escape(title)}</h3>'
            f'<img alt="{html.escape(title)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")


def page(cfg, inp: Inputs, table: pd.DataFrame, rec: Recommendation, figs: list, explorer: str,
         params: dict) -> str:
    s = inp.summary
    date = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    shape = "x".join(map(str, s["image_shape"])) if s["image_shape"] else "vector data"
    missing = [int(k) for k, v, a in zip(table.latent_dim, table.vae_distortion_nats, table.ae_sse_per_image)
               if pd.isna(v) or pd.isna(a)]
    warn = (f'<p class="warn">No finished trial at k = {", ".join(map(str, missing))} for at least one arm; '
            "see reports/search/trials.csv for the failure reasons.</p>") if missing else ""
    settings = html.escape(json.dumps(params, indent=2))
    iwae_k = next((r["vae"]["iwae_samples"] for r in inp.evaluation["rows"] if r["vae"]), "K")
    figs_html = "".join(figure_html(p, t, c) for p, t, c in figs)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html.escape(cfg.title)} – {html.escape(s['dataset'])}</title><style>{CSS}</style></head>
<body><main>
<h1>{html.escape(cfg.title)}</h1>
<p class="meta">Dataset <b>{html.escape(s['dataset'])}</b> ({html.escape(s['source'])}): {s['n_examples']} examples,
D = {s['input_dim']} ({shape}), split {s['counts']['train']} / {s['counts']['val']} / {s['counts']['test']}.
Study <code>{html.escape(inp.study.get('prefix', ''))}</code>, latent sizes {', '.join(map(str, table.latent_dim))}.
Generated {date}.</p>
<h2>Recommendation</h2>
<div class="rec" id="recommendation"><strong>k = {rec.latent_dim}</strong>{
    f", beta = {rec.beta:.3g}" if rec.beta is not None else ""}<p>{html.escape(rec.text)}</p></div>
{warn}
<h2>Reconstruction against compression</h2>
<p>Test split; squared errors are summed over the {s['input_dim']} inputs and decoded from z = mu(x); nats are per
example (D distortion, R rate, D+R the negative ELBO, IWAE the {iwae_k}-sample
importance-weighted bound, never above D+R). The highlighted row is the recommendation. Full table: <code>reports/table.csv</code>.</p>
{likelihood_html(inp.study, s)}
<div id="table">{table_html(table, rec.latent_dim)}</div>
<h2>Figures</h2>
{figs_html}
{explorer}
<h2>Settings and how to rerun</h2>
<p>Change <code>params.yaml</code> and run <code>dvc repro</code> (only the stages whose inputs changed run again), or try
a variant without editing: <code>dvc exp run -S 'study.latent_dims=[2,4,8]'</code> then <code>dvc exp show</code>.
Every trial is in MLflow: <code>make ui</code>, experiment <code>{html.escape(inp.study.get('experiment', ''))}</code>.</p>
<pre>{settings}</pre>
</main></body></html>
"""


# --- writing and MLflow ----------------------------------------------------------------------------


def output_paths(out_dir: Path) -> dict[str, Path]:
    return {"html": out_dir / "index.html", "table": out_dir / "table.csv", "metrics": out_dir / "metrics.json",
            "figures": out_dir / "figures", "plots": out_dir / "plots" / "distortion.csv",
            "recommendation": out_dir / "recommendation.json"}


def explorer_section(vae: dict[int, AutoEncoder], rec: Recommendation, inp: Inputs) -> str:
    """The live decoder: the k=2 VAE when the grid has one, else the recommended size's."""
    from latentstudy import explorer

    model = vae.get(2) or vae.get(rec.latent_dim)
    if model is None:
        return ""
    return explorer.explorer_html(model, inp.x_test, inp.y_test, inp.summary["image_shape"],
                                  f"Explore the latent space (VAE, k = {model.spec.latent_dim})")


def write(cfg, inp: Inputs, table: pd.DataFrame, rec: Recommendation, paths: dict[str, Path]) -> None:
    figs, vae = draw_figures(inp, table, rec, cfg, paths["figures"])
    settings = {"data": {k: inp.summary[k] for k in ("dataset", "source", "scaling", "counts", "intrinsic_dim")},
                "study": {"latent_dims": inp.study.get("latent_dims"), "seed": inp.study.get("seed")},
                "search": inp.study.get("search"), "report": {"tolerance": cfg.tolerance}}
    paths["html"].write_text(page(cfg, inp, table, rec, figs, explorer_section(vae, rec, inp), settings))
    table.to_csv(paths["table"], index=False)
    paths["metrics"].write_text(json.dumps(headline_metrics(table, rec), indent=2) + "\n")
    paths["recommendation"].write_text(json.dumps(rec.to_dict(), indent=2) + "\n")
    paths["plots"].parent.mkdir(parents=True, exist_ok=True)
    table[["latent_dim", "pca_sse_per_image", "ae_sse_per_image", "vae_sse_per_image", "vae_distortion_nats",
           "vae_rate_nats", "vae_active_units"]].to_csv(paths["plots"], index=False)


def log_to_mlflow(tracking: str, inp: Inputs, table: pd.DataFrame, rec: Recommendation,
                  paths: dict[str, Path], params: dict) -> str:
    """A report run nested under the study's parent run: the table, headline metrics, the HTML."""
    from latentstudy.tracking import Tracker

    tracker = Tracker(tracking)
    experiment_id = tracker.experiment(inp.study["experiment"])
    run_id = tracker.report_run(experiment_id, inp.study.get("prefix", ""), {"report": params})
    tracker.log_table(run_id, table, "reconstruction_vs_compression.json")
    metrics = {"recommended_latent_dim": rec.latent_dim, "best_vae_distortion_nats": rec.best_distortion}
    if rec.beta is not None:
        metrics["recommended_beta"] = rec.beta
    for _, row in table.iterrows():
        for col in ("pca_sse_per_image", "ae_sse_per_image", "vae_sse_per_image", "vae_neg_elbo_nats"):
            if not pd.isna(row[col]):
                metrics[f"{col}_k{int(row.latent_dim)}"] = float(row[col])
    tracker.log_metrics(run_id, metrics, flush=True)
    for key in ("html", "table", "metrics", "recommendation"):
        tracker.log_artifact(run_id, paths[key], "report")
    for png in sorted(paths["figures"].glob("*.png")):
        tracker.log_artifact(run_id, png, "report/figures")
    tracker.end(run_id, "FINISHED", {"recommended_latent_dim": rec.latent_dim})
    print(f"[report] MLflow report run {run_id} in experiment {inp.study['experiment']}")
    return run_id
