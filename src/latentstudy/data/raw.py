"""What every reader returns (Raw), the memory map under it, and what readers share: the
one-line read error, the user's path resolved, and the stage's printed lines."""

from __future__ import annotations

import mmap
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np

from latentstudy.config import StudyError

T = TypeVar("T")


@dataclass(frozen=True)
class Pages:
    """The memory map under a reader's array, so rows already read can leave resident memory."""

    mapping: mmap.mmap
    offset: int  # byte offset of row 0 in the mapping
    row_bytes: int

    def release(self, start: int, stop: int) -> None:
        """Drop rows [start, stop) from this process's resident set; the OS page cache keeps them."""
        if not hasattr(mmap, "MADV_DONTNEED"):
            return
        lo = (self.offset + start * self.row_bytes) // mmap.PAGESIZE * mmap.PAGESIZE
        hi = (self.offset + stop * self.row_bytes) // mmap.PAGESIZE * mmap.PAGESIZE
        if hi > lo:
            self.mapping.madvise(mmap.MADV_DONTNEED, lo, hi - lo)


@dataclass(frozen=True)
class Raw:
    """A dataset as read, before validation and scaling.

    x has one example per row of its first axis, in the reader's layout: vectors (n, D) or images
    (n, h, w), (n, h, w, c), (n, c, h, w). It may be a read-only memory map of the user's file.
    """

    x: np.ndarray
    y: np.ndarray | None
    source: str
    default_scale: float | None = None  # the dataset's own pixel range (/255, /16), if it has one
    image_shape: list[int] | None = None  # when the reader knows it: x's examples, channel-first
    pages: Pages | None = None
    feature_names: list[str] | None = None  # a table's column names, one per feature
    # Every feature is on one scale (as pixels are): data.scaling auto keeps it in [0, 1] rather
    # than standardising each feature, as for images.
    shared_scale: bool = False


class Progress:
    """'k of n' lines with rate and ETA, at most one every few seconds."""

    def __init__(self, what: str, total: int, unit: str, every: float = 5.0):
        self.what, self.total, self.unit, self.every = what, total, unit, every
        self.start = self.last = time.monotonic()
        self.shown = False

    def __call__(self, done: int) -> None:
        now = time.monotonic()
        if now - self.last < self.every and not (done == self.total and self.shown):
            return
        self.last, self.shown = now, True
        rate = done / max(now - self.start, 1e-9)
        eta = f", ETA {(self.total - done) / rate:.0f} s" if done < self.total else ", done"
        say(f"{self.what}: {done} of {self.total} ({100 * done / self.total:.0f}%), {rate:.0f} {self.unit}/s{eta}")


def say(message: str) -> None:
    """One line of the prepare stage's output."""
    print(f"[prepare] {message}", flush=True)


def attempt(fn: Callable[[], T], path: Path) -> T:
    """fn(), with any failure to read path as one line naming the file."""
    try:
        return fn()
    except StudyError:
        raise
    except Exception as exc:  # numpy, pandas, pyarrow and Pillow raise many types for unreadable files
        raise StudyError(f"{path}: cannot read ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from None


def resolve(path: str, root: Path, allowed: str, missing_ok: bool = False) -> Path:
    """data.path as given, or, when it is relative and missing here, the project root's file;
    when it is in neither place, an error (or, with missing_ok, the path as given).

    `dvc exp run --temp` runs in a copy of the repository under .dvc/tmp/exps/ that holds only
    tracked files; the user's data is in the project itself.
    """
    given = Path(path).expanduser()
    if given.exists():
        return given
    at_root = Path(root) / given
    if not given.is_absolute() and at_root.exists():
        say(f"data.path {path} is not in this working copy; reading {at_root} (relative to the project root)")
        return at_root
    if missing_ok:
        return given
    here = Path.cwd().resolve()
    where = "" if given.is_absolute() or Path(root).resolve() == here else \
        f" (neither here, in {here}, nor in the project root {root})"
    raise StudyError(f"data.path: {path}: file not found{where}; allowed: {allowed}")
