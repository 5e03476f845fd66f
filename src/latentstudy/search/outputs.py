"""The search stage's outputs, read from the Optuna storage: the best model of every latent size
and arm, its seed replicates and the size's other finished trials (from the checkpoints
search.weights found), trials.csv with one row per trial (and its MLflow run as the tracking
store has it now), metrics.json and study.json, which lists the searched sizes (and why each was
searched) and every model: what evaluate and report read.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from latentstudy.config import ARMS
from latentstudy.contracts import KeptModel, ReplicateReason, Searched, SearchedSize, SearchPaths
from latentstudy.search import keys
from latentstudy.search.plan import ADDED, REPLICATE, Plan, Unit, counts, sizes
from latentstudy.search.store import redact

CSV_COLUMNS = ["study", "number", "latent_dim", "arm", "phase", "beta", "lr", "seed", "state", "fail_reason",
               "retry_of", "replicate_of", "epochs_run", "best_epoch", "still_improving", "val_distortion_nats", "val_rate_nats",
               "val_neg_elbo_nats", "val_sse_per_image", "objective_value", "seconds", "n_params", "device", "worker", "mlflow_run_id"]


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
                "phase": unit.phase, "beta": t.params.get("beta"), "lr": t.params.get("lr"),
                "seed": t.user_attrs.get(keys.SEED), "state": t.state.name, "fail_reason": reason,
                "retry_of": t.user_attrs.get(keys.RETRY_OF), "replicate_of": t.user_attrs.get(keys.REPLICATE_OF),
                "epochs_run": t.user_attrs.get(keys.EPOCHS_RUN), "best_epoch": t.user_attrs.get(keys.BEST_EPOCH),
                "still_improving": t.user_attrs.get(keys.STILL_IMPROVING),
                "val_distortion_nats": m.get("val_distortion"), "val_rate_nats": m.get("val_rate"),
                "val_neg_elbo_nats": m.get("val_neg_elbo"), "val_sse_per_image": m.get("val_sse"),
                "objective_value": t.value, "seconds": t.user_attrs.get(keys.SECONDS),
                "n_params": t.user_attrs.get(keys.N_PARAMS), "device": t.user_attrs.get(keys.DEVICE),
                "worker": t.user_attrs.get(keys.WORKER), "mlflow_run_id": runs.get(t._trial_id),
            })
    return rows


def best_trials(snap: list) -> dict[tuple[int, str], object]:
    """The best finished trial of each size and arm (replicates are not candidates)."""
    best = {}
    for unit, trials in snap:
        done = [t for t in trials if t.state.name == "COMPLETE"]
        if unit.phase == REPLICATE:
            continue
        if done:
            best[(unit.latent_dim, unit.arm)] = min(done, key=lambda t: (t.value, t.number))
    return best


def replicate_trials(snap: list) -> dict[tuple[int, str], list]:
    """The finished replicates of each size and arm, in trial order (a sampled trial in a
    replicate unit, which a race could start, is not a replicate: it lacks replicate_of)."""
    out: dict[tuple[int, str], list] = {}
    for unit, trials in snap:
        if unit.phase == REPLICATE:
            out[(unit.latent_dim, unit.arm)] = [t for t in trials if t.state.name == "COMPLETE"
                                                and keys.REPLICATE_OF in t.user_attrs]
    return out


def metrics_summary(plan: Plan, snap: list) -> dict:
    """metrics.json, the search's few headline figures for `dvc metrics`: sizes, trials by state,
    seed replicates, trainings still improving at the ceiling, trial-epochs. Each size's and
    trial's values are in trials.csv (one row per trial)."""
    states = {"COMPLETE": 0, "FAIL": 0, "PRUNED": 0}
    replicates = still_improving = epochs = 0
    for unit, trials in snap:
        for t in trials:
            epochs += t.user_attrs.get(keys.EPOCHS_RUN) or 0
            still_improving += bool(t.user_attrs.get(keys.STILL_IMPROVING))
        if unit.phase == REPLICATE:
            replicates += sum(t.state.name == "COMPLETE" for t in trials)
            continue
        c = counts(trials)
        states = {state: n + c[state] for state, n in states.items()}
    searched = searched_sizes(plan)
    return {"study": plan.prefix, "sizes": len(searched), "added_sizes": sum(s.phase == ADDED for s in searched),
            "trials": {"complete": states["COMPLETE"], "failed": states["FAIL"], "pruned": states["PRUNED"]},
            "replicates": replicates, "still_improving": still_improving, "trial_epochs": epochs}


def model_trials(snap: list) -> dict[tuple[int, str, int, int], tuple[Unit, object]]:
    """{(size, arm, rank, replicate): (unit, trial)} of every model the search hands on. Rank 0:
    the best trial of its size and arm (replicate 0) and its finished seed replicates (1, 2, ...);
    rank 1, 2, ...: the size's other finished trials in order of their objective, which the rule
    resamples to measure how a rerun of the search could have picked differently."""
    units = {(u.latent_dim, u.arm): u for u, _ in snap if u.phase != REPLICATE}
    best = best_trials(snap)
    out = {(k, arm, 0, 0): (units[(k, arm)], t) for (k, arm), t in best.items()}
    rep_units = {(u.latent_dim, u.arm): u for u, _ in snap if u.phase == REPLICATE}
    for (k, arm), trials in replicate_trials(snap).items():
        if (k, arm) in best:
            out |= {(k, arm, 0, i): (rep_units[(k, arm)], t) for i, t in enumerate(trials, start=1)}
    for unit, trials in snap:
        pick = best.get((unit.latent_dim, unit.arm))
        if unit.phase == REPLICATE or pick is None:
            continue
        rest = sorted((t for t in trials if t.state.name == "COMPLETE" and t.number != pick.number),
                      key=lambda t: (t.value, t.number))
        out |= {(unit.latent_dim, unit.arm, i, 0): (unit, t) for i, t in enumerate(rest, start=1)}
    return out


def write_outputs(plan: Plan, snap: list, url: str, experiment_id: str | None, paths: SearchPaths,
                  weights: dict[tuple[int, str, int, int], Path],
                  runs: dict[int, str]) -> dict[tuple[int, str, int, int], tuple[object, Path]]:
    """The models folder, trials.csv, metrics.json and study.json (paths: the stage's). weights: a
    checkpoint file for every key of model_trials(snap); runs: {trial id: MLflow run}. Returns every
    kept model's (trial, model file) by model_trials' key, for runs.log_models."""
    models_dir, trials_csv, metrics_json, study_json = paths.models, paths.trials, paths.metrics, paths.study
    import pandas as pd

    from latentstudy import models

    models_dir.mkdir(parents=True, exist_ok=True)
    listed, kept = [], {}
    for (k, arm, rank, r), (_, trial) in sorted(model_trials(snap).items()):
        dest = models.best_path(models_dir, k, arm)
        dest = dest.with_name(f"k{k}-{arm}-r{r}.pt" if r else f"k{k}-{arm}-t{rank}.pt" if rank else dest.name)
        shutil.copyfile(weights[(k, arm, rank, r)], dest)
        listed.append(model_entry(k, arm, dest, rank, r, trial))
        kept[(k, arm, rank, r)] = (trial, dest)
    trials_csv.parent.mkdir(parents=True, exist_ok=True)
    table = pd.DataFrame(trial_rows(snap, runs), columns=CSV_COLUMNS)
    for col in ("retry_of", "replicate_of", "seed", "epochs_run", "best_epoch", "n_params"):
        table[col] = table[col].astype("Int64")
    table.to_csv(trials_csv, index=False)
    metrics_json.write_text(json.dumps(metrics_summary(plan, snap), indent=2) + "\n")
    Searched(
        prefix=plan.prefix, storage=url if url.startswith("journal:") else redact(url), experiment=plan.experiment,
        experiment_id=experiment_id, parent_run_id=plan.parent_run_id, studies=[u.study_name for u in plan.units],
        objective=plan.config.objective, latent_dims=sizes(plan), sizes=searched_sizes(plan),
        replicates={arm: sorted({m.latent_dim for m in listed if m.arm == arm and m.replicate > 0}) for arm in ARMS},
        replicate_reasons=[ReplicateReason(u.latent_dim, u.arm, u.reason)
                           for u in sorted(plan.units, key=lambda u: (u.latent_dim, u.arm)) if u.phase == REPLICATE],
        models=sorted(listed, key=lambda m: (m.latent_dim, m.arm, m.rank, m.replicate)),
        seed=plan.seed, search=plan.search).save(study_json)
    return kept


def model_entry(k: int, arm: str, path: Path, rank: int, replicate: int, trial) -> KeptModel:
    """One model as study.json lists it for the stages after the search (see model_trials)."""
    return KeptModel(k, arm, path.name, rank, replicate, trial.value, trial.user_attrs.get(keys.SEED), trial.number)


def searched_sizes(plan: Plan) -> list[SearchedSize]:
    """Every searched size with its phase and, for added ones, the reason."""
    out = {}
    for unit in plan.units:
        if unit.phase != REPLICATE and unit.latent_dim not in out:
            out[unit.latent_dim] = SearchedSize(unit.latent_dim, unit.phase, unit.reason)
    return [out[k] for k in sorted(out)]
