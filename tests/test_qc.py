"""The tiling QC picture: its size, the contour and grid where they belong, from a picture at any resolution."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from skimage.segmentation import find_boundaries

from wsi_mil.tiling.qc import CONTOUR_COLOR, GRID_COLOR, QC_MAX_SIDE, QC_MIN_SIDE, qc_shape, render_qc, save_qc


def test_qc_pictures_are_enlarged_or_reduced_to_a_legible_size() -> None:
    assert qc_shape((300, 400)) == (600, 800)  # small: a whole factor up
    assert qc_shape((937, 1250)) == (937, 1250)
    assert qc_shape((3750, 5000)) == (1536, QC_MAX_SIDE)  # an 80,000-px slide at 8 um/px
    assert all(QC_MIN_SIDE // 2 <= max(qc_shape((h, w))) <= QC_MAX_SIDE for h, w in [(10, 700), (2100, 50), (800, 900)])


def test_the_contour_is_the_masks_inner_boundary() -> None:
    rng = np.random.default_rng(0)
    mask = np.zeros((1100, 1200), dtype=bool)
    for _ in range(12):
        y, x, r = rng.integers(50, 1050), rng.integers(50, 1150), rng.integers(10, 120)
        yy, xx = np.ogrid[:1100, :1200]
        mask ^= (yy - y) ** 2 + (xx - x) ** 2 < r * r
    rgb = np.full((*mask.shape, 3), 255, dtype=np.uint8)
    picture = np.asarray(render_qc(rgb, mask, np.zeros((0, 2)), 256, 8.0))
    edge = find_boundaries(mask, mode="inner")
    edge |= np.roll(edge, 1, axis=0) | np.roll(edge, 1, axis=1)
    assert np.array_equal((picture == CONTOUR_COLOR).all(axis=-1), edge)


def test_the_grid_lands_on_the_patches_when_the_picture_is_coarser_than_the_mask() -> None:
    mask = np.zeros((300, 400), dtype=bool)  # 8 level-0 px a mask pixel: a 3200 x 2400 slide
    mask[40:200, 40:300] = True
    coarse = np.full((75, 100, 3), 200, dtype=np.uint8)  # the slide at 32 level-0 px a pixel
    picture = np.asarray(render_qc(coarse, mask, np.array([[512, 512]]), 256, 8.0))
    assert picture.shape == (600, 800, 3)  # the mask's shape, enlarged twice; 4 level-0 px a pixel
    grid = (picture == GRID_COLOR).all(axis=-1)
    ys, xs = np.nonzero(grid)
    assert (ys.min(), ys.max(), xs.min(), xs.max()) == (128, 191, 128, 191)  # 256 level-0 px = 64 px
    contour = (picture == CONTOUR_COLOR).all(axis=-1)
    ys, xs = np.nonzero(contour)
    assert (ys.min(), xs.min()) == (80, 80) and ys.max() in (399, 400) and xs.max() in (599, 600)


def test_the_saved_picture_is_lossless_png(tmp_path: Path) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (300, 500, 3), dtype=np.uint8)
    path = save_qc(Image.fromarray(rgb), tmp_path / "qc" / "slide.png")
    with Image.open(path) as saved:
        assert saved.format == "PNG" and saved.mode == "RGB"
        np.testing.assert_array_equal(np.asarray(saved), rgb)
