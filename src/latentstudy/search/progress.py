"""What the search says while it runs: the progress line (trials k of n, best so far, elapsed,
ETA), the time the rest takes at the pace so far, what a large grid costs before it starts, and the
units that stopped below their budget."""

from __future__ import annotations

import time

from latentstudy.search.plan import REPLICATE, Plan, counts, examined


def progress_line(plan: Plan, snap: list, started: float, done_before: int, final: bool = False) -> str:
    total = sum(u.budget for u in plan.units)
    complete = sum(min(examined(u, counts(t)), u.budget) for u, t in snap)
    agg = counts([t for _, trials in snap for t in trials])
    best = {}
    for unit, trials in snap:
        values = [t.value for t in trials if t.state.name == "COMPLETE"]
        if values and unit.arm == "vae" and unit.phase != REPLICATE:
            best[unit.latent_dim] = min(values)
    elapsed = time.monotonic() - started
    eta = remaining(plan, snap, started, done_before) or "-"
    bests = " ".join(f"k={k}:{v:.2f}" for k, v in sorted(best.items()))
    head = "[search] done: trials" if final else "[search] trials"
    return (f"{head} {complete}/{total} finished ({agg['RUNNING']} running, {agg['FAIL']} failed, "
            f"{agg['PRUNED']} pruned) | best VAE val objective {bests or '-'} | "
            f"elapsed {_dur(elapsed)}" + ("" if final else f" ETA {eta}"))


def remaining(plan: Plan, snap: list, started: float, done_before: int) -> str | None:
    """The time the unfinished trials take at the pace of those finished since `started`; None
    before any finished."""
    total = sum(u.budget for u in plan.units)
    complete = sum(min(examined(u, counts(t)), u.budget) for u, t in snap)
    new = complete - done_before
    if new <= 0 or complete >= total:
        return None
    return _dur((time.monotonic() - started) / new * (total - complete))


MANY_TRIALS = 300  # a grid past this many trials says what it costs before it starts


def planned_line(plan: Plan, planned: int, workers: int) -> str:
    """What a large grid costs: its trials and trial-epochs, and where the time estimate comes from."""
    train = plan.config.train
    return (f"[search] planned: {planned} trials ({len(plan.units)} Optuna studies), each up to {train.epochs} epochs "
            f"(to {train.ceiling} while improving): up to {planned * train.ceiling} trial-epochs on {workers} "
            f"worker(s). A time estimate follows from the first trials' pace; fewer sizes in study.latent_dims or "
            f"a smaller search.trials_per_dim costs less")


def shortfalls(snap: list) -> list[str]:
    """One line per unit that stopped below its budget because max_trials_per_dim trials had started
    (or, for replicates, because a replicate failed)."""
    lines = []
    for unit, trials in snap:
        c = counts(trials)
        if c["COMPLETE"] < unit.budget and unit.phase == REPLICATE:
            lines.append(f"[search] k={unit.latent_dim} {unit.arm}: {c['COMPLETE']} of {unit.budget} replicates "
                         f"finished ({c['FAIL']} failed; reasons in trials.csv); the interval uses those that did.")
        elif examined(unit, c) < unit.budget:
            lines.append(f"[search] k={unit.latent_dim} {unit.arm}: {examined(unit, c)} of {unit.budget} trials finished"
                         f"{' or stopped at a rung' if unit.pruned_count else ''}; "
                         f"search.max_trials_per_dim = {unit.limit} trials started ({c['PRUNED']} pruned, "
                         f"{c['FAIL']} failed). Raise it, or prune less (search.pruner), for the full budget.")
    return lines


def _dur(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    return f"{m}m{s:02d}s" if m else f"{s}s"
