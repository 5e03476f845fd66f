"""IDX files (MNIST, Fashion-MNIST): the reader, and the download of the official files when missing."""

from __future__ import annotations

import gzip
import hashlib
import urllib.error
import urllib.request
import zlib
from pathlib import Path

import numpy as np

from latentstudy.config import StudyError
from latentstudy.data.raw import Raw

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
        xs.append(images)
        ys.append(labels.astype(np.int64))
    h, w = images.shape[1:]
    return Raw(np.concatenate(xs), np.concatenate(ys), f"{name} {subset} from {folder}", 255.0, [h, w])
