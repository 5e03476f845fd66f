"""Built-in datasets that need no download: scikit-learn's digits, a curved manifold and shape
images of known intrinsic dimension, and colour patches of scikit-learn's sample photographs."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from latentstudy.config import Manifold, Patches, Shapes
from latentstudy.data.raw import Raw

# Each factor of the shape images: its range when free, its value when fixed. Positions and
# radius are fractions of the image size; the triangle stays inside the image throughout.
FACTORS = {
    "x": ((0.35, 0.65), 0.5),
    "y": ((0.35, 0.65), 0.5),
    "scale": ((0.2, 0.32), 0.26),
    "rotation": ((0.0, 2 * np.pi), 0.0),
    "aspect": ((0.6, 1.0), 1.0),
    "brightness": ((0.4, 1.0), 1.0),
}
# A scalene triangle (counter-clockwise, radius about 1): no rotation or mirror maps it onto
# itself, so every factor value gives a different image.
TRIANGLE = np.array([[0.0, 1.0], [-0.75, -0.55], [0.6, -0.7]])
EDGE_PX = 0.6  # softness of the edge in pixels: images change smoothly with every factor
BATCH_PIXELS = 1 << 20  # pixels drawn at once: bounds the (images, edges, pixels) distance array


def read_digits() -> Raw:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return Raw(bunch.data, bunch.target.astype(np.int64), "scikit-learn digits", 16.0, [8, 8])


def make_manifold(m: Manifold) -> Raw:
    """A smooth nonlinear embedding of [0,1]^d into [0,1]^D with known intrinsic dimension d.

    Each ambient coordinate is a sigmoid of a random low-frequency Fourier feature of the
    latent point: smooth, curved, and (for D >= 2d+1, generically) injective.
    """
    rng = np.random.default_rng(m.seed)
    u = rng.uniform(size=(m.n, m.intrinsic_dim))
    freq = rng.normal(scale=m.curvature, size=(m.intrinsic_dim, m.ambient_dim))
    phase = rng.uniform(0, 2 * np.pi, size=m.ambient_dim)
    x = 1.0 / (1.0 + np.exp(-2.5 * np.sin(2 * np.pi * u @ freq / 2 + phase)))
    x = x + m.noise * rng.normal(size=x.shape)
    # Its coordinates share the unit scale by construction: auto keeps them in [0, 1] (known_dimension.py).
    return Raw(np.clip(x, 0.0, 1.0), None, f"manifold d={m.intrinsic_dim} in D={m.ambient_dim}", shared_scale=True)


def make_shapes(s: Shapes) -> Raw:
    """One soft-edged triangle per image; the listed factors vary, uniformly and independently.

    The images form a smooth manifold whose dimension is the number of free factors.
    """
    rng = np.random.default_rng(s.seed)
    values = {name: rng.uniform(*FACTORS[name][0], size=s.n) if name in s.factors else np.full(s.n, FACTORS[name][1])
              for name in FACTORS}
    x = np.empty((s.n, s.size, s.size), np.float32)
    batch = max(1, BATCH_PIXELS // s.size**2)
    for start in range(0, s.n, batch):
        x[start : start + batch] = _draw({name: v[start : start + batch] for name, v in values.items()}, s.size)
    free = ", ".join(s.factors)
    return Raw(x, None, f"shapes: {s.size}x{s.size} triangles, {len(s.factors)} free factors ({free})",
               image_shape=[s.size, s.size])


def _draw(f: dict[str, np.ndarray], size: int) -> np.ndarray:
    """Triangles with the given factors (one value per image) as (m, size, size) in [0, 1]."""
    angle, aspect = f["rotation"], f["aspect"]
    cos, sin = np.cos(angle), np.sin(angle)
    local = TRIANGLE[None] * np.stack([aspect, np.ones_like(aspect)], 1)[:, None]  # (m, 3, 2)
    rotated = np.stack([cos[:, None] * local[..., 0] - sin[:, None] * local[..., 1],
                        sin[:, None] * local[..., 0] + cos[:, None] * local[..., 1]], -1)
    centre = np.stack([f["x"], f["y"]], 1)[:, None] * size
    corners = centre + (f["scale"] * size)[:, None, None] * rotated  # (m, 3, 2) in pixels
    edges = np.roll(corners, -1, axis=1) - corners
    normals = np.stack([edges[..., 1], -edges[..., 0]], -1)
    normals /= np.linalg.norm(normals, axis=-1, keepdims=True)  # outward, as the corners run counter-clockwise
    grid = np.stack(np.meshgrid(np.arange(size) + 0.5, np.arange(size) + 0.5, indexing="xy"), -1).reshape(-1, 2)
    # Signed distance to each edge's line; the largest is the distance to the triangle (inside: < 0).
    dist = np.einsum("mep,qp->meq", normals, grid) - (normals * corners).sum(-1)[..., None]
    inside = 1.0 / (1.0 + np.exp(np.clip(dist.max(axis=1) / EDGE_PX, -50, 50)))
    return (f["brightness"][:, None] * inside).reshape(-1, size, size)


def make_patches(p: Patches) -> Raw:
    """Square RGB patches cut at seeded random places from the two photographs that ship with
    scikit-learn (china.jpg, flower.jpg); the label says which photograph."""
    from sklearn.datasets import load_sample_images

    bunch = load_sample_images()
    photos, names = bunch.images, np.array([Path(f).stem for f in bunch.filenames])  # (427, 640, 3) uint8; china, flower
    rng = np.random.default_rng(p.seed)
    which = rng.integers(0, len(photos), size=p.n)
    height, width = photos[0].shape[:2]
    top = rng.integers(0, height - p.size + 1, size=p.n)
    left = rng.integers(0, width - p.size + 1, size=p.n)
    x = np.stack([photos[k][t : t + p.size, l : l + p.size].transpose(2, 0, 1) for k, t, l in zip(which, top, left)])
    return Raw(x, names[which], f"patches: {p.n} RGB {p.size}x{p.size} cuts of scikit-learn's sample photos",
               255.0, [3, p.size, p.size])
