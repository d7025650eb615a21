"""Direct reading of stored TIFF tiles with tifffile + imagecodecs, bypassing read_region.

When a bag's patches line up with the file's tile grid at the read level (the read
level is a stored level, the read size is a multiple of the tile size and every
patch corner falls on a tile corner), each patch is exactly a block of stored tiles:
their compressed bytes are read and decoded once each, with no resampling and no
re-decoding of tiles shared by neighbouring reads.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)


class TileGrid:
    """One pyramid level of a tiled TIFF: decode the tiles that make up aligned patches."""

    def __init__(self, path: str | Path, level: int, level_dimensions: tuple[int, int]) -> None:
        import tifffile

        self.path = Path(path)
        self._tif = tifffile.TiffFile(self.path)
        levels = self._tif.series[0].levels
        page = levels[level].pages[0] if level < len(levels) else None
        if not isinstance(page, tifffile.TiffPage) or not page.is_tiled:  # a TiffFrame has no tile tags
            self.close()
            raise ValueError(f"{self.path}: level {level} is not a tiled TIFF level")
        height, width = page.shape[:2]
        if (width, height) != tuple(level_dimensions):
            self.close()
            raise ValueError(f"{self.path}: TIFF level {level} is {width}x{height}, the reader's is {level_dimensions}")
        if page.samplesperpixel not in (3, 4) or page.dtype != np.uint8:
            self.close()
            raise ValueError(f"{self.path}: level {level} is not 8-bit RGB")
        self.page = page
        self.tile_w, self.tile_h = int(page.tilewidth), int(page.tilelength)
        self.tiles_across = -(-width // self.tile_w)
        self._handle = self._tif.filehandle

    def aligned(self, level_xy: np.ndarray, size: int) -> bool:
        """True when every patch (level coordinates, ``size`` px) is a whole block of tiles."""
        return (
            size % self.tile_w == 0
            and size % self.tile_h == 0
            and bool(np.all(level_xy[:, 0] % self.tile_w == 0))
            and bool(np.all(level_xy[:, 1] % self.tile_h == 0))
        )

    def _tile(self, column: int, row: int) -> np.ndarray:
        index = row * self.tiles_across + column
        offset, count = self.page.dataoffsets[index], self.page.databytecounts[index]
        if count == 0:
            raise ValueError(f"tile {column},{row} is empty (not stored)")
        self._handle.seek(offset)
        data = self._handle.read(count)
        segment, _, _ = self.page.decode(data, index, jpegtables=self.page.jpegtables)
        if segment is None:
            raise ValueError(f"tile {column},{row} could not be decoded")
        return segment[0, :, :, :3]

    def read(self, x: int, y: int, size: int) -> np.ndarray:
        """(size, size, 3) uint8 at level coordinates (x, y), both multiples of the tile size."""
        out = np.empty((size, size, 3), dtype=np.uint8)
        for dy in range(0, size, self.tile_h):
            for dx in range(0, size, self.tile_w):
                out[dy : dy + self.tile_h, dx : dx + self.tile_w] = self._tile(
                    (x + dx) // self.tile_w, (y + dy) // self.tile_h
                )
        return out

    def close(self) -> None:
        self._tif.close()


def level_coordinates(coords: np.ndarray, downsample: float) -> np.ndarray:
    """Level-0 (x, y) -> coordinates at a level, (N, 2) int64."""
    return np.rint(np.asarray(coords, dtype=np.float64) / downsample).astype(np.int64)


def try_tile_grid(
    path: str | Path, level: int, level_dimensions: tuple[int, int], coords: np.ndarray, downsample: float, size: int
) -> TileGrid | None:
    """A :class:`TileGrid` when the patches line up with the stored tiles, else None."""
    try:
        grid = TileGrid(path, level, level_dimensions)
    except Exception as error:  # noqa: BLE001 -- not a TIFF, not tiled, another layout: use read_region
        logger.debug("direct tile path unavailable for %s: %s", path, error)
        return None
    if not grid.aligned(level_coordinates(coords, downsample), size):
        grid.close()
        return None
    return grid
