"""The prepare stage: read the dataset, check it, scale it to [0, 1], split it, write it.

Rows pass through in blocks, in the reader's own dtype until a block is scaled (in float64) and
written as float32: prepare never holds a float copy of the whole dataset, and the rows of a
memory-mapped file leave resident memory once they are written.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from latentstudy import intrinsic, npz
from latentstudy.config import MIN_PER_SPLIT, DataConfig, Split, StudyError
from latentstudy.data import SPLITS, arrays, layout
from latentstudy.data.raw import Progress, Raw, say
from latentstudy.data.sources import read

BLOCK_BYTES = 1 << 24  # float64 bytes per block of rows
ROUGHNESS_ROWS = 256  # rows that show whether flat rows of images are channel-first


def run(cfg: DataConfig, root: Path, out_dir: Path) -> dict:
    """Write out_dir/{train,val,test}.npz and return the summary (also written, as summary.json)."""
    raw = read(cfg, root)
    x = check_array(raw)
    lay = layout.resolve(x.shape[1:], raw.image_shape, cfg.image_shape, raw.source)
    say(lay.text)
    codes, names = label_codes(raw, len(x))
    keep = subsample(len(x), codes, cfg.limit, cfg.seed)
    if x.ndim == 2 and lay.image_shape is not None:
        layout.check_channel_order(x[keep[:ROUGHNESS_ROWS]], lay, raw.source)
    lo, hi, integral = scan(raw, lay, keep)
    scaling = choose_scaling(float(lo.min()), float(hi.max()), integral, cfg.scaling, raw.default_scale)
    y = codes[keep] if codes is not None else None
    parts = split_indices(len(keep), y, cfg.split, cfg.seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_splits(out_dir, raw, lay, keep, parts, y, scaling)
    summary = {
        "dataset": cfg.name,
        "source": raw.source,
        "n_examples": int(len(keep)),
        "input_dim": int(lo.size),
        "image_shape": lay.image_shape,
        "counts": {s: int(len(parts[s])) for s in SPLITS},
        "has_labels": y is not None,
        "class_names": names,
        "class_counts": {s: np.bincount(y[parts[s]], minlength=len(names)).tolist() for s in SPLITS}
        if y is not None else None,
        "scaling": scaling,
        "intrinsic_dim": intrinsic_dim(raw, lay, keep[parts["train"]], scaling, cfg),
        "split_seed": cfg.seed,
        "fingerprint": fingerprint(out_dir, y is not None),
    }
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
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
    names, codes = np.unique(labels.astype(str), return_inverse=True)
    return codes.astype(np.int64), names.tolist()


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


def scan(raw: Raw, lay: layout.Layout, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, bool]:
    """Each feature's min and max over the rows, and whether every value is a whole number;
    a NaN or infinity, or data without any variation, is an error."""
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
        b_lo, b_hi = block.min(axis=0).astype(np.float64), block.max(axis=0).astype(np.float64)
        lo = b_lo if lo is None else np.minimum(lo, b_lo)
        hi = b_hi if hi is None else np.maximum(hi, b_hi)
    if np.all(lo == hi):
        same = f"every value is {lo[0]:g}" if np.all(lo == lo[0]) else "every feature is constant"
        raise StudyError(f"{raw.source}: the data has zero variance ({same} across all {len(rows)} examples): there "
                         "is nothing to encode; check the file and data.array_key")
    return lo, hi, integral


# --- scaling ----------------------------------------------------------------------------------


def choose_scaling(lo: float, hi: float, integral: bool, mode: str, default_scale: float | None) -> dict:
    """How the values map into [0, 1]: the dataset's own range, min-max, or as they are."""
    if mode == "auto":
        if default_scale is not None:
            return {"method": "divide", "divisor": default_scale}
        if lo >= 0 and hi <= 1:
            return {"method": "none"}
        if lo >= 0 and hi <= 255 and integral:
            return {"method": "divide", "divisor": 255.0}
        mode = "minmax"
    if mode == "none":
        if lo < 0 or hi > 1:
            raise StudyError(f"data.scaling = none but values span [{lo:g}, {hi:g}]; allowed: data already in "
                             "[0, 1], or scaling auto | minmax")
        return {"method": "none"}
    return {"method": "minmax", "min": lo, "max": hi}


def apply_scaling(block: np.ndarray, scaling: dict) -> np.ndarray:
    """A block of rows scaled (in float64) into float32."""
    x = block.astype(np.float64)
    if scaling["method"] == "divide":
        x = np.clip(x / scaling["divisor"], 0.0, 1.0)
    elif scaling["method"] == "minmax":
        span = scaling["max"] - scaling["min"]
        x = (x - scaling["min"]) / (span if span > 0 else 1.0)
    return x.astype(np.float32)


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
    out = {s: np.sort(np.concatenate(parts[s])) for s in SPLITS}
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


def write_splits(out_dir: Path, raw: Raw, lay: layout.Layout, keep: np.ndarray, parts: dict[str, np.ndarray],
                 y: np.ndarray | None, scaling: dict) -> None:
    """The three split files, streamed in one pass over the source."""
    split_of = np.full(len(raw.x), -1, np.int8)
    for j, s in enumerate(SPLITS):
        split_of[keep[parts[s]]] = j
    width = int(np.prod(raw.x.shape[1:], dtype=np.int64))
    with contextlib.ExitStack() as files:
        writers = [files.enter_context(npz.Writer(out_dir / f"{s}.npz")) for s in SPLITS]
        with contextlib.ExitStack() as members:
            write = [members.enter_context(w.stream("x", (len(parts[s]), width), np.float32))
                     for w, s in zip(writers, SPLITS)]
            for sel, block in blocks(raw, lay, keep, "writing splits"):
                scaled, which = apply_scaling(block, scaling), split_of[sel]
                for j in range(len(SPLITS)):
                    write[j](scaled[which == j])
        if y is not None:
            for w, s in zip(writers, SPLITS):
                w.add("y", y[parts[s]])


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
    sample = apply_scaling(lay.rows(raw.x[train_rows]), scaling)
    if raw.pages is not None:
        raw.pages.release(0, len(raw.x))
    return intrinsic.estimates(sample, cfg.intrinsic_max_points, cfg.seed)
