"""Byte-for-byte reproducible .npz files, written whole or a chunk of rows at a time.

numpy.savez stamps every member with the current time, so identical arrays written twice hash
differently and DVC reruns every stage downstream. Fixed timestamps keep unchanged outputs
unchanged. Streaming a member lets prepare write a dataset larger than it could hold twice.
"""

from __future__ import annotations

import contextlib
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from latentstudy.config import StudyError, first_line

EPOCH = (1980, 1, 1, 0, 0, 0)


class Writer:
    """An .npz file written member by member to a temporary name, renamed into place on close."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.tmp = self.path.with_suffix(".tmp")
        self.zip = zipfile.ZipFile(self.tmp, "w", compression=zipfile.ZIP_STORED)

    def add(self, name: str, array: np.ndarray) -> None:
        array = np.asarray(array, order="C")  # keeps 0-d arrays 0-d, unlike ascontiguousarray
        with self.stream(name, array.shape, array.dtype) as write:
            write(array)

    @contextlib.contextmanager
    def stream(self, name: str, shape: tuple[int, ...], dtype: np.dtype) -> Iterator[Callable[[np.ndarray], None]]:
        """Yields write(rows): call it with consecutive blocks of rows until shape[0] rows are in."""
        dtype = np.dtype(dtype)
        header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": tuple(shape)}
        written = 0
        with self.zip.open(zipfile.ZipInfo(f"{name}.npy", date_time=EPOCH), "w", force_zip64=True) as member:
            np.lib.format.write_array_header_1_0(member, header)

            def write(rows: np.ndarray) -> None:
                nonlocal written
                block = np.asarray(rows, dtype=dtype, order="C")
                if block.shape[1:] != tuple(shape[1:]):
                    raise ValueError(f"{name}: rows of shape {block.shape[1:]}, expected {tuple(shape[1:])}")
                member.write(block.reshape(-1).view(np.uint8))
                written += block.size

            yield write
        if written != int(np.prod(shape, dtype=np.int64)):
            raise ValueError(f"{name}: {written} values written, expected shape {tuple(shape)}")

    def close(self) -> None:
        self.zip.close()
        self.tmp.replace(self.path)

    def __enter__(self) -> "Writer":
        return self

    def __exit__(self, kind, *_) -> None:
        if kind is None:
            self.close()
        else:
            self.zip.close()
            self.tmp.unlink(missing_ok=True)


def save(path: Path, **arrays: np.ndarray) -> None:
    with Writer(path) as out:
        for name in sorted(arrays):
            out.add(name, np.asarray(arrays[name]))


def load(path: Path, stage: str) -> dict[str, np.ndarray]:
    """Every array of a stage's .npz output, read whole. A damaged file (truncated, garbage, a bad
    CRC) is one line naming it and the commands that give it back: the DVC cache's copy, or the
    stage that writes it."""
    try:
        with np.load(path) as archive:
            return {name: archive[name] for name in archive.files}
    except FileNotFoundError:
        raise
    # A damaged zip fails in the zip reader, the decompressor or the array header, each its own way.
    except Exception as exc:  # noqa: BLE001
        raise StudyError(f"{path}: not a readable .npz file ({first_line(exc)}); restore it with "
                         f"`dvc checkout --force {path}`, or rebuild it with `dvc repro -f -s {stage}`") from None
