"""prepare: IDX files, scaling, the seeded split, degenerate data, and the files it writes."""

import gzip
import hashlib
import json

import numpy as np
import pytest
from conftest import prepare_data

from latentstudy.config import Split, StudyError
from latentstudy.data import SPLITS, idx, load_split, load_summary, prepare
from latentstudy.data import scaling as scaler

# --- IDX ----------------------------------------------------------------------------------------


def test_idx_reader_on_real_mnist_test_files(mnist_dir):
    images_gz = mnist_dir / "t10k-images-idx3-ubyte.gz"
    labels_gz = mnist_dir / "t10k-labels-idx1-ubyte.gz"
    assert hashlib.md5(images_gz.read_bytes()).hexdigest() == idx.IDX_SOURCES["mnist"]["md5"][images_gz.name]
    assert hashlib.md5(labels_gz.read_bytes()).hexdigest() == idx.IDX_SOURCES["mnist"]["md5"][labels_gz.name]
    images, labels = idx.read_idx(images_gz), idx.read_idx(labels_gz)
    assert images.shape == (10000, 28, 28) and images.dtype == np.uint8
    assert labels.shape == (10000,) and labels[:5].tolist() == [7, 2, 1, 0, 4]
    assert np.bincount(labels).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    assert images.max() == 255 and images.min() == 0


def test_idx_reader_reads_uncompressed_files(mnist_dir, tmp_path):
    raw = tmp_path / "t10k-labels-idx1-ubyte"
    raw.write_bytes(gzip.decompress((mnist_dir / "t10k-labels-idx1-ubyte.gz").read_bytes()))
    assert idx.read_idx(raw)[:3].tolist() == [7, 2, 1]


@pytest.mark.parametrize("blob, fragment", [
    (b"\x00\x00\x08\x01\x00\x00\x00\x05\x01\x02", "corrupt IDX file"),  # says 5 bytes, has 2
    (b"PK\x03\x04junk", "not an IDX file"),
    (b"\x00\x00\x08", "not an IDX file"),
    (b"\x1f\x8b\x08\x00broken-gzip", "cannot read"),
])
def test_idx_reader_rejects_corrupt_files(tmp_path, blob, fragment):
    path = tmp_path / "bad-idx"
    path.write_bytes(blob)
    with pytest.raises(StudyError, match=fragment) as err:
        idx.read_idx(path)
    assert str(path) in str(err.value)


def test_mnist_dataset_from_a_folder_uses_the_test_files(mnist_dir, tmp_path):
    summary, splits = prepare_data(tmp_path, name="mnist", path=str(mnist_dir), subset="test", limit=600,
                                   intrinsic_max_points=200)
    assert summary["image_shape"] == [28, 28] and summary["input_dim"] == 784
    assert summary["scaling"]["method"] == "divide" and summary["scaling"]["divisor"] == 255.0
    assert sum(summary["counts"].values()) == summary["n_examples"] == 600
    assert summary["class_names"] == [str(d) for d in range(10)]
    assert all(0.0 <= splits[s]["x"].min() and splits[s]["x"].max() <= 1.0 for s in SPLITS)


def test_missing_idx_files_offline_say_which_files_go_where(tmp_path, monkeypatch):
    # Nothing listens on port 9 here: the download fails at once, as it would offline.
    monkeypatch.setitem(idx.IDX_SOURCES["fashion-mnist"], "urls", ["http://127.0.0.1:9/"])
    with pytest.raises(StudyError) as err:
        prepare_data(tmp_path, name="fashion-mnist", path=str(tmp_path / "fm"), subset="test")
    message = str(err.value)
    assert "t10k-images-idx3-ubyte.gz" in message and str(tmp_path / "fm") in message


# --- digits, scaling, split ---------------------------------------------------------------------


def test_digits_prepare_is_deterministic_and_stratified(tmp_path):
    summary, a = prepare_data(tmp_path / "a")
    _, b = prepare_data(tmp_path / "b")
    for s in SPLITS:
        np.testing.assert_array_equal(a[s]["x"], b[s]["x"])
        assert a[s]["x"].dtype == np.float32 and a[s]["y"].dtype == np.int64
    assert summary["n_examples"] == 1797 and summary["input_dim"] == 64 and summary["image_shape"] == [8, 8]
    assert summary["scaling"]["method"] == "divide" and summary["scaling"]["divisor"] == 16.0
    assert summary["counts"] == {"train": 1258, "val": 269, "test": 270}
    shares = np.array(summary["class_counts"]["test"]) / np.array(summary["class_counts"]["train"])
    assert shares.min() > 0.17 and shares.max() < 0.26  # each class keeps about 15/70 of its train count
    assert 7.5 < summary["intrinsic_dim"]["twonn"] < 10.5
    _, c = prepare_data(tmp_path / "c", seed=1)
    assert not np.array_equal(a["test"]["x"], c["test"]["x"])


def test_digits_stay_the_pixels_over_16_exactly(tmp_path):
    """Images keep their [0, 1] scaling bit for bit: the default study's data and numbers do not move."""
    from sklearn.datasets import load_digits

    summary, splits = prepare_data(tmp_path)
    got = np.concatenate([splits[s]["x"] for s in SPLITS])
    expected = (load_digits().data / 16.0).astype(np.float32)
    assert summary["scaling"]["why"] == "data.scaling auto: images divided by the dataset's own range, 16"
    assert got.max() == 1.0 and summary["input_dim"] == 64  # constant pixels stay: an image keeps its shape
    assert sorted(map(bytes, got)) == sorted(map(bytes, expected))


def test_limit_keeps_exactly_that_many_with_class_shares():
    y = np.repeat([0, 1, 2], [500, 300, 200])
    keep = prepare.subsample(len(y), y, 100, 0)
    assert len(keep) == 100 and len(set(keep.tolist())) == 100
    assert np.bincount(y[keep]).tolist() == [50, 30, 20]


def test_split_without_labels_covers_every_index_once():
    parts = prepare.split_indices(101, None, Split(), 0)
    joined = np.concatenate([parts[s] for s in SPLITS])
    assert sorted(joined.tolist()) == list(range(101))


@pytest.mark.parametrize("lo, hi, integral, mode, expected", [
    (0.0, 1.0, False, "auto", "none"),
    (0.0, 255.0, True, "auto", "divide"),
    (-3.0, 5.0, False, "auto", "minmax_global"),
    (0.0, 255.0, False, "auto", "minmax_global"),  # not whole numbers: not pixel values
    (0.0, 255.0, True, "minmax_global", "minmax_global"),
])
def test_image_scaling_maps_into_unit_interval(lo, hi, integral, mode, expected):
    scaling = scaler.choose(mode, lo, hi, integral, None, "images", None, None, True)
    assert scaling["method"] == expected and scaling["why"].startswith(f"data.scaling {mode}: ")
    scaled = scaler.apply(np.array([[lo, hi], [hi, lo]]), scaling)
    assert scaled.dtype == np.float32 and scaled.min() >= 0 and scaled.max() <= 1


def test_scaling_none_refuses_values_outside_unit_interval():
    with pytest.raises(StudyError, match="data.scaling = none but values span"):
        scaler.choose("none", 0.0, 2.0, True, None, "images", None, None, True)


# --- degenerate data: one line, and nothing written ---------------------------------------------


def write_npy(tmp_path, x, name="x.npy"):
    np.save(tmp_path / name, x)
    return {"name": "file", "path": str(tmp_path / name)}


@pytest.mark.parametrize("x, fragment", [
    (np.zeros((200, 10)), "zero variance (every value is 0 across all 200 examples)"),
    (np.tile(np.arange(10.0), (200, 1)), "zero variance (every feature is constant"),
])
def test_data_without_variance_is_refused(tmp_path, x, fragment):
    with pytest.raises(StudyError, match=r"zero variance") as err:
        prepare_data(tmp_path, **write_npy(tmp_path, x))
    assert fragment in str(err.value) and "\n" not in str(err.value)
    assert not list((tmp_path / "prepared").glob("*.npz"))


def test_a_split_below_the_minimum_is_named(tmp_path):
    rng = np.random.default_rng(0)
    with pytest.raises(StudyError) as err:
        prepare_data(tmp_path, **write_npy(tmp_path, rng.uniform(size=(5, 4))),
                     split={"train": 0.6, "val": 0.2, "test": 0.2})
    assert "leaves the train split 3 of 5 examples; allowed: at least 10 per split" in str(err.value)
    with pytest.raises(StudyError, match="leaves the test split 4 of 90 examples.*about 200 examples"):
        prepare.split_indices(90, None, Split(0.8, 0.15, 0.05), 0)


def test_a_missing_label_is_refused_naming_its_row(tmp_path):
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, size=80).astype(np.float64)
    y[[12, 40]] = np.nan
    np.savez(tmp_path / "d.npz", x=rng.normal(size=(80, 4)), y=y)
    with pytest.raises(StudyError) as err:
        prepare_data(tmp_path, name="file", path=str(tmp_path / "d.npz"), array_key="x", labels_key="y")
    assert "the label at row 12 is missing (nan; 2 rows in all)" in str(err.value) and "\n" not in str(err.value)
    import pandas as pd

    frame = pd.DataFrame({"a": rng.normal(size=80), "label": np.where(np.arange(80) % 2, "cat", "dog")})
    frame.loc[7, "label"] = None
    frame.to_parquet(tmp_path / "t.parquet")
    with pytest.raises(StudyError, match="the label at row 7 is missing"):
        prepare_data(tmp_path, name="file", path=str(tmp_path / "t.parquet"), labels_key="label")


def test_labels_of_one_class_are_said(tmp_path, capsys):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "d.npz", x=rng.normal(size=(80, 4)), y=np.full(80, 3))
    summary, _ = prepare_data(tmp_path, name="file", path=str(tmp_path / "d.npz"), array_key="x", labels_key="y")
    assert summary["class_names"] == ["3"]
    assert "[prepare] the labels have one class ('3'): the representation purpose does not apply" in \
        capsys.readouterr().out.splitlines()


def test_limit_below_three_splits_is_refused_in_params(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("data:\n  limit: 20\n")
    from latentstudy import paramfile

    with pytest.raises(StudyError, match="data.limit = 20 is out of range; allowed: >= 30"):
        paramfile.load_section(path, "data")


# --- the files prepare writes -------------------------------------------------------------------


def test_written_files_round_trip_with_their_fingerprint(tmp_path):
    summary, splits = prepare_data(tmp_path, limit=200, intrinsic_max_points=100)
    out = tmp_path / "prepared"
    assert json.loads((out / "summary.json").read_text()) == load_summary(out).to_json() == summary
    x, y = load_split(out, "val")
    assert x.shape == (summary["counts"]["val"], 64) and len(y) == len(x)
    with np.load(out / "train.npz") as archive:
        assert sorted(archive.files) == ["x", "y"]
    whole = hashlib.sha256()  # the arrays' bytes in turn: the definition studies were named by
    for s in ("train", "val"):
        for key in ("x", "y"):
            whole.update(np.ascontiguousarray(splits[s][key]).tobytes())
    assert summary["fingerprint"] == whole.hexdigest()[:12]
    _, other = prepare_data(tmp_path / "other", limit=200, intrinsic_max_points=100, seed=3)
    assert load_summary(tmp_path / "other" / "prepared").fingerprint != summary["fingerprint"]


def test_prepared_files_are_byte_identical_across_runs(tmp_path):
    # DVC hashes files: a rerun with the same params must not look like new data downstream.
    for name in ("a", "b"):
        prepare_data(tmp_path / name, limit=100, intrinsic_max_points=50)
    for f in ("train.npz", "val.npz", "test.npz", "summary.json"):
        assert (tmp_path / "a" / "prepared" / f).read_bytes() == (tmp_path / "b" / "prepared" / f).read_bytes()


def test_rows_stream_in_blocks_and_keep_their_order(tmp_path, monkeypatch):
    """Blocks of a few rows give the same files as one block: streaming changes nothing."""
    rng = np.random.default_rng(4)
    params = write_npy(tmp_path, rng.integers(0, 256, size=(150, 6, 5)).astype(np.uint8))
    whole, a = prepare_data(tmp_path / "whole", **params, limit=120)
    monkeypatch.setattr(prepare, "BLOCK_BYTES", 8 * 30 * 7)  # 7 rows of 30 features per block
    blocks, b = prepare_data(tmp_path / "blocks", **params, limit=120)
    assert whole == blocks
    for s in SPLITS:
        np.testing.assert_array_equal(a[s]["x"], b[s]["x"])
    source = np.load(tmp_path / "x.npy").reshape(150, -1) / 255
    rows = prepare.subsample(150, None, 120, 0)[prepare.split_indices(120, None, Split(), 0)["val"]]
    np.testing.assert_allclose(a["val"]["x"], source[rows], atol=1e-7)


def test_an_intrinsic_dimension_that_is_not_finite_is_left_out(tmp_path, monkeypatch):
    from latentstudy import intrinsic

    monkeypatch.setattr(intrinsic, "_twonn_fit", lambda *a, **k: float("inf"))
    summary, _ = prepare_data(tmp_path, limit=100)
    est = summary["intrinsic_dim"]
    assert est["twonn"] is None and est["twonn_interval"] is None and est["mle"] > 0
    assert est["rejected"] == {"twonn": "the estimate inf is not a finite positive number"}


def test_npz_members_are_numpys_own_format_for_every_shape(tmp_path):
    import io
    import zipfile

    from latentstudy import npz

    arrays = {"scalar": np.array(2.5), "empty": np.zeros((0, 3), np.float32), "strided": np.arange(12).reshape(3, 4)[:, ::2]}
    npz.save(tmp_path / "a.npz", **arrays)
    with np.load(tmp_path / "a.npz") as archive, zipfile.ZipFile(tmp_path / "a.npz") as zf:
        for name, array in arrays.items():
            assert archive[name].shape == array.shape and np.array_equal(archive[name], array)
            own = io.BytesIO()
            np.lib.format.write_array(own, array)
            assert zf.read(f"{name}.npy") == own.getvalue()
