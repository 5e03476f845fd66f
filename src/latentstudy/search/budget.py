"""More budget where a size's model loses to its simpler reference on validation, before the
answer is taken: an autoencoder worse than PCA at the same size (evaluate.code_choice), or a VAE
whose NLL bound is worse than a smaller size's (recommend.worse_than_smaller), each by more than
one SE of the paired difference. Neither says anything about the size: a larger latent can match
the smaller one, and an autoencoder can match PCA. Such a size and arm gets one more round of
trials (half its budget, at least one) before its replicates are trained; a gap that persists is
marked in the report.
"""

from __future__ import annotations

from dataclasses import replace

from latentstudy import evaluate, recommend
from latentstudy.config import SearchConfig
from latentstudy.search.plan import REPLICATE, Plan, Unit


def grid_budget(search: SearchConfig, arm: str) -> int:
    return search.trials_per_dim if arm == "vae" else search.ae_trials_per_dim


def lagging(plan: Plan, validation) -> dict[tuple[int, str], str]:
    """(size, arm) -> why its best model loses to the simpler reference on validation."""
    out = {}
    ae, *_ = validation.curves(plan, recommend.PURPOSES["reconstruction"])
    for k, values in ae.items():
        code = evaluate.code_choice(values, validation.pca_sse(k), k >= validation.basis.n_components)
        if code["undertrained"] and not code["pca_exact"]:  # no autoencoder can beat an exact code
            out[(k, "ae")] = (f"validation squared error {code['ae_val_sse_per_image']:.3f}, worse than PCA's "
                              f"{code['pca_val_sse_per_image']:.3f} by more than one SE ({code['diff_se']:.3f})")
    vae, *_ = validation.curves(plan, recommend.PURPOSES["generation"])
    for k, (ref, gap, se) in recommend.worse_than_smaller(vae).items():
        out[(k, "vae")] = f"validation NLL bound {gap:.2f} nats worse than k = {ref}'s (SE {se:.2f})"
    return out


def reinforce(plan: Plan, search: SearchConfig, validation, run_phase) -> Plan:
    """One more round of trials for every lagging size and arm not yet given one; returns the plan
    with their raised budgets (a rerun decides the same from the same trials)."""
    raised: list[Unit] = []
    for (k, arm), why in sorted(lagging(plan, validation).items()):
        for unit in plan.units:
            if (unit.latent_dim, unit.arm) == (k, arm) and unit.phase != REPLICATE \
                    and unit.budget == grid_budget(search, arm):
                extra = max(1, unit.budget // 2)
                raised.append(replace(unit, budget=unit.budget + extra))
                print(f"[search] more budget: k = {k} {arm} gets {extra} more trial{'s' * (extra != 1)} ({why})",
                      flush=True)
    if not raised:
        return plan
    by_name = {u.study_name: u for u in raised}
    plan = replace(plan, units=tuple(by_name.get(u.study_name, u) for u in plan.units))
    run_phase(plan, {})
    return plan
