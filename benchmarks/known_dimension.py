"""Known answers, measured: the whole pipeline on data whose intrinsic dimension d is known, from a
coarse grid [2, 4, 8, 16]. Prints, per case, the truth against each purpose's answer with its 90%
set, the sizes the search added, the sizes with seed replicates, and the wall time.

    .venv/bin/python benchmarks/known_dimension.py                      # manifold d = 3, 5, 7 (+ shapes)
    .venv/bin/python benchmarks/known_dimension.py --cases manifold:3 shapes:5 --cpu-workers 2
    .venv/bin/python benchmarks/known_dimension.py --quick              # fewer trials and epochs: a smoke run

Cases: `manifold:d` is the built-in smooth embedding of [0,1]^d in R^32 (data.name manifold),
4,000 points, no noise, curvature 0.5, modelled by an MLP of widths 256, 256 (--ambient, --noise,
--curvature, --hidden). Each of these decides whether the truth is d at all, measured:
- D above the grid: at k >= D an autoencoder can be the identity. Embedded in R^16, the grid's
  k = 16 won reconstruction at every d (16, {16}).
- No noise: noise in every coordinate gives the data D dimensions. Each code unit past d then
  reproduces one more direction of each test example's own noise (sigma^2 less squared error
  per unit), so reconstruction's true answer is "as wide as possible", not d.
- Width: with widths 128, 128 the autoencoder at d = 7 kept improving with a wider code
  (reconstruction 16, {11, 16}); generation was right with either.
`shapes:d` is one grey shape per 32x32 image with d free factors, from x, y, scale, rotation,
aspect, brightness (data.name shapes; skipped with a note where this version has no
such data). Each case runs prepare, pca, search, evaluate and report (stages.py, no MLflow) in
a temporary folder. An answer is right when its interval (the span of its 90% set) contains d or
d + 1 (a code one wider than the data's dimension costs little); MISS marks the others. Nothing
is asserted; it prints a table and writes the rows as JSON.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import typing
from pathlib import Path

import yaml

from latentstudy import config, contracts, stages

GRID = [2, 4, 8, 16]
SHAPE_FACTORS = ["x", "y", "scale", "rotation", "aspect", "brightness"]


def data_params(kind: str, d: int, args: argparse.Namespace) -> dict:
    if kind == "manifold":
        return {"name": "manifold", "intrinsic_max_points": 4000,
                "manifold": {"intrinsic_dim": d, "ambient_dim": args.ambient, "n": 4000, "noise": args.noise,
                             "curvature": args.curvature, "seed": 0}}
    if kind == "shapes":  # the hook for images of known dimension
        if d > len(SHAPE_FACTORS):
            raise SystemExit(f"shapes:{d}: at most {len(SHAPE_FACTORS)} free factors")
        return {"name": "shapes", "shapes": {"factors": SHAPE_FACTORS[:d], "size": 32, "n": 3000, "seed": 0},
                "intrinsic_max_points": 3000}
    raise SystemExit(f"unknown case kind {kind!r}; allowed: manifold:d, shapes:d")


def available(kind: str) -> bool:
    return kind in typing.get_args(config.DatasetName)


def params(kind: str, d: int, args: argparse.Namespace) -> dict:
    quick = args.quick
    model = ({"arch": "mlp", "hidden": args.hidden, "likelihood": "gaussian"} if kind == "manifold"
             else {"arch": "auto", "likelihood": "bernoulli"})
    return {
        "data": data_params(kind, d, args),
        "study": {"latent_dims": GRID, "seed": args.seed, "refine_max": 4},
        # The manifold test's settings (tests/test_pipeline.py): a Gaussian decoder and KL warm-up,
        # beta at most 1 (above it, and with short training, the posterior collapses: every k alike).
        "search": {"trials_per_dim": 2 if quick else 3, "ae_trials_per_dim": 1 if quick else 2,
                   "beta": {"low": 0.5, "high": 1.0}, "lr": {"low": 2.0e-3, "high": 5.0e-3}, "pruner": "none",
                   "model": model, "replicates": 1 if quick else 2,
                   "train": {"epochs": 60 if quick else 300, "batch_size": 64, "patience": 15 if quick else 30,
                             "kl_warmup_epochs": 20},
                   "device": "auto", "cpu_workers": args.cpu_workers},
        "evaluate": {"iwae_samples": 16 if quick else 64, "probe_max_train": 2000},
        "report": {"bootstrap": 1000, "purpose": args.purpose},
    }


def run_case(kind: str, d: int, args: argparse.Namespace, root: Path) -> dict:
    (root / "params.yaml").write_text(yaml.safe_dump(params(kind, d, args), sort_keys=False))
    p, prepared, out = root / "params.yaml", root / "data", root / "reports"
    start = time.perf_counter()
    stages.prepare(contracts.PreparePaths(p, prepared), root)
    stages.pca(contracts.PcaPaths(p, prepared, out / "pca.json", out / "curve.csv", root / "pca.npz"))
    stages.search(contracts.SearchPaths(p, prepared, root / "models", out / "trials.csv", out / "search.json",
                                     out / "study.json"), root, None)
    stages.evaluate(contracts.EvaluatePaths(p, prepared, root / "models", out / "study.json", root / "pca.npz",
                                         out / "evaluation.json", out / "per_example.npz"))
    stages.report(contracts.ReportPaths(p, prepared, out / "evaluation.json", out / "per_example.npz", out / "trials.csv",
                                     out / "pca.json", out / "study.json", root / "models", root / "pca.npz", out), None)
    seconds = time.perf_counter() - start
    rec = json.loads((out / "recommendation.json").read_text())
    study = json.loads((out / "study.json").read_text())
    row = {"case": f"{kind}:{d}", "d": d, "twonn": rec["checks"]["intrinsic_dim"].get("twonn"),
           "twonn_interval": rec["checks"]["intrinsic_dim"].get("twonn_interval"),
           "added": [s["latent_dim"] for s in study["sizes"] if s["phase"] == "added"],
           "replicated": study["replicates"], "seconds": round(seconds, 1), "answers": {}}
    for name, a in rec["answers"].items():
        if a["latent_dim"] is None:
            continue
        low, high = a["interval"]
        row["answers"][name] = {"k": a["latent_dim"], "set": a["likely_set"], "stability": a["stability"],
                                "right": low <= d <= high or low <= d + 1 <= high}
    return row


def table(rows: list[dict]) -> str:
    lines = ["| case | d | TwoNN (95%) | generation: k, 90% set | reconstruction: k, 90% set | added | wall |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        cells = []
        for name in ("generation", "reconstruction"):
            a = r["answers"].get(name)
            cells.append("-" if a is None else
                         f"{a['k']}, {{{', '.join(map(str, a['set']))}}} ({a['stability']:.0%})"
                         + ("" if a["right"] else " MISS"))
        low, high = r["twonn_interval"] or (None, None)
        two = f"{r['twonn']:.1f} ({low:.1f}-{high:.1f})" if r["twonn"] is not None else "-"
        lines.append(f"| {r['case']} | {r['d']} | {two} | {cells[0]} | {cells[1]} | "
                     f"{', '.join(map(str, r['added'])) or '-'} | {r['seconds'] / 60:.1f} min |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", nargs="+", default=["manifold:3", "manifold:5", "manifold:7", "shapes:4",
                                                        "shapes:5"])
    parser.add_argument("--cpu-workers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--noise", type=float, default=0.0,
                        help="manifold: Gaussian noise per coordinate; with it, reconstruction's error keeps "
                             "falling with every unit of code up to D")
    parser.add_argument("--curvature", type=float, default=0.5,
                        help="manifold: the scale of the embedding's frequencies (data default 1.5: more bent than "
                             "these models unfold from 4,000 points in a few minutes)")
    parser.add_argument("--ambient", type=int, default=32,
                        help="manifold: the dimension D the data lives in; above the grid's largest size")
    parser.add_argument("--hidden", type=int, nargs="+", default=[256, 256], help="manifold: the MLP's widths")
    parser.add_argument("--purpose", default="auto", help="report.purpose: the one whose rule drives refinement")
    parser.add_argument("--quick", action="store_true", help="fewer trials, epochs and samples")
    parser.add_argument("--out", type=Path, default=Path("reports/known_dimension.json"))
    args = parser.parse_args()
    rows = []
    for case in args.cases:
        kind, d = case.split(":")
        if not available(kind):
            print(f"[known_dimension] skip {case}: this version has no data.name {kind}")
            continue
        with tempfile.TemporaryDirectory(prefix=f"known-{kind}{d}-") as tmp:
            rows.append(run_case(kind, int(d), args, Path(tmp)))
        print(table(rows[-1:]).splitlines()[-1], flush=True)
    print(table(rows))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=2) + "\n")
    print(f"[known_dimension] wrote {args.out}")


if __name__ == "__main__":
    main()
