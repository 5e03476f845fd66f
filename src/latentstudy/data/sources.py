"""Which reader reads data.name and data.path: the one place that maps params to a dataset."""

from __future__ import annotations

from pathlib import Path

from latentstudy.config import DataConfig, StudyError
from latentstudy.data import arrays, folders, idx, synthetic, tables
from latentstudy.data.raw import Raw, resolve

FILES = "an existing .npz, .npy, .csv, .parquet or .feather file"


def read(cfg: DataConfig, root: Path) -> Raw:
    if cfg.name == "digits":
        return synthetic.read_digits()
    if cfg.name == "manifold":
        return synthetic.make_manifold(cfg.manifold)
    if cfg.name == "shapes":
        return synthetic.make_shapes(cfg.shapes)
    if cfg.name == "patches":
        return synthetic.make_patches(cfg.patches)
    if cfg.name in idx.IDX_SOURCES:
        folder = resolve(cfg.path, root, "a folder of IDX files", missing_ok=True) if cfg.path else \
            root / "data" / "raw" / cfg.name
        return idx.read_idx_dataset(cfg.name, folder, cfg.subset)
    if cfg.name == "images":
        return folders.read_folder(resolve(cfg.path, root, "a folder of images"), cfg)
    return read_file(resolve(cfg.path, root, FILES), cfg)


def read_file(path: Path, cfg: DataConfig) -> Raw:
    if not path.is_file():
        raise StudyError(f"data.path: {path}: not a file; allowed: {FILES} (a folder of images is data.name: images)")
    suffix = path.suffix.lower()
    pages, names = None, None
    if suffix == ".npz":
        x, y, pages = arrays.read_npz(path, cfg.array_key, cfg.labels_key)
    elif suffix == ".npy":
        if cfg.labels_key:
            raise StudyError(f"data.labels_key = {cfg.labels_key!r}: a .npy file holds one array; put labels in a "
                             ".npz or a table")
        (x, pages), y = arrays.read_npy(path), None
    elif suffix in tables.SUFFIXES:
        x, y, names = tables.read_table(path, cfg.array_key, cfg.labels_key)
    else:
        raise StudyError(f"data.path: {path}: unsupported suffix {suffix!r}; allowed: .npz, .npy, .csv, .parquet, "
                         ".feather (a folder of images is data.name: images)")
    return Raw(x, y, f"file {path}", pages=pages, feature_names=names)
