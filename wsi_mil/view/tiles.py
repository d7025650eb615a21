"""Deep-zoom tiles of a slide and of its maps, rendered on demand and kept in an LRU cache.

Every layer shares one Deep Zoom grid: 256-px tiles, no overlap, level ``L`` at downsample
``2 ** (max_level - L)`` (OpenSlide's ``DeepZoomGenerator`` numbering, which OpenSeadragon
uses). The slide comes from OpenSlide's ``DeepZoomGenerator`` over the project's reader
(OpenSlide, else tiffslide, else the plain-image reader). A map tile is painted from the
patch table (:class:`wsi_mil.explain.stitch.ScorePainter`), never from a slide-sized canvas:
where patches are under two pixels wide, the tile is painted finer and averaged down, so
zoomed-out views show every patch rather than a sample of them.
"""

from __future__ import annotations

import io
import math
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from wsi_mil.explain.stitch import CanvasGeometry, ScorePainter, ScoreRange, TissueMask, colorize_block

if TYPE_CHECKING:
    import openslide

TILE = 256
#: Rendered tiles kept (encoded bytes): ~40 MB of JPEG/PNG at the default.
TILE_CACHE = 4096
#: Painters (patch indexes at one level) kept.
PAINTER_CACHE = 256


class LRU:
    """A small thread-safe LRU of computed values."""

    def __init__(self, size: int) -> None:
        self.size, self.lock = size, threading.Lock()
        self.items: OrderedDict[Any, Any] = OrderedDict()

    def get(self, key: Any, make: Callable[[], Any]) -> Any:
        with self.lock:
            if key in self.items:
                self.items.move_to_end(key)
                return self.items[key]
        value = make()
        with self.lock:
            self.items[key] = value
            while len(self.items) > self.size:
                self.items.popitem(last=False)
        return value


@dataclass(frozen=True)
class Grid:
    """The Deep Zoom grid of a slide of level-0 ``dimensions`` (width, height)."""

    dimensions: tuple[int, int]

    @property
    def max_level(self) -> int:
        return max(0, math.ceil(math.log2(max(self.dimensions))))

    def downsample(self, level: int) -> int:
        if not 0 <= level <= self.max_level:
            raise KeyError(f"level {level}")
        return 2 ** (self.max_level - level)

    def tile_bounds(self, level: int, col: int, row: int) -> tuple[int, int]:
        """The tile's (width, height); KeyError outside the level."""
        d = self.downsample(level)
        width, height = (math.ceil(v / d) for v in self.dimensions)
        if not (0 <= col * TILE < width and 0 <= row * TILE < height):
            raise KeyError(f"tile {col},{row} of level {level}")
        return min(TILE, width - col * TILE), min(TILE, height - row * TILE)


class _RGBA:
    """The project's reader with ``read_region`` returning RGBA images, as DeepZoomGenerator expects."""

    def __init__(self, reader: Any) -> None:
        self.reader, self.lock = reader, threading.Lock()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.reader, name)

    def read_region(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> Image.Image:
        with self.lock:  # tiffslide and the image reader make no promise about threads
            return self.reader.read_region(location, level, size).convert("RGBA")


class SlideTiles:
    """JPEG tiles of one slide file on the shared grid."""

    def __init__(self, path: Path, *, mpp: float | None = None) -> None:
        from openslide.deepzoom import DeepZoomGenerator

        from wsi_mil.io.open import open_slide

        self.reader = open_slide(path, mpp=mpp)
        width, height = self.reader.dimensions
        self.grid = Grid((int(width), int(height)))
        self._openslide: openslide.OpenSlide | None = None
        if self.reader.backend == "openslide":  # OpenSlide's own handle: RGBA already, reads in parallel
            import openslide

            self._openslide = openslide.OpenSlide(str(self.reader.path))
            source: Any = self._openslide
        else:
            source = _RGBA(self.reader)
        self.deepzoom = DeepZoomGenerator(source, tile_size=TILE, overlap=0, limit_bounds=False)

    def jpeg(self, level: int, col: int, row: int) -> bytes:
        self.grid.tile_bounds(level, col, row)
        tile = self.deepzoom.get_tile(level, (col, row))
        buffer = io.BytesIO()
        tile.convert("RGB").save(buffer, format="JPEG", quality=85)
        return buffer.getvalue()

    def region(self, x: int, y: int, size: int, *, out: int = 256) -> Image.Image:
        """The level-0 square ``[x, x+size) x [y, y+size)`` read at the best level, resized to ``out`` px."""
        level = self.reader.get_best_level_for_downsample(max(1.0, size / out))
        factor = self.reader.level_downsamples[level]
        side = max(1, int(round(size / factor)))
        image = self.reader.read_region((int(x), int(y)), level, (side, side))
        return image.resize((out, out), Image.Resampling.BILINEAR) if side != out else image

    def close(self) -> None:
        if self._openslide is not None:
            self._openslide.close()
        self.reader.close()


def paint_downsample(downsample: int, patch_size_level0: float) -> int:
    """The finest power of two at most ``downsample`` at which a patch is >= 2 px wide."""
    finest = 2 ** max(0, math.floor(math.log2(max(1.0, patch_size_level0 / 2))))
    return min(downsample, finest)


def reduce_mean(block: np.ndarray, factor: int) -> np.ndarray:
    """(h, w) float32 -> (ceil(h/f), ceil(w/f)): the mean of each f x f cell's finite values, NaN where none."""
    if factor == 1:
        return block
    h, w = block.shape
    rows, cols = -(-h // factor), -(-w // factor)
    padded = np.full((rows * factor, cols * factor), np.nan, dtype=np.float32)
    padded[:h, :w] = block
    cells = padded.reshape(rows, factor, cols, factor)
    finite = np.isfinite(cells)
    count = finite.sum(axis=(1, 3))
    total = np.where(finite, cells, 0.0).sum(axis=(1, 3), dtype=np.float64)
    out = np.full((rows, cols), np.nan, dtype=np.float32)
    out[count > 0] = total[count > 0] / count[count > 0]
    return out


class GridMapTiles:
    """Float tiles of a map whose patches tile a regular grid (step = side: what tiling writes).

    One value per grid cell, and a pyramid of cell means; a tile is a gather from the
    pyramid level whose cells are at most one tile pixel wide (the pixel-centre rule of
    :func:`wsi_mil.explain.stitch.patch_extents` where patches span several pixels).
    """

    def __init__(
        self,
        cells: np.ndarray,
        origin: np.ndarray,
        values: np.ndarray,
        *,
        patch_size_level0: int,
        grid: Grid,
        tissue: TissueMask | None = None,
    ) -> None:
        """cells: (N, 2) int64 (column, row) of each patch in the grid that starts at level-0 ``origin`` (x, y)."""
        self.size, self.grid, self.tissue, self.origin = int(patch_size_level0), grid, tissue, origin
        width, height = grid.dimensions
        shape = (
            max(-(-(height - int(self.origin[1])) // self.size), int(cells[:, 1].max(initial=-1)) + 1, 1),
            max(-(-(width - int(self.origin[0])) // self.size), int(cells[:, 0].max(initial=-1)) + 1, 1),
        )
        base = np.full(shape, np.nan, dtype=np.float32)
        base[cells[:, 1], cells[:, 0]] = values
        self.levels = [base]
        while max(self.levels[-1].shape) > 1:
            self.levels.append(reduce_mean(self.levels[-1], 2))

    def tile(self, level: int, col: int, row: int) -> np.ndarray:
        """(h, w) float32 scores of the tile, NaN where there is none."""
        width, height = self.grid.tile_bounds(level, col, row)
        d = self.grid.downsample(level)
        k = min(max(0, math.floor(math.log2(d / self.size))) if d > self.size else 0, len(self.levels) - 1)
        cells, cell = self.levels[k], self.size * 2**k
        xs = (np.arange(col * TILE, col * TILE + width) + 0.5) * d - self.origin[0]
        ys = (np.arange(row * TILE, row * TILE + height) + 0.5) * d - self.origin[1]
        ci, ri = np.floor(xs / cell).astype(np.int64), np.floor(ys / cell).astype(np.int64)
        cv = np.flatnonzero((ci >= 0) & (ci < cells.shape[1]))
        rv = np.flatnonzero((ri >= 0) & (ri < cells.shape[0]))
        out = np.full((height, width), np.nan, dtype=np.float32)
        if len(cv) and len(rv):
            out[rv[0] : rv[-1] + 1, cv[0] : cv[-1] + 1] = cells[ri[rv]][:, ci[cv]]
        if self.tissue is not None and d < self.size:  # (a pixel wider than a patch keeps the patches' mean)
            rows, cols = slice(row * TILE, row * TILE + height), slice(col * TILE, col * TILE + width)
            out[~self.tissue.sample(rows, cols, d)] = np.nan
        return out


def map_tiles(
    coords: np.ndarray, values: np.ndarray, *, patch_size_level0: float, grid: Grid, tissue: TissueMask | None = None
) -> GridMapTiles | MapTiles:
    """The fastest tile source for these patches: a cell grid where they tile one, else the painter."""
    values = np.asarray(values, dtype=np.float64).reshape(-1)
    found = grid_cells(coords, patch_size_level0)
    if found is not None:
        cells, origin = found
        return GridMapTiles(cells, origin, values, patch_size_level0=int(patch_size_level0), grid=grid, tissue=tissue)
    return MapTiles(coords, values, patch_size_level0=patch_size_level0, grid=grid, tissue=tissue)


def grid_cells(coords: np.ndarray, patch_size_level0: float) -> tuple[np.ndarray, np.ndarray] | None:
    """(cells (N, 2) int64, origin (2,)) when the patches are distinct cells of one grid of step = side, else None.

    The same test as :func:`wsi_mil.explain.stitch.patches_disjoint`, with a uniqueness
    check (``bincount``) that is ~50x faster than ``np.unique(axis=0)`` on 100,000 patches.
    """
    coords = np.asarray(coords, dtype=np.int64).reshape(-1, 2)
    size = int(round(patch_size_level0))
    if not len(coords) or size != patch_size_level0 or size < 1:
        return None
    origin = coords[0] % size
    if ((coords % size) != origin).any():
        return None
    cells = (coords - origin) // size
    if (cells < 0).any():
        return None
    flat = cells[:, 1] * (int(cells[:, 0].max()) + 1) + cells[:, 0]
    return (cells, origin) if np.bincount(flat).max() == 1 else None


class MapTiles:
    """Float tiles of one per-patch map on a slide's grid (painted from the patch table)."""

    def __init__(
        self,
        coords: np.ndarray,
        values: np.ndarray,
        *,
        patch_size_level0: float,
        grid: Grid,
        tissue: TissueMask | None = None,
    ) -> None:
        self.coords, self.values, self.size = coords, values, float(patch_size_level0)
        self.grid, self.tissue = grid, tissue
        self.painters = LRU(64)

    def _painter(self, level: int) -> tuple[ScorePainter, int]:
        downsample = self.grid.downsample(level)
        fine = paint_downsample(downsample, self.size)
        factor = downsample // fine

        def make() -> ScorePainter:
            geometry = CanvasGeometry.for_slide(self.grid.dimensions, fine)
            return ScorePainter(
                self.coords,
                self.values,
                patch_size_level0=self.size,
                geometry=geometry,
                chunks=(TILE * factor, TILE * factor),
                tissue=self.tissue,
            )

        return self.painters.get(level, make), factor

    def tile(self, level: int, col: int, row: int) -> np.ndarray:
        """(h, w) float32 scores of the tile, NaN where there is none."""
        width, height = self.grid.tile_bounds(level, col, row)
        painter, factor = self._painter(level)
        if row >= painter.index.grid[0] or col >= painter.index.grid[1] or not painter.has_data(row, col):
            return np.full((height, width), np.nan, dtype=np.float32)
        return reduce_mean(painter.tile(row, col), factor)[:height, :width]


def png(rgba: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(rgba, mode="RGBA").save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def colour_tile(scores: np.ndarray, lut: np.ndarray, score_range: ScoreRange) -> bytes:
    """A map tile as RGBA PNG bytes; no-data is transparent."""
    return png(colorize_block(scores, lut, score_range))


def outline_tile(
    mask: np.ndarray,
    mask_downsample: float,
    grid: Grid,
    level: int,
    col: int,
    row: int,
    *,
    colour: tuple[int, int, int] = (0, 230, 0),
) -> bytes:
    """The border of a boolean level-0 ``mask`` (sampled at ``mask_downsample``) inside one tile, as RGBA PNG."""
    width, height = grid.tile_bounds(level, col, row)
    d = grid.downsample(level)
    rows = np.arange(row * TILE - 1, row * TILE + height + 1)
    cols = np.arange(col * TILE - 1, col * TILE + width + 1)
    mr = np.clip(((rows + 0.5) * d / mask_downsample).astype(np.int64), 0, mask.shape[0] - 1)
    mc = np.clip(((cols + 0.5) * d / mask_downsample).astype(np.int64), 0, mask.shape[1] - 1)
    inside = mask[mr][:, mc]
    core = inside[1:-1, 1:-1]
    # both sides of the border: a 2-px line that survives the browser's smoothing
    edge = (
        (core != inside[:-2, 1:-1])
        | (core != inside[2:, 1:-1])
        | (core != inside[1:-1, :-2])
        | (core != inside[1:-1, 2:])
    )
    rgba = np.zeros((height, width, 4), dtype=np.uint8)
    rgba[edge] = (*colour, 255)
    return png(rgba)
