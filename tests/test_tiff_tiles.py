"""Levels of Aperio and generic tiled TIFFs decoded tile by tile with tifffile: the same pixels as
OpenSlide, exact crops, OpenSlide kept for every other format, and decode errors that name the file."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from wsi_mil.errors import SlideReadError
from wsi_mil.io import open_slide
from wsi_mil.io import tiff_tiles as tiff_tiles_module
from wsi_mil.io.bounded import read_level_reduced
from wsi_mil.io.tiff_tiles import TiffTiles


def _openslide_level(slide, level: int) -> np.ndarray:
    return slide.read_region((0, 0), level, slide.level_dimensions[level], as_array=True)


@pytest.fixture(scope="module")
def odd_slide(make_slide: Callable[..., Path]) -> Path:
    """A pyramid whose lower levels have downsamples that are not integers (4100 / 1025 x 3075 / 768)."""
    return make_slide("odd", width=4100, height=3075)


def test_every_level_equals_openslides_pixels(odd_slide: Path) -> None:
    with open_slide(odd_slide, reader="openslide") as slide:
        assert slide.level_downsamples[1] != int(slide.level_downsamples[1])
        assert slide._direct_tiles() is not None
        for level, (width, height) in enumerate(slide.level_dimensions):
            np.testing.assert_array_equal(
                slide.read_level_region(level, (0, 0), (width, height)), _openslide_level(slide, level)
            )


def test_a_region_is_an_exact_crop_of_the_level(odd_slide: Path) -> None:
    with open_slide(odd_slide, reader="openslide") as slide:
        level = 1
        whole = _openslide_level(slide, level)
        region = slide.read_level_region(level, (300, 257), (400, 300))
        np.testing.assert_array_equal(region, whole[257:557, 300:700])
        # beyond the level's edge: the background, as OpenSlide shows it
        width, height = slide.level_dimensions[level]
        edge = slide.read_level_region(level, (width - 10, height - 5), (30, 20))
        np.testing.assert_array_equal(edge[:5, :10], whole[-5:, -10:])
        assert (edge[5:] == 255).all() and (edge[:, 10:] == 255).all()


def test_real_aperio_slide_decodes_directly_and_identically(shared_data: Path) -> None:
    with open_slide(shared_data / "slides" / "CMU-1-Small-Region.svs", reader="openslide") as slide:
        assert slide._direct_tiles() is not None
        np.testing.assert_array_equal(read_level_reduced(slide, 0, 1).rgb, _openslide_level(slide, 0))


@pytest.mark.parametrize(
    "name",
    [
        "test3-DAPI-2-(387).ndpi",  # NDPI strips: OpenSlide decodes them faster
        pytest.param(  # JPEG 2000: OpenSlide decodes it faster
            "TCGA-CR-7395-01A-01-TS1.svs", marks=pytest.mark.restricted_data
        ),
    ],
)
def test_other_formats_stay_with_openslide(shared_data: Path, name: str) -> None:
    with open_slide(shared_data / "slides" / name, reader="openslide") as slide:
        assert slide._direct_tiles() is None
        level = slide.level_count - 1
        width, height = slide.level_dimensions[level]
        np.testing.assert_array_equal(
            slide.read_level_region(level, (0, 0), (width, height)), _openslide_level(slide, level)
        )


def test_a_probe_that_disagrees_keeps_openslide(odd_slide: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(TiffTiles, "read", lambda self, level, x, y, w, h: np.zeros((h, w, 3), dtype=np.uint8))
    with open_slide(odd_slide, reader="openslide") as slide:
        assert slide._direct_tiles() is None
        assert slide.read_level_region(2, (0, 0), (8, 8)).shape == (8, 8, 3)


def test_the_tile_cache_stays_bounded(odd_slide: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tiff_tiles_module, "CACHE_BYTES", 3 * 256 * 256 * 3)
    with open_slide(odd_slide, reader="openslide") as slide:
        tiles = slide._direct_tiles()
        assert tiles is not None
        width, height = slide.level_dimensions[0]
        whole = slide.read_level_region(0, (0, 0), (width, height))
        assert tiles._cached_bytes <= 3 * 256 * 256 * 3
        np.testing.assert_array_equal(whole[1000:1100, 2000:2100], slide.read_level_region(0, (2000, 1000), (100, 100)))


def test_an_undecodable_tile_is_a_read_error_naming_the_file(odd_slide: Path, tmp_path: Path) -> None:
    import tifffile

    broken = tmp_path / "broken.svs"
    shutil.copy(odd_slide, broken)
    with tifffile.TiffFile(broken) as tif:
        page = tif.series[0].levels[0].pages[0]
        offset, count = int(page.dataoffsets[5]), int(page.databytecounts[5])
    with broken.open("r+b") as handle:  # level 0's sixth tile: garbage after its first bytes
        handle.seek(offset + 2)
        handle.write(b"\x00" * (count - 2))
    with open_slide(broken, reader="openslide") as slide:
        assert slide._direct_tiles() is not None
        with pytest.raises(SlideReadError, match=r"broken\.svs.*level 0"):
            slide.read_level_region(0, (5 * 256, 0), (16, 16))
        with open_slide(odd_slide, reader="openslide") as intact:
            expected = intact.read_region((0, 0), 0, (16, 16), as_array=True)
        np.testing.assert_array_equal(slide.read_level_region(0, (0, 0), (16, 16)), expected)
        # a whole-level read keeps going: the bad tile is background, reported with its position
        read = read_level_reduced(slide, 0, 1, max_unreadable=0.5)
        assert read.unreadable and read.unreadable[0][:2] == (5 * 256, 0)


def test_aligned_patches_read_as_blocks_of_tiles(odd_slide: Path) -> None:
    from wsi_mil.features.tiles import try_tile_grid

    with open_slide(odd_slide, reader="openslide") as slide:
        coords = np.array([[0, 0], [512, 256], [3840, 2816]])
        grid = try_tile_grid(slide.path, 0, slide.level_dimensions, coords, 1.0, 256, slide.background)
        assert grid is not None
        try:
            for x, y in coords:
                expected = slide.read_region((int(x), int(y)), 0, (256, 256), as_array=True)
                np.testing.assert_array_equal(grid.read(int(x), int(y), 256), expected)
        finally:
            grid.close()
        assert try_tile_grid(slide.path, 0, slide.level_dimensions, coords + 8, 1.0, 256) is None  # off the tile grid


@pytest.mark.restricted_data
def test_jpeg2000_patches_decode_directly(shared_data: Path) -> None:
    """Whole JPEG 2000 levels stay with OpenSlide, aligned patches do not (faster at level 0)."""
    from wsi_mil.features.tiles import TileGrid

    with open_slide(shared_data / "slides" / "TCGA-CR-7395-01A-01-TS1.svs", reader="openslide") as slide:
        grid = TileGrid(slide.path, 0, slide.level_dimensions, slide.background)
        try:
            side = grid.tile_w
            np.testing.assert_array_equal(
                grid.read(side, side, side), slide.read_region((side, side), 0, (side, side), as_array=True)
            )
        finally:
            grid.close()


def test_virtual_levels_are_left_to_the_reader(tmp_path: Path) -> None:
    """A flat tiled TIFF read by the image reader: level 0 is a stored page, the 2x levels are not."""
    import tifffile

    rgb = np.random.default_rng(0).integers(0, 256, (700, 900, 3), dtype=np.uint8)
    path = tmp_path / "flat.tif"
    tifffile.imwrite(path, rgb, tile=(128, 128), photometric="rgb", compression="zlib")
    with open_slide(path, reader="image") as slide:
        assert slide.level_count > 1
        tiles = TiffTiles.open(path, slide.level_dimensions, slide.background)
        assert tiles is not None
        try:
            assert tiles.has_level(0) and not tiles.has_level(1)
            np.testing.assert_array_equal(tiles.read(0, 100, 50, 300, 200), rgb[50:250, 100:400])
            with pytest.raises(ValueError, match="not a stored tiled page"):
                tiles.read(1, 0, 0, 8, 8)
        finally:
            tiles.close()


def test_threads_read_one_slide_at_once(odd_slide: Path) -> None:
    """Tiles are read with pread and decoded outside the cache's lock: threads sharing a reader
    get the same pixels as one thread."""
    from concurrent.futures import ThreadPoolExecutor

    with open_slide(odd_slide, reader="openslide") as slide:
        expected = _openslide_level(slide, 0)
        spots = [(x, y) for x in range(0, 3800, 370) for y in range(0, 2800, 410)]

        def read(spot: tuple[int, int]) -> bool:
            x, y = spot
            return np.array_equal(slide.read_level_region(0, (x, y), (300, 260)), expected[y : y + 260, x : x + 300])

        with ThreadPoolExecutor(4) as pool:
            assert all(pool.map(read, spots * 2))
