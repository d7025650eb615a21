"""The viewer's map tiles: the fast cell-grid path paints what the patch painter paints."""

from __future__ import annotations

import numpy as np
import pytest

from wsi_mil.view.tiles import Grid, MapTiles, grid_cells, map_tiles, reduce_mean


def _patches(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    xs, ys = np.meshgrid(np.arange(96, 9000, 256), np.arange(40, 6000, 256))
    coords = np.stack([xs.ravel(), ys.ravel()], 1)
    keep = rng.random(len(coords)) < 0.6
    return coords[keep], rng.normal(size=int(keep.sum()))


def test_grid_tiles_match_the_patch_painter_where_patches_span_pixels() -> None:
    coords, values = _patches()
    grid = Grid((9100, 6100))
    fast = map_tiles(coords, values, patch_size_level0=256, grid=grid)
    slow = MapTiles(coords, values, patch_size_level0=256, grid=grid)
    assert not isinstance(fast, MapTiles)
    for level in range(grid.max_level - 6, grid.max_level + 1):  # downsample 64 .. 1: patches >= 4 px
        d = grid.downsample(level)
        cols, rows = -(-9100 // (256 * d)), -(-6100 // (256 * d))
        for col in range(cols):
            for row in range(rows):
                np.testing.assert_array_equal(fast.tile(level, col, row), slow.tile(level, col, row))


def test_zoomed_out_grid_tiles_average_every_patch() -> None:
    coords, values = _patches(1)
    grid = Grid((9100, 6100))
    whole = map_tiles(coords, values, patch_size_level0=256, grid=grid).tile(0, 0, 0)
    assert whole.shape == (1, 1) and values.min() < whole[0, 0] < values.max()  # a mean of cell means
    block = np.array([[1.0, np.nan], [3.0, np.nan]], dtype=np.float32)
    assert reduce_mean(block, 2).tolist() == [[2.0]]


def test_overlapping_or_off_grid_patches_use_the_painter() -> None:
    coords, values = _patches()
    assert grid_cells(coords, 256) is not None
    assert grid_cells(coords, 300) is None  # overlapping squares
    shifted = coords.copy()
    shifted[0] += 7
    assert grid_cells(shifted, 256) is None
    assert grid_cells(np.concatenate([coords, coords[:1]]), 256) is None  # a repeat
    assert isinstance(map_tiles(shifted, values, patch_size_level0=256, grid=Grid((9100, 6100))), MapTiles)


def test_slides_openslide_cannot_open_come_through_the_project_readers(tmp_path) -> None:
    """A plain PNG (the image reader): deep-zoom tiles with its pixels where they belong."""
    import io

    from PIL import Image

    from wsi_mil.view.tiles import SlideTiles

    pixels = np.zeros((500, 700, 3), dtype=np.uint8)
    pixels[:, :350] = (200, 30, 30)
    pixels[:, 350:] = (30, 30, 200)
    Image.fromarray(pixels).save(tmp_path / "plain.png")
    tiles = SlideTiles(tmp_path / "plain.png")
    try:
        assert tiles.reader.backend == "image" and tiles.grid.dimensions == (700, 500)
        level = tiles.grid.max_level
        left = np.asarray(Image.open(io.BytesIO(tiles.jpeg(level, 0, 0))))
        right = np.asarray(Image.open(io.BytesIO(tiles.jpeg(level, 2, 1))))
        assert left.shape == (256, 256, 3) and right.shape == (244, 188, 3)
        assert left[..., 0].mean() > 180 and right[..., 2].mean() > 180
        whole = np.asarray(Image.open(io.BytesIO(tiles.jpeg(level - 2, 0, 0))))
        assert whole.shape == (125, 175, 3)
    finally:
        tiles.close()


def test_every_static_file_ships_as_package_data() -> None:
    """The page, its script and OpenSeadragon (pinned, with its licence) are in the wheel: no CDN at run time."""
    import fnmatch
    from pathlib import Path

    tomllib = __import__("pytest").importorskip("tomllib")
    root = Path(__file__).resolve().parents[1]
    patterns = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["wsi_mil"]
    static = root / "wsi_mil" / "view" / "static"
    files = [p.relative_to(root / "wsi_mil").as_posix() for p in static.rglob("*") if p.is_file()]
    missing = [f for f in files if not any(fnmatch.fnmatch(f, p) and f.count("/") == p.count("/") for p in patterns)]
    assert not missing
    osd = static / "openseadragon"
    assert {"openseadragon.min.js", "LICENSE.txt", "SOURCE.md"} <= {p.name for p in osd.iterdir()}
    version = (osd / "SOURCE.md").read_text().split()[1].rstrip(",")
    assert f"//! openseadragon {version}" in (osd / "openseadragon.min.js").read_text()[:200]
    page = (static / "index.html").read_text() + (static / "viewer.js").read_text()
    assert "http://" not in page and "https://" not in page  # everything from this server


@pytest.mark.restricted_data
def test_a_tiff_only_tiffslide_reads_is_served_through_it(shared_data) -> None:
    """Real data: a flat strip TIFF that OpenSlide rejects (kidney-ihc-strip.tif, 1493 x 901)."""
    import io

    from PIL import Image

    from wsi_mil.view.tiles import SlideTiles

    path = shared_data / "slides" / "kidney-ihc-strip.tif"
    if not path.exists():
        __import__("pytest").skip(f"{path} not in the shared data")
    tiles = SlideTiles(path)
    try:
        assert tiles.reader.backend == "tiffslide" and tiles.grid.dimensions == (1493, 901)
        corner = np.asarray(Image.open(io.BytesIO(tiles.jpeg(tiles.grid.max_level, 5, 3))))
        assert corner.shape == (901 - 3 * 256, 1493 - 5 * 256, 3)
        direct = tiles.reader.read_region((5 * 256, 3 * 256), 0, corner.shape[1::-1], as_array=True)
        assert np.abs(corner.astype(int) - direct.astype(int)).mean() < 6  # the same pixels, JPEG aside
    finally:
        tiles.close()
