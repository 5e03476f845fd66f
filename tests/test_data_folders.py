"""A folder of images: formats, subfolder labels, colour, sizes, and files that are not images."""

import numpy as np
import pytest
from conftest import prepare_data
from PIL import Image

from latentstudy.config import StudyError
from latentstudy.data.raw import Progress


def picture(rng, size=(8, 8), mode="RGB") -> Image.Image:
    h, w = size
    shape = (h, w, 3) if mode == "RGB" else (h, w, 4) if mode == "RGBA" else (h, w)
    return Image.fromarray(rng.integers(0, 256, size=shape, dtype=np.uint8), mode)


def make_folder(root, classes=("cats", "dogs"), per_class=40, size=(8, 8), mode="RGB", fmt="PNG", seed=0):
    """classes of images in subfolders (or loose in root when classes is empty); returns {path: pixels}."""
    rng = np.random.default_rng(seed)
    written = {}
    for c in classes or ("",):
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            path = root / c / f"img{i:03d}.{fmt.lower()}"
            img = picture(rng, size, mode)
            img.save(path, fmt)
            written[path] = np.asarray(img)
    return written


def test_subfolders_are_labels_and_pixels_arrive_channel_first(tmp_path, capsys):
    written = make_folder(tmp_path / "pics")
    summary, splits = prepare_data(tmp_path, name="images", path=str(tmp_path / "pics"))
    assert summary["image_shape"] == [3, 8, 8] and summary["input_dim"] == 192 and summary["n_examples"] == 80
    assert summary["class_names"] == ["cats", "dogs"] and summary["class_counts"]["train"] == [28, 28]
    assert summary["scaling"]["method"] == "divide" and summary["scaling"]["divisor"] == 255.0
    rows = {bytes((x * 255).round().astype(np.uint8)): int(y)
            for s in splits.values() for x, y in zip(s["x"], s["y"])}
    for path, pixels in written.items():
        assert rows[bytes(pixels.transpose(2, 0, 1).reshape(-1))] == (path.parent.name == "dogs")
    assert "RGB images 8x8" in capsys.readouterr().out


def test_every_format_is_read_and_one_folder_means_no_labels(tmp_path):
    for i, fmt in enumerate(("PNG", "JPEG", "BMP", "WEBP")):
        make_folder(tmp_path / "pics" / "only", classes=(f"f{i}",), per_class=20, fmt=fmt, seed=i)
    summary, splits = prepare_data(tmp_path, name="images", path=str(tmp_path / "pics"))
    assert summary["n_examples"] == 80 and summary["has_labels"] is False and "y" not in splits["train"]


def test_grey_and_rgb_mixed(tmp_path):
    make_folder(tmp_path / "pics", classes=("grey",), mode="L")
    make_folder(tmp_path / "pics", classes=("rgb",), seed=1)
    auto, splits = prepare_data(tmp_path / "auto", name="images", path=str(tmp_path / "pics"))
    assert auto["image_shape"] == [3, 8, 8]
    grey_rows = splits["train"]["x"][splits["train"]["y"] == 0].reshape(-1, 3, 64)
    np.testing.assert_array_equal(grey_rows[:, 0], grey_rows[:, 2])  # grey images: three equal channels
    gray, _ = prepare_data(tmp_path / "gray", name="images", path=str(tmp_path / "pics"), color="gray")
    assert gray["image_shape"] == [8, 8]
    make_folder(tmp_path / "greys", classes=("a", "b"), mode="L")
    assert prepare_data(tmp_path / "g", name="images", path=str(tmp_path / "greys"))[0]["image_shape"] == [8, 8]
    rgb, _ = prepare_data(tmp_path / "rgb", name="images", path=str(tmp_path / "greys"), color="rgb")
    assert rgb["image_shape"] == [3, 8, 8]


def test_transparency_is_shown_over_white_and_16_bit_grey_keeps_its_range(tmp_path):
    folder = tmp_path / "pics" / "all"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(80):  # black, more or less transparent
        rgba = np.zeros((8, 8, 4), np.uint8)
        rgba[..., 3] = rng.integers(0, 256, size=(8, 8))
        Image.fromarray(rgba, "RGBA").save(folder / f"a{i:02d}.png")
    _, splits = prepare_data(tmp_path / "rgba", name="images", path=str(tmp_path / "pics"))
    x = np.concatenate([s["x"] for s in splits.values()])
    alpha = np.stack([np.asarray(Image.open(folder / f"a{i:02d}.png"))[..., 3] for i in range(80)]).reshape(80, -1)
    shown = sorted(map(tuple, (255 * x[:, :64]).round().astype(int)))
    assert shown == sorted(map(tuple, 255 - alpha.astype(int)))  # over white: the clearer, the lighter
    deep = np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000
    for i in range(80):
        Image.fromarray(deep + i).save(folder / f"a{i:02d}.png")  # uint16: a 16-bit grey PNG
    _, splits = prepare_data(tmp_path / "deep", name="images", path=str(tmp_path / "pics"), color="gray")
    x = np.concatenate([s["x"] for s in splits.values()])
    assert x.max() > 0.9 and x.min() == 0.0  # the top 8 bits, not values clipped at 255


def test_mixed_sizes_go_to_the_most_common_size_or_to_image_size(tmp_path, capsys):
    make_folder(tmp_path / "pics", classes=("small",), per_class=50, size=(8, 8))
    make_folder(tmp_path / "pics", classes=("wide",), per_class=30, size=(6, 12), seed=1)
    summary, _ = prepare_data(tmp_path / "a", name="images", path=str(tmp_path / "pics"))
    assert summary["image_shape"] == [3, 8, 8]
    assert "images come in 2 sizes; resizing the 30 not 8x8 to 8x8, the most common (set data.image_size" in \
        capsys.readouterr().out
    summary, _ = prepare_data(tmp_path / "b", name="images", path=str(tmp_path / "pics"), image_size=[5, 7])
    assert summary["image_shape"] == [3, 5, 7]


def test_large_images_need_an_image_size(tmp_path):
    make_folder(tmp_path / "pics", classes=("a",), per_class=1, size=(200, 100))
    with pytest.raises(StudyError, match=r"images are 200x100 pixels, too large .* set data.image_size \(e.g. "):
        prepare_data(tmp_path, name="images", path=str(tmp_path / "pics"))


def corrupt(folder):
    """A truncated JPEG and a text file among the images."""
    jpeg = folder / "cats" / "img000.jpeg"
    blob = jpeg.read_bytes()
    jpeg.write_bytes(blob[: blob.find(b"\xff\xda") + 20])  # the header survives, the pixels do not
    (folder / "dogs" / "notes.txt").write_text("shot on a sunny day\n")


def test_bad_files_stop_with_the_first_and_the_count(tmp_path):
    make_folder(tmp_path / "pics", per_class=45, fmt="JPEG")
    corrupt(tmp_path / "pics")
    with pytest.raises(StudyError) as err:
        prepare_data(tmp_path, name="images", path=str(tmp_path / "pics"))
    message = str(err.value)
    assert message.startswith(f"{tmp_path / 'pics' / 'cats' / 'img000.jpeg'}: cannot decode (")
    assert "2 of 91 files under" in message and "data.skip_bad_files: true" in message and "\n" not in message
    assert not (tmp_path / "prepared" / "train.npz").exists()


def test_skip_bad_files_skips_and_counts_them(tmp_path, capsys):
    make_folder(tmp_path / "pics", per_class=45, fmt="JPEG")
    corrupt(tmp_path / "pics")
    summary, _ = prepare_data(tmp_path, name="images", path=str(tmp_path / "pics"), skip_bad_files=True)
    assert summary["n_examples"] == 89 and summary["class_counts"]["train"] == [31, 31]
    assert "skipped 2 of 91 files that are not readable images (data.skip_bad_files), first" in capsys.readouterr().out


@pytest.mark.parametrize("setup, fragment", [
    (lambda root: (root / "pics").mkdir(), "no files in this folder"),
    (lambda root: (root / "pics").write_text("x"), "not a folder"),
    (lambda root: (make_folder(root / "pics", per_class=2), (root / "pics" / "stray.png").write_bytes(
        (root / "pics" / "cats" / "img000.png").read_bytes())), "stray.png: sits beside the class folders cats, dogs"),
    (lambda root: (root / "pics").mkdir() or (root / "pics" / "a.txt").write_text("no"), "a.txt: not an image; 1 of 1"),
])
def test_folder_problems_are_one_line(tmp_path, setup, fragment):
    setup(tmp_path)
    with pytest.raises(StudyError) as err:
        prepare_data(tmp_path, name="images", path=str(tmp_path / "pics"))
    assert fragment in str(err.value) and "\n" not in str(err.value)


def test_progress_says_k_of_n_rate_and_eta(capsys):
    progress = Progress("reading images", 40, "files", every=0.0)
    progress(10)
    progress(40)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("[prepare] reading images: 10 of 40 (25%), ") and "files/s, ETA " in lines[0]
    assert lines[1].endswith(", done")
