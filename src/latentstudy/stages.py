"""One function per DVC stage: load the stage's params sections, read its declared inputs,
call the logic, write its declared outputs (removed again if anything fails); and run_stage,
which turns a user error in a stage into one line and exit status 2.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

from latentstudy import config
from latentstudy.config import StudyError
from latentstudy.contracts import Inputs, Searched, read_json


def run_stage(main: Callable[[], None]) -> None:
    """Run a stage's main: a user error prints one line and exits 2, with no traceback."""
    try:
        main()
    except StudyError as exc:
        print(f"error: {exc}", file=sys.stderr)
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


def write_json(path: Path, obj: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2) + "\n")


def prepare(params: Path, out_dir: Path, root: Path) -> dict:
    from latentstudy.data import prepare as prep

    cfg = config.load_section(params, "data")
    with outputs(out_dir):
        summary = prep.run(cfg, root, out_dir)
    counts, ids = summary["counts"], summary["intrinsic_dim"]
    print(f"[prepare] {summary['source']}: {summary['n_examples']} examples x {summary['input_dim']} features "
          f"-> train {counts['train']} / val {counts['val']} / test {counts['test']}; intrinsic dimension "
          + ", ".join(f"{label} {ids[key]} (95% {ids[f'{key}_interval']})" for key, label in
                      (("twonn", "TwoNN"), ("mle", "MLE")) if ids.get(key) is not None))
    for key, reason in (ids.get("rejected") or {}).items():
        print(f"[prepare] warning: intrinsic dimension ({key}) rejected: {reason}; check the data "
              "(data.image_shape, constant or duplicated features)")
    return summary


def pca(params: Path, prepared: Path, metrics_json: Path, curve_csv: Path, basis_path: Path) -> dict:
    import pandas as pd

    from latentstudy import data
    from latentstudy import pca as pca_mod

    study = config.load_section(params, "study")
    cfg = config.load_section(params, "pca")
    x_train, _ = data.load_split(prepared, "train")
    x_test, _ = data.load_split(prepared, "test")
    ks = study.sizes(x_train.shape[1])
    with outputs(metrics_json, curve_csv, basis_path):
        basis = pca_mod.fit(x_train)
        metrics = {
            "input_dim": basis.input_dim,
            "n_components": basis.n_components,
            "components_for_variance": {f"{t:g}": pca_mod.components_for(basis, t) for t in cfg.variance_targets},
            "latent_dims": {f"k{k}": pca_mod.metrics_at(basis, x_test, k) for k in ks},
        }
        basis_path.parent.mkdir(parents=True, exist_ok=True)
        pca_mod.save(basis, basis_path)
        write_json(metrics_json, metrics)
        curve_csv.parent.mkdir(parents=True, exist_ok=True)
        pd.DataFrame(pca_mod.curve(basis, x_test)).to_csv(curve_csv, index=False)
    needed = ", ".join(f"{int(float(t) * 100)}%: {k}" for t, k in metrics["components_for_variance"].items())
    print(f"[pca] {basis.n_components} components; components for explained variance {needed}")
    for k in ks:
        m = metrics["latent_dims"][f"k{k}"]
        print(f"[pca] k={k:<4} test squared error per image {m['sse_per_image']:.3f}  "
              f"explained variance {m['explained_variance_ratio']:.3f}")
    return metrics


def search(params: Path, prepared: Path, root: Path, models_dir: Path, trials_csv: Path, metrics_json: Path,
           study_json: Path, tracking: str | None) -> None:
    from latentstudy import data, recommend
    from latentstudy.search import coordinator
    from latentstudy.search.validation import Rule
    from latentstudy.tracking import require_reachable

    study = config.load_section(params, "study")
    cfg = config.load_section(params, "search")
    rep = config.load_section(params, "report")
    ev = config.load_section(params, "evaluate")
    if tracking:
        require_reachable(tracking)  # before anything is read or written
    summary = data.load_summary(prepared)
    recommend.check_purpose(rep.purpose, summary["has_labels"], recommend.label_classes(summary))
    # The search decides which sizes to add with the report's rule, on validation.
    rule = Rule(rep.purpose, rep.tolerance, rep.bootstrap, study.seed, ev.iwae_samples, ev.probe_max_train)
    with outputs(models_dir, trials_csv, metrics_json, study_json):
        coordinator.run(study, cfg, prepared, root, models_dir, trials_csv, metrics_json, study_json, tracking, rule)


def evaluate(params: Path, prepared: Path, models_dir: Path, study_json: Path, basis_path: Path, out_json: Path,
             per_example_npz: Path) -> dict:
    from latentstudy import data
    from latentstudy import evaluate as evaluate_mod
    from latentstudy import pca as pca_mod

    cfg = config.load_section(params, "evaluate")
    searched = Searched.load(study_json)
    x_train, y_train = data.load_split(prepared, "train")
    x_val, _ = data.load_split(prepared, "val")
    x_test, y_test = data.load_split(prepared, "test")
    basis = pca_mod.load(basis_path)
    with outputs(out_json, per_example_npz):
        result, arrays = evaluate_mod.run(searched.sizes, searched.models, models_dir, basis, x_train, y_train,
                                          x_val, x_test, y_test, cfg.iwae_samples, cfg.probe_max_train, cfg.seed)
        write_json(out_json, result)
        evaluate_mod.save_per_example(per_example_npz, arrays)
    return result


def report(params: Path, prepared: Path, evaluation_json: Path, per_example_npz: Path, trials_csv: Path,
           pca_metrics: Path, study_json: Path, models_dir: Path, basis_path: Path, out_dir: Path,
           tracking: str | None) -> None:
    import pandas as pd

    from latentstudy import data, recommend, report as rep
    from latentstudy import evaluate as evaluate_mod
    from latentstudy import pca as pca_mod
    from latentstudy.tracking import require_reachable

    cfg = config.load_section(params, "report")
    if tracking:
        require_reachable(tracking)  # now, not after the report's work
    x_test, y_test = data.load_split(prepared, "test")
    summary = data.load_summary(prepared)
    recommend.check_purpose(cfg.purpose, summary["has_labels"], recommend.label_classes(summary))
    if not per_example_npz.is_file():
        raise StudyError(f"{per_example_npz}: not found; run the stages before the report (dvc repro)")
    inp = Inputs(read_json(evaluation_json), evaluate_mod.load_per_example(per_example_npz),
                 pd.read_csv(trials_csv), summary, read_json(pca_metrics), Searched.load(study_json), x_test, y_test,
                 models_dir, pca_mod.load(basis_path))
    table = rep.build_table(inp.evaluation)
    paths = rep.output_paths(out_dir)
    with outputs(*paths.values(), rep.staging(out_dir)):
        rec = rep.recommendation(cfg, inp)
        rep.write(cfg, inp, table, rec, paths)
    for name, answer in rec.answers.items():
        print(f"[report] {name}{' (headline)' if name == rec.headline else ''}: {answer.summary()}")
    print(f"[report] wrote {paths['html']}, {paths['table']}, {paths['metrics']}")
    if tracking:
        rep.log_to_mlflow(tracking, inp, table, rec, paths, config.as_dict(cfg))

