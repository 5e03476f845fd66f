"""Image layout: which examples are images, of what shape, and in which channel order.

Prepared rows are images flattened channel-first, (c, h, w), which is what the conv models and
the figures read. An array's own shape says the rest:
(n, D) vectors; (n, h, w) grey images; (n, h, w, c) channel-last and (n, c, h, w) channel-first
images, with c in {1, 3, 4}. data.image_shape ([h, w] or [c, h, w]) settles what the shape
cannot, and is checked against it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from latentstudy.config import StudyError

CHANNELS = (1, 3, 4)
SMOOTHER = 0.5  # a reading of the pixels this much smoother than the stated one is the true one


@dataclass(frozen=True)
class Layout:
    image_shape: list[int] | None  # a prepared row's image, channel-first: [h, w] or [c, h, w]; None: vectors
    channel_last: bool  # the examples arrive as (h, w, c) and are transposed
    text: str  # the line prepare prints

    def rows(self, chunk: np.ndarray) -> np.ndarray:
        """A block of examples as prepared rows (m, D): channel-first, flattened."""
        if self.channel_last:
            chunk = np.moveaxis(chunk, -1, 1)
        return chunk.reshape(len(chunk), -1)


def chw(shape) -> tuple[int, int, int]:
    return (1, *shape) if len(shape) == 2 else tuple(shape)


def public(shape) -> list[int]:
    """[h, w] for one channel, else [c, h, w]: summary.json's image_shape."""
    c, h, w = chw(shape)
    return [h, w] if c == 1 else [c, h, w]


def describe(shape) -> str:
    c, h, w = chw(shape)
    kind = {1: "grey-scale", 3: "RGB", 4: "RGBA"}.get(c, f"{c}-channel")
    return f"{kind} images {h}x{w}"


def resolve(example: tuple[int, ...], known: list[int] | None, requested: list[int] | None, source: str) -> Layout:
    """The layout of examples of this shape; `known` is the reader's (channel-first), `requested`
    is data.image_shape."""
    size = int(np.prod(example, dtype=np.int64))
    if known is not None:
        if requested is not None and chw(requested) != chw(known):
            raise StudyError(f"data.image_shape = {requested}, but {source} holds {describe(known)} "
                             f"({public(known)}); remove data.image_shape")
        return Layout(public(known), False, f"{source}: {describe(known)}")
    if len(example) == 1:
        return _flat(size, requested, source)
    readings = _readings(example)
    if len(example) > 3:
        raise StudyError(f"{source}: examples of shape {example}; allowed: vectors (n, D) or images (n, h, w), "
                         "(n, h, w, c), (n, c, h, w)")
    if requested is not None:
        match = [(shape, last) for shape, last in readings if shape == chw(requested)]
        if not match:
            options = " or ".join(f"{public(s)} ({'channel-last' if last else 'channel-first'})"
                                  for s, last in readings) or "none"
            raise StudyError(f"data.image_shape = {requested} does not fit {source}'s examples of shape {example}; "
                             f"allowed: {options}, or remove data.image_shape")
        shape, last = match[0]
        return Layout(public(shape), last, f"{source}: examples of shape {example} read as {describe(shape)}"
                                           f"{' (channel-last, transposed)' if last else ''}, from data.image_shape")
    plausible = [(shape, last) for shape, last in readings if shape[0] in CHANNELS]
    if len(plausible) != 1:
        why = "could be channel-first or channel-last" if plausible else "have no axis of 1, 3 or 4 channels"
        options = " or ".join(str(public(s)) for s, _ in readings)
        raise StudyError(f"{source}: examples of shape {example} {why}; set data.image_shape to {options} "
                         "([channels, height, width])")
    shape, last = plausible[0]
    order = "channel-last, transposed to channel-first" if last else "channel-first"
    return Layout(public(shape), last, f"{source}: examples of shape {example} read as {describe(shape)} ({order}; "
                                       "data.image_shape overrides)")


def _readings(example: tuple[int, ...]) -> list[tuple[tuple[int, int, int], bool]]:
    """(channel-first shape, channel-last?) for every way to read an example as an image."""
    if len(example) == 2:
        return [((1, *example), False)]
    if len(example) != 3:
        return []
    a, b, c = example
    readings = [((a, b, c), False)]
    if (c, a, b) != (a, b, c):
        readings.append(((c, a, b), True))
    return readings


def _flat(size: int, requested: list[int] | None, source: str) -> Layout:
    if requested is None:
        return Layout(None, False, f"{source}: vectors of {size} features (set data.image_shape to read them as images)")
    if int(np.prod(requested)) != size:
        raise StudyError(f"data.image_shape = {requested} multiplies to {int(np.prod(requested))} but {source} has "
                         f"{size} features per example")
    return Layout(public(requested), False, f"{source}: rows of {size} features read as {describe(requested)} "
                                            "(channel-first, from data.image_shape)")


def check_channel_order(rows: np.ndarray, layout: Layout, source: str) -> None:
    """Refuse flat rows stated as channel-first [c, h, w] whose pixels are in fact channel-last.

    Neighbouring pixels of real images are alike; read in the wrong order they are not. So
    the reading with the clearly smaller neighbour differences is the true one.
    """
    c, h, w = chw(layout.image_shape)
    if c == 1 or len(rows) == 0:
        return
    x = rows.astype(np.float64)
    first = x.reshape(len(x), c, h, w)
    last = x.reshape(len(x), h, w, c).transpose(0, 3, 1, 2)
    stated, other = _roughness(first), _roughness(last)
    if stated > 0 and other < SMOOTHER * stated:
        raise StudyError(
            f"data.image_shape = {layout.image_shape}, but the rows of {source} look channel-last ({h}, {w}, {c}): "
            f"neighbouring pixels differ {stated / max(other, 1e-12):.1f}x less read that way; store the rows "
            f"channel-first, or save the images as an (n, {h}, {w}, {c}) array in a .npy or .npz file")


def _roughness(images: np.ndarray) -> float:
    return float(np.abs(np.diff(images, axis=-1)).mean() + np.abs(np.diff(images, axis=-2)).mean())
