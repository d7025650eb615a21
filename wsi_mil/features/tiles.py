"""Patches read as whole blocks of stored TIFF tiles (:mod:`wsi_mil.io.tiff_tiles`), bypassing read_region.

When a bag's patches line up with the file's tile grid at the read level (the read
level is a stored level, the read size is a multiple of the tile size and every
patch corner falls on a tile corner), each patch is exactly a block of stored tiles:
their compressed bytes are read and decoded once each, with no resampling.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from wsi_mil.io.tiff_tiles import COMPRESSIONS, TiffTiles

logger = logging.getLogger(__name__)

#: Aligned patches decode directly in JPEG 2000 too (33003, 33005: Aperio; 34712: JPEG 2000):
#: faster than OpenSlide at level 0 of a JPEG 2000 SVS (bench/bench_level_reads.py).
PATCH_COMPRESSIONS = COMPRESSIONS | {33003, 33005, 34712}


class TileGrid:
    """One pyramid level of a tiled TIFF: decode the tiles that make up aligned patches."""

    def __init__(
        self,
        path: str | Path,
        level: int,
        level_dimensions: Sequence[tuple[int, int]],
        background: tuple[int, int, int] = (255, 255, 255),
    ) -> None:
        self.path = Path(path)
        # aligned patches never share a tile: nothing to cache
        tiles = TiffTiles.open(self.path, level_dimensions, background, compressions=PATCH_COMPRESSIONS, cache_bytes=0)
        if tiles is None or not tiles.has_level(level):
            if tiles is not None:
                tiles.close()
            raise ValueError(f"{self.path}: level {level} is not a tiled 8-bit RGB TIFF page")
        self._tiles = tiles
        self.level = level
        self.tile_w, self.tile_h = tiles.tile_size(level)

    def aligned(self, level_xy: np.ndarray, size: int) -> bool:
        """True when every patch (level coordinates, ``size`` px) is a whole block of tiles."""
        return (
            size % self.tile_w == 0
            and size % self.tile_h == 0
            and bool(np.all(level_xy[:, 0] % self.tile_w == 0))
            and bool(np.all(level_xy[:, 1] % self.tile_h == 0))
        )

    def read(self, x: int, y: int, size: int) -> np.ndarray:
        """(size, size, 3) uint8 at level coordinates (x, y), both multiples of the tile size."""
        return self._tiles.read(self.level, x, y, size, size)

    def close(self) -> None:
        self._tiles.close()


def level_coordinates(coords: np.ndarray, downsample: float) -> np.ndarray:
    """Level-0 (x, y) -> coordinates at a level, (N, 2) int64."""
    return np.rint(np.asarray(coords, dtype=np.float64) / downsample).astype(np.int64)


def try_tile_grid(
    path: str | Path,
    level: int,
    level_dimensions: Sequence[tuple[int, int]],
    coords: np.ndarray,
    downsample: float,
    size: int,
    background: tuple[int, int, int] = (255, 255, 255),
) -> TileGrid | None:
    """A :class:`TileGrid` when the patches line up with the stored tiles, else None."""
    try:
        grid = TileGrid(path, level, level_dimensions, background)
    except Exception as error:  # noqa: BLE001 -- not a TIFF, not tiled, another layout: use read_region
        logger.debug("direct tile path unavailable for %s: %s", path, error)
        return None
    if not grid.aligned(level_coordinates(coords, downsample), size):
        grid.close()
        return None
    return grid
