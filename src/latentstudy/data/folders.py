"""A folder of images (PNG, JPEG, BMP, WebP), found recursively and read with Pillow.

Labels come from the subfolder names when the images sit in more than one subfolder (the
ImageFolder convention). Every image is resized to data.image_size, or to the size most of them
have, and converted to grey or RGB. Files that are not readable images stop the stage with one
line, or are skipped and counted with data.skip_bad_files.
"""

from __future__ import annotations

import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from latentstudy.config import DataConfig, StudyError
from latentstudy.data.raw import Progress, Raw, say

FORMATS = ("PNG", "JPEG", "BMP", "WEBP")
GREY_MODES = ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F")
MAX_PIXELS = 128 * 128  # above this, unless data.image_size says so, the study would train on huge inputs
THREADS = min(8, os.cpu_count() or 1)  # Pillow decodes outside the GIL


def image_files(folder: Path) -> list[Path]:
    """Every file under folder, hidden files and folders aside, in a fixed (sorted) order."""
    files = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        files.extend(Path(dirpath) / f for f in sorted(filenames) if not f.startswith("."))
    return files


def labels_of(folder: Path, files: list[Path]) -> np.ndarray | None:
    """The first subfolder of each file, when the files sit in more than one subfolder."""
    tops = [f.relative_to(folder).parts for f in files]
    classes = sorted({parts[0] for parts in tops if len(parts) > 1})
    if len(classes) < 2:
        return None
    loose = [f for f, parts in zip(files, tops) if len(parts) == 1]
    if loose:
        raise StudyError(f"{loose[0]}: sits beside the class folders {', '.join(classes[:5])} of {folder}; move it "
                         "into a class folder, or out of data.path")
    return np.array([parts[0] for parts in tops])


def _probe(path: Path) -> tuple[tuple[int, int], str] | str:
    """((width, height), mode) from the file's header, or why it is not a usable image."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            if img.format not in FORMATS:
                return f"a {img.format} image; allowed: PNG, JPEG, BMP, WebP"
            return img.size, img.mode
    except UnidentifiedImageError:
        return "not an image"
    except OSError as exc:
        return f"cannot read ({exc})"


def _decode(path: Path, size: tuple[int, int], rgb: bool) -> np.ndarray | str:
    """The image as uint8 (h, w) or (3, h, w) at size (width, height), or why it cannot be read."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            img.load()
            if img.mode in ("I;16", "I;16B", "I;16L", "I"):  # 16-bit grey: keep the top 8 bits, not a clip
                img = Image.fromarray((np.asarray(img, dtype=np.uint32) >> 8).clip(0, 255).astype(np.uint8))
            if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
                img = _on_white(img)
            img = img.convert("RGB" if rgb else "L")
            if img.size != size:
                img = img.resize(size, Image.Resampling.BILINEAR)
            pixels = np.asarray(img, dtype=np.uint8)
    except (OSError, ValueError, SyntaxError) as exc:  # Pillow's errors for truncated and corrupt files
        return f"cannot decode ({exc})"
    return pixels.transpose(2, 0, 1) if rgb else pixels


def _on_white(img):
    """Transparent pixels shown over white, as the figures and the report page show them."""
    from PIL import Image

    rgba = img.convert("RGBA")
    background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(background, rgba)


def _target(cfg: DataConfig, sizes: list[tuple[int, int]], folder: Path) -> tuple[int, int]:
    """(width, height) every image is resized to."""
    if cfg.image_size is not None:
        return cfg.image_size[1], cfg.image_size[0]
    counts = Counter(sizes)
    (w, h), common = counts.most_common(1)[0]
    if w * h > MAX_PIXELS:
        raise StudyError(f"{folder}: images are {h}x{w} pixels, too large to train dozens of models on; set "
                         f"data.image_size (e.g. [64, 64]), or set it to [{h}, {w}] to keep them")
    if len(counts) > 1:
        say(f"images come in {len(counts)} sizes; resizing the {len(sizes) - common} not {h}x{w} to {h}x{w}, the "
            "most common (set data.image_size to choose)")
    return w, h


def _bad(folder: Path, bad: list[tuple[Path, str]], total: int, skip: bool) -> None:
    if not bad:
        return
    path, why = bad[0]
    if not skip:
        raise StudyError(f"{path}: {why}; {len(bad)} of {total} files under {folder} are not readable PNG, JPEG, "
                         "BMP or WebP images; remove them, or set data.skip_bad_files: true to skip them")
    say(f"skipped {len(bad)} of {total} files that are not readable images (data.skip_bad_files), first {path}: {why}")


def read_folder(folder: Path, cfg: DataConfig) -> Raw:
    if not folder.is_dir():
        raise StudyError(f"data.path: {folder}: not a folder; data.name 'images' reads a folder of images")
    files = image_files(folder)
    if not files:
        raise StudyError(f"data.path: {folder}: no files in this folder; allowed: PNG, JPEG, BMP or WebP images, "
                         "in one subfolder per class for labels")
    labels_of(folder, files)  # a stray file beside the class folders stops the stage before any decoding
    with ThreadPoolExecutor(THREADS) as pool:
        probes = list(pool.map(_probe, files))
        bad = [(f, p) for f, p in zip(files, probes) if isinstance(p, str)]
        good = [(f, p) for f, p in zip(files, probes) if not isinstance(p, str)]
        if not good:
            _bad(folder, bad, len(files), skip=False)
        size = _target(cfg, [s for _, (s, _) in good], folder)
        rgb = cfg.color == "rgb" or (cfg.color == "auto" and any(m not in GREY_MODES for _, (_, m) in good))
        progress = Progress("reading images", len(good), "files")
        pixels, kept, failed = np.zeros((len(good), *((3,) if rgb else ()), size[1], size[0]), np.uint8), [], []
        for i, result in enumerate(pool.map(lambda item: _decode(item[0], size, rgb), good)):
            if isinstance(result, str):
                failed.append((good[i][0], result))
            else:
                pixels[len(kept)] = result
                kept.append(good[i][0])
            progress(i + 1)
    _bad(folder, sorted(bad + failed), len(files), cfg.skip_bad_files)
    if not kept:
        raise StudyError(f"data.path: {folder}: none of its {len(files)} files is a readable image")
    y = labels_of(folder, kept)
    shape = [3, size[1], size[0]] if rgb else [size[1], size[0]]
    what = f"{len(set(y))} classes from subfolders" if y is not None else "no labels (one folder)"
    return Raw(pixels[: len(kept)], y, f"folder {folder} ({len(kept)} images, {what})", 255.0, shape)
