"""The blended overlay's fast paths give the pixels of the reference blend, and copy what they can of the slide."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.test_heatmap_tiles import write_rgb_jpeg_slide
from wsi_mil.config import HeatmapConfig
from wsi_mil.explain.blend import StoredJpegTiles, write_blend_tiff
from wsi_mil.explain.blend_patches import PatchBlender, TileBlender, blend_maps
from wsi_mil.explain.stitch import CanvasGeometry, ScorePainter, ScoreRange, TissueMask

SLIDE = (1500, 1100)  # level-0 (width, height): not a multiple of the tile


def _grid_patches(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A 256-px grid with holes and a NaN score, scores partly outside the colour range."""
    xs, ys = np.meshgrid(np.arange(0, SLIDE[0], 256), np.arange(0, SLIDE[1], 256))
    coords = np.stack([xs.ravel(), ys.ravel()], axis=1)
    coords = coords[rng.random(len(coords)) < 0.8]
    values = rng.normal(0.5, 0.4, len(coords))
    values[2] = np.nan
    return coords, values


@pytest.mark.parametrize("alpha", [0.4, 0.5, 0.7])
@pytest.mark.parametrize("downsample", [1.0, 3.0, 4.0])
def test_patch_blender_is_the_tile_blender_over_painted_scores_bit_for_bit(alpha: float, downsample: float) -> None:
    rng = np.random.default_rng(int(alpha * 10 + downsample))
    coords, values = _grid_patches(rng)
    mask = rng.random((SLIDE[1] // 32 + 1, SLIDE[0] // 32 + 1)) < 0.85  # tissue with holes: partly covered tiles
    mask[:12, :12] = True  # and tiles all in tissue
    geometry = CanvasGeometry.for_slide(SLIDE, downsample)
    compared = 0
    for tissue in (None, TissueMask(mask, 32.0)):
        for score_range in (ScoreRange(0.1, 0.9), ScoreRange(0.0, 1.0, clear=(0.4, 0.6))):
            painter = ScorePainter(
                coords, values, patch_size_level0=256, geometry=geometry, chunks=(256, 256), tissue=tissue
            )
            fast = PatchBlender(painter, cmap="coolwarm", score_range=score_range, alpha=alpha)
            reference = TileBlender(cmap="coolwarm", score_range=score_range, alpha=alpha)
            for row in range(painter.index.grid[0]):
                for col in range(painter.index.grid[1]):
                    rows, cols = painter.bounds(row, col)
                    rgb = rng.integers(0, 256, (rows.stop - rows.start, cols.stop - cols.start, 3), dtype=np.uint8)
                    expected = reference(rgb, painter.tile(row, col)) if painter.has_data(row, col) else rgb
                    np.testing.assert_array_equal(fast(rgb.copy(), row, col), expected)
                    assert fast.shows(row, col) == _drawn(painter, reference, row, col)
                    compared += 1
    assert compared >= 16


def _drawn(painter: ScorePainter, reference: TileBlender, row: int, col: int) -> bool:
    """Whether any patch pixel of the tile has a visible score (tissue aside)."""
    valid, _ = reference.colour_index(painter.tile(row, col, restrict=False))
    return bool(valid.any())


def test_patch_blender_refuses_overlapping_patches() -> None:
    geometry = CanvasGeometry.for_slide(SLIDE, 1.0)
    painter = ScorePainter(
        np.array([[0, 0], [128, 0]]), np.array([0.2, 0.8]), patch_size_level0=256, geometry=geometry, chunks=(256, 256)
    )
    with pytest.raises(ValueError, match="disjoint"):
        PatchBlender(painter, cmap="coolwarm", score_range=ScoreRange(0.0, 1.0), alpha=0.5)


@pytest.mark.parametrize("alpha", [0.4, 0.5])
def test_blend_maps_take_the_affine_path_for_every_colour_at_the_usual_alphas(alpha: float) -> None:
    """CLAM's alpha (0.4) and the default (0.5): every colour by cv2.transform, equal to the float32 tables."""
    import cv2

    tables, affine, exact = blend_maps("coolwarm", alpha)
    assert exact.all(), f"{(~exact).sum()} colours fall back to the 3-channel lookup table (about 3x slower)"
    pixels = np.random.default_rng(0).integers(0, 256, (37, 53, 3), dtype=np.uint8)
    for colour in (0, 77, 255):
        np.testing.assert_array_equal(cv2.transform(pixels, affine[colour]), cv2.LUT(pixels, tables[colour]))


def test_tissue_covers_is_sample_all() -> None:
    rng = np.random.default_rng(3)
    mask = rng.random((40, 50)) < 0.9
    tissue = TissueMask(mask, 16.0)
    for downsample in (1.0, 4.0, 16.0, 33.0):
        for _ in range(200):
            r0, c0 = rng.integers(0, 700, 2)
            rows, cols = slice(int(r0), int(r0 + rng.integers(1, 300))), slice(int(c0), int(c0 + rng.integers(1, 300)))
            covered = tissue.covers(rows, cols, downsample)
            assert not covered or tissue.sample(rows, cols, downsample).all()
        assert tissue.covers(slice(0, 16), slice(0, 16), 1.0) == bool(mask[0, 0])


def test_blend_copies_the_tiles_of_a_level_a_pixel_short_of_the_canvas(tmp_path: Path) -> None:
    """Level 1 is 320 x 257 (rounded down), its canvas 321 x 258: inside tiles are copied, the edge is background."""
    import tifffile

    from wsi_mil.io.open import open_slide

    y, x = np.mgrid[0:1030, 0:1283]
    image = np.stack([(x // 3) % 256, (y // 2) % 256, ((x + y) // 5) % 256], axis=-1).astype(np.uint8)
    slide_path = write_rgb_jpeg_slide(tmp_path / "slide.svs", image, photometric_rgb=False, floor=True)
    coords, values = np.array([[1024, 768]]), np.array([0.9])  # one patch, far from level 1's first tile

    def scores(downsample: float) -> ScorePainter:
        geometry = CanvasGeometry.for_slide((1283, 1030), downsample)
        return ScorePainter(coords, values, patch_size_level0=256, geometry=geometry, chunks=(256, 256))

    out = tmp_path / "blend.tiff"
    with open_slide(slide_path) as slide:
        assert slide.level_dimensions[1] == (320, 257)
        write_blend_tiff(out, slide, scores, options=HeatmapConfig(), score_range=ScoreRange(0.0, 1.0))
    stored = StoredJpegTiles.find(slide_path, (257, 320))
    assert stored is not None
    with tifffile.TiffFile(out) as written:
        level = written.series[0].levels[1]
        assert level.shape[:2] == (258, 321)
        page = level.keyframe
        handle = written.filehandle
        handle.seek(page.dataoffsets[0])
        assert handle.read(page.databytecounts[0]) == stored.tile(0, 0)  # the slide's own bytes
        pixels = level.asarray()
    stored.close()
    # past the level: the background, white (a 1-px line beside colours: JPEG's chroma bleeds into it a little)
    assert np.abs(pixels[257, :320].astype(int) - 255).mean() < 6
    assert np.abs(pixels[:257, 320].astype(int) - 255).mean() < 6


def test_one_thread_writes_the_same_file_as_the_pool(tmp_path: Path) -> None:
    """threads=1 makes and writes the tiles in the calling thread: the same tiles, in the same order."""
    import tifffile

    from wsi_mil.io.open import open_slide

    y, x = np.mgrid[0:1030, 0:1283]
    image = np.stack([(x // 3) % 256, (y // 2) % 256, ((x + y) // 5) % 256], axis=-1).astype(np.uint8)
    slide_path = write_rgb_jpeg_slide(tmp_path / "slide.svs", image, photometric_rgb=False, floor=True)
    rng = np.random.default_rng(5)
    coords, values = _grid_patches(rng)
    coords = coords[(coords[:, 0] < 1283 - 256) & (coords[:, 1] < 1030 - 256)]

    def scores(downsample: float) -> ScorePainter:
        geometry = CanvasGeometry.for_slide((1283, 1030), downsample)
        return ScorePainter(coords, values[: len(coords)], patch_size_level0=256, geometry=geometry, chunks=(256, 256))

    pages = []
    for threads in (1, 3):
        out = tmp_path / f"blend-{threads}.tiff"
        with open_slide(slide_path) as slide:
            options = HeatmapConfig(threads=threads)
            write_blend_tiff(out, slide, scores, options=options, score_range=ScoreRange(0.0, 1.0))
        with tifffile.TiffFile(out) as tif:
            segments = [tif.filehandle.read_segments(page.dataoffsets, page.databytecounts) for page in tif.pages]
            pages.append([[data for data, _ in page] for page in segments])
    assert pages[0] == pages[1]
