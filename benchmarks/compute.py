"""What the search's economies save, measured in one run: each case is run twice with the same seed
and workers, the economies off (the earlier behaviour: Optuna's median pruner, seed replicates at every
size and arm, an added size with the grid's budgets) and on (the defaults: successive halving inside
stacks, search.pruner stack; replicates one seed at a time at the sizes that can move an answer,
search.replicate_sizes answer; half the budgets for an added size, search.added_budget 0.5). Prints, per case
and way, the trial-epochs (epochs summed over every trial started, pruned and failed included), the
models trained (trials started), the wall time and each purpose's answer with its 90% set, then the
ratios off / on; writes the rows as JSON (--out). Nothing is asserted.

    .venv/bin/python benchmarks/compute.py                       # the default study (about 7 min on 2 cores)
    .venv/bin/python benchmarks/compute.py --cases default manifold:3 manifold:5 manifold:7   # and the
                                                                 # known-dimension cases (about 45 min more)
    .venv/bin/python benchmarks/compute.py --cases manifold:3 --quick   # a smoke run of one case

    .venv/bin/python benchmarks/compute.py --cases mnist:3000 --ways on   # real size: the default study on
                                                                 # 3,000 MNIST test images (28 x 28)

Cases: `default` is params.yaml's defaults on digits (the study `make study` runs); `manifold:d` is the
known-dimension benchmark's case (benchmarks/known_dimension.py params, its --quick with --quick);
`mnist:n` is the default study on n images of the MNIST test set (IDX files in --mnist). Each runs
prepare, pca, search, evaluate and report (stages.py, no MLflow) in a temporary folder.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
import known_dimension  # noqa: E402  (the benchmark's cases, one definition)
from real_data import merged, run_stages  # noqa: E402

PURPOSES = ("generation", "reconstruction", "representation")
WAYS = {
    "off": {"search": {"pruner": "median", "replicate_sizes": "all", "added_budget": 1.0}},
    "on": {"search": {"pruner": "stack", "replicate_sizes": "answer", "added_budget": 0.5}},
}


def case_params(case: str, args: argparse.Namespace) -> dict:
    if case == "default":
        return {"search": {"cpu_workers": args.cpu_workers}}
    kind, d = case.split(":")
    if kind == "mnist":  # the default study on the first d images (stratified) of the MNIST test set
        return {"data": {"name": "mnist", "path": str(args.mnist), "subset": "test", "limit": int(d)},
                "search": {"cpu_workers": args.cpu_workers}}
    ns = argparse.Namespace(ambient=32, noise=0.0, curvature=0.5, hidden=[256, 256], seed=0, purpose="auto",
                            quick=args.quick, cpu_workers=args.cpu_workers)
    return known_dimension.params(kind, int(d), ns)


def run(case: str, way: str, args: argparse.Namespace, root: Path) -> dict:
    params = merged(case_params(case, args), WAYS[way])
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    start = time.perf_counter()
    run_stages(root)
    seconds = time.perf_counter() - start
    rep = root / "reports"
    trials = pd.read_csv(rep / "search" / "trials.csv")
    rec = json.loads((rep / "recommendation.json").read_text())
    study = json.loads((rep / "search" / "study.json").read_text())
    phases = {phase: int(group.epochs_run.fillna(0).sum()) for phase, group in trials.groupby("phase")}
    return {"case": case, "way": way, "trial_epochs": int(trials.epochs_run.fillna(0).sum()),
            "by_phase": phases, "models": len(trials), "finished": int((trials.state == "COMPLETE").sum()),
            "pruned": int((trials.state == "PRUNED").sum()), "seconds": round(seconds, 1),
            "replicated": study.get("replicates"),
            "answers": {p: {"k": a.get("latent_dim"), "set": a.get("likely_set")}
                        for p, a in rec["answers"].items() if p in PURPOSES}}


def _answer(a: dict | None) -> str:
    if not a or a["k"] is None:
        return "-"
    return f"{a['k']} {{{', '.join(map(str, a['set']))}}}"


def agree(off: dict, on: dict) -> str:
    """Per purpose: = equal answers; ~ each inside the other's 90% set; x neither."""
    marks = []
    for p in PURPOSES:
        a, b = off["answers"].get(p), on["answers"].get(p)
        if not a or not b or a["k"] is None or b["k"] is None:
            marks.append("-")
        elif a["k"] == b["k"]:
            marks.append("=")
        else:
            marks.append("~" if a["k"] in b["set"] and b["k"] in a["set"] else "x")
    return "".join(marks)


def table(rows: list[dict]) -> str:
    lines = ["| case | economies | trial-epochs | models (pruned) | wall | generation | reconstruction | "
             "representation |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        cells = " | ".join(_answer(r["answers"].get(p)) for p in PURPOSES)
        lines.append(f"| {r['case']} | {r['way']} | {r['trial_epochs']} | {r['models']} ({r['pruned']}) | "
                     f"{r['seconds'] / 60:.1f} min | {cells} |")
    for case in dict.fromkeys(r["case"] for r in rows):
        off = next((r for r in rows if r["case"] == case and r["way"] == "off"), None)
        on = next((r for r in rows if r["case"] == case and r["way"] == "on"), None)
        if off and on:
            lines.append(f"{case}: off / on = {off['trial_epochs'] / on['trial_epochs']:.2f}x trial-epochs, "
                         f"{off['models'] / on['models']:.2f}x models, {off['seconds'] / on['seconds']:.2f}x wall; "
                         f"answers (generation, reconstruction, representation) {agree(off, on)} "
                         "(= equal, ~ inside each other's 90% sets, x neither)")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", nargs="+", default=["default"])
    parser.add_argument("--ways", nargs="+", default=list(WAYS), choices=list(WAYS))
    parser.add_argument("--cpu-workers", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="manifold cases: known_dimension's --quick budget")
    parser.add_argument("--mnist", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist",
                        help="mnist cases: the folder of the MNIST test set's IDX files")
    parser.add_argument("--out", type=Path, default=Path("reports/compute.json"))
    args = parser.parse_args()
    rows = []
    for case in args.cases:
        for way in args.ways:
            with tempfile.TemporaryDirectory(prefix=f"compute-{case.replace(':', '')}-{way}-") as tmp:
                rows.append(run(case, way, args, Path(tmp)))
            print(table(rows[-1:]).splitlines()[2], flush=True)
    print(table(rows))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=2) + "\n")
    print(f"[compute] wrote {args.out}")


if __name__ == "__main__":
    main()
