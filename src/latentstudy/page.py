"""The report page: one self-contained HTML file (figures inline, no network). First the answer
per purpose with its interval and stability, then the rule in plain words, the table, the
figures, the latent explorer, and the settings in a collapsed table.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
from pathlib import Path

import pandas as pd

from latentstudy.contracts import Inputs, Searched, Summary
from latentstudy.data.scaling import in_unit_interval, settings as scaling_settings
from latentstudy.models import choose_likelihood
from latentstudy.recommend import Recommendation, fmt
from latentstudy.stats import SET_NAME
from latentstudy.text import RULE

CSS = """
body{font:15px/1.5 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;color:#1d232a;background:#f6f7f9}
main{max-width:1120px;margin:0 auto;padding:24px 28px 60px;background:#fff;box-shadow:0 0 12px #0001}
h1{font-size:26px;margin:0 0 4px}h2{margin-top:36px;border-bottom:2px solid #e4e7eb;padding-bottom:4px}
.meta{color:#5b6570;font-size:13px}.rec{background:#eef6ee;border-left:5px solid #2e7d32;padding:14px 18px;
border-radius:4px}.rec strong{font-size:20px}.tablewrap{overflow-x:auto}
table{border-collapse:collapse;font-size:13px;font-variant-numeric:tabular-nums;white-space:nowrap}
th,td{border:1px solid #dde1e6;padding:4px 8px;text-align:right}th{background:#f0f2f5;position:sticky;top:0}
tr.chosen td{background:#fff7d6;font-weight:600}th.group{text-align:center}td.added{color:#b3261e}
.answers td,.answers th{text-align:left}.answers tr.headline td{font-weight:600;background:#fff7d6}
figure{margin:24px 0}figure img{max-width:100%;border:1px solid #e4e7eb}figcaption{color:#3d4650;font-size:14px}
code,pre{background:#f0f2f5;border-radius:3px;padding:1px 4px}pre{padding:10px;overflow-x:auto}
.warn{color:#a34d00}td.flag{color:#b3261e;background:#fdecea}details{margin-top:8px}summary{cursor:pointer}
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
    ("models (seeds)", "AE", "ae_models", "{:d}"),
    ("models (seeds)", "VAE", "vae_models", "{:d}"),
    ("reconstruction", "better code", "recon_code", "{}"),
    ("still improving at the ceiling", "AE", "ae_still_improving", "{:d}"),
    ("still improving at the ceiling", "VAE", "vae_still_improving", "{:d}"),
]


def _cell(row: pd.Series, col: str, fmt_: str) -> str:
    v = row[col]
    if col == "recon_code" and isinstance(v, str):
        under = row.get("ae_undertrained") is True
        title = ' title="the autoencoder is worse than PCA by more than one SE on validation: undertrained"'
        return f'<td class="flag"{title}>{v.upper()}!</td>' if under else f"<td>{v.upper()}</td>"
    text = "–" if pd.isna(v) else fmt_.format(int(v) if "d" in fmt_ else float(v))
    if col == "latent_dim" and row.get("phase") == "added":
        return f'<td class="added" title="{html.escape(str(row["reason"]))}">{text}+</td>'
    arm = col.split("_")[0]
    flag = row.get(f"{arm}_flag") if arm in ("vae", "ae") else None
    if isinstance(flag, str) and flag:
        return f'<td class="flag" title="{html.escape(flag)}">{text}!</td>'
    return f"<td>{text}</td>"


def table_html(table: pd.DataFrame, chosen: int | None) -> str:
    """The table; sizes the search added carry a + (the reason on hover), flagged models a !."""
    cols = [c for c in HTML_COLUMNS if c[2] in table and table[c[2]].notna().any()]
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
        cells = "".join(_cell(row, col, f) for _, _, col, f in cols)
        cls = ' class="chosen"' if int(row.latent_dim) == chosen else ""
        body.append(f"<tr{cls}>{cells}</tr>")
    return (f'<div class="tablewrap"><table><thead><tr>{head1}</tr><tr>{head2}</tr></thead>'
            f"<tbody>{''.join(body)}</tbody></table></div>")


def likelihood_html(study: Searched, summary: Summary) -> str:
    """Which scaling and decoder likelihoods the models trained with, and why."""
    model = study.search.get("model", {})
    chosen, why = choose_likelihood(model.get("likelihood", "auto"), summary.image_shape,
                                    in_unit_interval(summary.scaling))
    scale = (f", {model['gaussian_scale'].replace('_', '-')} scale"
             if chosen == "gaussian" and "gaussian_scale" in model else "")
    ae = ("the autoencoder trains on its squared error (a Gaussian with one shared scale)"
          + (", with a linear path started at PCA" if model.get("ae_pca_path") else ""))
    scaling = summary.scaling
    said = f' Data scaling: <b>{html.escape(scaling["method"])}</b> ({html.escape(scaling["why"])}).' \
        if "why" in scaling else ""
    return (f'<p id="likelihood">VAE decoder likelihood: <b>{chosen}</b>{scale} ({html.escape(why)}); '
            f"{ae}.{said}</p>")


def figure_html(path: Path, title: str, caption: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return (f'<figure id="fig-{path.stem}"><h3>{html.escape(title)}</h3>'
            f'<img alt="{html.escape(title)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")


def training_notes(table: pd.DataFrame) -> list[str]:
    """Sizes whose models were undertrained: trainings still improving at the epoch ceiling, and
    autoencoders worse than PCA on validation (PCA then stands in as the better code)."""
    notes = []
    for arm, name in (("ae", "autoencoder"), ("vae", "VAE")):
        col = f"{arm}_still_improving"
        late = table[table[col].fillna(0) > 0] if col in table else table.iloc[:0]
        if len(late):
            sizes = ", ".join(f"k = {int(r.latent_dim)} ({int(r[col])})" for _, r in late.iterrows())
            notes.append(f"{name} trainings still improving at the epoch ceiling, per size: {sizes}; their values are "
                         "those of undertrained models: raise search.train.max_epochs.")
    if "ae_undertrained" in table and table.ae_undertrained.fillna(False).astype(bool).any():
        sizes = ", ".join(str(int(k)) for k in table.latent_dim[table.ae_undertrained.fillna(False).astype(bool)])
        notes.append(f"reconstruction: at k = {sizes} the autoencoder is worse than PCA by more than one SE on "
                     "validation (undertrained); PCA, the better code there, stands in for it.")
    return notes


def answers_html(rec: Recommendation, table: pd.DataFrame) -> str:
    """The first box: the answer per purpose, headline first, with interval and stability."""
    rows = []
    for name in [rec.headline, *(n for n in rec.answers if n != rec.headline)]:
        a = rec.answers[name]
        label = html.escape(name) + (" <em>(headline)</em>" if name == rec.headline else "")
        cls = ' class="headline"' if name == rec.headline else ""
        if a.choice is None:
            rows.append(f"<tr{cls}><td>{label}</td><td colspan=8>no answer: {html.escape(a.missing or '')}</td></tr>")
            continue
        c, p = a.choice, a.purpose
        value, se, low, high = a.at(c.chosen)
        rows.append(
            f"<tr{cls}><td>{label}</td><td><strong>k = {c.chosen}</strong></td>"
            f"<td>{{{', '.join(map(str, c.likely))}}}</td><td>{{{', '.join(map(str, c.indistinguishable))}}}</td>"
            f"<td>{c.shares[c.chosen]:.0%}{'*' if a.cannot_tell else ''}</td>"
            f"<td>{html.escape(p.short)}</td><td>{fmt(value)} &plusmn; {fmt(se)}</td><td>{fmt(low)} to {fmt(high)}"
            f"</td><td>{c.best}</td></tr>")
    head = (f"<tr><th>purpose</th><th>answer</th><th>{SET_NAME}</th><th>cannot tell from the best</th>"
            "<th>chosen in</th><th>criterion</th>"
            "<th>at k, &plusmn; SE</th><th>95% interval</th><th>best k</th></tr>")
    notes = []
    for name, a in rec.answers.items():
        words = a.plain_words()
        if words:
            notes.append(f"* {name}: {words}.")
        notes += [f"{name}: {note}." for note in a.notes]
        if a.still_improving:
            notes.append(f"{name}: the criterion still improves at the largest size searched (k = {a.choice.best}); "
                         "larger sizes may do better: list them in study.latent_dims, or raise study.refine_max.")
        flagged = {k: r for k, r in a.excluded.items() if r.startswith(("far worse", "non-finite"))}
        if flagged:
            notes.append(f"{name}: left out as absurd (diverged or broken training), never recommended: "
                         + "; ".join(f"k = {k} ({r})" for k, r in sorted(flagged.items())))
    notes += training_notes(table)
    warn = "".join(f'<p class="warn">{html.escape(n)}</p>' for n in notes)
    return (f'<div class="rec" id="recommendation"><strong>k = {rec.latent_dim}</strong> for {rec.headline} '
            f'<span class="meta">({html.escape(rec.why)})</span>'
            f'<div class="tablewrap answers"><table>{head}{"".join(rows)}</table></div>'
            f"<p>{html.escape(rec.text)}</p>{warn}</div>")


def settings_html(settings: dict) -> str:
    """The settings as a compact key-value table, collapsed."""
    def flat(d: dict, prefix: str = "") -> list[tuple[str, str]]:
        out = []
        for key, value in d.items():
            if isinstance(value, dict):
                out += flat(value, f"{prefix}{key}.")
            else:
                out.append((f"{prefix}{key}", ", ".join(map(str, value)) if isinstance(value, list) else str(value)))
        return out

    rows = "".join(f"<tr><td>{html.escape(k)}</td><td>{html.escape(v)}</td></tr>" for k, v in flat(settings))
    return (f'<details id="settings"><summary>All settings ({rows.count("<tr>")})</summary>'
            f'<div class="tablewrap answers"><table>{rows}</table></div></details>')


def settings_of(cfg, inp: Inputs) -> dict:
    s = inp.summary
    return {"data": {"dataset": s.dataset, "source": s.source, "counts": s.counts,
                     "scaling": scaling_settings(s.scaling)},
            "study": {"searched sizes": inp.study.latent_dims, "seed": inp.study.seed},
            "search": inp.study.search,
            "report": {"purpose": cfg.purpose, "tolerance": cfg.tolerance, "bootstrap": cfg.bootstrap}}


# Over 50 lines on purpose: most of it is the page's HTML template, read top to bottom as it renders.
def page(cfg, inp: Inputs, table: pd.DataFrame, rec: Recommendation, figs: list, explorer: str) -> str:
    s = inp.summary
    date = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    shape = "x".join(map(str, s.image_shape)) if s.image_shape else "vector data"
    missing = [int(k) for k, v, a in zip(table.latent_dim, table.vae_sse_per_image, table.ae_sse_per_image)
               if pd.isna(v) or pd.isna(a)]
    warn = (f'<p class="warn">No finished trial at k = {", ".join(map(str, missing))} for at least one arm; '
            "see reports/search/trials.csv for the failure reasons.</p>") if missing else ""
    iwae_k = next((r.vae.iwae_samples for r in inp.evaluation.rows if r.vae), "K")
    added = table[table.phase == "added"]
    added_html = "".join(f"<li>k = {int(r.latent_dim)}: {html.escape(str(r.reason))}</li>" for _, r in added.iterrows())
    reps = inp.study.replicates
    reps_text = "; ".join(f"{'VAE' if arm == 'vae' else 'autoencoder'} k = {', '.join(map(str, ks))}"
                          for arm, ks in reps.items() if ks) or "none"
    why_reps = "".join(f"<li>{'VAE' if r.arm == 'vae' else 'autoencoder'} k = {r.latent_dim}: "
                       f"{html.escape(r.reason)}</li>" for r in inp.study.replicate_reasons)
    margin = f" plus a practical margin of {cfg.tolerance:g} x |best| (report.tolerance)" if cfg.tolerance else ""
    figs_html = "".join(figure_html(p, t, c) for p, t, c in figs)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html.escape(cfg.title)} – {html.escape(s.dataset)}</title><style>{CSS}</style></head>
<body><main>
<h1>{html.escape(cfg.title)}</h1>
<p class="meta">Dataset <b>{html.escape(s.dataset)}</b> ({html.escape(s.source)}): {s.n_examples} examples,
D = {s.input_dim} ({shape}), split {s.counts['train']} / {s.counts['val']} / {s.counts['test']}.
Study <code>{html.escape(inp.study.prefix)}</code>, latent sizes {', '.join(map(str, table.latent_dim))}
({len(added)} added by the search). Generated {date}.</p>
<h2>The answer</h2>
{answers_html(rec, table)}
{warn}
<h2>How the answer is chosen</h2>
<p>{html.escape(RULE.format(draws=cfg.bootstrap, margin=margin))}</p>
<p>Criteria: generation uses the {iwae_k}-sample IWAE bound on the negative log-likelihood, which scores every VAE
as a density model whatever beta trained it; reconstruction uses the squared error per example of the better code at
each size, the autoencoder or PCA, chosen on validation (the table's "better code");
representation uses the accuracy of a linear probe on the VAE's mean codes. Sizes retrained with more seeds (their
interval includes the spread between seeds): {html.escape(reps_text)}. A size without them borrows the seed spread
of the nearest size with them.</p>
{f"<ul>{why_reps}</ul>" if why_reps else ""}
{f"<p>Sizes the search added or extended (above the grid while the criterion still improved at its largest size, "
   f"then between grid points):</p><ul>{added_html}</ul>" if added_html else ""}
<h2>Reconstruction against compression</h2>
<p>Test split; squared errors are summed over the {s.input_dim} inputs and decoded from z = mu(x); nats are per
example (D distortion, R rate, D+R the negative ELBO, IWAE the {iwae_k}-sample importance-weighted bound, never
above D+R). Each value is the search's best model at that size (every model's values are in
<code>reports/evaluate/evaluation.json</code>). The highlighted row is the headline answer; k+ marks a size the
search added, ! a model far worse than trivial (diverged or broken training). Full table: <code>reports/table.csv</code>.</p>
{likelihood_html(inp.study, s)}
<div id="table">{table_html(table, rec.latent_dim)}</div>
<h2>Figures</h2>
{figs_html}
{explorer}
<h2>Settings and how to rerun</h2>
<p>Change <code>params.yaml</code> and run <code>dvc repro</code> (only the stages whose inputs changed run again), or try
a variant without editing: <code>dvc exp run -S 'study.latent_dims=[2,4,8]'</code> then <code>dvc exp show</code>.
Every trial is in MLflow: <code>make ui</code>, experiment <code>{html.escape(inp.study.experiment)}</code>.</p>
{settings_html(settings_of(cfg, inp))}
</main></body></html>
"""
