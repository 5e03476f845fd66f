"""The scaler: chosen and fitted by the prepare stage, stored in summary.json's "scaling", and
applied to raw rows by apply() alone, so every stage that meets raw rows scales them the same way;
unapply() maps prepared rows (a decoder's output) back into the raw units.

Methods (data.scaling; auto picks one, see choose):
- divide: x / divisor, clipped to [0, 1] (a dataset's own pixel range; /255 for 8-bit values)
- none: as they are (already in [0, 1])
- minmax_global: one min-max over every value of every kept row: images keep their contrast
- minmax: per feature, with the training split's min and max; val and test values outside that
  range are clipped to [0, 1], so the data stays in [0, 1] for a Bernoulli decoder
- standard: per feature, z = (x - mean) / sd with the training split's mean and sd (ddof 0)

The per-feature methods drop a feature that is constant on the training split (vectors only:
images keep every pixel, and a constant one prepares to 0).
"""

from __future__ import annotations

import numpy as np

from latentstudy.config import StudyError

PER_FEATURE = ("standard", "minmax")
# A standardised feature with |z| > EXTREME_Z on more than EXTREME_ROWS rows is named in a warning.
# On the training split at most 1/50^2 = 0.04% of the rows can exceed it (Chebyshev), so it flags
# rare huge values (sentinels such as 1e6 for missing) in large tables, and val or test values far
# outside the training range; a fixed count rather than a share of rows, which could never be met.
EXTREME_Z = 50.0
EXTREME_ROWS = 3
DOES = {
    "standard": "each feature standardised with the training split's mean and sd",
    "minmax": "each feature min-max scaled with the training split's min and max",
    "minmax_global": "one min-max over all values",
    "none": "values kept as they are",
}


class Moments:
    """Per-feature count, mean, sum of squared deviations, min and max of rows added block by
    block, in float64; blocks merge by Chan's update, which stays exact where sums of squares
    would cancel (a large mean, a small spread)."""

    def __init__(self) -> None:
        self.n, self.mean, self.m2, self.lo, self.hi = 0, None, None, None, None

    def add(self, block: np.ndarray) -> None:
        if len(block) == 0:
            return
        x = block.astype(np.float64)
        n, mean = len(x), x.mean(axis=0)
        lo, hi = x.min(axis=0), x.max(axis=0)
        x -= mean  # in place: a block's worth of float64 is the only copy
        m2 = np.einsum("ij,ij->j", x, x)
        if self.n == 0:
            self.n, self.mean, self.m2, self.lo, self.hi = n, mean, m2, lo, hi
            return
        total = self.n + n
        delta = mean - self.mean
        self.mean = self.mean + delta * (n / total)
        self.m2 = self.m2 + m2 + delta**2 * (self.n * n / total)
        self.lo, self.hi, self.n = np.minimum(self.lo, lo), np.maximum(self.hi, hi), total

    @property
    def sd(self) -> np.ndarray:
        return np.sqrt(self.m2 / self.n)


def per_feature(mode: str, shared_scale: bool) -> bool:
    """Whether data.scaling needs the training split's per-feature moments."""
    return mode in PER_FEATURE or (mode == "auto" and not shared_scale)


# Nine parameters on purpose: every fact of the data that prepare gathers in its one pass over the
# source; a pure function of them, so each rule of the docstring is tested on its own.
def choose(mode: str, lo: float, hi: float, integral: bool, default_scale: float | None, shared: str | None,
           train: Moments | None, names: list[str] | None, image: bool) -> dict:
    """The fitted scaler and why it was chosen.

    lo, hi, integral: over every kept value; shared: what the data is when its features share one
    scale ("images"), else None (vectors and tables: auto standardises them); train: the training
    split's moments, for the per-feature methods; image: a constant pixel is kept, not dropped."""
    if mode == "auto":
        if shared is None:
            return fit(mode, "standard", train, names, image,
                       "data.scaling auto: vector data is standardised per feature on the training split")
        if default_scale is not None:
            return {"method": "divide", "divisor": default_scale,
                    "why": f"data.scaling auto: {shared} divided by the dataset's own range, {default_scale:g}"}
        if lo >= 0 and hi <= 1:
            return {"method": "none", "why": f"data.scaling auto: {shared} already in [0, 1] are kept as they are"}
        if lo >= 0 and hi <= 255 and integral:
            return {"method": "divide", "divisor": 255.0,
                    "why": f"data.scaling auto: {shared} of whole numbers in 0..255 (8-bit values) divided by 255"}
        return {"method": "minmax_global", "min": lo, "max": hi,
                "why": f"data.scaling auto: {shared} span [{lo:g}, {hi:g}]; one min-max over all values keeps "
                       "their relative contrast"}
    why = f"data.scaling {mode}: {DOES[mode]}"
    if mode == "none":
        if lo < 0 or hi > 1:
            raise StudyError(f"data.scaling = none but values span [{lo:g}, {hi:g}]; allowed: data already in "
                             "[0, 1], or scaling auto | standard | minmax | minmax_global")
        return {"method": "none", "why": why}
    if mode == "minmax_global":
        return {"method": "minmax_global", "min": lo, "max": hi, "why": why}
    return fit(mode, mode, train, names, image, why)


def fit(mode: str, method: str, train: Moments, names: list[str] | None, image: bool, why: str) -> dict:
    """A per-feature scaler from the training split's moments; constant features dropped (vectors)."""
    constant = train.lo == train.hi
    dropped = [] if image else np.flatnonzero(constant).tolist()
    if len(dropped) == len(constant):
        raise StudyError(f"data.scaling {mode}: every feature is constant on the training split ({train.n} rows): "
                         "there is nothing to encode; check the file and data.array_key")
    kept = np.delete(np.arange(len(constant)), dropped)
    out = {"method": method, "why": why, "fit_on": "train",
           "feature_names": None if names is None else [names[i] for i in kept],
           "dropped": [{"index": i, "name": None if names is None else names[i], "value": float(train.lo[i])}
                       for i in dropped]}
    if method == "standard":
        sd = np.where(constant, 1.0, train.sd)[kept]
        return {**out, "mean": train.mean[kept].tolist(), "sd": sd.tolist()}
    return {**out, "min": train.lo[kept].tolist(), "max": train.hi[kept].tolist()}


def apply(rows: np.ndarray, scaling: dict) -> np.ndarray:
    """Raw rows (m, D as read, flattened channel-first) scaled (in float64) into prepared float32 rows."""
    x = rows.astype(np.float64)
    method = scaling["method"]
    if method == "divide":
        x = np.clip(x / scaling["divisor"], 0.0, 1.0)
    elif method == "minmax_global":
        span = scaling["max"] - scaling["min"]
        x = (x - scaling["min"]) / (span if span > 0 else 1.0)
    elif method in PER_FEATURE:
        if scaling["dropped"]:
            x = np.delete(x, [d["index"] for d in scaling["dropped"]], axis=1)
        if method == "standard":
            x -= np.asarray(scaling["mean"])
            x /= np.asarray(scaling["sd"])
        else:
            lo, hi = np.asarray(scaling["min"]), np.asarray(scaling["max"])
            x = np.clip((x - lo) / np.where(hi > lo, hi - lo, 1.0), 0.0, 1.0)
    return x.astype(np.float32)


def unapply(x: np.ndarray, scaling: dict) -> np.ndarray:
    """Prepared rows (m, D) back in raw units (float64, m x the raw width): apply's inverse, each
    dropped constant feature put back at its value. Values apply clipped come back at the clip's
    edge (the training split's range, or the divisor)."""
    x = np.asarray(x, dtype=np.float64)
    method = scaling["method"]
    if method == "divide":
        return x * scaling["divisor"]
    if method == "minmax_global":
        span = scaling["max"] - scaling["min"]
        return x * (span if span > 0 else 1.0) + scaling["min"]
    if method == "standard":
        x = x * np.asarray(scaling["sd"]) + np.asarray(scaling["mean"])
    elif method == "minmax":
        lo, hi = np.asarray(scaling["min"]), np.asarray(scaling["max"])
        x = x * np.where(hi > lo, hi - lo, 1.0) + lo
    for d in sorted(scaling.get("dropped") or [], key=lambda d: d["index"]):
        x = np.insert(x, d["index"], d["value"], axis=1)
    return x


def raw_width(scaling: dict, input_dim: int) -> int:
    """How many features a raw row has: the prepared ones and the dropped constants."""
    return input_dim + len(scaling.get("dropped") or [])


def in_unit_interval(scaling: dict) -> bool:
    """Whether the prepared values lie in [0, 1], which a Bernoulli decoder needs."""
    return scaling.get("method") != "standard"


def label(index: int, name: str | None) -> str:
    return f"column {name!r}" if name is not None else f"feature {index}"


def dropped_line(scaling: dict) -> str | None:
    """The line prepare prints for the features the scaler dropped, or None."""
    dropped = scaling.get("dropped") or []
    if not dropped:
        return None
    named = ", ".join(label(d["index"], d["name"]) for d in dropped)
    plural = "s" * (len(dropped) != 1)
    return f"dropped {len(dropped)} constant feature{plural} (one value on every training row): {named}"


def extreme(counts: np.ndarray, scaling: dict) -> list[dict]:
    """The kept features with |z| > EXTREME_Z on more than EXTREME_ROWS rows; counts: such rows
    per kept feature."""
    if scaling["method"] != "standard":
        return []
    kept = np.delete(np.arange(len(counts) + len(scaling["dropped"])), [d["index"] for d in scaling["dropped"]])
    names = scaling["feature_names"]
    return [{"index": int(kept[j]), "name": None if names is None else names[j], "rows": int(counts[j])}
            for j in np.flatnonzero(counts > EXTREME_ROWS)]


def extreme_line(found: list[dict]) -> str | None:
    if not found:
        return None
    named = ", ".join(f"{label(f['index'], f['name'])} ({f['rows']} rows)" for f in found)
    return (f"warning: {len(found)} feature{'s' * (len(found) != 1)} stay extreme after standardising "
            f"(|z| > {EXTREME_Z:g}): {named}; a heavy tail or outliers: consider transforming "
            f"{'them' if len(found) > 1 else 'it'} (log) or removing the rows")


def settings(scaling: dict) -> dict:
    """What the report's settings show: the method, why, and what was dropped (not the fitted arrays)."""
    out = {k: scaling[k] for k in ("method", "why", "divisor", "fit_on") if k in scaling}
    if scaling.get("dropped"):
        out["dropped"] = [label(d["index"], d["name"]) for d in scaling["dropped"]]
    return out
