"""One function per DVC stage: load the stage's params sections, read its declared inputs,
call the logic, write its declared outputs (removed again if anything fails); each stage's paths
as one frozen object built from its command line (a path is written in dvc.yaml and nowhere
else); and run_stage, which turns a user error in a stage into one line and exit status 2.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import sys
from collections.abc import Callable, Iterator
from dataclasses import fields
from pathlib import Path

from latentstudy import paramfile
from latentstudy.config import StudyError, store_fault
from latentstudy.contracts import (
    EvaluatePaths,
    Inputs,
    PcaPaths,
    PreparePaths,
    ReportPaths,
    Searched,
    SearchPaths,
    Summary,
    report_outputs,
)
from latentstudy.evaluation import Evaluation, PerExample, read_json


def run_stage(main: Callable[[], None]) -> None:
    """Run a stage's main: a user error, a full disk or a place it cannot write prints one line and
    exits 2, with no traceback."""
    try:
        main()
    except StudyError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except OSError as exc:
        # A write without a file name (a full disk mid-write) names the folder the stage runs in.
        fault = store_fault(exc.filename or Path.cwd(), exc)
        if fault is None:
            raise
        print(f"error: {fault}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)


@contextlib.contextmanager
def outputs(*paths: Path) -> Iterator[None]:
    """Remove a stage's outputs if it fails, so no half-written file outlives the error."""
    try:
        yield
    except BaseException:
        for path in paths:
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            elif path.exists():
                path.unlink()
        raise


def parse_paths(kind: type, description: str, script: str, tracked: bool = False):
    """(the stage's paths object, whether --no-tracking was given) from the command line. A path
    left out is the one the stage's cmd gives in the dvc.yaml beside the script's pipeline folder,
    so each path is written there and nowhere else."""
    given = cmd_paths(Path(script))
    p = argparse.ArgumentParser(description=description)
    for f in fields(kind):
        flag = "--" + f.name.replace("_", "-")
        p.add_argument(flag, type=Path, default=given.get(flag), required=flag not in given)
    if tracked:
        p.add_argument("--no-tracking", action="store_true", help="skip MLflow")
    args = p.parse_args()
    return kind(**{f.name: getattr(args, f.name) for f in fields(kind)}), bool(getattr(args, "no_tracking", False))


def cmd_paths(script: Path) -> dict[str, Path]:
    """{--flag: path} of the dvc.yaml stage whose cmd runs this script; {} without one."""
    import shlex

    import yaml

    dvc_yaml = script.resolve().parents[1] / "dvc.yaml"
    if not dvc_yaml.is_file():
        return {}
    for stage in (yaml.safe_load(dvc_yaml.read_text()) or {}).get("stages", {}).values():
        words = shlex.split(str(stage.get("cmd", "")))
        if words[1:2] == [f"{script.parent.name}/{script.name}"]:
            return {flag: Path(value) for flag, value in zip(words[2:], words[3:])
                    if flag.startswith("--") and not value.startswith("--")}
    return {}


def write_json(path: Path, obj: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2) + "\n")


def prepare(paths: PreparePaths, root: Path) -> Summary:
    from latentstudy.data import prepare as prep

    cfg = paramfile.load_section(paths.params, "data")
    with outputs(paths.out):
        summary = prep.run(cfg, root, paths.out)
    counts, ids = summary.counts, summary.intrinsic_dim
    print(f"[prepare] {summary.source}: {summary.n_examples} examples x {summary.input_dim} features "
          f"-> train {counts['train']} / val {counts['val']} / test {counts['test']}; intrinsic dimension "
          + ", ".join(f"{label} {ids[key]} (95% {ids[f'{key}_interval']})" for key, label in
                      (("twonn", "TwoNN"), ("mle", "MLE")) if ids.get(key) is not None))
    for key, reason in (ids.get("rejected") or {}).items():
        print(f"[prepare] warning: intrinsic dimension ({key}) rejected: {reason}; check the data "
              "(data.image_shape, constant or duplicated features)")
    return summary


def pca(paths: PcaPaths) -> dict:
    import pandas as pd

    from latentstudy import data, intrinsic
    from latentstudy import pca as pca_mod

    study = paramfile.load_section(paths.params, "study")
    cfg = paramfile.load_section(paths.params, "pca")
    x_train, _ = data.load_split(paths.data, "train")
    x_test, _ = data.load_split(paths.data, "test")
    ks = study.sizes(x_train.shape[1], intrinsic.upper(data.load_summary(paths.data).intrinsic_dim))
    metrics_json, curve_csv, basis_path = paths.metrics, paths.curve, paths.basis
    with outputs(metrics_json, curve_csv, basis_path):
        basis = pca_mod.fit(x_train)
        # The DVC metrics: a few numbers. Each size's test values are in curve.csv (every number of
        # components) and in the evaluation (every searched size).
        metrics = {
            "input_dim": basis.input_dim,
            "n_components": basis.n_components,
            "components_for_variance": {f"{t:g}": pca_mod.components_for(basis, t) for t in cfg.variance_targets},
        }
        basis_path.parent.mkdir(parents=True, exist_ok=True)
        pca_mod.save(basis, basis_path)
        write_json(metrics_json, metrics)
        curve_csv.parent.mkdir(parents=True, exist_ok=True)
        pd.DataFrame(pca_mod.curve(basis, x_test)).to_csv(curve_csv, index=False)
    needed = ", ".join(f"{int(float(t) * 100)}%: {k}" for t, k in metrics["components_for_variance"].items())
    print(f"[pca] {basis.n_components} components; components for explained variance {needed}")
    for k in ks:
        m = pca_mod.metrics_at(basis, x_test, k)
        print(f"[pca] k={k:<4} test squared error per image {m['sse_per_image']:.3f}  "
              f"explained variance {m['explained_variance_ratio']:.3f}")
    return metrics


def search(paths: SearchPaths, root: Path, tracking: str | None) -> None:
    from latentstudy import data, recommend
    from latentstudy.search import coordinator
    from latentstudy.search.validation import Rule
    from latentstudy.tracking import require_reachable

    params, prepared = paths.params, paths.data
    study = paramfile.load_section(params, "study")
    cfg = paramfile.load_section(params, "search")
    rep = paramfile.load_section(params, "report")
    ev = paramfile.load_section(params, "evaluate")
    if tracking:
        require_reachable(tracking)  # before anything is read or written
    summary = data.load_summary(prepared)
    recommend.check_purpose(rep.purpose, summary.has_labels, summary.classes)
    # The search decides which sizes to add with the report's rule, on validation.
    rule = Rule(rep.purpose, rep.tolerance, rep.bootstrap, study.seed, ev.iwae_samples, ev.probe_max_train)
    with outputs(paths.models, paths.trials, paths.metrics, paths.study):
        coordinator.run(study, cfg, paths, root, tracking, rule)


def evaluate(paths: EvaluatePaths) -> Evaluation:
    from latentstudy import data
    from latentstudy import evaluate as evaluate_mod
    from latentstudy import pca as pca_mod

    cfg = paramfile.load_section(paths.params, "evaluate")
    searched = Searched.load(paths.study)
    x_train, y_train = data.load_split(paths.data, "train")
    x_val, _ = data.load_split(paths.data, "val")
    x_test, y_test = data.load_split(paths.data, "test")
    basis = pca_mod.load(paths.basis)
    with outputs(paths.out, paths.per_example):
        test = evaluate_mod.on_split(basis, x_train, y_train, x_test, y_test, cfg)
        result, per_example = evaluate_mod.run(searched.sizes, searched.models, paths.models, basis, test, x_val)
        result.save(paths.out)
        per_example.save(paths.per_example)
    return result


def report(paths: ReportPaths, tracking: str | None) -> None:
    import pandas as pd

    from latentstudy import data, recommend, report as rep
    from latentstudy import pca as pca_mod
    from latentstudy.tracking import require_reachable

    cfg = paramfile.load_section(paths.params, "report")
    if tracking:
        require_reachable(tracking)  # now, not after the report's work
    x_test, y_test = data.load_split(paths.data, "test")
    summary = data.load_summary(paths.data)
    recommend.check_purpose(cfg.purpose, summary.has_labels, summary.classes)
    inp = Inputs(Evaluation.load(paths.evaluation), PerExample.load(paths.per_example),
                 pd.read_csv(paths.trials), summary, read_json(paths.pca_metrics), Searched.load(paths.study), x_test,
                 y_test, paths.models, pca_mod.load(paths.basis))
    table = rep.build_table(inp.evaluation)
    written = report_outputs(paths.out)
    with outputs(*written.values(), rep.staging(paths.out)):
        rec = recommend.recommendation(cfg, inp)
        rep.write(cfg, inp, table, rec, written)
    for name, answer in rec.answers.items():
        print(f"[report] {recommend.answer_line(name, rec.headline, answer.summary())}")
    print(f"[report] wrote {written['html']}, {written['table']}, {written['metrics']}")
    if tracking:
        run_id = rep.log_to_mlflow(tracking, inp, table, rec, written, paramfile.as_dict(cfg))
        rep.register_answers(tracking, inp, rec, run_id)

