"""The search stage for real: Optuna journal storage, worker processes, MLflow in sqlite."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import optuna
import pandas as pd
import pytest
from conftest import ROOT, TINY_DATA, TINY_SEARCH, kill_mid_search, overridden, write_params

from latentstudy import config, contracts, data, paramfile, pca, stages, stats
from latentstudy.search import coordinator, plan as planning, progress, store, validation
from latentstudy.tracking import Tracker


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("prepared")
    params = write_params(root / "params.yaml", data=TINY_DATA)
    stages.prepare(contracts.PreparePaths(params, root / "data"), root)
    return root / "data"


def search_params(tmp_path: Path, dims=(2, 4), refine_max=0, **overrides) -> Path:
    return write_params(tmp_path / "params.yaml", study={"latent_dims": list(dims), "seed": 0, "refine_max": refine_max},
                        search=overridden(TINY_SEARCH, **overrides), evaluate={"iwae_samples": 8},
                        report={"bootstrap": 200})


def run_stage(tmp_path: Path, params: Path, prepared: Path, tracking: str | None):
    out = tmp_path / "out"
    stages.search(contracts.SearchPaths(params, prepared, out / "models", out / "trials.csv", out / "metrics.json",
                                     out / "study.json"), tmp_path, tracking)
    return out


def studies_of(tmp_path: Path, params: Path, prepared: Path):
    study = paramfile.load_section(params, "study")
    cfg = paramfile.load_section(params, "search")
    plan = planning.make_plan(study, cfg, data.load_summary(prepared), "latentstudy-digits")
    storage = store.open_storage(store.storage_url(cfg, tmp_path / ".latentstudy"), 20)
    return plan, storage


def test_a_batch_above_the_training_split_is_clamped_with_one_line(prepared, capsys):
    summary = data.load_summary(prepared)
    n = summary.counts["train"]
    big = paramfile.build(config.SearchConfig, {"train": {"batch_size": 100000}}, "x")
    plan = planning.make_plan(config.StudyConfig(latent_dims=[2, 4]), big, summary, "latentstudy-digits")
    assert plan.config.train.batch_size == n
    lines = [line for line in capsys.readouterr().out.splitlines() if "batch_size" in line]
    assert lines == [f"[search] search.train.batch_size = 100000 is above the training split's {n} examples; "
                     f"clamped to {n}: one step per epoch, so models may stay undertrained (a batch of 32 to 256 "
                     "is usual)"]
    fits = planning.make_plan(config.StudyConfig(latent_dims=[2, 4]), config.SearchConfig(), summary, "x")
    assert fits.prefix == planning.study_prefix("digits", config.SearchConfig(), 0, summary.fingerprint)
    assert fits.config.train.batch_size == 64 and "batch_size" not in capsys.readouterr().out


def test_a_grid_of_hundreds_of_trials_says_what_it_costs(prepared):
    summary = data.load_summary(prepared)  # D = 64: sizes 1..128 are allowed
    plan = planning.make_plan(config.StudyConfig(latent_dims=list(range(1, 129))), config.SearchConfig(), summary, "x")
    planned = sum(u.budget for u in plan.units)
    assert planned == 128 * (4 + 2) > progress.MANY_TRIALS
    assert progress.planned_line(plan, planned, 2) == (
        "[search] planned: 768 trials (256 Optuna studies), each up to 150 epochs (to 450 while improving): up to "
        "345600 trial-epochs on 2 worker(s). A time estimate follows from the first trials' pace; fewer sizes in "
        "study.latent_dims or a smaller search.trials_per_dim costs less")


def test_standardised_data_gets_a_gaussian_decoder_and_bernoulli_is_refused(prepared):
    from latentstudy.search.plan import unit_spec

    summary = dataclasses.replace(data.load_summary(prepared), scaling={"method": "standard"})
    plan = planning.make_plan(config.StudyConfig(latent_dims=[2, 4]), config.SearchConfig(), summary, "x")
    assert not plan.unit_interval and unit_spec(plan, plan.units[0]).likelihood == "gaussian"
    assert planning.Plan.from_json(plan.to_json()) == plan
    bernoulli = paramfile.build(config.SearchConfig, {"model": {"likelihood": "bernoulli"}}, "x")
    with pytest.raises(config.StudyError, match=r"likelihood = bernoulli but the prepared data is not in \[0, 1\]"):
        planning.make_plan(config.StudyConfig(latent_dims=[2, 4]), bernoulli, summary, "x")
    images = planning.make_plan(config.StudyConfig(latent_dims=[2, 4]), config.SearchConfig(),
                                data.load_summary(prepared), "x")
    assert images.unit_interval and unit_spec(images, images.units[0]).likelihood == "bernoulli"


def test_study_name_hashes_what_changes_results(prepared, tmp_path):
    summary = data.load_summary(prepared)
    base = config.SearchConfig()
    prefix = planning.study_prefix("digits", base, 0, summary.fingerprint)
    same = [paramfile.build(config.SearchConfig, {"trials_per_dim": 9, "device": "cpu", "cpu_workers": 3,
                                               "storage": "postgresql://h/db"}, "x")]
    different = [paramfile.build(config.SearchConfig, {"beta": {"low": 0.1, "high": 4.0}}, "x"),
                 paramfile.build(config.SearchConfig, {"train": {"epochs": 7}}, "x")]
    assert all(planning.study_prefix("digits", s, 0, summary.fingerprint) == prefix for s in same)
    assert all(planning.study_prefix("digits", s, 0, summary.fingerprint) != prefix for s in different)
    assert planning.study_prefix("digits", base, 1, summary.fingerprint) != prefix
    assert planning.study_prefix("digits", base, 0, "otherdata") != prefix


def test_next_unit_spreads_work_and_respects_budgets():
    units = (planning.Unit(2, "vae", "s-k2-vae", 2, 4), planning.Unit(2, "ae", "s-k2-ae", 1, 4))
    c = {"COMPLETE": 0, "RUNNING": 0, "WAITING": 0, "FAIL": 0, "PRUNED": 0}
    assert planning.needs_work(units[0], c)
    assert not planning.needs_work(units[0], {**c, "COMPLETE": 1, "RUNNING": 1})
    assert not planning.needs_work(units[0], {**c, "FAIL": 4})  # the attempt limit
    assert planning.needs_work(units[1], {**c, "FAIL": 3})


def test_open_slots_is_what_the_budget_lacks_within_the_limit():
    unit = planning.Unit(2, "vae", "s-k2-vae", 4, 6)
    c = {"COMPLETE": 0, "RUNNING": 0, "WAITING": 0, "FAIL": 0, "PRUNED": 0}
    assert planning.open_slots(unit, c) == 4
    assert planning.open_slots(unit, {**c, "COMPLETE": 1, "RUNNING": 2}) == 1
    assert planning.open_slots(unit, {**c, "COMPLETE": 4, "WAITING": 2}) == 2  # retries run past the budget
    assert planning.open_slots(unit, {**c, "PRUNED": 5}) == 1  # the limit on trials started
    assert planning.open_slots(unit, {**c, "COMPLETE": 5}) == 0
    rep = planning.replicate_unit("s", 2, "vae", 2, "a test")  # runs only what waits, never a sampled trial
    assert planning.open_slots(rep, c) == 0
    assert planning.open_slots(rep, {**c, "WAITING": 2}) == 2


def test_a_worker_out_of_work_picks_up_units_added_to_the_plan(prepared, tmp_path, cpu_threads):
    import torch

    from latentstudy.search import worker

    params = search_params(tmp_path, dims=(2,))
    small, storage = studies_of(tmp_path, params, prepared)
    grown = planning.make_plan(config.StudyConfig([2, 3]), paramfile.load_section(params, "search"),
                               data.load_summary(prepared), "latentstudy-digits")
    assert grown.prefix == small.prefix and len(grown.units) == 2 * len(small.units)
    # As a coordinator adding latent size 3 and a replicate unit while this worker runs.
    rep = planning.replicate_unit(grown.prefix, 2, "vae", 2, "a test")
    grown = planning.grow(grown, (rep,))
    store.create_studies(grown, storage)
    enqueued = [({"beta": 0.5, "lr": 2e-3}, 11), ({"beta": 0.5, "lr": 2e-3}, 12)]
    for params, seed in enqueued:
        optuna.load_study(study_name=rep.study_name, storage=storage).enqueue_trial(
            params, user_attrs={"seed": seed, "replicate_of": 0})
    x = [torch.as_tensor(data.load_split(prepared, name)[0]) for name in ("train", "val")]
    ctx = worker.WorkerContext(small, storage, None, None, *x, torch.device("cpu"), tmp_path / "ck", "w0", True,
                               pca.fit(x[0].numpy()))
    assert worker.run_worker(ctx) == sum(u.budget for u in grown.units)
    for unit in grown.units:
        trials = optuna.load_study(study_name=unit.study_name, storage=storage).get_trials()
        assert sum(t.state.name == "COMPLETE" for t in trials) == unit.budget
        assert all(t.user_attrs["checkpoint"] for t in trials)
    replicates = optuna.load_study(study_name=rep.study_name, storage=storage).get_trials()
    assert [(t.params, t.user_attrs["seed"]) for t in replicates] == enqueued  # honoured, nothing sampled
    assert replicates[0].user_attrs["data_order"] == replicates[1].user_attrs["data_order"]  # one stack


def test_a_unit_capped_below_its_budget_is_named_at_the_end():
    def trials(*states):
        return [optuna.trial.create_trial(state=optuna.trial.TrialState[st], value=1.0 if st == "COMPLETE" else None)
                for st in states]

    full = (planning.Unit(2, "ae", "s-k2-ae", 1, 4), trials("COMPLETE", "PRUNED"))
    capped = (planning.Unit(96, "vae", "s-k96-vae", 3, 4), trials("COMPLETE", "PRUNED", "PRUNED", "FAIL"))
    assert progress.shortfalls([full]) == []
    [line] = progress.shortfalls([full, capped])
    assert line.startswith("[search] k=96 vae: 1 of 3 trials finished; search.max_trials_per_dim = 4 ")
    assert "(2 pruned, 1 failed)" in line


def test_replicates_go_where_they_could_move_an_answer():
    rng = np.random.default_rng(0)
    noise = rng.normal(0, 1.0, size=400)
    # k = 2, 4, 8, 16, 32: clearly worse at 2 and 4, flat from 8, clearly worse again at 32
    curve = {2: 30.0, 4: 27.0, 8: 24.0, 16: 23.98, 32: 26.0}
    own = [rng.normal(0, 1.0, 400) for _ in curve]
    values = [(m + noise + e - e.mean())[None] for m, e in zip(curve.values(), own)]  # means exactly as planted
    choice = stats.choose(list(curve), values, 300, seed=0)
    assert (choice.chosen, choice.best) == (8, 16) and set(choice.likely) <= {8, 16}
    recon = stats.choose([2, 4, 8, 64], values[:3] + [values[3]], 300, seed=0)
    got = validation.contested({"generation": ("vae", choice), "reconstruction": ("ae", recon),
                                "representation": ("vae", None)}, exact_from=64)
    assert set(got) == {(4, "vae"), (8, "vae"), (16, "vae"), (4, "ae"), (8, "ae")}  # not 2, 32, or PCA's exact 64
    assert got[(4, "vae")] == "could move the answer on validation (generation: the next smaller size)"
    assert got[(8, "vae")] == "could move the answer on validation (generation: its chosen size)"


def create_and_enqueue(storage, plan, enqueue: dict) -> None:
    """What the coordinator's run_phase does before the workers start."""
    store.create_studies(plan, storage)
    for name, items in enqueue.items():
        for params, attrs in items:
            coordinator.enqueue_once(optuna.load_study(study_name=name, storage=storage), params, attrs)


def train_everything(storage):
    """run_phase as a worker does it, instantly: each grid unit one finished trial (value = its
    size), each replicate unit its waiting seeds."""
    def run_phase(plan, enqueue):
        create_and_enqueue(storage, plan, enqueue)
        for unit in plan.units:
            study = optuna.load_study(study_name=unit.study_name, storage=storage)
            waiting = sum(t.state.name == "WAITING" for t in study.get_trials())
            for _ in range(waiting or (unit.phase != planning.REPLICATE and not study.get_trials())):
                trial = study.ask()
                trial.suggest_float("lr", 1e-4, 1e-2, log=True)
                if unit.arm == "vae":
                    trial.suggest_float("beta", 0.1, 10, log=True)
                if "seed" not in trial.user_attrs:
                    trial.set_user_attr("seed", unit.latent_dim)
                study.tell(trial, float(unit.latent_dim))
    return run_phase


class PlantedAnswers:
    """contested: k = 2 and 4 VAE; moved: what `moves` says, one entry per look."""

    def __init__(self, moves: list[dict]):
        self.moves = moves

    def contested(self, plan):
        return {(2, "vae"): "why 2", (4, "vae"): "why 4", (64, "vae"): "no such size: skipped"}

    def moved(self, plan):
        return self.moves.pop(0) if self.moves else {}


@pytest.mark.parametrize("moves, seeds", [
    ([{}], 1),  # the first seeds left every chosen size where it was: no second seed
    ([{"generation": (2, 4)}], 2),  # they moved one: a second seed, and no third (search.replicates = 2)
])
def test_replicates_come_one_seed_at_a_time_while_the_latest_seeds_move_an_answer(moves, seeds):
    storage = optuna.storages.InMemoryStorage()
    units = planning.grid_units("t", [2, 4, 8], config.SearchConfig())
    plan = planning.Plan("t", units, {}, 0, 64, None, "f", "e")
    run_phase = train_everything(storage)
    run_phase(plan, {})
    final = coordinator.replicate(plan, 2, storage, run_phase, PlantedAnswers(moves))
    reps = {(u.latent_dim, u.arm): u for u in final.units if u.phase == planning.REPLICATE}
    assert sorted(reps) == [(2, "vae"), (4, "vae")] and {u.budget for u in reps.values()} == {seeds}
    for (k, arm), unit in reps.items():
        trials = optuna.load_study(study_name=unit.study_name, storage=storage).get_trials()
        assert [t.state.name for t in trials] == ["COMPLETE"] * seeds  # the first seed kept, not repeated
        assert [t.user_attrs["seed"] for t in trials] == planning.replicate_seeds(k, seeds)
    assert reps[(2, "vae")].reason.endswith("why 2" if seeds == 1 else
                                            "why 2; seed 2: the latest seeds moved the chosen size (generation k = 2 -> 4)")


@pytest.mark.parametrize("share, budgets", [(0.5, [2, 1]), (1.0, [4, 2]), (0.1, [1, 1])])
def test_an_added_size_gets_its_share_of_the_budgets(share, budgets):
    search = config.SearchConfig(added_budget=share)
    assert [u.budget for u in planning.grid_units("t", [3], search)] == [4, 2]  # the grid's own
    assert [u.budget for u in planning.grid_units("t", [3], search, planning.ADDED, "why")] == budgets


def test_moved_leaves_out_the_latest_seed_of_each_size():
    storage = optuna.storages.InMemoryStorage()
    units = planning.grid_units("t", [2, 4], config.SearchConfig())
    plan = planning.Plan("t", units, {}, 0, 64, None, "f", "e")
    run_phase = train_everything(storage)
    run_phase(plan, {})
    plan = coordinator.replicate(plan, 2, storage, run_phase, PlantedAnswers([{"generation": (2, 4)}]))
    latest = {(u.study_name, max(t.number for t in optuna.load_study(study_name=u.study_name, storage=storage)
                                 .get_trials())) for u in plan.units if u.phase == planning.REPLICATE}
    looks = []

    def answer(plan, purpose, leave_out=frozenset()):
        looks.append(leave_out)
        chosen = 4 if purpose == "generation" and not leave_out else 2
        return SimpleNamespace(choice=SimpleNamespace(chosen=chosen))

    planted = validation.Validation.__new__(validation.Validation)
    planted.storage, planted.answer = storage, answer
    assert planted.moved(plan) == {"generation": (2, 4)}  # without the latest seeds 2, with them 4
    assert len(latest) == 2 and set(looks) == {frozenset(), frozenset(latest)}


def test_two_cpu_workers_share_one_journal_storage(prepared, tmp_path, tracking_uri, cpu_threads):
    params = search_params(tmp_path, cpu_workers=2, trials_per_dim=3, replicates=2, replicate_sizes="all")
    out = run_stage(tmp_path, params, prepared, tracking_uri)
    plan, storage = studies_of(tmp_path, params, prepared)
    trials = pd.read_csv(out / "trials.csv")
    all_trials = []
    for unit in plan.units:
        got = optuna.load_study(study_name=unit.study_name, storage=storage).get_trials()
        assert sorted(t.number for t in got) == list(range(len(got)))  # none lost, none duplicated
        assert sum(t.state.name == "COMPLETE" for t in got) >= unit.budget
        assert not [t for t in got if t.state.name in ("RUNNING", "WAITING")]
        assert (out / "models" / f"k{unit.latent_dim}-{unit.arm}.pt").is_file()
        # optuna-dashboard names the objective and its unit, not "Objective 0"
        objective = "val neg_elbo (nats)" if unit.arm == "vae" else "val sse (squared error per example)"
        assert optuna.load_study(study_name=unit.study_name, storage=storage).metric_names == [objective]
    for name in optuna.study.get_all_study_names(storage):
        all_trials += optuna.load_study(study_name=name, storage=storage).get_trials()
    assert len(trials) == len(all_trials)

    # Replicates: the best configuration of every size and arm, retrained with new seeds, all recorded.
    reps = trials[trials.phase == "replicate"]
    searched = trials[(trials.phase != "replicate") & (trials.state == "COMPLETE")]
    assert set(zip(reps.latent_dim, reps.arm)) == set(zip(searched.latent_dim, searched.arm))
    assert (reps.state == "COMPLETE").all() and set(reps.study.str.endswith("-rep")) == {True}
    for (k, arm), group in reps.groupby(["latent_dim", "arm"]):
        original = trials[(trials.phase == "grid") & (trials.latent_dim == k) & (trials.arm == arm)
                          & (trials.number == group.replicate_of.iloc[0])].iloc[0]
        assert len(group) == 2 and group.replicate_of.nunique() == 1
        assert (group.lr == original.lr).all() and (arm == "ae" or (group.beta == original.beta).all())
        assert len({original.seed, *group.seed}) == 3  # three different seeds
    listed = json.loads((out / "study.json").read_text())
    files = {m["file"] for m in listed["models"] if m["replicate"] > 0}
    assert len(files) == len(reps) and all((out / "models" / f).is_file() for f in files)
    assert listed["replicates"]["vae"] == sorted(reps[reps.arm == "vae"].latent_dim.unique())
    # Every other finished trial of a size is handed on too, ranked by objective, for the rule to resample.
    for (k, arm), group in searched.groupby(["latent_dim", "arm"]):
        ranked = group.sort_values(["objective_value", "number"])
        mine = [m for m in listed["models"] if (m["latent_dim"], m["arm"]) == (k, arm) and m["replicate"] == 0]
        assert [m["trial"] for m in mine] == ranked.number.tolist() and [m["rank"] for m in mine] == list(range(len(mine)))
        assert all((out / "models" / m["file"]).is_file() for m in mine)
    assert set(trials["worker"]) == {"w0", "w1"}  # both processes did work
    assert trials.duplicated(["study", "number"]).sum() == 0

    tracker = Tracker(tracking_uri)
    exp = tracker.experiment("latentstudy-digits")
    parents = tracker.runs(exp, plan.prefix, "study")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    runs = tracker.runs(exp, plan.prefix, "trial")
    assert len(runs) == len(all_trials)
    keys = {(r.data.tags["optuna.study"], int(r.data.tags["optuna.trial_number"])) for r in runs}
    assert len(keys) == len(runs)
    assert all(r.data.tags["mlflow.parentRunId"] == parents[0].info.run_id for r in runs)
    assert sum(r.data.tags.get("latentstudy.phase") == "replicate" for r in runs) == len(reps)
    names = [r.info.run_name for r in runs]
    assert len(set(names)) == len(names)  # a replicate is named after the trial it retrains: k2-vae-t0-r1
    for r in runs:
        if r.data.tags.get("latentstudy.phase") == "replicate":
            row = reps[reps.mlflow_run_id == r.info.run_id].iloc[0]
            assert r.info.run_name == f"k{row.latent_dim}-{row.arm}-t{int(row.replicate_of)}-r{row.number + 1}"
    assert {r.info.run_id for r in runs} == set(trials["mlflow_run_id"])
    finished = [r for r in runs if r.data.tags.get("optuna.state") == "COMPLETE"]
    assert len(finished) == sum(t.state.name == "COMPLETE" for t in all_trials)
    one = finished[0]
    history = tracker.client.get_metric_history(one.info.run_id, "val_neg_elbo")
    assert [m.step for m in history] == list(range(1, int(one.data.metrics["epochs_run"]) + 1))
    assert {"train_distortion", "train_rate", "val_distortion", "val_rate", "best_val_sse"} <= set(one.data.metrics)
    best = [r for r in runs if r.data.tags.get("latentstudy.best_of_size") == "true"]
    assert len(best) == len(plan.units)
    # Every kept model is an MLflow model of its trial run (the run page's "Logged models").
    logged = {o.model_id for r in runs for o in tracker.client.get_run(r.info.run_id).outputs.model_outputs}
    assert len(logged) == len(listed["models"]) and tracker.client.get_run(best[0].info.run_id).outputs.model_outputs
    assert tracker.client.list_artifacts(best[0].info.run_id, "figures")


def test_nan_trial_is_recorded_as_failed_and_the_study_goes_on(prepared, tmp_path, tracking_uri, cpu_threads):
    params = search_params(tmp_path, dims=(2,), **{"lr.high": 1e30, "train.grad_clip": 0.0, "trials_per_dim": 1})
    plan, storage = studies_of(tmp_path, params, prepared)
    store.create_studies(plan, storage)
    vae = optuna.load_study(study_name=plan.units[0].study_name, storage=storage)
    vae.enqueue_trial({"beta": 1.0, "lr": 1e30})
    vae.enqueue_trial({"beta": 1.0, "lr": 2e-3})
    out = run_stage(tmp_path, params, prepared, tracking_uri)
    trials = pd.read_csv(out / "trials.csv").set_index(["arm", "number"])
    assert trials.loc[("vae", 0), "state"] == "FAIL"
    assert "non-finite" in trials.loc[("vae", 0), "fail_reason"]
    assert trials.loc[("vae", 1), "state"] == "COMPLETE"
    assert (out / "models" / "k2-vae.pt").is_file()
    tracker = Tracker(tracking_uri)
    run = tracker.client.get_run(trials.loc[("vae", 0), "mlflow_run_id"])
    assert run.info.status == "FAILED" and "non-finite" in run.data.tags["fail_reason"]


def test_a_hopeless_trial_is_pruned_and_its_slot_refilled(prepared, tmp_path, tracking_uri, cpu_threads):
    # Stacks of two. Trials 0 and 1 finish together; 2 and 3 take their slots. Median pruning
    # (two finished trials, 5 warm-up epochs) stops 2 (lr 1e-7) and 4 takes its slot beside 3;
    # later trials may be pruned too. 3 trains at the learning rate that trains fastest here (3e-3),
    # so it outruns the median of 0 and 1 whatever seeds the study's name gives.
    params = search_params(tmp_path, dims=(2,), **{"pruner": "median", "lr.low": 1e-7, "trials_per_dim": 4,
                                                   "max_trials_per_dim": 12, "stack": 2, "train.epochs": 10,
                                                   "train.max_epochs": 10, "train.patience": 10})
    plan, storage = studies_of(tmp_path, params, prepared)
    store.create_studies(plan, storage)
    vae = optuna.load_study(study_name=plan.units[0].study_name, storage=storage)
    enqueued = [2e-3, 3e-3, 1e-7, 3e-3, 2.2e-3, 2.8e-3, 2.4e-3]
    for lr in enqueued:  # none left to TPE's 1e-7..3e-3
        vae.enqueue_trial({"beta": 1.0, "lr": lr})
    out = run_stage(tmp_path, params, prepared, tracking_uri)
    trials = pd.read_csv(out / "trials.csv").set_index(["arm", "number"])
    pruned = trials.loc[("vae", 2)]
    assert pruned.state == "PRUNED"
    assert pruned.fail_reason == f"pruned at epoch {int(pruned.epochs_run)}" and 5 <= pruned.epochs_run < 10
    assert pruned.seconds > 0 and pruned.n_params > 0 and pruned.val_neg_elbo_nats > 0
    assert list(trials.loc["vae"].state[:4]) == ["COMPLETE", "COMPLETE", "PRUNED", "COMPLETE"]
    # The worker asks until the budget is met or max_trials_per_dim trials have started.
    assert (trials.loc["vae"].state == "COMPLETE").sum() >= 4 or len(trials.loc["vae"]) == 12
    got = {t.number: t for t in vae.get_trials()}
    assert got[4].datetime_start >= got[2].datetime_complete  # 4 took 2's slot ...
    assert got[4].datetime_start < got[3].datetime_complete  # ... while 3 still trained
    assert [got[n].params["lr"] for n in sorted(got)][:len(enqueued)] == enqueued[:len(got)]  # honoured
    run = Tracker(tracking_uri).client.get_run(pruned.mlflow_run_id)
    assert run.info.status == "FINISHED" and run.data.tags["optuna.state"] == "PRUNED"
    assert run.data.params["stack"] == "2"


def test_stack_members_are_halved_at_a_rung_and_the_stopped_ones_count_toward_the_budget(prepared, tmp_path,
                                                                                           cpu_threads):
    # One stack of four VAE trials, 10 epochs: the rung is epoch 5; the best max(ceil(4/3), 2) go on.
    params = search_params(tmp_path, dims=(2,), **{"pruner": "stack", "trials_per_dim": 4, "stack": 4,
                                                   "train.epochs": 10, "train.max_epochs": 10,
                                                   "train.patience": 10})
    plan, storage = studies_of(tmp_path, params, prepared)
    out = run_stage(tmp_path, params, prepared, None)
    trials = pd.read_csv(out / "trials.csv")
    vae = trials[trials.arm == "vae"].set_index("number")
    assert len(vae) == 4 and sorted(vae.state) == ["COMPLETE", "COMPLETE", "PRUNED", "PRUNED"]  # examined: 4
    pruned = vae[vae.state == "PRUNED"]
    assert (pruned.epochs_run == 5).all() and (vae[vae.state == "COMPLETE"].epochs_run == 10).all()
    assert sorted(pruned.fail_reason) == [f"stopped at epoch 5: rank {r} of 4 trials at this rung; the best 2 go on"
                                          for r in (3, 4)]
    got = optuna.load_study(study_name=plan.units[0].study_name, storage=storage).get_trials()
    at_rung = {t.number: t.intermediate_values[5] for t in got}
    assert max(at_rung[n] for n in vae.index[vae.state == "COMPLETE"]) < min(at_rung[n] for n in pruned.index)
    assert (trials[trials.arm == "ae"].state == "COMPLETE").all()  # a lone trial is its unit's best


def test_one_worker_on_cpu_is_deterministic(prepared, tmp_path, cpu_threads):
    runs = []
    for name in ("a", "b"):
        root = tmp_path / name
        root.mkdir()
        params = search_params(root, dims=(3,))
        out = run_stage(root, params, prepared, None)
        runs.append(pd.read_csv(out / "trials.csv").drop(columns=["seconds", "mlflow_run_id"]))
    pd.testing.assert_frame_equal(runs[0], runs[1])


def stage_command(tmp_path: Path) -> list[str]:
    return [sys.executable, str(ROOT / "pipeline" / "search.py"), "--params", "params.yaml", "--data", "data",
            "--models", "models/search", "--trials", "trials.csv", "--metrics", "metrics.json",
            "--study", "study.json"]


def test_kill_9_mid_search_then_resume(prepared, tmp_path, tracking_uri):
    import shutil

    shutil.copytree(prepared, tmp_path / "data")
    params = search_params(tmp_path, dims=(2, 3), trials_per_dim=3,
                           **{"train.epochs": 40, "train.max_epochs": 40, "train.patience": 40})
    plan, storage = studies_of(tmp_path, params, tmp_path / "data")
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri}
    kill_mid_search(stage_command(tmp_path), tmp_path, plan, storage, env, complete=2)
    before = {(u.study_name, t.number): t.value for u, trials in store.snapshot(plan, storage) for t in trials
              if t.state.name == "COMPLETE"}
    killed = {(u.study_name, t.number) for u, trials in store.snapshot(plan, storage) for t in trials
              if t.state.name == "RUNNING"}
    assert killed

    rerun = subprocess.run(stage_command(tmp_path), cwd=tmp_path, env=env, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    after = {(u.study_name, t.number): t for u, trials in store.snapshot(plan, storage) for t in trials}
    for key, value in before.items():
        assert after[key].state.name == "COMPLETE" and after[key].value == value  # kept, not re-run
    for key in killed:
        assert after[key].state.name == "FAIL"
        retries = [t for (study, _), t in after.items() if study == key[0] and t.user_attrs.get("retry_of") == key[1]]
        assert len(retries) == 1 and retries[0].state.name == "COMPLETE"
        assert retries[0].params == after[key].params
    assert not [t for t in after.values() if t.state.name in ("RUNNING", "WAITING")]

    tracker = Tracker(tracking_uri)
    exp = tracker.experiment("latentstudy-digits")
    assert len(tracker.runs(exp, plan.prefix, "study")) == 1
    runs = tracker.runs(exp, plan.prefix, "trial")
    by_trial = {(r.data.tags["optuna.study"], int(r.data.tags["optuna.trial_number"])): r for r in runs}
    assert len(by_trial) == len(runs)  # one run per trial, no duplicates
    assert not [r for r in runs if r.info.status == "RUNNING"]
    for key in killed:  # a stack's member killed before its run was created has none
        if key in by_trial:
            assert by_trial[key].info.status == "KILLED"
        else:
            assert "mlflow_run_id" not in after[key].user_attrs
    complete = [t for t in after.values() if t.state.name == "COMPLETE"]
    assert sum(r.info.status == "FINISHED" and r.data.tags.get("optuna.state") == "COMPLETE" for r in runs) == len(complete)


class PlantedValidation:
    """The refinement's view of the validation split, planted: a criterion that falls to a floor
    at `flat_from` and stays there, the same on every example up to a shared difficulty."""

    def __init__(self, storage, flat_from: int, noise: float = 0.0):
        self.storage, self.flat_from, self.noise = storage, flat_from, noise

    def headline(self, plan) -> str:
        return "generation"

    def answer(self, plan, purpose):
        from latentstudy import recommend

        shared = np.random.default_rng(0).exponential(3.0, size=200)
        curves = {k: (shared + 24.0 + max(0, self.flat_from - k)
                      + np.random.default_rng([k, 2]).normal(0, self.noise, size=200))[None]
                  for k in planning.sizes(plan)}
        return recommend.answer(recommend.PURPOSES[purpose], curves, {}, 100, 0, 0.0)


def fake_training(storage, ran: list):
    """run_phase without workers: create the grown plan's studies, enqueue, finish one trial per new unit."""
    from optuna.distributions import FloatDistribution

    dists = {"beta": FloatDistribution(0.1, 10, log=True), "lr": FloatDistribution(1e-5, 1.0, log=True)}

    def run_phase(plan, enqueue):
        create_and_enqueue(storage, plan, enqueue)
        for unit in plan.units:
            study = optuna.load_study(study_name=unit.study_name, storage=storage)
            if not [t for t in study.get_trials() if t.state.name == "COMPLETE"]:
                lr = 1e-3 * unit.latent_dim
                study.add_trial(optuna.trial.create_trial(
                    params={"beta": 1.0, "lr": lr} if unit.arm == "vae" else {"lr": lr},
                    distributions=dists if unit.arm == "vae" else {"lr": dists["lr"]}, value=1.0,
                    user_attrs={"seed": unit.latent_dim}))
        ran.append(sorted(u.latent_dim for u in plan.units if u.phase == planning.ADDED and u.arm == "vae"))

    return run_phase


@pytest.mark.parametrize("chosen, searched, likely, new", [
    (4, [2, 4, 8], [4], 3),  # the gap below the choice first
    (2, [2, 4, 8], [2], 1),  # the smallest searched: below it
    (2, [1, 2, 4, 8], [2, 4], 3),  # adjacent below, but 4 is in the 90% set: a rival more than 1 above
    (3, [2, 3, 8, 16], [3, 8, 16], 5),  # the same, between 3 and 8
    (3, [2, 3, 4, 8, 16], [3, 8, 16], None),  # 4 is adjacent; the set's far members are left alone
    (2, [1, 2, 4], [2], None),  # resolved: 4 is not a rival
    (1, [1, 2, 3], [1, 2, 3], None),
])
def test_the_next_size_resolves_the_choice_then_its_90_percent_set(chosen, searched, likely, new):
    assert planning.next_size(chosen, searched, likely) == new


@pytest.mark.parametrize("chosen, best, searched, new", [
    (8, 8, [2, 4, 8], 16),  # still improving at the largest: double it before the gap below
    (32, 96, [2, 4, 8, 16, 32, 96], 128),  # doubling passes 2 x D = 128: the cap
    (128, 128, [2, 4, 64, 128], 91),  # at the cap: refine as before
    (16, 16, [2, 4, 16, 32], 8),  # the best inside the range: refine as before
    (2, 2, [2], 1),  # one size: nothing says the curve still improves
])
def test_the_next_size_extends_the_grid_while_the_best_is_its_largest(chosen, best, searched, new):
    assert planning.next_size(chosen, searched, [chosen], best, cap=128) == new


@pytest.mark.parametrize("grid, flat_from, refine_max, added", [
    ([2, 4, 8, 16], 1000, 4, [32, 64, 128, 91]),  # doubling first, up to 2 x D = 128, then below the answer
    ([2, 4, 8, 16], 40, 4, [32, 64, 128, 45]),  # 64 is best, 128 no better: then refine below 64
    ([2, 4, 8, 16], 1000, 2, [32, 64]),  # extensions count against refine_max
])
def test_a_curve_still_falling_at_the_largest_size_extends_the_grid_first(prepared, grid, flat_from, refine_max,
                                                                           added, capsys):
    storage = optuna.storages.InMemoryStorage()
    plan = planning.make_plan(config.StudyConfig(latent_dims=grid), config.SearchConfig(), data.load_summary(prepared),
                              "latentstudy-digits")
    assert plan.input_dim == 64
    ran = []
    run_phase = fake_training(storage, ran)
    run_phase(plan, {})
    final = coordinator.refine(plan, config.SearchConfig(replicates=0), refine_max,
                               PlantedValidation(storage, flat_from), run_phase, lambda plan: plan)
    got = [u.latent_dim for u in final.units if u.phase == planning.ADDED and u.arm == "vae"]
    assert got == added
    for k in got:
        study = optuna.load_study(study_name=f"{plan.prefix}-k{k}-vae", storage=storage)
        reason = study.user_attrs["reason"]
        assert study.user_attrs["phase"] == "added"
        assert reason.startswith("extended by the search: ") == (k > max(grid) and k in (32, 64, 128))
        first = study.get_trials()[0]
        if reason.startswith("extended"):
            below = k // 2  # the largest searched when k was added
            assert f"still improves at k = {below}, the largest searched; k = {k} " in reason
            # The only neighbour is the one below: its best parameters start the new size.
            assert first.user_attrs["init_from"] == f"k{below}"
            assert first.system_attrs["fixed_params"]["lr"] == pytest.approx(1e-3 * below)
    out = capsys.readouterr().out
    assert ("still improves at k = 128 = 2 x D" in out) == (flat_from > 128 and refine_max == 4)


@pytest.mark.parametrize("grid, flat_from, refine_max, added, noise", [
    ([2, 4, 8, 16], 6, 4, [6, 5], 0.0),  # 8 -> midpoint of 4 and 8 is 6 -> then 5; 5 loses to 6, which is adjacent
    ([2, 4, 8, 16], 6, 1, [6], 0.0),  # stops at refine_max
    ([4, 8], 1, 4, [2, 1], 0.0),  # the smallest grid size is chosen: try below it, down to 1
    ([2, 4, 8], 2, 4, [1], 0.0),  # 2 is chosen, 1 is tried and loses: 2 and 1 are adjacent, done
    ([2, 4, 8], 2, 0, [], 0.0),  # refine_max 0: refinement off
    # Flat from 2 with noise: 2 is chosen (1 is worse), adjacent to 1, but 4 is in its 90% set {2, 4}:
    # 3 is added between them, and then 2's neighbours are both adjacent.
    ([1, 2, 4, 8], 2, 4, [3], 0.5),
])
def test_refinement_adds_the_expected_sizes_on_a_planted_validation_curve(prepared, grid, flat_from, refine_max,
                                                                          added, noise):
    storage = optuna.storages.InMemoryStorage()
    plan = planning.make_plan(config.StudyConfig(latent_dims=grid), config.SearchConfig(), data.load_summary(prepared),
                              "latentstudy-digits")
    ran = []
    run_phase = fake_training(storage, ran)
    run_phase(plan, {})
    final = coordinator.refine(plan, config.SearchConfig(replicates=0), refine_max,
                               PlantedValidation(storage, flat_from, noise), run_phase, lambda plan: plan)
    got = [u.latent_dim for u in final.units if u.phase == planning.ADDED and u.arm == "vae"]
    assert got == added
    assert ran[1:] == [sorted(added[: i + 1]) for i in range(len(added))]  # one phase per added size
    for unit in final.units[len(plan.units):]:
        study = optuna.load_study(study_name=unit.study_name, storage=storage)
        assert study.user_attrs["phase"] == "added" and "rule chose k = " in study.user_attrs["reason"]
        assert ("90% set {" in study.user_attrs["reason"]) == bool(noise)
        first = study.get_trials()[0]
        assert first.state.name == "WAITING" and first.user_attrs["init_from"]  # neighbours' best parameters
    if added[:1] == [6]:
        first = optuna.load_study(study_name=f"{plan.prefix}-k6-vae", storage=storage).get_trials()[0]
        assert first.system_attrs["fixed_params"]["lr"] == pytest.approx(1e-3 * (4 * 8) ** 0.5) and first.user_attrs["init_from"] == "k4,k8"


def test_each_added_size_gets_its_seed_replicates_before_the_rule_looks_again(prepared):
    storage = optuna.storages.InMemoryStorage()
    plan = planning.make_plan(config.StudyConfig(latent_dims=[2, 4, 8, 16]), config.SearchConfig(),
                              data.load_summary(prepared), "latentstudy-digits")
    ran = []
    run_phase = fake_training(storage, ran)
    run_phase(plan, {})
    plan = coordinator.replicate(plan, 1, storage, run_phase)  # the grid's, as search_and_write does
    final = coordinator.refine(plan, config.SearchConfig(replicates=1), 4, PlantedValidation(storage, 6), run_phase,
                               lambda plan: coordinator.replicate(plan, 1, storage, run_phase))
    searched = {(u.latent_dim, u.arm) for u in final.units if u.phase != planning.REPLICATE}
    replicated = [(u.latent_dim, u.arm) for u in final.units if u.phase == planning.REPLICATE]
    assert sorted(replicated) == sorted(searched) and len(set(replicated)) == len(replicated)  # each once
    assert len(ran) == 2 + 2 * 2  # grid, its replicates; then per added size (6, 5): its trials, its replicates
    six = optuna.load_study(study_name=f"{plan.prefix}-k6-vae-rep", storage=storage).get_trials()[0]
    best = optuna.load_study(study_name=f"{plan.prefix}-k6-vae", storage=storage).best_trial
    assert six.user_attrs["replicate_of"] == best.number and six.user_attrs["seed"] != 6  # the best, a new seed


def test_a_replicate_run_is_named_after_the_trial_it_retrains():
    from latentstudy.search import runs
    from latentstudy.search.plan import REPLICATE, Unit

    trial = optuna.trial.create_trial(params={}, distributions={}, value=1.0, user_attrs={"replicate_of": 3})
    trial.number = 1
    assert runs.run_name(Unit(2, "vae", "p-k2-vae", 2, 6), trial) == "k2-vae-t1"
    assert runs.run_name(Unit(2, "vae", "p-k2-vae-rep", 2, 6, REPLICATE), trial) == "k2-vae-t3-r2"
