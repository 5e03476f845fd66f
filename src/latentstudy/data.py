"""Datasets: readers, scaling to [0, 1], the seeded split and the prepared-data files.

Every reader returns raw values; `prepare` validates, scales, splits and writes
<out>/{train,val,test}.npz (x: float32 in [0, 1], y: int64 labels when present) and summary.json.
"""

from __future__ import annotations

import gzip
import hashlib
import zlib
import json
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from latentstudy import intrinsic, npz
from latentstudy.config import DataConfig, Manifold, Split, StudyError

SPLITS = ("train", "val", "test")

# Official file names and md5 sums (the publishers' own); mirrors are tried in order.
IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
IDX_SOURCES = {
    "mnist": {
        "urls": ["https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/"],
        "md5": {
            "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
            "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
            "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
            "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
        },
    },
    "fashion-mnist": {
        "urls": ["http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"],
        "md5": {
            "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
            "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
            "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
            "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
        },
    },
}
IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


@dataclass(frozen=True)
class Raw:
    """A dataset as read, before scaling: x is (n, D), labels optional."""

    x: np.ndarray
    y: np.ndarray | None
    image_shape: list[int] | None
    source: str
    default_scale: float | None = None  # the dataset's own pixel range (/255, /16), if it has one


# --- readers ----------------------------------------------------------------------------------


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (gzipped or not), checking its header against its size."""
    try:
        blob = path.read_bytes()
        if blob[:2] == b"\x1f\x8b":
            blob = gzip.decompress(blob)
    except FileNotFoundError:
        raise StudyError(f"{path}: file not found") from None
    except (OSError, EOFError, zlib.error) as exc:
        raise StudyError(f"{path}: cannot read ({exc}); expected an IDX file, gzipped or not") from None
    if len(blob) < 4 or blob[0] != 0 or blob[1] != 0 or blob[2] not in IDX_DTYPES:
        raise StudyError(f"{path}: not an IDX file (bad magic number {blob[:4].hex()})")
    ndim = blob[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(blob) < header:
        raise StudyError(f"{path}: truncated IDX header")
    shape = tuple(int(s) for s in np.frombuffer(blob[4:header], dtype=">u4"))
    dtype = np.dtype(IDX_DTYPES[blob[2]])
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(blob) - header != expected:
        raise StudyError(
            f"{path}: corrupt IDX file: header says shape {shape} ({expected} bytes) "
            f"but {len(blob) - header} bytes follow"
        )
    return np.frombuffer(blob, dtype=dtype, offset=header).reshape(shape)


def _find_idx(folder: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem):
        if (folder / name).is_file():
            return folder / name
    return None


def _download(name: str, folder: Path, files: list[str]) -> None:
    source = IDX_SOURCES[name]
    folder.mkdir(parents=True, exist_ok=True)
    for fname in files:
        for base in source["urls"]:
            try:
                with urllib.request.urlopen(base + fname, timeout=60) as resp:
                    blob = resp.read()
            except (urllib.error.URLError, OSError):
                continue
            if hashlib.md5(blob).hexdigest() == source["md5"][fname]:
                (folder / fname).write_bytes(blob)
                break
        else:
            raise StudyError(
                f"{name}: could not download {', '.join(files)} (offline or md5 mismatch); "
                f"put these files into {folder}/ and rerun"
            )


def read_idx_dataset(name: str, folder: Path, subset: str) -> Raw:
    parts = ["train", "test"] if subset == "all" else [subset]
    stems = [stem for part in parts for stem in IDX_FILES[part]]
    missing = [stem + ".gz" for stem in stems if _find_idx(folder, stem) is None]
    if missing:
        _download(name, folder, missing)
    xs, ys = [], []
    for part in parts:
        img_path, lab_path = (_find_idx(folder, stem) for stem in IDX_FILES[part])
        images, labels = read_idx(img_path), read_idx(lab_path)
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise StudyError(
                f"{img_path}: expected images (n, h, w) with n labels in {lab_path.name}; "
                f"found {images.shape} and {labels.shape}"
            )
        xs.append(images.reshape(len(images), -1))
        ys.append(labels.astype(np.int64))
    h, w = images.shape[1:]
    return Raw(np.concatenate(xs), np.concatenate(ys), [h, w], f"{name} {subset} from {folder}", 255.0)


def read_digits() -> Raw:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return Raw(bunch.data, bunch.target.astype(np.int64), [8, 8], "scikit-learn digits", 16.0)


def read_file(cfg: DataConfig) -> Raw:
    path = Path(cfg.path)
    if not path.is_file():
        raise StudyError(f"data.path: {path}: file not found; allowed: an existing .npz, .npy or .csv file")
    suffix = path.suffix.lower()
    if suffix == ".npz":
        x, y = _read_npz(path, cfg.array_key, cfg.labels_key)
    elif suffix == ".npy":
        if cfg.labels_key:
            raise StudyError(f"data.labels_key = {cfg.labels_key!r}: a .npy file holds one array; put labels in a .npz or .csv")
        x, y = _load(lambda: np.load(path, allow_pickle=False), path), None
    elif suffix == ".csv":
        x, y = _read_csv(path, cfg.array_key, cfg.labels_key)
    else:
        raise StudyError(f"data.path: {path}: unsupported suffix {suffix!r}; allowed: .npz, .npy, .csv")
    return Raw(x, y, cfg.image_shape, f"file {path}")


def _load(fn, path: Path):
    try:
        return fn()
    except Exception as exc:  # numpy raises many types for unreadable files
        raise StudyError(f"{path}: cannot read ({type(exc).__name__}: {exc})") from None


def _read_npz(path: Path, array_key: str | None, labels_key: str | None) -> tuple[np.ndarray, np.ndarray | None]:
    with _load(lambda: np.load(path, allow_pickle=False), path) as archive:
        keys = list(archive.keys())
        if array_key is None:
            candidates = [k for k in keys if k != labels_key]
            if len(candidates) != 1:
                raise StudyError(f"{path}: holds arrays {keys}; set data.array_key to one of them")
            array_key = candidates[0]
        for key, what in ((array_key, "array_key"), (labels_key, "labels_key")):
            if key is not None and key not in keys:
                raise StudyError(f"data.{what} = {key!r} is not in {path}; allowed: {', '.join(keys)}")
        x = _load(lambda: archive[array_key], path)
        y = _load(lambda: archive[labels_key], path) if labels_key else None
    return x, y


def _read_csv(path: Path, array_key: str | None, labels_key: str | None) -> tuple[np.ndarray, np.ndarray | None]:
    import pandas as pd

    frame = _load(lambda: pd.read_csv(path), path)
    if labels_key is not None and labels_key not in frame.columns:
        raise StudyError(f"data.labels_key = {labels_key!r} is not a column of {path}; allowed: {', '.join(map(str, frame.columns))}")
    if array_key is not None:
        # For CSV the array key is a column prefix (e.g. "px" selects px0, px1, ...).
        cols = [c for c in frame.columns if str(c).startswith(array_key) and c != labels_key]
        if not cols:
            raise StudyError(f"data.array_key = {array_key!r} matches no column of {path} (it is a column prefix for .csv)")
    else:
        cols = [c for c in frame.columns if c != labels_key]
    features = frame[cols]
    non_numeric = [c for c in cols if not pd.api.types.is_numeric_dtype(features[c])]
    if non_numeric:
        raise StudyError(f"{path}: column {non_numeric[0]!r} is not numeric; allowed: numbers only in feature columns")
    y = frame[labels_key].to_numpy() if labels_key else None
    return features.to_numpy(dtype=np.float64), y


def make_manifold(m: Manifold) -> Raw:
    """A smooth nonlinear embedding of [0,1]^d into [0,1]^D with known intrinsic dimension d.

    Each ambient coordinate is a sigmoid of a random low-frequency Fourier feature of the
    latent point: smooth, curved, and (for D >= 2d+1, generically) injective.
    """
    rng = np.random.default_rng(m.seed)
    u = rng.uniform(size=(m.n, m.intrinsic_dim))
    freq = rng.normal(scale=1.5, size=(m.intrinsic_dim, m.ambient_dim))
    phase = rng.uniform(0, 2 * np.pi, size=m.ambient_dim)
    x = 1.0 / (1.0 + np.exp(-2.5 * np.sin(2 * np.pi * u @ freq / 2 + phase)))
    x = x + m.noise * rng.normal(size=x.shape)
    return Raw(np.clip(x, 0.0, 1.0), None, None, f"manifold d={m.intrinsic_dim} in D={m.ambient_dim}")


def read_raw(cfg: DataConfig, root: Path) -> Raw:
    if cfg.name == "digits":
        return read_digits()
    if cfg.name in IDX_SOURCES:
        folder = Path(cfg.path) if cfg.path else root / "data" / "raw" / cfg.name
        return read_idx_dataset(cfg.name, folder, cfg.subset)
    if cfg.name == "manifold":
        return make_manifold(cfg.manifold)
    return read_file(cfg)


# --- validation, scaling, split ---------------------------------------------------------------


def validate(raw: Raw) -> tuple[np.ndarray, np.ndarray | None]:
    """Return x as float64 (n, D) and labels as int64 codes, or raise a one-line StudyError."""
    x = raw.x
    if x.dtype.kind not in "biuf":
        raise StudyError(f"{raw.source}: data has dtype {x.dtype}; allowed: numeric arrays")
    if x.ndim == 1 or x.ndim == 0:
        raise StudyError(f"{raw.source}: data has shape {x.shape}; allowed: (n, features) or (n, h, w[, c])")
    if x.size == 0:
        raise StudyError(f"{raw.source}: data is empty (shape {x.shape}); allowed: at least 3 examples and 1 feature")
    x = x.reshape(len(x), -1).astype(np.float64)
    bad = ~np.isfinite(x)
    if bad.any():
        row, col = np.argwhere(bad)[0]
        raise StudyError(f"{raw.source}: value {x[row, col]} at row {row}, column {col}; allowed: finite numbers (no NaN or inf)")
    if raw.image_shape is not None and int(np.prod(raw.image_shape)) != x.shape[1]:
        raise StudyError(
            f"data.image_shape = {raw.image_shape} multiplies to {int(np.prod(raw.image_shape))} "
            f"but {raw.source} has {x.shape[1]} features per example"
        )
    y = None
    if raw.y is not None:
        labels = np.asarray(raw.y).reshape(-1) if np.asarray(raw.y).ndim else np.asarray(raw.y)
        if labels.ndim != 1 or len(labels) != len(x):
            raise StudyError(f"{raw.source}: {len(x)} examples but labels of shape {np.shape(raw.y)}; allowed: one label per example")
        _, y = np.unique(labels.astype(str), return_inverse=True)
        y = y.astype(np.int64)
    return x, y


def scale(x: np.ndarray, mode: str, default_scale: float | None) -> tuple[np.ndarray, dict]:
    """Map x into [0, 1] and say how: the dataset's own range, min-max, or nothing."""
    lo, hi = float(x.min()), float(x.max())
    if mode == "auto":
        if default_scale is not None:
            mode = "divide"
        elif lo >= 0 and hi <= 1:
            mode = "none"
        elif lo >= 0 and hi <= 255 and np.all(x == np.round(x)):
            mode, default_scale = "divide", 255.0
        else:
            mode = "minmax"
    if mode == "none":
        if lo < 0 or hi > 1:
            raise StudyError(f"data.scaling = none but values span [{lo:g}, {hi:g}]; allowed: data already in [0, 1], or scaling auto | minmax")
        return x, {"method": "none"}
    if mode == "divide":
        return np.clip(x / default_scale, 0.0, 1.0), {"method": "divide", "divisor": default_scale}
    span = hi - lo if hi > lo else 1.0
    return (x - lo) / span, {"method": "minmax", "min": lo, "max": hi}


def split_indices(n: int, y: np.ndarray | None, split: Split, seed: int) -> dict[str, np.ndarray]:
    """Seeded train/val/test indices; stratified by label so each class keeps its share."""
    rng = np.random.default_rng(seed)
    groups = [np.arange(n)] if y is None else [np.flatnonzero(y == c) for c in np.unique(y)]
    parts: dict[str, list[np.ndarray]] = {s: [] for s in SPLITS}
    for idx in groups:
        idx = rng.permutation(idx)
        n_train = int(round(split.train * len(idx)))
        n_val = int(round(split.val * len(idx)))
        parts["train"].append(idx[:n_train])
        parts["val"].append(idx[n_train : n_train + n_val])
        parts["test"].append(idx[n_train + n_val :])
    out = {s: np.sort(np.concatenate(parts[s])) for s in SPLITS}
    empty = [s for s in SPLITS if len(out[s]) == 0]
    if empty:
        raise StudyError(
            f"data.split = train {split.train:g} / val {split.val:g} / test {split.test:g} leaves "
            f"the {empty[0]} split empty for {n} examples; allowed: fractions giving every split >= 1 example"
        )
    return out


def subsample(n: int, y: np.ndarray | None, limit: int | None, seed: int) -> np.ndarray:
    """Exactly `limit` indices (all when None), seeded; with labels each class keeps its share.

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
        idx = rng.permutation(np.flatnonzero(y == c))
        key[idx] = (np.arange(len(idx)) + rng.uniform(size=len(idx))) / len(idx)
    return np.sort(np.argsort(key, kind="stable")[:limit])


# --- prepared files ---------------------------------------------------------------------------


def prepare(cfg: DataConfig, root: Path) -> tuple[dict[str, dict[str, np.ndarray]], dict]:
    """Read, validate, scale and split the dataset: the split arrays and their summary."""
    raw = read_raw(cfg, root)
    x, y = validate(raw)
    keep = subsample(len(x), y, cfg.limit, cfg.seed)
    x, y = x[keep], (y[keep] if y is not None else None)
    x, scaling = scale(x, cfg.scaling, raw.default_scale)
    x = x.astype(np.float32)
    idx = split_indices(len(x), y, cfg.split, cfg.seed)
    splits = {s: {"x": x[idx[s]]} if y is None else {"x": x[idx[s]], "y": y[idx[s]]} for s in SPLITS}
    summary = {
        "dataset": cfg.name,
        "source": raw.source,
        "n_examples": int(len(x)),
        "input_dim": int(x.shape[1]),
        "image_shape": raw.image_shape,
        "counts": {s: int(len(idx[s])) for s in SPLITS},
        "has_labels": y is not None,
        "class_counts": {s: np.bincount(y[idx[s]]).tolist() for s in SPLITS} if y is not None else None,
        "scaling": scaling,
        "intrinsic_dim": intrinsic.estimates(x[idx["train"]], cfg.intrinsic_max_points, cfg.seed),
        "split_seed": cfg.seed,
        "fingerprint": fingerprint(splits),
    }
    return splits, summary


def write_prepared(out_dir: Path, splits: dict[str, dict[str, np.ndarray]], summary: dict) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, arrays in splits.items():
        npz.save(out_dir / f"{name}.npz", **arrays)
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")


def load_split(prepared: Path, split: str) -> tuple[np.ndarray, np.ndarray | None]:
    path = Path(prepared) / f"{split}.npz"
    if not path.is_file():
        raise StudyError(f"{path}: not found; run the prepare stage first (dvc repro)")
    with np.load(path) as archive:
        return archive["x"], (archive["y"] if "y" in archive else None)


def load_summary(prepared: Path) -> dict:
    path = Path(prepared) / "summary.json"
    if not path.is_file():
        raise StudyError(f"{path}: not found; run the prepare stage first (dvc repro)")
    return json.loads(path.read_text())


def fingerprint(splits: dict[str, dict[str, np.ndarray]]) -> str:
    """A short hash of the train and val arrays: trials on other data never mix."""
    h = hashlib.sha256()
    for s in ("train", "val"):
        for key in sorted(splits[s]):
            h.update(np.ascontiguousarray(splits[s][key]).tobytes())
    return h.hexdigest()[:12]
