"""Stitching: patch painting, overlap averaging, chunk independence, smoothing, tissue, colour."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

from wsi_mil.explain.stitch import (
    TRUNCATE,
    CanvasGeometry,
    PatchIndex,
    ScoreRange,
    TissueMask,
    colorize,
    colormap_lut,
    patch_extents,
    patches_disjoint,
    stitch_scores,
)


def naive_canvas(coords: np.ndarray, values: np.ndarray, size: float, geometry: CanvasGeometry) -> np.ndarray:
    """Per-pixel reference: mean of the patches whose square holds the pixel centre."""
    rows, cols = geometry.shape
    d = geometry.downsample
    cy = (np.arange(rows) + 0.5) * d
    cx = (np.arange(cols) + 0.5) * d
    total = np.zeros((rows, cols))
    count = np.zeros((rows, cols))
    for (x, y), v in zip(coords, values, strict=True):
        inside = ((cy >= y) & (cy < y + size))[:, None] & ((cx >= x) & (cx < x + size))[None, :]
        total[inside] += v
        count[inside] += 1
    with np.errstate(invalid="ignore"):
        return np.where(count > 0, total / count, np.nan)


def test_overlapping_patches_are_averaged_per_pixel() -> None:
    coords = np.array([[0, 0], [256, 0], [128, 128]])
    values = np.array([1.0, 3.0, 5.0])
    canvas = stitch_scores(
        coords, values, patch_size_level0=256, geometry=CanvasGeometry.for_slide((600, 500), 1.0), chunks=(100, 100)
    ).compute()
    assert canvas.shape == (500, 600) and canvas.dtype == np.float32
    assert canvas[10, 10] == 1.0  # patch 0 only
    assert canvas[10, 300] == 3.0  # patch 1 only
    assert canvas[200, 200] == 3.0  # (1 + 5) / 2
    assert canvas[200, 300] == 4.0  # (3 + 5) / 2
    assert canvas[300, 200] == 5.0
    assert np.isnan(canvas[450, 550])  # no patch: no data
    assert not patches_disjoint(coords, 256)


@pytest.mark.parametrize("downsample", [1.0, 2.5, 16.0])
def test_matches_per_pixel_reference_at_any_downsample_and_chunking(downsample: float) -> None:
    rng = np.random.default_rng(1)
    coords = rng.integers(0, 3000, size=(60, 2))
    values = rng.normal(size=60)
    geometry = CanvasGeometry.for_slide((3300, 3100), downsample)
    expected = naive_canvas(coords, values, 200, geometry)
    for chunks in [(37, 53), (4096, 4096)]:
        canvas = stitch_scores(coords, values, patch_size_level0=200, geometry=geometry, chunks=chunks).compute()
        np.testing.assert_allclose(canvas, expected, rtol=1e-6, equal_nan=True)


def test_disjoint_grid_fast_path_equals_reference() -> None:
    xs, ys = np.meshgrid(np.arange(0, 2048, 256), np.arange(256, 1536, 256))
    coords = np.stack([xs.ravel(), ys.ravel()], axis=1)
    values = np.arange(len(coords), dtype=float)
    assert patches_disjoint(coords, 256)
    geometry = CanvasGeometry.for_slide((2100, 1600), 3.0)
    canvas = stitch_scores(coords, values, patch_size_level0=256, geometry=geometry, chunks=(50, 70)).compute()
    np.testing.assert_array_equal(canvas, naive_canvas(coords, values, 256, geometry).astype(np.float32))


def test_patch_index_bins_each_patch_into_every_chunk_it_touches() -> None:
    rng = np.random.default_rng(2)
    coords = rng.integers(-100, 1000, size=(200, 2))
    extents = patch_extents(coords, 150, 1.0)
    index = PatchIndex(extents, (1000, 1000), (128, 96))
    for br in range(index.grid[0]):
        for bc in range(index.grid[1]):
            r0, c0 = br * 128, bc * 96
            touches = (
                (extents[:, 0] < c0 + 96)
                & (extents[:, 1] > c0)
                & (extents[:, 2] < r0 + 128)
                & (extents[:, 3] > r0)
                & (extents[:, 1] > 0)
                & (extents[:, 3] > 0)
            )
            assert sorted(index.in_block(br, bc)) == sorted(np.flatnonzero(touches))


def test_smoothing_across_chunk_borders_equals_unchunked() -> None:
    rng = np.random.default_rng(3)
    coords = rng.integers(0, 1800, size=(40, 2))
    values = rng.uniform(0, 1, size=40)
    geometry = CanvasGeometry.for_slide((2000, 2000), 4.0)
    sigma = 3.0
    chunked = stitch_scores(
        coords, values, patch_size_level0=128, geometry=geometry, chunks=(64, 64), smooth_sigma=sigma
    ).compute()
    whole = stitch_scores(
        coords, values, patch_size_level0=128, geometry=geometry, chunks=(4096, 4096), smooth_sigma=sigma
    ).compute()
    np.testing.assert_allclose(chunked, whole, rtol=1e-5, atol=1e-6, equal_nan=True)
    # and equals a normalized convolution of the full, unchunked canvas
    mean = naive_canvas(coords, values, 128, geometry)
    covered = np.isfinite(mean)
    num = gaussian_filter(np.where(covered, mean, 0.0), sigma, mode="constant", truncate=TRUNCATE)
    den = gaussian_filter(covered.astype(float), sigma, mode="constant", truncate=TRUNCATE)
    with np.errstate(invalid="ignore", divide="ignore"):
        expected = np.where(den > 1e-3, num / den, np.nan)
    np.testing.assert_allclose(chunked, expected, rtol=1e-4, atol=1e-5, equal_nan=True)
    assert np.isfinite(chunked).sum() > covered.sum()  # smoothing reaches a little beyond the patches


def test_tissue_mask_restricts_the_canvas() -> None:
    coords = np.array([[0, 0], [512, 0]])
    mask = np.zeros((4, 8), dtype=bool)
    mask[:, :4] = True  # left half of a 1024 x 512 slide, 128 level-0 px per mask pixel
    canvas = stitch_scores(
        coords,
        np.array([2.0, 7.0]),
        patch_size_level0=512,
        geometry=CanvasGeometry.for_slide((1024, 512), 2.0),
        chunks=(64, 64),
        tissue=TissueMask(mask, 128.0),
    ).compute()
    assert np.all(canvas[:, :256] == 2.0)
    assert np.all(np.isnan(canvas[:, 256:]))  # the second patch lies outside tissue


def test_huge_level0_canvas_is_lazy_and_paints_one_chunk() -> None:
    xs, ys = np.meshgrid(np.arange(0, 100_000, 256), np.arange(0, 80_000, 256))
    coords = np.stack([xs.ravel(), ys.ravel()], axis=1)[::7]
    canvas = stitch_scores(
        coords,
        np.ones(len(coords)),
        patch_size_level0=256,
        geometry=CanvasGeometry.for_slide((100_000, 80_000), 1.0),
        chunks=(1024, 1024),
    )
    assert canvas.shape == (80_000, 100_000)
    block = canvas.blocks[40, 50].compute()
    assert block.shape == (1024, 1024) and np.nanmax(block) == 1.0


def test_colour_range_is_global_and_colorize_marks_no_data_transparent() -> None:
    values = np.array([0.0, 1.0, 2.0, 3.0, 100.0])
    assert ScoreRange.of(values) == ScoreRange(0.0, 100.0)
    clipped = ScoreRange.of(values, percentiles=(0, 75))
    assert clipped.vmax == 3.0
    import dask.array as da

    scores = da.from_array(np.array([[0.0, 3.0], [np.nan, 50.0]], dtype=np.float32), chunks=1)
    rgba = colorize(scores, cmap="viridis", score_range=clipped).compute()
    lut = colormap_lut("viridis")
    assert rgba.shape == (2, 2, 4)
    assert tuple(rgba[0, 0]) == (*lut[0], 255) and tuple(rgba[0, 1]) == (*lut[255], 255)
    assert tuple(rgba[1, 1]) == (*lut[255], 255)  # clipped to vmax, not rescaled per chunk
    assert rgba[1, 0, 3] == 0
