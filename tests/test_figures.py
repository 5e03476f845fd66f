"""Image figures in grey and in colour."""

import numpy as np
import pytest

from latentstudy import figures


@pytest.mark.parametrize("shape, out", [([4, 5], (2, 4, 5)), ([1, 4, 5], (2, 4, 5)), ([3, 4, 5], (2, 4, 5, 3)),
                                        ([4, 4, 5], (2, 4, 5, 3)), ([2, 4, 5], (2, 4, 5))])
def test_rows_become_images_channel_first(shape, out):
    rows = np.random.default_rng(0).uniform(size=(2, int(np.prod(shape))))
    images = figures.as_images(rows, shape)
    assert images.shape == out
    c = 1 if len(shape) == 2 else shape[0]
    planes = rows.reshape(2, c, *shape[-2:])
    if c == 3:
        np.testing.assert_array_equal(images[1, 2, 3], planes[1, :, 2, 3])  # pixel (2, 3) of image 1 is its RGB
    if c == 4:  # RGBA over white
        alpha = planes[1, 3, 2, 3]
        np.testing.assert_allclose(images[1, 2, 3], alpha * planes[1, :3, 2, 3] + 1 - alpha)


def test_colour_grid_is_drawn_in_colour(tmp_path):
    from matplotlib.image import imread

    red = np.zeros((3, 3, 8, 8))
    red[:, 0] = 1.0  # three pure red images
    path = tmp_path / "grid.png"
    figures.image_grid([red.reshape(3, -1)], ["input"], [3, 8, 8], path)
    png = imread(path)
    reddish = (png[..., 0] > 0.9) & (png[..., 1] < 0.1) & (png[..., 2] < 0.1)
    assert reddish.sum() > 3 * 8 * 8
