"""The prepare stage: read the dataset, check it, split it, scale it (data.scaling; the scaler is
fitted on the training split and stored in summary.json, see latentstudy.data.scaling), write it.

Rows pass through in blocks, in the reader's own dtype until a block is scaled (in float64) and
written as float32: prepare never holds a float copy of the whole dataset, and the rows of a
memory-mapped file leave resident memory once they are written.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from latentstudy import intrinsic, npz
from latentstudy.config import MIN_PER_SPLIT, DataConfig, Split, StudyError
from latentstudy.contracts import Summary
from latentstudy.data import SPLITS, arrays, layout
from latentstudy.data import scaling as scaler
from latentstudy.data.raw import Progress, Raw, say
from latentstudy.data.sources import read

BLOCK_BYTES = 1 << 24  # float64 bytes per block of rows
ROUGHNESS_ROWS = 256  # rows that show whether flat rows of images are channel-first


def run(cfg: DataConfig, root: Path, out_dir: Path) -> Summary:
    """Write out_dir/{train,val,test}.npz and return the summary (also written, as summary.json)."""
    raw = read(cfg, root)
    x = check_array(raw)
    lay = layout.resolve(x.shape[1:], raw.image_shape, cfg.image_shape, raw.source)
    say(lay.text)
    codes, names = label_codes(raw, len(x))
    if len(names) == 1:
        say(f"the labels have one class ({names[0]!r}): the representation purpose does not apply")
    keep = subsample(len(x), codes, cfg.limit, cfg.seed)
    if x.ndim == 2 and lay.image_shape is not None:
        layout.check_channel_order(x[keep[:ROUGHNESS_ROWS]], lay, raw.source)
    y = codes[keep] if codes is not None else None
    parts = assign_splits(len(keep), y, cfg.split, cfg.seed)
    split_of = split_of_rows(len(x), keep, parts)
    train = scaler.Moments() if scaler.per_feature(cfg.scaling, shared_scale(raw, lay) is not None) else None
    lo, hi, integral = scan(raw, lay, keep, split_of, train)  # bad values are reported before small splits
    check_split(parts, len(keep), cfg.split)
    scaling = fit_scaler(cfg.scaling, raw, lay, lo, hi, integral, train)
    out_dir.mkdir(parents=True, exist_ok=True)
    extreme_rows = write_splits(out_dir, raw, lay, keep, split_of, parts, y, scaling)
    if scaling["method"] == "standard":
        scaling["extreme"] = scaler.extreme(extreme_rows, scaling)
        if line := scaler.extreme_line(scaling["extreme"]):
            say(line)
    summary = Summary(
        dataset=cfg.name,
        source=raw.source,
        n_examples=int(len(keep)),
        input_dim=len(extreme_rows),
        image_shape=lay.image_shape,
        counts={s: int(len(parts[s])) for s in SPLITS},
        has_labels=y is not None,
        class_names=names,
        class_counts={s: np.bincount(y[parts[s]], minlength=len(names)).tolist() for s in SPLITS}
        if y is not None else None,
        scaling=scaling,
        intrinsic_dim=intrinsic_dim(raw, lay, keep[parts["train"]], scaling, cfg),
        split_seed=cfg.seed,
        fingerprint=fingerprint(out_dir, y is not None),
    )
    summary.save(out_dir / "summary.json")
    return summary


# --- checks ------------------------------------------------------------------------------------


def check_array(raw: Raw) -> np.ndarray:
    x = raw.x
    if x.dtype.kind not in "biuf":
        raise StudyError(f"{raw.source}: data has dtype {x.dtype}; allowed: numeric arrays")
    if x.ndim < 2:
        raise StudyError(f"{raw.source}: data has shape {x.shape}; allowed: (n, features) or (n, h, w[, c])")
    if x.size == 0:
        raise StudyError(f"{raw.source}: data is empty (shape {x.shape}); allowed: at least "
                         f"{3 * MIN_PER_SPLIT} examples and 1 feature")
    return x


def label_codes(raw: Raw, n: int) -> tuple[np.ndarray | None, list[str]]:
    """Labels as int64 codes 0..c-1 (in sorted order of their text) and the label names."""
    if raw.y is None:
        return None, []
    labels = np.asarray(raw.y)
    labels = labels.reshape(-1) if labels.ndim > 1 and labels.size == n else labels
    if labels.ndim != 1 or len(labels) != n:
        raise StudyError(f"{raw.source}: {n} examples but labels of shape {np.shape(raw.y)}; allowed: one label "
                         "per example")
    missing = np.flatnonzero(missing_labels(labels))
    if len(missing):
        raise StudyError(f"{raw.source}: the label at row {missing[0]} is missing ({labels[missing[0]]}; "
                         f"{len(missing)} row{'s' * (len(missing) != 1)} in all); allowed: a label on every "
                         "example: fill or remove those rows, or drop data.labels_key")
    names, codes = np.unique(labels.astype(str), return_inverse=True)
    return codes.astype(np.int64), names.tolist()


def missing_labels(labels: np.ndarray) -> np.ndarray:
    """Which labels are missing: NaN in a float array (npz, a table's numeric column), None or NaN
    in an object array (a table's text column)."""
    if labels.dtype.kind == "f":
        return np.isnan(labels)
    if labels.dtype.kind == "O":
        import pandas as pd

        return np.asarray(pd.isna(labels), bool)
    return np.zeros(len(labels), bool)


def shared_scale(raw: Raw, lay: layout.Layout) -> str | None:
    """What the data is when all its features share one scale (images), else None (vectors, tables)."""
    if lay.image_shape is not None:
        return "images"
    return "features on one shared scale" if raw.default_scale is not None or raw.shared_scale else None


def fit_scaler(mode: str, raw: Raw, lay: layout.Layout, lo: np.ndarray, hi: np.ndarray, integral: bool,
               train: scaler.Moments | None) -> dict:
    """The scaler data.scaling asks for, from scan's ranges and training moments: auto keeps data
    whose features share one scale (images) in [0, 1] and standardises the rest."""
    scaling = scaler.choose(mode, float(lo.min()), float(hi.max()), integral, raw.default_scale,
                            shared_scale(raw, lay), train, raw.feature_names, lay.image_shape is not None)
    say(f"scaling: {scaling['why']}")
    if line := scaler.dropped_line(scaling):
        say(line)
    return scaling


# --- blocks of rows ---------------------------------------------------------------------------


def blocks(raw: Raw, lay: layout.Layout, rows: np.ndarray, what: str) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(source row numbers, their prepared rows in the source dtype) for the sorted rows, in order."""
    width = int(np.prod(raw.x.shape[1:], dtype=np.int64))
    step = max(1, BLOCK_BYTES // (8 * width))
    progress = Progress(what, len(rows), "rows")
    for start in range(0, len(raw.x), step):
        lo, hi = np.searchsorted(rows, [start, start + step])
        if hi > lo:
            sel = rows[lo:hi]
            dense = sel[-1] - sel[0] + 1 == len(sel)  # a slice reads faster than a fancy index
            yield sel, lay.rows(raw.x[sel[0] : sel[-1] + 1] if dense else raw.x[sel])
            progress(int(hi))
        if raw.pages is not None:
            raw.pages.release(start, start + step)


def scan(raw: Raw, lay: layout.Layout, rows: np.ndarray, split_of: np.ndarray,
         train: scaler.Moments | None) -> tuple[np.ndarray, np.ndarray, bool]:
    """Each feature's min and max over the rows, and whether every value is a whole number;
    a NaN or infinity, or data without any variation, is an error. The training rows' moments
    go into train, when given."""
    lo = hi = None
    integral = True
    for sel, block in blocks(raw, lay, rows, "checking values"):
        if block.dtype.kind == "f":
            bad = ~np.isfinite(block)
            if bad.any():
                r, c = np.argwhere(bad)[0]
                raise StudyError(f"{raw.source}: value {block[r, c]} at row {sel[r]}, column {c}; allowed: finite "
                                 "numbers (no NaN or inf)")
            integral = integral and bool(np.all(block == np.round(block)))
        if train is not None:
            train.add(block[split_of[sel] == 0])
        b_lo, b_hi = block.min(axis=0).astype(np.float64), block.max(axis=0).astype(np.float64)
        lo = b_lo if lo is None else np.minimum(lo, b_lo)
        hi = b_hi if hi is None else np.maximum(hi, b_hi)
    if np.all(lo == hi):
        same = f"every value is {lo[0]:g}" if np.all(lo == lo[0]) else "every feature is constant"
        raise StudyError(f"{raw.source}: the data has zero variance ({same} across all {len(rows)} examples): there "
                         "is nothing to encode; check the file and data.array_key")
    return lo, hi, integral


# --- subsample and split ----------------------------------------------------------------------


def subsample(n: int, y: np.ndarray | None, limit: int | None, seed: int) -> np.ndarray:
    """Exactly `limit` sorted indices (all when None), seeded; with labels each class keeps its share.

    Every class is shuffled and its j-th member gets the key (j + u) / class size; taking the
    smallest keys interleaves the classes in proportion to their sizes.
    """
    if limit is None or limit >= n:
        return np.arange(n)
    rng = np.random.default_rng(seed + 7919)
    if y is None:
        return np.sort(rng.choice(n, size=limit, replace=False))
    key = np.empty(n)
    for c in np.unique(y):
        members = rng.permutation(np.flatnonzero(y == c))
        key[members] = (np.arange(len(members)) + rng.uniform(size=len(members))) / len(members)
    return np.sort(np.argsort(key, kind="stable")[:limit])


def split_indices(n: int, y: np.ndarray | None, split: Split, seed: int) -> dict[str, np.ndarray]:
    """Seeded train/val/test indices; stratified by label so each class keeps its share."""
    return check_split(assign_splits(n, y, split, seed), n, split)


def assign_splits(n: int, y: np.ndarray | None, split: Split, seed: int) -> dict[str, np.ndarray]:
    """split_indices before its check: prepare reports bad values before a split too small."""
    rng = np.random.default_rng(seed)
    groups = [np.arange(n)] if y is None else [np.flatnonzero(y == c) for c in np.unique(y)]
    parts: dict[str, list[np.ndarray]] = {s: [] for s in SPLITS}
    for members in groups:
        members = rng.permutation(members)
        n_train = int(round(split.train * len(members)))
        n_val = int(round(split.val * len(members)))
        parts["train"].append(members[:n_train])
        parts["val"].append(members[n_train : n_train + n_val])
        parts["test"].append(members[n_train + n_val :])
    return {s: np.sort(np.concatenate(parts[s])) for s in SPLITS}


def check_split(out: dict[str, np.ndarray], n: int, split: Split) -> dict[str, np.ndarray]:
    small = [s for s in SPLITS if len(out[s]) < MIN_PER_SPLIT]
    if small:
        s = small[0]
        raise StudyError(
            f"data.split = train {split.train:g} / val {split.val:g} / test {split.test:g} leaves the {s} split "
            f"{len(out[s])} of {n} examples; allowed: at least {MIN_PER_SPLIT} per split: use more data "
            f"(about {math.ceil(MIN_PER_SPLIT / getattr(split, s))} examples at this split) or a larger {s} fraction"
        )
    return out


# --- writing ----------------------------------------------------------------------------------


def split_of_rows(n: int, keep: np.ndarray, parts: dict[str, np.ndarray]) -> np.ndarray:
    """Each source row's split (its index in SPLITS; -1: left out by data.limit)."""
    split_of = np.full(n, -1, np.int8)
    for j, s in enumerate(SPLITS):
        split_of[keep[parts[s]]] = j
    return split_of


# Eight parameters on purpose: the pieces prepare.run has computed by then, streamed in one pass.
def write_splits(out_dir: Path, raw: Raw, lay: layout.Layout, keep: np.ndarray, split_of: np.ndarray,
                 parts: dict[str, np.ndarray], y: np.ndarray | None, scaling: dict) -> np.ndarray:
    """The three split files, streamed in one pass over the source; returns, per prepared
    feature, how many rows have |z| > scaler.EXTREME_Z (standardised data; else zeros)."""
    width = int(np.prod(raw.x.shape[1:], dtype=np.int64)) - len(scaling.get("dropped", []))
    extreme = np.zeros(width, np.int64)
    with contextlib.ExitStack() as files:
        writers = [files.enter_context(npz.Writer(out_dir / f"{s}.npz")) for s in SPLITS]
        with contextlib.ExitStack() as members:
            write = [members.enter_context(w.stream("x", (len(parts[s]), width), np.float32))
                     for w, s in zip(writers, SPLITS)]
            for sel, block in blocks(raw, lay, keep, "writing splits"):
                scaled, which = scaler.apply(block, scaling), split_of[sel]
                if scaling["method"] == "standard":
                    extreme += (np.abs(scaled) > scaler.EXTREME_Z).sum(axis=0)
                for j in range(len(SPLITS)):
                    write[j](scaled[which == j])
        if y is not None:
            for w, s in zip(writers, SPLITS):
                w.add("y", y[parts[s]])
    return extreme


def fingerprint(out_dir: Path, labels: bool) -> str:
    """A short hash of the written train and val arrays: trials on other data never mix.

    Read back block by block (memory-mapped) rather than while writing: the hash runs over each
    array's bytes in turn, as it always has, so existing studies keep their names."""
    h = hashlib.sha256()
    for s in ("train", "val"):
        x, y, pages = arrays.read_npz(out_dir / f"{s}.npz", "x", "y" if labels else None)
        step = max(1, BLOCK_BYTES // max(1, x[:1].nbytes))
        for start in range(0, len(x), step):
            h.update(np.ascontiguousarray(x[start : start + step]))
            if pages is not None:
                pages.release(start, start + step)
        if y is not None:
            h.update(np.ascontiguousarray(y))
    return h.hexdigest()[:12]


def intrinsic_dim(raw: Raw, lay: layout.Layout, train_rows: np.ndarray, scaling: dict, cfg: DataConfig) -> dict:
    """TwoNN and MLE estimates with their intervals on (a seeded subsample of) the training rows,
    as prepared. intrinsic.estimates leaves out an estimate that cannot be a dimension, with the
    reason; the prepare stage prints it."""
    if len(train_rows) > cfg.intrinsic_max_points:
        pick = np.random.default_rng(cfg.seed).choice(len(train_rows), size=cfg.intrinsic_max_points, replace=False)
        train_rows = np.sort(train_rows[pick])
    sample = scaler.apply(lay.rows(raw.x[train_rows]), scaling)
    if raw.pages is not None:
        raw.pages.release(0, len(raw.x))
    return intrinsic.estimates(sample, cfg.intrinsic_max_points, cfg.seed)
