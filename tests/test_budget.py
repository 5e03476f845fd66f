"""search/budget.py: one more round of trials where a model loses to its simpler reference on
validation (an autoencoder to PCA, a VAE to a smaller latent), decided on planted values."""

from types import SimpleNamespace

import numpy as np
import optuna

from latentstudy import config, recommend
from latentstudy.search import budget, store
from latentstudy.search import plan as planning

N = 300


class PlantedValidation:
    """Validation values per size: the autoencoder's squared error, PCA's, the VAE's NLL bound."""

    def __init__(self, storage, ae: dict[int, float], pca: dict[int, float], vae: dict[int, float],
                 components: int = 64):
        self.storage = storage
        rng = np.random.default_rng(0)
        hard = rng.exponential(2.0, size=N)
        noisy = lambda m: (hard + m + rng.normal(0, 0.05, N))[None]  # noqa: E731
        self.values = {"ae": {k: noisy(v) for k, v in ae.items()}, "vae": {k: noisy(v) for k, v in vae.items()}}
        self.pca = {k: hard + v for k, v in pca.items()}
        self.basis = SimpleNamespace(n_components=components)

    def curves(self, plan, p: recommend.Purpose):
        return self.values[p.arm], {}, {}, set(self.values[p.arm])

    def pca_sse(self, k: int) -> np.ndarray:
        return self.pca[k]


def grid(storage, ks=(2, 4, 8, 64)):
    units = planning.grid_units("t", list(ks), config.SearchConfig())
    plan = planning.Plan("t", units, {}, 0, 64, None, "f", "e")
    store.create_studies(plan, storage)
    return plan


def test_an_autoencoder_losing_to_pca_and_a_vae_losing_to_a_smaller_latent_get_one_more_round(capsys):
    storage = optuna.storages.InMemoryStorage()  # 4 VAE and 2 autoencoder trials per size by default
    planted = PlantedValidation(storage, ae={2: 5.0, 4: 3.0, 8: 1.0, 64: 0.5}, pca={2: 5.5, 4: 2.0, 8: 1.5, 64: 0.0},
                                vae={2: 30.0, 4: 25.0, 8: 25.0, 64: 26.0})
    phases = []
    plan = grid(storage)
    raised = budget.reinforce(plan, planted, lambda plan, enqueue: phases.append(plan))
    budgets = {(u.latent_dim, u.arm): u.budget for u in raised.units}
    # k = 4: the AE is 1.0 worse than PCA; k = 64: PCA is exact (k >= its components), no AE can match it.
    # k = 64: the VAE is 1 nat worse than k = 4 (the best smaller size); k = 8 ties with 4.
    assert budgets == {(2, "vae"): 4, (2, "ae"): 2, (4, "vae"): 4, (4, "ae"): 3, (8, "vae"): 4, (8, "ae"): 2,
                       (64, "vae"): 6, (64, "ae"): 2}
    assert len(phases) == 1 and phases[0] is raised  # the raised budgets are trained before anything else
    limits = {(u.latent_dim, u.arm): u.limit for u in raised.units if u.budget > 2 + 2 * (u.arm == "vae")}
    assert limits == {(4, "ae"): 2, (64, "vae"): 4}  # no trial started yet here: twice the round at most
    out = capsys.readouterr().out
    assert "[search] more budget: k = 4 ae gets 1 more trial (validation squared error" in out
    assert "k = 64 vae gets 2 more trials (validation NLL bound 1.00 nats worse than k = 4's" in out
    # Decided once: a resumed search (the grid's plan again) raises the same budgets without looking,
    # even where the values now say otherwise; nothing is printed again.
    fine = PlantedValidation(storage, ae={2: 5.0, 4: 1.0, 8: 1.0, 64: 0.5}, pca={2: 5.5, 4: 2.0, 8: 1.5, 64: 0.0},
                             vae={2: 30.0, 4: 25.0, 8: 25.0, 64: 25.0})
    again = budget.reinforce(plan, fine, lambda plan, enqueue: phases.append(plan))
    assert again == raised and len(phases) == 2 and "more budget" not in capsys.readouterr().out
    # A size with seed replicates is settled: not looked at again.
    settled = planning.grow(raised, tuple(planning.replicate_unit("t", k, arm, 2, "a test") for k in (2, 4, 8, 64)
                                          for arm in ("vae", "ae")))
    assert budget.reinforce(settled, planted, lambda *a: phases.append(a)) is settled and len(phases) == 2


def test_a_size_added_later_is_looked_at_alone(capsys):
    storage = optuna.storages.InMemoryStorage()
    plan = grid(storage, (2, 4))
    planted = PlantedValidation(storage, ae={2: 5.0, 4: 1.0, 3: 4.0}, pca={2: 5.5, 4: 2.0, 3: 3.0},
                                vae={2: 30.0, 4: 25.0, 3: 31.0})
    assert budget.reinforce(plan, planted, lambda *a: None) is plan  # nothing lags on the grid
    settled = planning.grow(plan, tuple(planning.replicate_unit("t", k, arm, 2, "a test") for k in (2, 4)
                                        for arm in ("vae", "ae")))
    added = planning.grow(settled, planning.grid_units("t", [3], config.SearchConfig(added_budget=1.0), planning.ADDED,
                                                       "why"))
    store.create_studies(added, storage)
    raised = budget.reinforce(added, planted, lambda *a: None)
    assert {(u.latent_dim, u.arm): u.budget for u in raised.units if u.phase == planning.ADDED} == {(3, "vae"): 6,
                                                                                                   (3, "ae"): 3}


def test_worse_than_smaller_compares_each_size_with_the_best_smaller_one_beyond_one_se():
    rng = np.random.default_rng(1)
    hard = rng.exponential(2.0, size=N)
    curves = {k: (hard + m + rng.normal(0, 0.2, N))[None] for k, m in {2: 30.0, 3: 24.0, 8: 24.01, 32: 25.5}.items()}
    worse = recommend.worse_than_smaller(curves)
    assert list(worse) == [32] and worse[32][0] == 3 and worse[32][1] > 1.4 and 0 < worse[32][2] < 0.05
