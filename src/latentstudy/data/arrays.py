"""NumPy files: .npy and the arrays of an .npz, memory-mapped wherever they are stored uncompressed.

A memory map lets prepare read a dataset larger than memory once, chunk by chunk, instead of
holding it (and a float copy of it) whole.
"""

from __future__ import annotations

import mmap
import struct
import zipfile
from pathlib import Path

import numpy as np

from latentstudy.config import StudyError
from latentstudy.data.raw import Pages, attempt

NPY_MAGIC = b"\x93NUMPY"
ZIP_MAGIC = b"PK\x03\x04"


def sniff(path: Path, expected: str) -> None:
    """Refuse a file whose first bytes say it is not what its suffix claims, naming what it is."""
    with open(path, "rb") as f:
        head = f.read(512)
    magic = {".npy": NPY_MAGIC, ".npz": ZIP_MAGIC}[expected]
    if head.startswith(magic):
        return
    if not head:
        raise StudyError(f"{path}: the file is empty; allowed: a {expected} file written by NumPy")
    if head.startswith(NPY_MAGIC) or head.startswith(ZIP_MAGIC):
        actual = ".npy" if head.startswith(NPY_MAGIC) else ".npz"
        raise StudyError(f"{path}: this is a {actual} file named {expected}; rename it to {Path(path).stem}{actual}")
    if _is_text(head):
        first = head.decode("utf-8", "replace").splitlines()[0][:60]
        raise StudyError(f"{path}: this is a text file (first line {first!r}), not a {expected} file; a table "
                         "belongs in a .csv file")
    raise StudyError(f"{path}: not a {expected} file (it does not start like one); allowed: a file written by "
                     f"numpy.{'save' if expected == '.npy' else 'savez'}")


def _is_text(head: bytes) -> bool:
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return all(ch.isprintable() or ch in "\r\n\t" for ch in text)


def _header(f) -> tuple[tuple[int, ...], bool, np.dtype]:
    """Shape, Fortran order and dtype of the .npy array that starts at f's position."""
    version = np.lib.format.read_magic(f)
    read = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}.get(version)
    if read is None:
        raise ValueError(f".npy format version {version} is not supported; save with numpy.save")
    return read(f)


def _map(path: Path, start: int, what: str) -> tuple[np.ndarray, Pages | None]:
    """The array stored at byte `start` of path, memory-mapped read-only."""
    with open(path, "rb") as f:
        f.seek(start)
        shape, fortran, dtype = _header(f)
        offset = f.tell()
        if dtype.hasobject:
            raise StudyError(f"{what}: holds Python objects (dtype {dtype}); allowed: numeric arrays")
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        if offset + nbytes > Path(path).stat().st_size:
            raise StudyError(f"{what}: truncated: its header says shape {shape} of {dtype} ({nbytes} bytes)")
        if nbytes == 0:
            return np.zeros(shape, dtype), None
        mapping = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    x = np.ndarray(shape, dtype, buffer=mapping, offset=offset, order="F" if fortran else "C")
    rows_contiguous = not fortran and len(shape) > 0 and shape[0] > 0
    pages = Pages(mapping, offset, nbytes // shape[0]) if rows_contiguous else None
    return x, pages


def read_npy(path: Path) -> tuple[np.ndarray, Pages | None]:
    sniff(path, ".npy")
    return attempt(lambda: _map(path, 0, str(path)), path)


def read_npz(path: Path, array_key: str | None, labels_key: str | None
             ) -> tuple[np.ndarray, np.ndarray | None, Pages | None]:
    """The data array (memory-mapped when stored uncompressed) and the labels of an .npz."""
    sniff(path, ".npz")
    archive = attempt(lambda: zipfile.ZipFile(path), path)
    with archive:
        members = {info.filename[:-4]: info for info in archive.infolist() if info.filename.endswith(".npy")}
        keys = list(members)
        if array_key is None:
            candidates = [k for k in keys if k != labels_key]
            if len(candidates) != 1:
                raise StudyError(f"{path}: holds arrays {keys}; set data.array_key to one of them")
            array_key = candidates[0]
        for key, what in ((array_key, "array_key"), (labels_key, "labels_key")):
            if key is not None and key not in keys:
                raise StudyError(f"data.{what} = {key!r} is not in {path}; allowed: {', '.join(keys)}")
        info = members[array_key]
        if info.compress_type == zipfile.ZIP_STORED:
            x, pages = attempt(lambda: _map(path, _data_start(path, info), f"{path}[{array_key}]"), path)
        else:  # compressed (numpy.savez_compressed): read into memory, in its own dtype
            x, pages = attempt(lambda: _load_member(archive, info), path), None
        y = attempt(lambda: _load_member(archive, members[labels_key]), path) if labels_key else None
    return x, y, pages


def _data_start(path: Path, info: zipfile.ZipInfo) -> int:
    """Where a stored member's bytes begin: after its local header, whose lengths can differ from
    the central directory's."""
    with open(path, "rb") as f:
        f.seek(info.header_offset)
        local = f.read(30)
    if local[:4] != ZIP_MAGIC:
        raise ValueError(f"bad local header of {info.filename}")
    name_len, extra_len = struct.unpack("<HH", local[26:30])
    return info.header_offset + 30 + name_len + extra_len


def _load_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> np.ndarray:
    with archive.open(info) as member:
        return np.lib.format.read_array(member, allow_pickle=False)
