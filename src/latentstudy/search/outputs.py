"""The search stage's outputs, read from the Optuna storage: the best model of every latent size
and arm (from the checkpoints search.weights found), trials.csv with one row per trial (and its
MLflow run as the tracking store has it now), metrics.json and study.json.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from latentstudy.search import keys
from latentstudy.search.plan import Plan, counts
from latentstudy.search.store import _redact

CSV_COLUMNS = ["study", "number", "latent_dim", "arm", "beta", "lr", "state", "fail_reason", "retry_of",
               "epochs_run", "best_epoch", "val_distortion_nats", "val_rate_nats", "val_neg_elbo_nats",
               "val_sse_per_image", "objective_value", "seconds", "n_params", "device", "worker", "mlflow_run_id"]


def trial_rows(snap: list, runs: dict[int, str]) -> list[dict]:
    rows = []
    for unit, trials in snap:
        retries = {t.user_attrs[keys.RETRY_OF]: t.number for t in trials if keys.RETRY_OF in t.user_attrs}
        for t in trials:
            if t.state.name == "WAITING":
                continue
            m = t.user_attrs.get(keys.METRICS, {})
            reason = t.user_attrs.get(keys.FAIL_REASON, "")
            if t.state.name == "FAIL" and not reason:
                reason = "worker lost (process died or stopped heartbeating)"
                if t.number in retries:
                    reason += f"; retried as trial {retries[t.number]}"
            rows.append({
                "study": unit.study_name, "number": t.number, "latent_dim": unit.latent_dim, "arm": unit.arm,
                "beta": t.params.get("beta"), "lr": t.params.get("lr"), "state": t.state.name,
                "fail_reason": reason, "retry_of": t.user_attrs.get(keys.RETRY_OF),
                "epochs_run": t.user_attrs.get(keys.EPOCHS_RUN), "best_epoch": t.user_attrs.get(keys.BEST_EPOCH),
                "val_distortion_nats": m.get("val_distortion"), "val_rate_nats": m.get("val_rate"),
                "val_neg_elbo_nats": m.get("val_neg_elbo"), "val_sse_per_image": m.get("val_sse"),
                "objective_value": t.value, "seconds": t.user_attrs.get(keys.SECONDS),
                "n_params": t.user_attrs.get(keys.N_PARAMS), "device": t.user_attrs.get(keys.DEVICE),
                "worker": t.user_attrs.get(keys.WORKER), "mlflow_run_id": runs.get(t._trial_id),
            })
    return rows


def best_trials(snap: list) -> dict[tuple[int, str], object]:
    best = {}
    for unit, trials in snap:
        done = [t for t in trials if t.state.name == "COMPLETE"]
        if done:
            best[(unit.latent_dim, unit.arm)] = min(done, key=lambda t: (t.value, t.number))
    return best


def metrics_summary(plan: Plan, snap: list, best: dict) -> dict:
    out = {"study": plan.prefix, "latent_dims": {}}
    for unit, trials in snap:
        c = counts(trials)
        entry = out["latent_dims"].setdefault(f"k{unit.latent_dim}", {})
        t = best.get((unit.latent_dim, unit.arm))
        m = t.user_attrs.get(keys.METRICS, {}) if t else {}
        entry[unit.arm] = {"complete": c["COMPLETE"], "failed": c["FAIL"], "pruned": c["PRUNED"],
                           "val_neg_elbo_nats": m.get("val_neg_elbo"), "val_distortion_nats": m.get("val_distortion"),
                           "val_sse_per_image": m.get("val_sse"), "beta": t.params.get("beta") if t else None,
                           "lr": t.params.get("lr") if t else None}
    return out


def write_outputs(plan: Plan, snap: list, url: str, tracker, experiment_id: str | None, prepared: Path,
                  models_dir: Path, trials_csv: Path, metrics_json: Path, study_json: Path, scratch: Path,
                  weights: dict[tuple[int, str], Path], runs: dict[int, str]) -> None:
    import pandas as pd

    from latentstudy import data, figures, models

    best = best_trials(snap)
    models_dir.mkdir(parents=True, exist_ok=True)
    summary = data.load_summary(prepared)
    x_val = data.load_split(prepared, "val")[0][:8]
    for (k, arm), trial in best.items():
        dest = models.best_path(models_dir, k, arm)
        shutil.copyfile(weights[(k, arm)], dest)
        run_id = runs.get(trial._trial_id)
        if tracker and run_id:
            model, _ = models.load_checkpoint(dest)
            grid = scratch / f"reconstructions-k{k}-{arm}.png"
            figures.reconstruction_strip(model, x_val, summary["image_shape"], grid)
            tracker.log_artifact(run_id, grid, "figures")
            tracker.log_artifact(run_id, dest, "model")
            tracker.set_tags(run_id, {"latentstudy.best_of_size": "true"})
    trials_csv.parent.mkdir(parents=True, exist_ok=True)
    table = pd.DataFrame(trial_rows(snap, runs), columns=CSV_COLUMNS)
    for col in ("retry_of", "epochs_run", "best_epoch", "n_params"):
        table[col] = table[col].astype("Int64")
    table.to_csv(trials_csv, index=False)
    metrics_json.write_text(json.dumps(metrics_summary(plan, snap, best), indent=2) + "\n")
    study_json.write_text(json.dumps({
        "prefix": plan.prefix, "storage": url if url.startswith("journal:") else _redact(url),
        "experiment": plan.experiment, "experiment_id": experiment_id, "parent_run_id": plan.parent_run_id,
        "studies": [u.study_name for u in plan.units], "objective": plan.config.objective,
        "latent_dims": sorted({u.latent_dim for u in plan.units}), "seed": plan.seed, "search": plan.search,
    }, indent=2) + "\n")
