"""Tile-by-tile heatmap writers give the same pixels as the Dask canvases, and copy the slide's own JPEG tiles."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from wsi_mil.config import HeatmapConfig
from wsi_mil.explain.blend import StoredJpegTiles, TileBlender, write_blend_tiff
from wsi_mil.explain.export_overview import blend
from wsi_mil.explain.export_tiff import write_pyramid_tiff
from wsi_mil.explain.heatmap_formats import TIFF_CHUNK
from wsi_mil.explain.stitch import (
    CanvasGeometry,
    ColouredTiles,
    ScorePainter,
    ScoreRange,
    TissueMask,
    colorize,
    colormap_lut,
    stitch_scores,
)

SHAPE = (1100, 1400)  # canvas rows, cols at level 0: not a multiple of the 256-px tile
PATCH = 256


def _patches(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A grid of patches with holes, one overlapping pair and a NaN score."""
    rng = np.random.default_rng(seed)
    grid = [(x, y) for x in range(128, 1300, PATCH) for y in range(0, 1000, PATCH) if rng.random() < 0.6]
    coords = np.array([*grid, (200, 700)], dtype=np.int64)
    values = rng.random(len(coords))
    values[1] = np.nan
    return coords, values


def _read_levels(path: Path) -> list[np.ndarray]:
    import tifffile

    with tifffile.TiffFile(path) as tif:
        return [page.asarray() for page in tif.pages]


@pytest.mark.parametrize("kind", ["float32", "rgba"])
def test_tile_sources_write_the_same_tiff_as_canvases(tmp_path: Path, kind: str) -> None:
    coords, values = _patches()
    mask = np.zeros((18, 22), dtype=bool)
    mask[2:15, 3:20] = True  # tissue covers part of the patches
    tissue = TissueMask(mask, 64.0)
    score_range = ScoreRange.of(values)
    painted, canvases = [], []
    for factor in (1, 2, 4):
        geometry = CanvasGeometry((-(-SHAPE[0] // factor), -(-SHAPE[1] // factor)), float(factor))
        common = {"patch_size_level0": PATCH, "geometry": geometry, "tissue": tissue}
        painter = ScorePainter(coords, values, chunks=(256, 256), **common)
        canvas = stitch_scores(coords, values, chunks=TIFF_CHUNK, **common)
        if kind == "rgba":
            painter = ColouredTiles(painter, cmap="jet", score_range=score_range)
            canvas = colorize(canvas, cmap="jet", score_range=score_range)
        painted.append(painter)
        canvases.append(canvas)
    write_pyramid_tiff(tmp_path / "tiles.tiff", painted, mpp=0.5, kind=kind)
    write_pyramid_tiff(tmp_path / "canvas.tiff", canvases, mpp=0.5, kind=kind)
    for tiled, reference in zip(
        _read_levels(tmp_path / "tiles.tiff"), _read_levels(tmp_path / "canvas.tiff"), strict=True
    ):
        np.testing.assert_array_equal(tiled, reference)  # NaN where no data in both
    level0 = _read_levels(tmp_path / "tiles.tiff")[0]
    assert level0.shape[:2] == SHAPE
    if kind == "float32":
        assert np.isnan(level0).mean() > 0.3 and np.isfinite(level0).any()


def test_tile_blender_is_the_overview_blend_bit_for_bit() -> None:
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (256, 200, 3), dtype=np.uint8)
    scores = rng.normal(0.5, 0.4, (256, 200)).astype(np.float32)  # some outside the range: clipped
    scores[:, :30] = np.nan
    score_range = ScoreRange(0.1, 0.9)
    expected = blend(rgb, scores, lut=colormap_lut("jet"), score_range=score_range, alpha=0.4)
    np.testing.assert_array_equal(TileBlender(cmap="jet", score_range=score_range, alpha=0.4)(rgb, scores), expected)


def write_rgb_jpeg_slide(path: Path, image: np.ndarray, *, photometric_rgb: bool, floor: bool = False) -> Path:
    """An Aperio-like two-level JPEG pyramid; JPEG data in YCbCr (tifffile's default) or RGB (as Aperio writes).

    The second level is the first's size divided by 4, rounded up (``floor``: down, as Aperio rounds).
    """
    import tifffile

    colour = (
        {"subsampling": (1, 1), "compressionargs": {"level": 90, "outcolorspace": "RGB"}} if photometric_rgb else {}
    )
    height, width = image.shape[:2]
    reduced = image[: height // 4 * 4 : 4, : width // 4 * 4 : 4] if floor else image[::4, ::4]
    with tifffile.TiffWriter(path) as writer:
        for index, level in enumerate((image, reduced)):
            text = f"Aperio Image Library v12.0.0 \r\n{image.shape[1]}x{image.shape[0]} (256x256) JPEG/RGB|MPP = 0.5000"
            writer.write(
                np.ascontiguousarray(level),
                tile=(256, 256),
                photometric="rgb",
                compression="jpeg",
                description=text if index == 0 else None,
                metadata=None,
                **colour,
            )
    return path


@pytest.mark.parametrize("photometric_rgb", [False, True], ids=["ycbcr", "rgb"])
def test_blend_copies_the_slides_jpeg_tiles_where_there_is_no_score(tmp_path: Path, photometric_rgb: bool) -> None:
    import openslide
    import tifffile

    from wsi_mil.io.open import open_slide

    y, x = np.mgrid[0:1024, 0:1280]
    image = np.stack([(x // 3) % 256, (y // 2) % 256, ((x + y) // 5) % 256], axis=-1).astype(np.uint8)
    slide_path = write_rgb_jpeg_slide(tmp_path / "slide.svs", image, photometric_rgb=photometric_rgb)
    coords = np.array([[512, 256], [768, 256]])  # scores on level-0 tiles (1, 2) and (1, 3) only
    values = np.array([0.2, 0.9])

    def scores(downsample: float) -> ScorePainter:
        geometry = CanvasGeometry.for_slide((1280, 1024), downsample)
        return ScorePainter(coords, values, patch_size_level0=PATCH, geometry=geometry, chunks=(256, 256))

    out = tmp_path / "blend.tiff"
    with open_slide(slide_path) as slide:
        write_blend_tiff(out, slide, scores, options=HeatmapConfig(), score_range=ScoreRange(0.0, 1.0))
    with tifffile.TiffFile(slide_path) as source, tifffile.TiffFile(out) as written:
        src, dst = source.pages[0], written.pages[0]
        assert dst.photometric == src.photometric  # copied tiles are read in the slide's colour space
        stored = StoredJpegTiles.find(slide_path, (1024, 1280))
        assert stored is not None
        handle = written.filehandle
        handle.seek(dst.dataoffsets[0])
        assert handle.read(dst.databytecounts[0]) == stored.tile(0, 0)  # the slide's bytes, not re-encoded
        stored.close()
    original, blended = openslide.OpenSlide(str(slide_path)), openslide.OpenSlide(str(out))
    assert blended.dimensions == original.dimensions
    glass = np.asarray(blended.read_region((0, 0), 0, (1280, 256)))
    np.testing.assert_array_equal(glass, np.asarray(original.read_region((0, 0), 0, (1280, 256))))  # no score: exact
    scored = np.asarray(blended.read_region((512, 256), 0, (512, 256)))[..., :3].astype(int)
    expected = TileBlender(cmap="jet", score_range=ScoreRange(0.0, 1.0), alpha=HeatmapConfig().alpha)(
        np.asarray(original.read_region((512, 256), 0, (512, 256)))[..., :3],
        np.repeat(values, 256)[None, :].repeat(256, axis=0).astype(np.float32),
    )
    assert np.abs(scored - expected).mean() < 4  # blended, then JPEG-encoded once
    assert np.abs(scored - np.asarray(original.read_region((512, 256), 0, (512, 256)))[..., :3]).mean() > 20


def test_stored_tiles_decode_like_openslide_on_a_real_aperio_slide(shared_data: Path) -> None:
    """Aperio's abbreviated, RGB-colour-space JPEG tiles, completed with the page's JPEG tables."""
    import openslide
    import tifffile

    path = shared_data / "slides" / "CMU-1-Small-Region.svs"
    if not path.exists():
        pytest.skip(f"{path} not found")
    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        shape, tile = page.shape[:2], page.tilewidth
    stored = StoredJpegTiles.find(path, shape, tile=tile)
    assert stored is not None and stored.tables and stored.layout.photometric == "RGB"
    reference = openslide.OpenSlide(str(path))
    for row, col in [(0, 0), (3, 5), (7, 4)]:
        expected = np.asarray(reference.read_region((col * tile, row * tile), 0, (tile, tile)))[..., :3]
        np.testing.assert_array_equal(stored.decode(row, col), expected)
    stored.close()
