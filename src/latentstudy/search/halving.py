"""Successive halving among trials that train together (search.pruner: stack).

Optuna's median pruner compares a trial with *finished* trials only, so the members of one stack,
which train in lockstep and finish together, are never compared with each other (3 of 83 trials
of the default study were pruned). Here the trials of one size and arm are compared at shared
rungs (epochs r, 3r, 9r, ...): a stack's members with each other at the same epoch, and with the
size's earlier trials (any state; this or another worker's) by the value each reported at that
epoch. Of the n trials with a value at a rung, the best ceil(n / ETA) go on, but never fewer
than a floor (half the unit's budget), so every size keeps finished trials for the search-luck
resampling of its interval. A stopped trial was examined: it counts toward its unit's budget
(plan.Unit.pruned_count), which is where the compute is saved.
"""

from __future__ import annotations

import math

ETA = 3  # keep a third at each rung (Li et al. 2018, Hyperband's default)
FIRST_RUNG_SHARE = 10  # the first rung at a tenth of the epoch cap, at least MIN_RUNG epochs
MIN_RUNG = 5


def rungs(epochs: int) -> list[int]:
    """The epochs at which trials are compared: r, 3r, 9r, ... below the epoch cap."""
    r = max(MIN_RUNG, epochs // FIRST_RUNG_SHARE)
    out = []
    while r < epochs:
        out.append(r)
        r *= ETA
    return out


def floor(budget: int) -> int:
    """Trials of a unit that go past every rung: half its budget, at least one."""
    return max(1, math.ceil(budget / 2))


def stops(mine: dict[int, float], others: dict[int, float], keep_at_least: int) -> dict[int, str]:
    """{trial number: why} for the members in `mine` ({trial number: value at this rung}, lower is
    better) that rank below the best max(ceil(n / ETA), keep_at_least) of the n values of `mine`
    and `others` (the unit's other trials at the same rung). On ties the earlier trial ranks first."""
    ranked = sorted({**others, **mine}.items(), key=lambda item: (item[1], item[0]))
    n = len(ranked)
    keep = max(math.ceil(n / ETA), keep_at_least)
    return {number: f"rank {rank + 1} of {n} trials at this rung; the best {keep} go on"
            for rank, (number, _) in enumerate(ranked) if rank >= keep and number in mine}
