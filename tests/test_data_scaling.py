"""data.scaling on tables: per-feature standardisation on the training split, min-max per feature
and over all values, constant and extreme features, and the stored scaler applied to raw rows."""

import numpy as np
import pandas as pd
import pytest
from conftest import prepare_data

from latentstudy import pca
from latentstudy.config import StudyError
from latentstudy.data import SPLITS
from latentstudy.data import scaling as scaler


def mixed_table(n=400, seed=0) -> pd.DataFrame:
    """Four features on scale 1, two on scale 1,000, one constant, and a label."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({f"small{i}": rng.normal(size=n) for i in range(4)})
    for i in range(2):
        frame[f"big{i}"] = 1000.0 * rng.normal(size=n) + 5000.0
    frame["const"] = 7.0
    frame["label"] = np.where(rng.uniform(size=n) < 0.5, "a", "b")
    return frame


def write_table(tmp_path, frame, name="t.csv"):
    frame.to_csv(tmp_path / name, index=False)
    return {"name": "file", "path": str(tmp_path / name), "labels_key": "label" if "label" in frame else None}


def all_rows(splits) -> np.ndarray:
    return np.concatenate([splits[s]["x"] for s in SPLITS])


def test_a_table_on_scales_1_and_1000_is_standardised_on_the_train_split(tmp_path, capsys):
    frame = mixed_table()
    summary, splits = prepare_data(tmp_path / "auto", **write_table(tmp_path, frame))
    out = capsys.readouterr().out
    s = summary["scaling"]
    assert s["method"] == "standard" and s["fit_on"] == "train"
    assert s["why"] == "data.scaling auto: vector data is standardised per feature on the training split"
    train = splits["train"]["x"].astype(np.float64)
    np.testing.assert_allclose(train.mean(axis=0), 0.0, atol=1e-6)  # fitted on train: exactly 0 there
    np.testing.assert_allclose(train.std(axis=0), 1.0, atol=1e-5)
    assert abs(splits["test"]["x"].mean(axis=0)).max() > 1e-3  # ... and only there
    # The constant column is dropped, by name, in one line.
    assert summary["input_dim"] == 6 and s["dropped"] == [{"index": 6, "name": "const", "value": 7.0}]
    assert s["feature_names"] == ["small0", "small1", "small2", "small3", "big0", "big1"]
    lines = [line for line in out.splitlines() if "constant" in line]
    assert lines == ["[prepare] dropped 1 constant feature (one value on every training row): column 'const'"]
    assert s["extreme"] == [] and "extreme" not in out
    # The stored scaler maps the raw rows onto the prepared ones: the one function every stage uses.
    raw = frame.drop(columns="label").to_numpy()
    assert sorted(map(bytes, scaler.apply(raw, s))) == sorted(map(bytes, all_rows(splits)))
    # Before: one min-max over all columns, and two components "explain" the table.
    _, old = prepare_data(tmp_path / "global", **write_table(tmp_path, frame), scaling="minmax_global")
    assert pca.explained_ratio(pca.fit(old["train"]["x"]))[1] > 0.99
    assert pca.explained_ratio(pca.fit(splits["train"]["x"]))[1] < 0.6


def test_minmax_is_per_feature_on_the_train_split_and_minmax_global_is_one_range(tmp_path):
    frame = mixed_table().drop(columns="const")
    summary, splits = prepare_data(tmp_path / "mm", **write_table(tmp_path, frame), scaling="minmax")
    s = summary["scaling"]
    assert s["method"] == "minmax" and s["why"].startswith("data.scaling minmax: each feature min-max")
    train = splits["train"]["x"]
    np.testing.assert_allclose(train.min(axis=0), 0.0, atol=1e-7)
    np.testing.assert_allclose(train.max(axis=0), 1.0, atol=1e-6)
    rows = all_rows(splits)
    assert rows.min() >= 0 and rows.max() <= 1  # val and test clipped into the training range
    summary, splits = prepare_data(tmp_path / "g", **write_table(tmp_path, frame), scaling="minmax_global")
    raw = frame.drop(columns="label").to_numpy()
    assert summary["scaling"]["min"] == raw.min() and summary["scaling"]["max"] == raw.max()
    expected = ((raw - raw.min()) / (raw.max() - raw.min())).astype(np.float32)
    assert sorted(map(bytes, all_rows(splits))) == sorted(map(bytes, expected))
    assert all_rows(splits)[:, :4].std() < 1e-3  # the scale-1 features squeezed together: why auto standardises


@pytest.mark.parametrize("mode, default_scale, shared", [
    ("standard", None, None), ("minmax", None, None), ("minmax_global", None, "images"), ("auto", 16.0, "images")])
def test_unapply_takes_prepared_rows_back_to_the_raw_units(mode, default_scale, shared):
    """apply's inverse, with a dropped constant feature put back at its value (what a decoder's
    output needs to come back in the user's units)."""
    rng = np.random.default_rng(0)
    raw = np.column_stack([rng.uniform(0, 16, size=(50, 3)), np.full(50, 7.0), rng.uniform(2, 9, size=50)])
    moments = scaler.Moments()
    moments.add(raw)
    s = scaler.choose(mode, raw.min(), raw.max(), False, default_scale, shared, moments, None, False)
    prepared = scaler.apply(raw, s)
    assert prepared.shape[1] == 5 - len(s.get("dropped") or []) and scaler.raw_width(s, prepared.shape[1]) == 5
    np.testing.assert_allclose(scaler.unapply(prepared, s), raw, rtol=1e-6, atol=1e-5)


def test_a_feature_that_stays_extreme_is_named(tmp_path, capsys):
    rng = np.random.default_rng(0)
    n = 30000
    frame = pd.DataFrame({"calm": rng.normal(size=n), "mild": rng.exponential(size=n), "spiky": rng.normal(size=n)})
    frame.loc[rng.choice(n, 5, replace=False), "spiky"] = 1e6  # a sentinel value: |z| about 65 wherever it lands
    frame.to_parquet(tmp_path / "t.parquet")
    summary, _ = prepare_data(tmp_path, name="file", path=str(tmp_path / "t.parquet"), intrinsic_max_points=300)
    assert summary["scaling"]["extreme"] == [{"index": 2, "name": "spiky", "rows": 5}]
    warned = [line for line in capsys.readouterr().out.splitlines() if "extreme" in line]
    assert len(warned) == 1 and "column 'spiky' (5 rows)" in warned[0] and "calm" not in warned[0]


def test_features_all_constant_on_the_train_split_are_refused():
    moments = scaler.Moments()
    moments.add(np.tile([0.0, 3.0], (50, 1)))  # b varies (to 4) only outside the training rows
    with pytest.raises(StudyError, match="data.scaling standard: every feature is constant on the training split"):
        scaler.choose("standard", 0.0, 4.0, True, None, None, moments, ["a", "b"], False)


def test_moments_merge_blocks_exactly():
    rng = np.random.default_rng(0)
    x = 1e8 + rng.normal(size=(1000, 3))  # a large mean: a naive sum of squares would cancel
    moments = scaler.Moments()
    for start in range(0, 1000, 97):
        moments.add(x[start : start + 97])
    np.testing.assert_allclose(moments.mean, x.mean(axis=0), rtol=1e-14)
    np.testing.assert_allclose(moments.sd, x.std(axis=0), rtol=1e-7)


def test_standardised_images_keep_every_pixel(tmp_path):
    summary, splits = prepare_data(tmp_path, scaling="standard")  # digits: some pixels are always 0
    assert summary["input_dim"] == 64 and summary["scaling"]["dropped"] == []
    assert summary["image_shape"] == [8, 8] and np.all(np.isfinite(all_rows(splits)))
    assert not scaler.in_unit_interval(summary["scaling"])
