"""The user's files: NumPy arrays shaped like images (both channel orders), tables, and bad input."""

import functools
import mmap
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from conftest import ROOT, prepare_data, write_params

from latentstudy.config import Patches, StudyError, project_root
from latentstudy.data import arrays, prepare, synthetic


def images(n=80, h=6, w=5, c=None, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(n, h, w) if c is None else (n, h, w, c), dtype=np.uint8)


def all_rows(splits) -> np.ndarray:
    return np.concatenate([splits[s]["x"] for s in ("train", "val", "test")])


@functools.cache
def photos(n=80, size=16) -> np.ndarray:
    """Channel-first RGB cuts of real photographs: neighbouring pixels alike, as in real images."""
    return synthetic.make_patches(Patches(n=n, size=size, seed=1)).x


# --- the image shape from the array -------------------------------------------------------------


@pytest.mark.parametrize("shape, image_shape", [
    ((80, 6, 5), [6, 5]),  # grey
    ((80, 6, 5, 1), [6, 5]),  # channel-last, one channel
    ((80, 6, 5, 3), [3, 6, 5]),  # channel-last RGB
    ((80, 3, 6, 5), [3, 6, 5]),  # channel-first RGB
    ((80, 4, 6, 5), [4, 6, 5]),  # channel-first RGBA
    ((80, 6, 5, 4), [4, 6, 5]),  # channel-last RGBA
])
def test_npz_image_arrays_keep_their_shape_channel_first(tmp_path, capsys, shape, image_shape):
    x = np.random.default_rng(0).integers(0, 256, size=shape, dtype=np.uint8)
    np.savez(tmp_path / "mine.npz", x=x, y=np.arange(80) % 3)
    summary, splits = prepare_data(tmp_path, name="file", path=str(tmp_path / "mine.npz"), array_key="x",
                                   labels_key="y")
    assert summary["image_shape"] == image_shape and summary["input_dim"] == int(np.prod(shape[1:]))
    channel_last = len(shape) == 4 and shape[3] in (1, 3, 4)
    expected = (np.moveaxis(x, -1, 1) if channel_last else x).reshape(80, -1) / 255
    got = all_rows(splits)  # rows are grouped by split; match them back by content
    order = np.lexsort(got.T[::-1])
    np.testing.assert_allclose(got[order], expected[np.lexsort(expected.T[::-1])], atol=1e-7)
    line = [out for out in capsys.readouterr().out.splitlines() if "read as" in out]
    assert len(line) == 1 and f"examples of shape {shape[1:]}" in line[0]
    assert ("channel-last" in line[0]) == channel_last


def test_a_float_array_of_images_is_images(tmp_path):
    np.save(tmp_path / "x.npy", np.random.default_rng(0).normal(size=(80, 20, 20)).astype(np.float32))
    summary, _ = prepare_data(tmp_path, name="file", path=str(tmp_path / "x.npy"))
    assert summary["image_shape"] == [20, 20] and summary["scaling"]["method"] == "minmax_global"


def test_a_2d_array_stays_vectors_unless_image_shape_says(tmp_path, capsys):
    np.save(tmp_path / "x.npy", images(c=None).reshape(80, -1))
    summary, _ = prepare_data(tmp_path / "a", name="file", path=str(tmp_path / "x.npy"))
    assert summary["image_shape"] is None
    assert "vectors of 30 features (set data.image_shape" in capsys.readouterr().out
    summary, _ = prepare_data(tmp_path / "b", name="file", path=str(tmp_path / "x.npy"), image_shape=[6, 5])
    assert summary["image_shape"] == [6, 5]


def test_image_shape_settles_an_ambiguous_array(tmp_path):
    x = np.random.default_rng(0).integers(0, 256, size=(80, 3, 8, 3), dtype=np.uint8)
    np.save(tmp_path / "x.npy", x)
    with pytest.raises(StudyError) as err:
        prepare_data(tmp_path, name="file", path=str(tmp_path / "x.npy"))
    assert "examples of shape (3, 8, 3) could be channel-first or channel-last; set data.image_shape to " \
           "[3, 8, 3] or [3, 3, 8]" in str(err.value)
    first, a = prepare_data(tmp_path / "a", name="file", path=str(tmp_path / "x.npy"), image_shape=[3, 8, 3])
    last, b = prepare_data(tmp_path / "b", name="file", path=str(tmp_path / "x.npy"), image_shape=[3, 3, 8])
    assert first["image_shape"] == [3, 8, 3] and last["image_shape"] == [3, 3, 8]
    assert not np.array_equal(a["train"]["x"], b["train"]["x"])


def test_channel_last_images_given_a_channel_first_shape_are_read_right(tmp_path):
    """(n, 16, 16, 3) with image_shape [3, 16, 16] used to be scrambled; now it is transposed."""
    chw = photos()
    np.save(tmp_path / "x.npy", chw.transpose(0, 2, 3, 1))
    summary, splits = prepare_data(tmp_path, name="file", path=str(tmp_path / "x.npy"), image_shape=[3, 16, 16])
    assert summary["image_shape"] == [3, 16, 16]
    assert sorted(map(bytes, (all_rows(splits) * 255).round().astype(np.uint8))) == \
        sorted(map(bytes, chw.reshape(80, -1)))


def test_flat_channel_last_rows_given_a_channel_first_shape_are_refused(tmp_path):
    rows = photos().transpose(0, 2, 3, 1).reshape(80, -1)  # (h, w, c) order, flattened
    np.save(tmp_path / "x.npy", rows)
    with pytest.raises(StudyError) as err:
        prepare_data(tmp_path, name="file", path=str(tmp_path / "x.npy"), image_shape=[3, 16, 16])
    assert "data.image_shape = [3, 16, 16], but the rows of file" in str(err.value)
    assert "look channel-last (16, 16, 3)" in str(err.value) and "(n, 16, 16, 3) array" in str(err.value)
    np.save(tmp_path / "ok.npy", photos().reshape(80, -1))  # channel-first rows pass
    assert prepare_data(tmp_path, name="file", path=str(tmp_path / "ok.npy"),
                        image_shape=[3, 16, 16])[0]["image_shape"] == [3, 16, 16]


@pytest.mark.parametrize("shape, image_shape, fragment", [
    ((80, 16, 16, 3), [3, 8, 32], "does not fit file"),
    ((80, 5, 6, 7), None, "have no axis of 1, 3 or 4 channels; set data.image_shape to [5, 6, 7] or [7, 5, 6]"),
    ((80, 2, 3, 4, 5), None, "examples of shape (2, 3, 4, 5); allowed: vectors"),
])
def test_shapes_that_do_not_fit_ask_for_image_shape(tmp_path, shape, image_shape, fragment):
    np.save(tmp_path / "x.npy", np.arange(np.prod(shape)).reshape(shape) % 7)
    with pytest.raises(StudyError) as err:
        prepare_data(tmp_path, name="file", path=str(tmp_path / "x.npy"), image_shape=image_shape)
    assert fragment in str(err.value)


def test_image_shape_must_match_a_dataset_that_knows_its_own(tmp_path):
    with pytest.raises(StudyError, match=r"data.image_shape = \[4, 16\], but scikit-learn digits holds grey-scale"):
        prepare_data(tmp_path, image_shape=[4, 16])


# --- memory maps --------------------------------------------------------------------------------


def test_npy_and_stored_npz_arrays_are_memory_mapped(tmp_path):
    x = images(c=3)
    np.save(tmp_path / "x.npy", x)
    np.savez(tmp_path / "x.npz", x=x)
    np.savez_compressed(tmp_path / "z.npz", x=x)
    mapped, pages = arrays.read_npy(tmp_path / "x.npy")
    assert isinstance(mapped.base, mmap.mmap) and pages is not None and not mapped.flags.writeable
    member, _, npz_pages = arrays.read_npz(tmp_path / "x.npz", None, None)
    assert isinstance(member.base, mmap.mmap) and npz_pages is not None
    compressed, _, none = arrays.read_npz(tmp_path / "z.npz", None, None)
    assert none is None
    for got in (mapped, member, compressed):
        np.testing.assert_array_equal(got, x)
    pages.release(0, len(x))  # handing pages back keeps the data readable
    np.testing.assert_array_equal(mapped, x)
    results = [prepare_data(tmp_path / f"out-{name}", name="file", path=str(tmp_path / name))[0]
               for name in ("x.npy", "x.npz", "z.npz")]
    assert len({r["fingerprint"] for r in results}) == 1


def test_fortran_order_npy(tmp_path):
    x = np.asfortranarray(np.random.default_rng(0).uniform(size=(80, 7)))
    np.save(tmp_path / "f.npy", x)
    _, splits = prepare_data(tmp_path, name="file", path=str(tmp_path / "f.npy"))
    assert all_rows(splits).shape == (80, 7)


# --- tables -------------------------------------------------------------------------------------


def pixel_table(n=90) -> pd.DataFrame:
    rng = np.random.default_rng(1)
    frame = pd.DataFrame(rng.integers(0, 256, size=(n, 16)), columns=[f"px{i}" for i in range(16)])
    frame.insert(0, "id", np.arange(n))
    frame["label"] = np.repeat(["cat", "dog", "eel"], n // 3)
    return frame


@pytest.mark.parametrize("suffix", [".parquet", ".feather", ".csv"])
def test_tables_with_a_column_prefix_and_labels(tmp_path, suffix):
    frame = pixel_table()
    path = tmp_path / f"table{suffix}"
    {".parquet": frame.to_parquet, ".feather": frame.to_feather, ".csv": lambda p: frame.to_csv(p, index=False)}[
        suffix](path)
    summary, splits = prepare_data(tmp_path, name="file", path=str(path), array_key="px", labels_key="label",
                                   image_shape=[4, 4])
    assert summary["input_dim"] == 16 and summary["image_shape"] == [4, 4]
    assert summary["class_names"] == ["cat", "dog", "eel"] and summary["class_counts"]["train"] == [21, 21, 21]
    assert summary["scaling"]["method"] == "divide" and summary["scaling"]["divisor"] == 255.0


def test_a_non_numeric_parquet_column_is_named(tmp_path):
    frame = pixel_table()
    frame["px3"] = frame["px3"].astype(str) + "px"
    frame.to_parquet(tmp_path / "t.parquet")
    with pytest.raises(StudyError) as err:
        prepare_data(tmp_path, name="file", path=str(tmp_path / "t.parquet"), labels_key="label")
    assert "column 'px3' is not numeric (first value '" in str(err.value)


def test_nullable_table_columns_become_numbers_and_their_gaps_are_named(tmp_path):
    frame = pd.DataFrame({"a": pd.array(list(range(80)), dtype="Int64"), "b": np.linspace(0, 1, 80)})
    frame.loc[7, "a"] = None
    frame.to_parquet(tmp_path / "t.parquet")
    with pytest.raises(StudyError, match="value nan at row 7, column 0; allowed: finite numbers"):
        prepare_data(tmp_path, name="file", path=str(tmp_path / "t.parquet"))


# --- bad files: one line each -------------------------------------------------------------------


def bad_file(tmp_path, kind):
    rng = np.random.default_rng(3)
    x = rng.uniform(size=(30, 6))
    if kind == "missing":
        return {"path": str(tmp_path / "absent.npz")}, "file not found"
    if kind == "corrupt":
        (tmp_path / "c.npz").write_bytes(b"PK\x03\x04 this is not a zip archive")
        return {"path": str(tmp_path / "c.npz")}, "cannot read"
    if kind == "csv named npz":
        (tmp_path / "t.npz").write_text("a,b\n1,2\n")
        return {"path": str(tmp_path / "t.npz")}, "this is a text file (first line 'a,b'), not a .npz file"
    if kind == "npy named npz":
        np.save(tmp_path / "a.npy", x)
        (tmp_path / "a.npy").rename(tmp_path / "a.npz")
        return {"path": str(tmp_path / "a.npz")}, "this is a .npy file named .npz; rename it to a.npy"
    if kind == "header-only csv":
        (tmp_path / "h.csv").write_text("f0,f1,f2\n")
        return {"path": str(tmp_path / "h.csv")}, "has column names (f0, f1, f2) but no rows"
    if kind == "empty csv":
        (tmp_path / "e.csv").write_text("")
        return {"path": str(tmp_path / "e.csv")}, "the file is empty"
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
        (tmp_path / "s.csv").write_text("a,b\n" + "".join(f"{i},x{i}\n" for i in range(30)))
        return {"path": str(tmp_path / "s.csv")}, "column 'b' is not numeric (first value 'x0')"
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
    if kind == "objects":
        np.save(tmp_path / "o.npy", np.array([{"a": 1}] * 3, dtype=object), allow_pickle=True)
        return {"path": str(tmp_path / "o.npy")}, "holds Python objects"
    if kind == "suffix":
        (tmp_path / "d.h5").write_bytes(b"x")
        return {"path": str(tmp_path / "d.h5")}, "unsupported suffix '.h5'"
    raise AssertionError(kind)


KINDS = ["missing", "corrupt", "csv named npz", "npy named npz", "header-only csv", "empty csv", "wrong key", "nan",
         "inf", "non-numeric", "label mismatch", "image shape", "empty", "1-d", "objects", "suffix"]


@pytest.mark.parametrize("kind", KINDS)
def test_bad_files_give_one_clear_line(tmp_path, kind):
    params, fragment = bad_file(tmp_path, kind)
    with pytest.raises(StudyError) as err:
        prepare_data(tmp_path, name="file", **params)
    assert fragment in str(err.value)
    assert "\n" not in str(err.value) and "allow_pickle" not in str(err.value)


@pytest.mark.parametrize("kind", ["csv named npz", "header-only csv", "nan"])
def test_bad_files_end_the_stage_with_exit_2_and_nothing_written(tmp_path, kind):
    params, fragment = bad_file(tmp_path, kind)
    write_params(tmp_path / "params.yaml", data={"name": "file", **params})
    res = subprocess.run([sys.executable, str(ROOT / "pipeline" / "prepare.py"), "--out", "out"], cwd=tmp_path,
                         capture_output=True, text=True)
    errors = res.stderr.strip().splitlines()
    assert res.returncode == 2 and len(errors) == 1 and errors[0].startswith("error: ") and fragment in errors[0]
    assert not (tmp_path / "out").exists()


def test_a_relative_path_inside_a_dvc_temp_experiment_is_read_from_the_project(tmp_path, monkeypatch, capsys):
    """`dvc exp run --temp` runs in .dvc/tmp/exps/<name>, a copy without the user's untracked data."""
    np.save(tmp_path / "mine.npy", np.random.default_rng(0).uniform(size=(80, 5)))
    copy = tmp_path / ".dvc" / "tmp" / "exps" / "tmpabc"
    copy.mkdir(parents=True)
    monkeypatch.chdir(copy)
    root = project_root(copy)
    summary = prepare.run(prepare_cfg(name="file", path="mine.npy"), root, copy / "prepared")
    assert summary.n_examples == 80
    assert f"data.path mine.npy is not in this working copy; reading {root / 'mine.npy'}" in capsys.readouterr().out
    with pytest.raises(StudyError, match=r"data.path: other.npy: file not found \(neither here, in .*tmpabc, nor in the project root"):
        prepare.run(prepare_cfg(name="file", path="other.npy"), root, copy / "prepared")


def prepare_cfg(**data):
    from latentstudy.config import DataConfig
    from latentstudy.paramfile import build

    return build(DataConfig, data, "params.yaml: data")
