"""The plan of a search: its Optuna studies (one per latent size and arm), their budgets and seeds.

One Optuna study per (latent size, arm): `<prefix>-k<k>-vae` tunes beta and lr, `<prefix>-k<k>-ae`
tunes lr for the plain autoencoder. The prefix carries a hash of everything that changes a
trial's outcome (search params minus budgets and devices, the seed, the data fingerprint), so
different params never share trials and a rerun with the same params resumes. The plan is
stored in every study, so a worker anywhere can join with the prefix alone.
"""

from __future__ import annotations

import hashlib
import json
import zlib
from dataclasses import asdict, dataclass

from latentstudy.config import SearchConfig, StudyConfig, build

ARMS = ("vae", "ae")
# Everything in SearchConfig changes results except these: budgets, devices, storage.
RUNTIME_KEYS = ("trials_per_dim", "ae_trials_per_dim", "max_trials_per_dim", "device",
                "workers_per_device", "cpu_workers", "storage", "heartbeat_seconds")


@dataclass(frozen=True)
class Unit:
    """One Optuna study: one latent size, one arm."""

    latent_dim: int
    arm: str
    study_name: str
    budget: int  # COMPLETE trials wanted
    limit: int  # trials started at most (failed and pruned ones count)


@dataclass(frozen=True)
class Plan:
    """What a worker anywhere needs to join the study; stored in every unit's study attrs."""

    prefix: str
    units: tuple[Unit, ...]
    search: dict  # SearchConfig as a dict
    seed: int
    input_dim: int
    image_shape: list[int] | None
    fingerprint: str
    experiment: str
    experiment_id: str | None = None  # MLflow ids, when tracking
    parent_run_id: str | None = None

    @property
    def config(self) -> SearchConfig:
        return build(SearchConfig, self.search, "plan")

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @staticmethod
    def from_json(text: str) -> "Plan":
        raw = json.loads(text)
        raw["units"] = tuple(Unit(**u) for u in raw["units"])
        return Plan(**raw)


def study_prefix(dataset: str, search: SearchConfig, seed: int, fingerprint: str) -> str:
    relevant = {k: v for k, v in asdict(search).items() if k not in RUNTIME_KEYS}
    blob = json.dumps({"search": relevant, "seed": seed, "data": fingerprint}, sort_keys=True)
    return f"{dataset}-{hashlib.sha256(blob.encode()).hexdigest()[:10]}"


def make_plan(study: StudyConfig, search: SearchConfig, summary: dict, experiment: str) -> Plan:
    from latentstudy.models import choose_arch

    study.check_input_dim(summary["input_dim"])
    choose_arch(search.model.arch, summary["image_shape"])  # fail now, not in every worker
    prefix = study_prefix(summary["dataset"], search, study.seed, summary["fingerprint"])
    units = tuple(
        Unit(k, arm, f"{prefix}-k{k}-{arm}",
             search.trials_per_dim if arm == "vae" else search.ae_trials_per_dim, search.max_trials_per_dim)
        for k in study.latent_dims for arm in ARMS
    )
    return Plan(prefix, units, asdict(search), study.seed, summary["input_dim"], summary["image_shape"],
                summary["fingerprint"], experiment)


def unit_seed(plan: Plan, unit: Unit) -> int:
    return (plan.seed * 1_000_003 + zlib.crc32(unit.study_name.encode())) % 2**31


def counts(trials) -> dict[str, int]:
    out = {"COMPLETE": 0, "RUNNING": 0, "WAITING": 0, "FAIL": 0, "PRUNED": 0}
    for t in trials:
        out[t.state.name] = out.get(t.state.name, 0) + 1
    return out


def needs_work(unit: Unit, c: dict[str, int]) -> bool:
    """Below budget, or a retry of a lost trial is waiting (it runs even if a racing worker already
    filled the budget: a retry that never runs would be reported as retried), within the limit."""
    started = c["COMPLETE"] + c["RUNNING"] + c["FAIL"] + c["PRUNED"]
    return (c["COMPLETE"] + c["RUNNING"] < unit.budget or c["WAITING"] > 0) and started < unit.limit
