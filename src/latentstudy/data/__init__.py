"""The prepared data every stage reads: <prepared>/{train,val,test}.npz and summary.json.

x is float32 (n, D), scaled as summary.json's "scaling" says (images in [0, 1]; vectors and
tables standardised per feature by default; latentstudy.data.scaling applies it to raw rows); an
image's row is its pixels in channel-first order (c, h, w), and summary.json's image_shape says
[h, w] or [c, h, w]. y holds int64 labels when the data has them. The prepare stage writes
these files (latentstudy.data.prepare) from the readers beside this module; the other stages
import only this module.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from latentstudy import npz
from latentstudy.config import StudyError
from latentstudy.contracts import Summary

SPLITS = ("train", "val", "test")


def load_split(prepared: Path, split: str) -> tuple[np.ndarray, np.ndarray | None]:
    path = Path(prepared) / f"{split}.npz"
    if not path.is_file():
        raise StudyError(f"{path}: not found; run the prepare stage first (dvc repro)")
    arrays = npz.load(path, "prepare")
    return arrays["x"], arrays.get("y")


def load_summary(prepared: Path) -> Summary:
    return Summary.load(Path(prepared) / "summary.json")


class Prepared:
    """The prepared folder, each file read at most once: what one process of a stage reads from it
    (the search's coordinator reads the summary, the splits for its validation pass, a lost
    model's retraining and the MLflow figures from here)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._summary: Summary | None = None
        self._splits: dict[str, tuple[np.ndarray, np.ndarray | None]] = {}

    @property
    def summary(self) -> Summary:
        if self._summary is None:
            self._summary = load_summary(self.path)
        return self._summary

    def split(self, name: str) -> tuple[np.ndarray, np.ndarray | None]:
        """(x, y or None) of one split."""
        if name not in self._splits:
            self._splits[name] = load_split(self.path, name)
        return self._splits[name]
