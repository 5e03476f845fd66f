import gzip
import hashlib
import json

import numpy as np
import pytest

from latentstudy import data
from latentstudy.config import DataConfig, Manifold, Split, StudyError, build


def cfg(**kw) -> DataConfig:
    return build(DataConfig, kw, "params.yaml: data")


# --- IDX ----------------------------------------------------------------------------------------


def test_idx_reader_on_real_mnist_test_files(mnist_dir):
    images_gz = mnist_dir / "t10k-images-idx3-ubyte.gz"
    labels_gz = mnist_dir / "t10k-labels-idx1-ubyte.gz"
    assert hashlib.md5(images_gz.read_bytes()).hexdigest() == data.IDX_SOURCES["mnist"]["md5"][images_gz.name]
    assert hashlib.md5(labels_gz.read_bytes()).hexdigest() == data.IDX_SOURCES["mnist"]["md5"][labels_gz.name]
    images, labels = data.read_idx(images_gz), data.read_idx(labels_gz)
    assert images.shape == (10000, 28, 28) and images.dtype == np.uint8
    assert labels.shape == (10000,) and labels[:5].tolist() == [7, 2, 1, 0, 4]
    assert np.bincount(labels).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    assert images.max() == 255 and images.min() == 0


def test_idx_reader_reads_uncompressed_files(mnist_dir, tmp_path):
    raw = tmp_path / "t10k-labels-idx1-ubyte"
    raw.write_bytes(gzip.decompress((mnist_dir / "t10k-labels-idx1-ubyte.gz").read_bytes()))
    assert data.read_idx(raw)[:3].tolist() == [7, 2, 1]


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
        data.read_idx(path)
    assert str(path) in str(err.value)


def test_mnist_dataset_from_a_folder_uses_the_test_files(mnist_dir, tmp_path):
    splits, summary = data.prepare(cfg(name="mnist", path=str(mnist_dir), subset="test", limit=600,
                                       intrinsic_max_points=200), tmp_path)
    assert summary["image_shape"] == [28, 28] and summary["input_dim"] == 784
    assert summary["scaling"] == {"method": "divide", "divisor": 255.0}
    assert sum(summary["counts"].values()) == summary["n_examples"] == 600
    assert all(0.0 <= splits[s]["x"].min() and splits[s]["x"].max() <= 1.0 for s in data.SPLITS)


def test_missing_idx_files_offline_say_which_files_go_where(tmp_path, monkeypatch):
    # Nothing listens on port 9 here: the download fails at once, as it would offline.
    monkeypatch.setitem(data.IDX_SOURCES["fashion-mnist"], "urls", ["http://127.0.0.1:9/"])
    with pytest.raises(StudyError) as err:
        data.prepare(cfg(name="fashion-mnist", path=str(tmp_path / "fm"), subset="test"), tmp_path)
    message = str(err.value)
    assert "t10k-images-idx3-ubyte.gz" in message and str(tmp_path / "fm") in message


# --- digits, scaling, split ---------------------------------------------------------------------


def test_digits_prepare_is_deterministic_and_stratified(tmp_path):
    a, summary = data.prepare(cfg(), tmp_path)
    b, _ = data.prepare(cfg(), tmp_path)
    for s in data.SPLITS:
        np.testing.assert_array_equal(a[s]["x"], b[s]["x"])
    assert summary["n_examples"] == 1797 and summary["input_dim"] == 64
    assert summary["scaling"] == {"method": "divide", "divisor": 16.0}
    assert summary["counts"] == {"train": 1258, "val": 269, "test": 270}
    shares = np.array(summary["class_counts"]["test"]) / np.array(summary["class_counts"]["train"])
    assert shares.min() > 0.17 and shares.max() < 0.26  # each class keeps about 15/70 of its train count
    assert 7.5 < summary["intrinsic_dim"]["twonn"] < 10.5
    c, _ = data.prepare(cfg(seed=1), tmp_path)
    assert not np.array_equal(a["test"]["x"], c["test"]["x"])


def test_split_leaving_a_part_empty_is_an_error():
    with pytest.raises(StudyError, match="leaves the val split empty for 3 examples"):
        data.split_indices(3, None, Split(0.8, 0.15, 0.05), 0)


def test_limit_keeps_exactly_that_many_with_class_shares():
    y = np.repeat([0, 1, 2], [500, 300, 200])
    keep = data.subsample(len(y), y, 100, 0)
    assert len(keep) == 100 and len(set(keep.tolist())) == 100
    assert np.bincount(y[keep]).tolist() == [50, 30, 20]


def test_split_without_labels_covers_every_index_once():
    idx = data.split_indices(101, None, Split(), 0)
    joined = np.concatenate([idx[s] for s in data.SPLITS])
    assert sorted(joined.tolist()) == list(range(101))


@pytest.mark.parametrize("x, mode, expected", [
    (np.array([[0.0, 0.5], [1.0, 0.25]]), "auto", "none"),
    (np.array([[0.0, 128.0], [255.0, 3.0]]), "auto", "divide"),
    (np.array([[-3.0, 1.0], [5.0, 2.0]]), "auto", "minmax"),
    (np.array([[0.0, 128.0], [255.0, 3.0]]), "minmax", "minmax"),
])
def test_scaling_maps_into_unit_interval(x, mode, expected):
    scaled, info = data.scale(x, mode, None)
    assert info["method"] == expected
    assert scaled.min() >= 0 and scaled.max() <= 1


def test_scaling_none_refuses_values_outside_unit_interval():
    with pytest.raises(StudyError, match="data.scaling = none but values span"):
        data.scale(np.array([[0.0, 2.0]]), "none", None)


# --- the user's own files -----------------------------------------------------------------------


def test_npz_with_labels_and_image_shape(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "mine.npz"
    np.savez(path, images=rng.integers(0, 256, size=(60, 4, 4)), y=np.repeat(["a", "b", "c"], 20))
    splits, summary = data.prepare(cfg(name="file", path=str(path), array_key="images", labels_key="y",
                                       image_shape=[4, 4]), tmp_path)
    assert summary["input_dim"] == 16 and summary["has_labels"]
    assert summary["scaling"]["method"] == "divide"
    assert set(np.concatenate([splits[s]["y"] for s in data.SPLITS]).tolist()) == {0, 1, 2}


def test_csv_with_label_column(tmp_path):
    path = tmp_path / "table.csv"
    rng = np.random.default_rng(1)
    lines = ["f1,f2,f3,label"] + [f"{a:.3f},{b:.3f},{c:.3f},{i % 2}" for i, (a, b, c) in
                                  enumerate(rng.normal(size=(40, 3)))]
    path.write_text("\n".join(lines) + "\n")
    splits, summary = data.prepare(cfg(name="file", path=str(path), labels_key="label"), tmp_path)
    assert summary["input_dim"] == 3 and summary["scaling"]["method"] == "minmax"
    assert summary["class_counts"]["train"] == [14, 14]


def test_npy_without_labels(tmp_path):
    path = tmp_path / "x.npy"
    np.save(path, np.random.default_rng(2).uniform(size=(50, 7)))
    _, summary = data.prepare(cfg(name="file", path=str(path)), tmp_path)
    assert summary["has_labels"] is False and summary["scaling"]["method"] == "none"


def bad_file(tmp_path, kind):
    rng = np.random.default_rng(3)
    x = rng.uniform(size=(30, 6))
    if kind == "missing":
        return {"path": str(tmp_path / "absent.npz")}, "file not found"
    if kind == "corrupt":
        (tmp_path / "c.npz").write_bytes(b"PK\x03\x04 this is not a zip archive")
        return {"path": str(tmp_path / "c.npz")}, "cannot read"
    if kind == "wrong key":
        np.savez(tmp_path / "k.npz", x=x)
        return {"path": str(tmp_path / "k.npz"), "array_key": "images"}, "data.array_key = 'images' is not in"
    if kind == "nan":
        x[4, 2] = np.nan
        np.save(tmp_path / "n.npy", x)
        return {"path": str(tmp_path / "n.npy")}, "row 4, column 2; allowed: finite numbers"
    if kind == "inf":
        x[1, 1] = np.inf
        np.save(tmp_path / "i.npy", x)
        return {"path": str(tmp_path / "i.npy")}, "finite numbers"
    if kind == "non-numeric":
        (tmp_path / "s.csv").write_text("a,b\n1,x\n2,y\n3,z\n")
        return {"path": str(tmp_path / "s.csv")}, "column 'b' is not numeric"
    if kind == "label mismatch":
        np.savez(tmp_path / "l.npz", x=x, y=np.arange(29))
        return {"path": str(tmp_path / "l.npz"), "array_key": "x", "labels_key": "y"}, "30 examples but labels"
    if kind == "image shape":
        np.save(tmp_path / "is.npy", x)
        return {"path": str(tmp_path / "is.npy"), "image_shape": [2, 2]}, "multiplies to 4"
    if kind == "empty":
        np.save(tmp_path / "e.npy", np.zeros((0, 6)))
        return {"path": str(tmp_path / "e.npy")}, "data is empty"
    if kind == "1-d":
        np.save(tmp_path / "v.npy", np.zeros(6))
        return {"path": str(tmp_path / "v.npy")}, "allowed: (n, features)"
    if kind == "suffix":
        (tmp_path / "d.parquet").write_bytes(b"x")
        return {"path": str(tmp_path / "d.parquet")}, "unsupported suffix"
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["missing", "corrupt", "wrong key", "nan", "inf", "non-numeric",
                                  "label mismatch", "image shape", "empty", "1-d", "suffix"])
def test_bad_files_give_one_clear_line(tmp_path, kind):
    params, fragment = bad_file(tmp_path, kind)
    with pytest.raises(StudyError) as err:
        data.prepare(cfg(name="file", **params), tmp_path)
    assert fragment in str(err.value)
    assert "\n" not in str(err.value)


# --- manifold -----------------------------------------------------------------------------------


def test_manifold_has_the_requested_intrinsic_dimension():
    raw = data.make_manifold(Manifold(intrinsic_dim=2, ambient_dim=12, n=2000, noise=0.0, seed=0))
    assert raw.x.shape == (2000, 12) and raw.x.min() >= 0 and raw.x.max() <= 1
    from latentstudy import intrinsic

    est = intrinsic.estimates(raw.x, 2000, 0)
    assert abs(est["twonn"] - 2) < 0.4 and abs(est["mle"] - 2) < 0.4


def test_write_prepared_round_trip(tmp_path):
    splits, summary = data.prepare(cfg(limit=200, intrinsic_max_points=100), tmp_path)
    out = tmp_path / "prepared"
    data.write_prepared(out, splits, summary)
    x, y = data.load_split(out, "val")
    np.testing.assert_array_equal(x, splits["val"]["x"])
    assert json.loads((out / "summary.json").read_text()) == data.load_summary(out)
    assert data.fingerprint(splits) == summary["fingerprint"]


def test_prepared_files_are_byte_identical_across_runs(tmp_path):
    # DVC hashes files: a rerun with the same params must not look like new data downstream.
    for name in ("a", "b"):
        splits, summary = data.prepare(cfg(limit=100, intrinsic_max_points=50), tmp_path)
        data.write_prepared(tmp_path / name, splits, summary)
    for f in ("train.npz", "val.npz", "test.npz", "summary.json"):
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes()
