"""The plan of a search: its Optuna studies (one per latent size and arm), their budgets and seeds.

One Optuna study per (latent size, arm): `<prefix>-k<k>-vae` tunes beta and lr, `<prefix>-k<k>-ae`
tunes lr for the plain autoencoder. The prefix carries a hash of everything that changes a
trial's outcome (search params minus budgets and devices, the seed, the data fingerprint), so
different params never share trials and a rerun with the same params resumes. The plan is
stored in every study, so a worker anywhere can join with the prefix alone.

The plan grows in phases: the grid; sizes the refinement adds above the grid while the answer
still improves at its largest size, then between grid points (units like the grid's, phase
"added", with the reason); and replicate units, `<prefix>-k<k>-<arm>-rep`, which run only
their enqueued trials: the best configuration of a size retrained with other seeds.
Each unit's network (unit_spec) and a trial's starting weights are defined here too, once for the
workers and for the retraining of lost weights (search/weights.py).
"""

from __future__ import annotations

import hashlib
import json
import math
import zlib
from dataclasses import asdict, dataclass, replace

from latentstudy.config import ARMS, SearchConfig, StudyConfig
from latentstudy.contracts import Summary
from latentstudy.paramfile import build

# Everything in SearchConfig changes results except these: budgets, devices, storage.
RUNTIME_KEYS = ("trials_per_dim", "ae_trials_per_dim", "max_trials_per_dim", "added_budget", "device", "stack",
                "workers_per_device", "cpu_workers", "storage", "heartbeat_seconds", "replicates", "replicate_sizes",
                "reinforce")
GRID, ADDED, REPLICATE = "grid", "added", "replicate"  # a unit's phase


@dataclass(frozen=True)
class Unit:
    """One Optuna study: one latent size, one arm."""

    latent_dim: int
    arm: str
    study_name: str
    budget: int  # COMPLETE trials wanted
    limit: int  # trials started at most (failed and pruned ones count)
    phase: str = GRID  # grid | added (by the refinement) | replicate (enqueued seeds only)
    reason: str = ""  # why the search added this size
    pruned_count: bool = False  # pruned trials count toward the budget (search.pruner stack: examined)


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
    unit_interval: bool = True  # the prepared data lies in [0, 1] (summary.json scaling): Bernoulli can model it

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


def make_plan(study: StudyConfig, search: SearchConfig, summary: Summary, experiment: str) -> Plan:
    from latentstudy.data.scaling import in_unit_interval
    from latentstudy.intrinsic import upper
    from latentstudy.models import choose_arch, choose_likelihood

    grid = study.sizes(summary.input_dim, upper(summary.intrinsic_dim))
    # Fail now, not in every worker.
    choose_arch(search.model.arch, summary.image_shape, len(search.model.channels))
    unit_interval = in_unit_interval(summary.scaling)
    choose_likelihood(search.model.likelihood, summary.image_shape, unit_interval)
    search = fit_batch(search, summary.counts["train"])
    prefix = study_prefix(summary.dataset, search, study.seed, summary.fingerprint)
    return Plan(prefix, grid_units(prefix, grid, search), asdict(search), study.seed,
                summary.input_dim, summary.image_shape, summary.fingerprint, experiment,
                unit_interval=unit_interval)


def fit_batch(search: SearchConfig, n_train: int) -> SearchConfig:
    """search.train.batch_size, clamped to the training split (with a line saying so): a larger
    batch would only be the whole split, one step an epoch, without anyone noticing."""
    if search.train.batch_size <= n_train:
        return search
    print(f"[search] search.train.batch_size = {search.train.batch_size} is above the training split's "
          f"{n_train} examples; clamped to {n_train}: one step per epoch, so models may stay undertrained "
          "(a batch of 32 to 256 is usual)", flush=True)
    return replace(search, train=replace(search.train, batch_size=n_train))


def arm_objective(search: SearchConfig, arm: str) -> str:
    """What a trial of the arm is early-stopped and ranked on: search.objective for the VAE; its
    criterion, the squared error, for the autoencoder (a Gaussian NLL with a learned scale has no
    floor once an autoencoder at k >= D reproduces its input, so it would never stop)."""
    return search.objective if arm == "vae" else "sse"


OBJECTIVE_UNITS = {"neg_elbo": "nats", "distortion": "nats", "sse": "squared error per example"}


def metric_name(objective: str) -> str:
    """The objective as optuna-dashboard labels it, e.g. "val neg_elbo (nats)"."""
    return f"val {objective} ({OBJECTIVE_UNITS[objective]})"


def grid_units(prefix: str, ks: list[int], search: SearchConfig, phase: str = GRID,
               reason: str = "") -> tuple[Unit, ...]:
    """Both arms of each size, with the grid's budgets; an added size with search.added_budget of
    them (its first trial starts at its neighbours' best configuration, so it needs fewer)."""
    share = search.added_budget if phase == ADDED else 1.0
    return tuple(Unit(k, arm, f"{prefix}-k{k}-{arm}",
                      max(1, math.ceil(share * (search.trials_per_dim if arm == "vae" else search.ae_trials_per_dim))),
                      search.max_trials_per_dim, phase, reason, search.pruner == "stack")
                 for k in ks for arm in ARMS)


def replicate_unit(prefix: str, k: int, arm: str, replicates: int, why: str) -> Unit:
    """A unit that runs only its enqueued trials; room for retries of lost ones. why: where it is."""
    return Unit(k, arm, f"{prefix}-k{k}-{arm}-rep", replicates, 3 * replicates, REPLICATE,
                f"the best configuration retrained with {replicates} more seed{'s' * (replicates != 1)}: {why}")


def grow(plan: Plan, units: tuple[Unit, ...]) -> Plan:
    """The plan with `units` in it: new ones appended, those it holds (by study name) in their new
    form, as a replicate unit's budget grows a seed at a time (a rerun finds them all again)."""
    new = {u.study_name: u for u in units}
    held = tuple(new.pop(u.study_name, u) for u in plan.units)
    return replace(plan, units=held + tuple(new.values()))


def sizes(plan: Plan) -> list[int]:
    """Every latent size searched so far (grid and added), ascending."""
    return sorted({u.latent_dim for u in plan.units if u.phase != REPLICATE})


def next_size(chosen: int, searched: list[int], likely: list[int] = (), best: int | None = None,
              cap: int | None = None) -> int | None:
    """The size to add. First, while the criterion's best size is the largest searched (it still
    improves there) and below `cap` (2 x D): double the largest, at most the cap; refining below an
    answer that may lie above the grid would spend the budget in the wrong place. Then the
    geometric midpoint, rounded, between the chosen size and the next smaller searched size (or 1);
    once those are adjacent, between the chosen size and the next larger searched size when that
    one is in the 90% set (`likely`): a rival more than 1 above. None when both neighbours are resolved."""
    if cap is not None and len(searched) > 1 and best == searched[-1] < cap:
        return min(2 * searched[-1], cap)
    below = [k for k in searched if k < chosen]
    low = below[-1] if below else 0
    if chosen - low > 1:
        return _midpoint(low, chosen)
    above = [k for k in searched if k > chosen]
    if above and above[0] in likely and above[0] - chosen > 1:
        return _midpoint(chosen, above[0])
    return None


def _midpoint(low: int, high: int) -> int:
    return min(max(round(math.sqrt(max(low, 1) * high)), low + 1), high - 1)


def replicate_seeds(seed: int, count: int) -> list[int]:
    """Training seeds for replicates of a trial trained with `seed`: different from it and from
    each other."""
    seeds: list[int] = []
    step = 0
    while len(seeds) < count:
        step += 1
        candidate = (seed + 1_000_003 * step) % 2**31
        if candidate != seed and candidate not in seeds:
            seeds.append(candidate)
    return seeds


def unit_seed(plan: Plan, unit: Unit) -> int:
    return (plan.seed * 1_000_003 + zlib.crc32(unit.study_name.encode())) % 2**31


def counts(trials) -> dict[str, int]:
    out = {"COMPLETE": 0, "RUNNING": 0, "WAITING": 0, "FAIL": 0, "PRUNED": 0}
    for t in trials:
        out[t.state.name] = out.get(t.state.name, 0) + 1
    return out


def examined(unit: Unit, c: dict[str, int]) -> int:
    """Trials that count toward the budget: the finished ones, and under search.pruner stack the
    ones stopped at a rung (search/halving.py): examined, and judged worse than the ones going on."""
    return c["COMPLETE"] + (c["PRUNED"] if unit.pruned_count else 0)


def needs_work(unit: Unit, c: dict[str, int]) -> bool:
    """Below budget, or a retry of a lost trial is waiting (it runs even if a racing worker already
    filled the budget: a retry that never runs would be reported as retried), within the limit.
    A replicate unit runs only what is enqueued: a sampled trial would not be a replicate."""
    started = c["COMPLETE"] + c["RUNNING"] + c["FAIL"] + c["PRUNED"]
    if unit.phase == REPLICATE:
        return c["WAITING"] > 0 and started < unit.limit
    return (examined(unit, c) + c["RUNNING"] < unit.budget or c["WAITING"] > 0) and started < unit.limit


def open_slots(unit: Unit, c: dict[str, int]) -> int:
    """How many trials a worker may start now: what the budget still lacks (waiting retries and
    replicates count even past it), within the limit on trials started. A replicate unit runs
    only its waiting trials."""
    started = c["COMPLETE"] + c["RUNNING"] + c["FAIL"] + c["PRUNED"]
    lacking = 0 if unit.phase == REPLICATE else unit.budget - examined(unit, c) - c["RUNNING"]
    return max(0, min(unit.limit - started, max(lacking, c["WAITING"])))


# --- the network a unit's trials train, and what a trial's checkpoint records ----------------

AE_LIKELIHOOD = "gaussian"  # the autoencoder's, whatever the data: see unit_spec


def unit_spec(plan: Plan, unit: Unit):
    """The models.NetSpec every trial of the unit trains."""
    from latentstudy import models

    cfg = plan.config
    arch = models.choose_arch(cfg.model.arch, plan.image_shape, len(cfg.model.channels))
    vae = unit.arm == "vae"
    likelihood = models.choose_likelihood(cfg.model.likelihood, plan.image_shape, plan.unit_interval)[0]
    # The autoencoder is judged by its squared error, so it trains on it: a Gaussian with one shared
    # scale (per-feature scales would weight the inputs). On digits at k = 32 its test error was 0.21
    # trained so against 0.45 on the Bernoulli cross-entropy, PCA 0.17 (docs/answer.md).
    return models.NetSpec(plan.input_dim, unit.latent_dim, arch, likelihood if vae else AE_LIKELIHOOD, vae,
                          tuple(cfg.model.hidden), tuple(cfg.model.channels), models.chw(plan.image_shape),
                          cfg.model.gaussian_scale if vae else "shared", not vae and cfg.model.ae_pca_path)


def trial_model(plan: Plan, unit: Unit, seed: int, device, basis):
    """The unit's network with the weights a trial of this seed starts from, as in a stack: the one
    recipe, also used to retrain a best trial whose weights were lost (basis: the training split's
    PCA, for a PCA path)."""
    from latentstudy import models

    model = models.build(unit_spec(plan, unit))
    model.load_state_dict(initial_weights(model.spec, seed, basis))
    return model.to(device)


def initial_weights(spec, seed: int, basis) -> dict:
    """The weights a trial of this seed starts from: the seeded build, started at PCA where the
    spec has a PCA path (basis: the training split's)."""
    from latentstudy import models, train

    state = train.initial_state(spec, seed)
    return models.start_at_pca(state, spec, basis.mean, basis.components) if spec.pca_path else state


def checkpoint_meta(unit: Unit, number: int, beta: float, lr: float, seed: int, result) -> dict:
    """What a trial's checkpoint file says about it (result: train.TrainResult)."""
    final = {f"val_{k}": v for k, v in result.best.items()}
    return {"study": unit.study_name, "trial": number, "beta": beta, "lr": lr, "seed": seed, **final,
            "seconds": result.seconds, "epochs_run": result.epochs_run, "still_improving": result.still_improving}
