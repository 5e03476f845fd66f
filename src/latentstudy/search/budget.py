"""More budget where a size's model loses to its simpler reference on validation, before the
answer is taken: an autoencoder worse than PCA at the same size (evaluate.code_choice), or a VAE
whose NLL bound is worse than a smaller size's (recommend.worse_than_smaller), each by more than
one SE of the paired difference. Neither says anything about the size: a larger latent can match
the smaller one, and an autoencoder can match PCA. Such a size and arm gets one more round of
trials (half its budget, at least one) before its replicates are trained (a size with replicates
is settled and not looked at again); a gap that persists is marked in the report.
"""

from __future__ import annotations

from dataclasses import replace

from latentstudy import evaluate, recommend
from latentstudy.search import keys
from latentstudy.search.plan import REPLICATE, Plan


def lagging(plan: Plan, validation) -> dict[tuple[int, str], str]:
    """(size, arm) -> why its best model loses to the simpler reference on validation."""
    out = {}
    ae, *_ = validation.curves(plan, recommend.PURPOSES["reconstruction"])
    for k, values in ae.items():
        code = evaluate.code_choice(values, validation.pca_sse(k), k >= validation.basis.n_components)
        if code.undertrained:
            out[(k, "ae")] = (f"validation squared error {code.ae_val_sse_per_image:.3f}, worse than PCA's "
                              f"{code.pca_val_sse_per_image:.3f} by more than one SE ({code.diff_se:.3f})")
    vae, *_ = validation.curves(plan, recommend.PURPOSES["generation"])
    for k, (ref, gap, se) in recommend.worse_than_smaller(vae).items():
        out[(k, "vae")] = f"validation NLL bound {gap:.2f} nats worse than k = {ref}'s (SE {se:.2f})"
    return out


def reinforce(plan: Plan, validation, run_phase) -> Plan:
    """One more round of trials for every lagging size and arm not yet settled (without seed
    replicates); returns the plan with the raised budgets, trained. Each unit's decision is made
    once and kept in its Optuna study, so a resumed search raises the same budgets whatever the
    extra trials found since (which could make another size look lagging)."""
    import optuna

    settled = {(u.latent_dim, u.arm) for u in plan.units if u.phase == REPLICATE}
    todo = [u for u in plan.units if u.phase != REPLICATE and (u.latent_dim, u.arm) not in settled]
    studies = {u.study_name: optuna.load_study(study_name=u.study_name, storage=validation.storage) for u in todo}
    # [extra finished trials, trials started at most]: the round may start twice its trials, as
    # pruned ones count; without that bound a pruner against converged trials ran to max_trials_per_dim.
    decided = {u.study_name: studies[u.study_name].user_attrs.get(keys.EXTRA_TRIALS) for u in todo}
    why = lagging(plan, validation) if None in decided.values() else {}
    for u in todo:
        if decided[u.study_name] is None:
            study, reason = studies[u.study_name], why.get((u.latent_dim, u.arm))
            n = max(1, u.budget // 2) if reason else 0
            started = sum(t.state.name != "WAITING" for t in study.get_trials(deepcopy=False))
            decided[u.study_name] = [n, min(u.limit, started + 2 * n)]
            study.set_user_attr(keys.EXTRA_TRIALS, decided[u.study_name])
            if reason:
                print(f"[search] more budget: k = {u.latent_dim} {u.arm} gets {n} more trial{'s' * (n != 1)} "
                      f"({reason})", flush=True)
    raised = {u.study_name: replace(u, budget=u.budget + n, limit=limit)
              for u in todo for n, limit in [decided[u.study_name]] if n}
    if not raised:
        return plan
    plan = replace(plan, units=tuple(raised.get(u.study_name, u) for u in plan.units))
    run_phase(plan, {})
    return plan
