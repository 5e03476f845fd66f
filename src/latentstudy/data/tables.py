"""Tables: CSV, Parquet and Feather, read through pandas (Parquet and Feather with pyarrow).

data.array_key is a column prefix (px selects px0, px1, ...); data.labels_key names the label
column. Every other selected column is a feature and must be numeric.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from latentstudy.config import StudyError
from latentstudy.data.raw import attempt

SUFFIXES = (".csv", ".parquet", ".feather")


def read_table(path: Path, array_key: str | None,
               labels_key: str | None) -> tuple[np.ndarray, np.ndarray | None, list[str]]:
    """(features, labels or None, the feature columns' names)."""
    import pandas as pd

    suffix = path.suffix.lower()
    if suffix == ".csv" and path.stat().st_size == 0:
        raise StudyError(f"{path}: the file is empty; allowed: a CSV table with a header line and one row per example")
    read = {".csv": pd.read_csv, ".parquet": pd.read_parquet, ".feather": pd.read_feather}[suffix]
    frame = attempt(lambda: read(path), path)
    columns = [str(c) for c in frame.columns]
    frame.columns = columns
    if labels_key is not None and labels_key not in columns:
        raise StudyError(f"data.labels_key = {labels_key!r} is not a column of {path}; allowed: {', '.join(columns)}")
    if array_key is not None:
        cols = [c for c in columns if c.startswith(array_key) and c != labels_key]
        if not cols:
            raise StudyError(f"data.array_key = {array_key!r} matches no column of {path} (it is a column prefix "
                             "for tables)")
    else:
        cols = [c for c in columns if c != labels_key]
    if len(frame) == 0:
        raise StudyError(f"{path}: has column names ({', '.join(columns[:5])}{', ...' if len(columns) > 5 else ''}) "
                         "but no rows; allowed: one row per example")
    if not cols:
        raise StudyError(f"{path}: has no feature columns besides the labels {labels_key!r}")
    features = frame[cols]
    for c in cols:
        if not pd.api.types.is_numeric_dtype(features[c]):
            value = features[c].iloc[0]
            raise StudyError(f"{path}: column {c!r} is not numeric (first value {value!r}); allowed: numbers only in "
                             "feature columns: name a label column with data.labels_key, or select the feature "
                             "columns with data.array_key (a prefix)")
    y = frame[labels_key].to_numpy() if labels_key else None
    # One numpy dtype for all columns (not object); pandas' nullable columns become floats with NaN.
    dtypes = [d if isinstance(d, np.dtype) else np.dtype(np.float64) for d in features.dtypes]
    return features.to_numpy(dtype=np.result_type(*dtypes), na_value=np.nan), y, cols
