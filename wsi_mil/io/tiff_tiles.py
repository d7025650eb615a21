"""Exact crops of a tiled TIFF pyramid level, decoded tile by tile with tifffile.

OpenSlide decodes a JPEG tile into premultiplied ARGB, composites it through cairo and
converts it back to RGB in Python; for an Aperio or generic tiled TIFF, tifffile and
imagecodecs give the same pixels, bit for bit, for 3-4 times less CPU (2,220 x 2,967 px of
CMU-1: 98 ms with OpenSlide, 28 ms tile by tile; ``bench/bench_level_reads.py``). A region
of a level is also read exactly here: OpenSlide resamples a region read off the origin of a
level whose downsample is not an integer.

Only pyramids whose every level is one tiled, 8-bit RGB page with a compression measured
to decode at least as fast as OpenSlide (not JPEG 2000, not NDPI's strips) qualify, and
only after a probe region agrees with OpenSlide's own read (:meth:`TiffTiles.agrees`).
Missing tiles (byte count 0) are the background, as OpenSlide shows them.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

#: TIFF compressions decoded here: none, LZW, JPEG, deflate (both codes), zstd.
COMPRESSIONS = frozenset({1, 5, 7, 8, 32946, 50000})
#: Decoded tiles kept for the next read (neighbouring refinement blocks share tiles).
CACHE_BYTES = 32 << 20


class TiffTiles:
    """The levels of a tiled TIFF pyramid, read as exact crops (``read``)."""

    def __init__(self, tif: Any, pages: Sequence[Any], background: tuple[int, int, int]) -> None:
        self._tif = tif
        self._pages = list(pages)
        self._background = np.asarray(background, dtype=np.uint8)
        self._cache: OrderedDict[tuple[int, int], np.ndarray | None] = OrderedDict()
        self._cached_bytes = 0
        self._lock = threading.Lock()  # tifffile's file handle is not thread-safe

    @classmethod
    def open(
        cls, path: Path, level_dimensions: Sequence[tuple[int, int]], background: tuple[int, int, int]
    ) -> TiffTiles | None:
        """The pyramid of ``path`` when tifffile sees the levels OpenSlide lists (``level_dimensions``,
        (w, h)) as tiled RGB pages it decodes quickly; None otherwise."""
        import tifffile

        try:
            tif = tifffile.TiffFile(path)
        except Exception:  # noqa: BLE001 -- not a TIFF tifffile reads: OpenSlide keeps every read
            return None
        try:
            pages = _level_pages(tif, level_dimensions)
        except Exception:  # noqa: BLE001 -- odd structure: OpenSlide keeps every read
            pages = None
        if pages is None:
            tif.close()
            return None
        return cls(tif, pages, background)

    def read(self, level: int, x: int, y: int, width: int, height: int) -> np.ndarray:
        """(height, width, 3) uint8: ``level``'s pixels from level pixel (x, y); outside the level
        is the background."""
        page = self._pages[level]
        out = np.empty((height, width, 3), dtype=np.uint8)
        tile_w, tile_h = int(page.tilewidth), int(page.tilelength)
        image_w, image_h = int(page.imagewidth), int(page.imagelength)
        across = -(-image_w // tile_w)
        x0, y0 = max(0, x), max(0, y)
        x1, y1 = min(image_w, x + width), min(image_h, y + height)
        if (x0, y0, x1, y1) != (x, y, x + width, y + height):
            self._fill(out)  # partly outside the level
        with self._lock:
            for row in range(y0 // tile_h, -(-y1 // tile_h) if y1 > y0 else 0):
                for col in range(x0 // tile_w, -(-x1 // tile_w) if x1 > x0 else 0):
                    tx, ty = col * tile_w, row * tile_h
                    sx0, sy0 = max(x0, tx), max(y0, ty)
                    sx1, sy1 = min(x1, tx + tile_w), min(y1, ty + tile_h)
                    target = out[sy0 - y : sy1 - y, sx0 - x : sx1 - x]
                    tile = self._tile(level, row * across + col)
                    if tile is None:
                        self._fill(target)
                    else:
                        target[...] = tile[sy0 - ty : sy1 - ty, sx0 - tx : sx1 - tx]
        return out

    def _fill(self, image: np.ndarray) -> None:
        """``image`` (h, w, 3) set to the background (a plane at a time: broadcasting a pixel is slow)."""
        for channel in range(3):
            image[..., channel] = self._background[channel]

    def _tile(self, level: int, index: int) -> np.ndarray | None:
        key = (level, index)
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        page = self._pages[level]
        offset, count = int(page.dataoffsets[index]), int(page.databytecounts[index])
        tile = None
        if offset > 0 and count > 0:
            handle = self._tif.filehandle
            handle.seek(offset)
            data = handle.read(count)
            decoded, _, _ = page.decode(data, index, jpegtables=page.jpegtables)
            tile = np.asarray(decoded).reshape(int(page.tilelength), int(page.tilewidth), 3)
        self._cache[key] = tile
        self._cached_bytes += 0 if tile is None else tile.nbytes
        while self._cached_bytes > CACHE_BYTES and len(self._cache) > 1:
            _, dropped = self._cache.popitem(last=False)
            self._cached_bytes -= 0 if dropped is None else dropped.nbytes
        return tile

    def agrees(self, reference: np.ndarray, level: int) -> bool:
        """Whether ``reference``, another reader's pixels from ``level``'s origin, equals this read."""
        height, width = reference.shape[:2]
        try:
            return bool(np.array_equal(self.read(level, 0, 0, width, height), reference))
        except Exception:  # noqa: BLE001 -- a tile tifffile cannot decode: not this reader's slide
            return False

    def close(self) -> None:
        self._cache.clear()
        self._tif.close()


def _level_pages(tif: Any, level_dimensions: Sequence[tuple[int, int]]) -> list[Any] | None:
    """The tifffile page of each level: the next tiled page of the level's size, in file order
    (the thumbnail, label and macro images of an Aperio file lie between or after them); None
    unless every level has one, as a tiled 8-bit RGB page in a compression of ``COMPRESSIONS``.
    (Walking the pages costs half of tifffile's ``series``, which parses every page's metadata.)"""
    import tifffile

    if tif.is_ndpi:
        return None
    remaining = iter(tif.pages)
    pages = []
    for width, height in level_dimensions:
        for page in remaining:
            if (
                isinstance(page, tifffile.TiffPage)
                and page.is_tiled
                and (int(page.imagewidth), int(page.imagelength)) == (width, height)
            ):
                break
        else:
            return None
        if (
            page.tiledepth > 1
            or int(page.compression) not in COMPRESSIONS
            or int(page.planarconfig) != 1
            or page.samplesperpixel != 3
            or page.bitspersample != 8
            or page.dtype != np.uint8
            or int(page.photometric) not in (2, 6)  # RGB, YCbCr
        ):
            return None
        pages.append(page)
    return pages
