"""Real data as users bring it, measured: the whole pipeline at a small budget on scikit-learn's
bundled tables and on images, with default params but for the budget. Prints, per dataset and purpose,
the answer k, its 90% set and the sizes the criterion cannot tell from the best; per dataset, the
autoencoder's test squared error over PCA's at each searched k, the share of finished trainings still
improving at the epoch ceiling, the scaling and likelihood that ran, and the wall time.

    .venv/bin/python benchmarks/real_data.py                          # the four datasets (about 12-15 min on 2 cores)
    .venv/bin/python benchmarks/real_data.py --datasets wine --budget quick   # one table, a smoke run (20 s)
    .venv/bin/python benchmarks/real_data.py --budget quick                   # all four, a smoke run (3 min)
    .venv/bin/python benchmarks/real_data.py --datasets breast_cancer wine --budget default  # default params

Datasets, written in a temporary folder the way a user would hand them over (nothing is downloaded):
- breast_cancer: scikit-learn's 569 x 30 table as a CSV with a `label` column (data.name file);
- wine: scikit-learn's 178 x 13 table as Parquet with a `label` column (data.name file);
- mnist_png: 1,000 PNGs of the MNIST test set (100 per class; --budget quick: 300), one subfolder per class
  (data.name images), from the IDX files in --mnist;
- digits: scikit-learn's 8 x 8 digits (data.name digits).
The grid is study.latent_dims auto, the scaling data.scaling auto and the likelihood
search.model.likelihood auto; only the budget is cut (BUDGET: 2 VAE and 1 autoencoder trials a size,
1 seed replicate, 2 added sizes, 60 epochs before the ceiling of 180, IWAE-20, 300 bootstrap resamples;
the PNGs' conv net 40 epochs, ceiling 80, no replicate; --budget quick less of each, 300 PNGs). Each dataset
runs prepare, pca, search, evaluate and report (stages.py, no MLflow) in the temporary folder, laid out
as dvc.yaml lays out the project. In the AE/PCA line, `(pca)` marks a size where PCA's code won
reconstruction on validation and `!` one whose autoencoder the report flags as undertrained; `inf` is
PCA's exact reconstruction at k >= D. In the table, `*` marks the headline purpose. A `?` is a field
this version does not write. Nothing is asserted; it prints a table and writes the rows as JSON (--out).
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from latentstudy import contracts, stages
from latentstudy.config import StudyError

ROOT = Path(__file__).resolve().parents[1]
DATASETS = ("breast_cancer", "wine", "mnist_png", "digits")
PURPOSES = ("generation", "reconstruction", "representation")
# Everything else is the dataclasses' default (config.py): only the budget is cut.
BUDGET = {
    "full": {"study": {"refine_max": 2},
             "search": {"trials_per_dim": 2, "ae_trials_per_dim": 1, "replicates": 1, "cpu_workers": 2,
                        "train": {"epochs": 60}},
             "evaluate": {"iwae_samples": 20}, "report": {"bootstrap": 300}},
    "default": {"search": {"cpu_workers": 2}},  # the default params, budget and all
    "quick": {"study": {"refine_max": 0},
              "search": {"trials_per_dim": 1, "ae_trials_per_dim": 1, "replicates": 0, "reinforce": False,
                         "cpu_workers": 2, "train": {"epochs": 15, "max_epochs": 30}},
              "evaluate": {"iwae_samples": 8}, "report": {"bootstrap": 100}},
}
# The conv net that arch auto picks for 28 x 28 images costs about 0.4 s an epoch on 700 images at
# k = 28 and 1.7 s at k = 1176 (one core), some 20 times the tables' MLP: at the full budget the PNGs
# alone would take about 14 minutes, so they get fewer epochs and no seed replicates.
IMAGES_BUDGET = {"search": {"replicates": 0, "train": {"epochs": 40, "max_epochs": 80}}}


def merged(base: dict, extra: dict) -> dict:
    """base with extra's keys set, section by section."""
    out = dict(base)
    for key, value in extra.items():
        out[key] = merged(base.get(key, {}), value) if isinstance(value, dict) else value
    return out


# --- the data, as files -------------------------------------------------------------------------


def sklearn_table(name: str) -> pd.DataFrame:
    from sklearn import datasets

    bunch = getattr(datasets, f"load_{name}")()
    frame = pd.DataFrame(bunch.data, columns=list(bunch.feature_names))
    frame["label"] = np.asarray(bunch.target_names)[bunch.target]
    return frame


def write_pngs(mnist: Path, folder: Path, per_class: int) -> None:
    """The first per_class test images of each digit, as 28 x 28 grey PNGs in one folder per class."""
    from PIL import Image

    from latentstudy.data.idx import read_idx

    images = read_idx(mnist / "t10k-images-idx3-ubyte.gz")
    labels = read_idx(mnist / "t10k-labels-idx1-ubyte.gz")
    for digit in range(10):
        (folder / str(digit)).mkdir(parents=True)
        for i in np.flatnonzero(labels == digit)[:per_class]:
            Image.fromarray(np.ascontiguousarray(images[i])).save(folder / str(digit) / f"{i:05d}.png")


def data_params(name: str, root: Path, args: argparse.Namespace) -> dict:
    if name == "breast_cancer":
        sklearn_table(name).to_csv(path := root / "breast_cancer.csv", index=False)
        return {"name": "file", "path": str(path), "labels_key": "label"}
    if name == "wine":
        sklearn_table(name).to_parquet(path := root / "wine.parquet", index=False)
        return {"name": "file", "path": str(path), "labels_key": "label"}
    if name == "mnist_png":
        write_pngs(args.mnist, path := root / "mnist_png", 30 if args.budget == "quick" else 100)
        return {"name": "images", "path": str(path)}
    if name == "digits":
        return {"name": "digits"}
    raise SystemExit(f"unknown dataset {name!r}; allowed: {', '.join(DATASETS)}")


# --- one run and what it wrote ------------------------------------------------------------------


def run_stages(root: Path) -> None:
    """prepare, pca, search, evaluate and report on root/params.yaml, in dvc.yaml's layout below root."""
    p, prepared, rep, models = root / "params.yaml", root / "data" / "prepared", root / "reports", root / "models"
    stages.prepare(contracts.PreparePaths(p, prepared), root)
    stages.pca(contracts.PcaPaths(p, prepared, rep / "pca" / "metrics.json", rep / "pca" / "curve.csv",
                               models / "pca.npz"))
    stages.search(contracts.SearchPaths(p, prepared, models / "search", rep / "search" / "trials.csv",
                                     rep / "search" / "metrics.json", rep / "search" / "study.json"), root, None)
    stages.evaluate(contracts.EvaluatePaths(p, prepared, models / "search", rep / "search" / "study.json",
                                         models / "pca.npz", rep / "evaluate" / "evaluation.json",
                                         rep / "evaluate" / "per_example.npz"))
    stages.report(contracts.ReportPaths(p, prepared, rep / "evaluate" / "evaluation.json",
                                     rep / "evaluate" / "per_example.npz", rep / "search" / "trials.csv",
                                     rep / "pca" / "metrics.json", rep / "search" / "study.json", models / "search",
                                     models / "pca.npz", rep), None)


def likelihood(study: dict, summary: dict) -> str:
    """The decoder likelihood the search trained with, chosen as the search chose it; ? if this version
    cannot say."""
    try:
        from latentstudy.data.scaling import in_unit_interval
        from latentstudy.models import choose_likelihood

        requested = study["search"]["model"]["likelihood"]
        return choose_likelihood(requested, summary["image_shape"], in_unit_interval(summary["scaling"]))[0]
    except (ImportError, KeyError, TypeError, StudyError):
        return "?"


def still_improving(trials: pd.DataFrame) -> dict:
    """Finished trainings still improving at the epoch ceiling, in all and per arm."""
    if "still_improving" not in trials:
        return {"count": None, "finished": None, "by_arm": {}}
    done = trials[trials["state"] == "COMPLETE"]
    flag = done["still_improving"].map(_flag).fillna(False).astype(bool)
    return {"count": int(flag.sum()), "finished": len(done),
            "by_arm": {arm: [int(flag[done["arm"] == arm].sum()), int((done["arm"] == arm).sum())]
                       for arm in sorted(done["arm"].unique())}}


def _flag(value) -> bool | None:
    """A True/False cell of a CSV as pandas reads it (bool, or text where the column has blanks); None if blank."""
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else str(value).lower() == "true"


def ae_over_pca(table: pd.DataFrame) -> list[dict]:
    """Per searched size: the autoencoder's test squared error over PCA's, and which code won."""
    out = []
    for _, r in table.iterrows():
        pca, ae = r.get("pca_sse_per_image"), r.get("ae_sse_per_image")
        # JSON has no infinity: PCA's exact reconstruction (k >= D) leaves the ratio null.
        ratio = None if pd.isna(ae) or pd.isna(pca) or pca == 0 else float(ae / pca)
        out.append({"latent_dim": int(r["latent_dim"]), "ratio": ratio,
                    "pca_sse_per_image": None if pd.isna(pca) else float(pca),
                    "ae_sse_per_image": None if pd.isna(ae) else float(ae),
                    "code": r.get("recon_code") if isinstance(r.get("recon_code"), str) else None,
                    "undertrained": _flag(r.get("ae_undertrained"))})
    return out


def answer(a: dict | None) -> dict | None:
    if a is None or a.get("latent_dim") is None:
        return None if a is None else {"k": None, "missing": a.get("missing")}
    keys = ("likely_set", "stability", "indistinguishable", "cannot_tell", "plain_words", "notes")
    return {"k": a["latent_dim"], **{key: a.get(key, "?") for key in keys}}


def run_dataset(name: str, args: argparse.Namespace, root: Path) -> dict:
    budget = BUDGET[args.budget]
    if name == "mnist_png" and args.budget == "full":
        budget = merged(budget, IMAGES_BUDGET)
    params = {"data": data_params(name, root, args), **budget}
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    start = time.perf_counter()
    try:
        run_stages(root)
    except StudyError as exc:  # a refusal is a finding on data as users bring it
        return {"dataset": name, "error": str(exc), "seconds": round(time.perf_counter() - start, 1)}
    seconds = time.perf_counter() - start
    rep = root / "reports"
    rec = json.loads((rep / "recommendation.json").read_text())
    study = json.loads((rep / "search" / "study.json").read_text())
    summary = json.loads((root / "data" / "prepared" / "summary.json").read_text())
    scaling = summary.get("scaling", {})
    table_csv = pd.read_csv(rep / "table.csv")
    units = dict(zip(table_csv.latent_dim, table_csv.vae_active_units))
    return {
        "dataset": name, "n": summary.get("n_examples"), "D": summary.get("input_dim"),
        "scaling": scaling.get("method", "?"), "scaling_why": scaling.get("why", "?"),
        "likelihood": likelihood(study, summary),
        "added": [s["latent_dim"] for s in study.get("sizes", []) if s.get("phase") != "grid"],
        "headline": rec.get("headline"),
        "answers": {p: answer(rec["answers"].get(p)) for p in PURPOSES},
        "ae_over_pca": ae_over_pca(table_csv),
        "active_units": {p: units.get(rec["answers"][p].get("latent_dim")) for p in PURPOSES if p in rec["answers"]},
        "still_improving": still_improving(pd.read_csv(rep / "search" / "trials.csv")),
        "seconds": round(seconds, 1),
    }


# --- printing -----------------------------------------------------------------------------------


def _set(ks) -> str:
    return "?" if not isinstance(ks, list) else "{" + ", ".join(map(str, ks)) + "}"


def table(rows: list[dict]) -> str:
    lines = ["| dataset | purpose | k | 90% set | indistinguishable | stability | cannot tell | VAE active units at k |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['dataset']} | - | error: {r['error']} | | | | | |")
            continue
        for purpose, a in r["answers"].items():
            if a is None or a["k"] is None:
                cells = ["-", f"no answer: {a['missing']}" if a else "-", "", "", "", ""]
            else:
                stab = f"{a['stability']:.0%}" if isinstance(a["stability"], float) else "?"
                cells = [str(a["k"]), _set(a["likely_set"]), _set(a["indistinguishable"]), stab,
                         {True: "yes", False: "no"}.get(a["cannot_tell"], "?"),
                         str(r["active_units"].get(purpose, "?"))]
            lines.append(f"| {r['dataset']} | {purpose}{'*' if purpose == r['headline'] else ''} | "
                         + " | ".join(cells) + " |")
    return "\n".join(lines)


def _ratio(c: dict) -> str:
    if c["ratio"] is not None:
        return f"{c['ratio']:.2f}"
    return "inf" if c["pca_sse_per_image"] == 0 and c["ae_sse_per_image"] is not None else "-"


def dataset_line(r: dict) -> str:
    if "error" in r:
        return f"{r['dataset']}: error after {r['seconds'] / 60:.1f} min: {r['error']}"
    ratios = ", ".join(f"{c['latent_dim']}: " + _ratio(c)
                       + (" (pca)" if c["code"] == "pca" else "") + ("!" if c["undertrained"] else "")
                       for c in r["ae_over_pca"])
    s = r["still_improving"]
    improving = "?" if s["count"] is None else f"{s['count']}/{s['finished']}" + (
        f" ({s['count'] / s['finished']:.0%})" if s["finished"] else "")
    return (f"{r['dataset']} ({r['n']} x {r['D']}; scaling {r['scaling']}, likelihood {r['likelihood']}; "
            f"added {', '.join(map(str, r['added'])) or '-'}): AE/PCA test SSE {ratios}; "
            f"still improving at the ceiling {improving}; {r['seconds'] / 60:.1f} min")


def words(rows: list[dict]) -> list[str]:
    """The sentences the answers carry: plain words where sizes cannot be told apart, and notes."""
    out = []
    for r in rows:
        for purpose, a in (r.get("answers") or {}).items():
            said = [a.get("plain_words")] + list(a.get("notes") or []) if a and a["k"] is not None else []
            out += [f"{r['dataset']} {purpose}: {s}" for s in said if isinstance(s, str) and s != "?"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=DATASETS)
    parser.add_argument("--mnist", type=Path, default=ROOT.parent / "shared" / "data" / "mnist",
                        help="folder with t10k-images-idx3-ubyte.gz and t10k-labels-idx1-ubyte.gz")
    parser.add_argument("--budget", choices=sorted(BUDGET), default="full",
                        help="full: the cut budget above; default: the default params' own; quick: a smoke run")
    parser.add_argument("--out", type=Path, default=Path("reports/real_data.json"))
    args = parser.parse_args()
    rows, start = [], time.perf_counter()
    for i, name in enumerate(args.datasets, start=1):
        print(f"[real_data] {i}/{len(args.datasets)} {name}: start, {(time.perf_counter() - start) / 60:.1f} min "
              "elapsed", flush=True)
        with tempfile.TemporaryDirectory(prefix=f"real-{name}-") as tmp:
            rows.append(run_dataset(name, args, Path(tmp)))
        print(f"[real_data] {i}/{len(args.datasets)} {name}: done, {(time.perf_counter() - start) / 60:.1f} min "
              f"elapsed\n[real_data] {dataset_line(rows[-1])}", flush=True)
    print(table(rows))
    print("\n".join(dataset_line(r) for r in rows))
    print("\n".join(words(rows)))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=2) + "\n")
    print(f"[real_data] wrote {args.out}")


if __name__ == "__main__":
    main()
