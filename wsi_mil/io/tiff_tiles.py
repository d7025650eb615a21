"""Exact crops of a tiled TIFF pyramid level, decoded tile by tile with tifffile.

OpenSlide decodes a JPEG tile into premultiplied ARGB, composites it through cairo, and the
reader converts it back to RGB; for an Aperio or generic tiled TIFF, tifffile and
imagecodecs give the same pixels, bit for bit, for 5-9 times less CPU on a JPEG level
(2,220 x 2,967 px of CMU-1: 180 ms through OpenSlide, 30 ms tile by tile;
``bench/bench_level_reads.py``). A region of a level is also read exactly here: OpenSlide
resamples a region read off the origin of a level whose downsample is not an integer.

Levels that are tiled 8-bit RGB pages in a compression measured to decode faster than
through OpenSlide qualify (not JPEG 2000, not NDPI's strips; a level without such a page,
e.g. a virtual level, stays with the reader), and only after a probe region agrees with
OpenSlide's own read (:meth:`TiffTiles.agrees`). Missing tiles (byte count 0) are the
background, as OpenSlide shows them.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

#: TIFF compressions decoded here in place of OpenSlide's reads: none, LZW, JPEG, deflate (both
#: codes), zstd. (JPEG 2000 decodes no faster here than through OpenSlide for whole levels.)
COMPRESSIONS = frozenset({1, 5, 7, 8, 32946, 50000})
#: Decoded tiles kept for the next read (neighbouring refinement blocks share tiles).
CACHE_BYTES = 32 << 20


class TiffTiles:
    """The levels of a tiled TIFF pyramid, read as exact crops (``read``)."""

    def __init__(
        self, tif: Any, pages: Sequence[Any], background: tuple[int, int, int], *, cache_bytes: int | None = None
    ) -> None:
        self._tif = tif
        self._pages = list(pages)
        self._background = np.asarray(background, dtype=np.uint8)
        self._cache: OrderedDict[tuple[int, int], np.ndarray | None] = OrderedDict()
        self._cached_bytes = 0
        self._cache_limit = CACHE_BYTES if cache_bytes is None else cache_bytes
        self._lock = threading.Lock()  # the cache's; tiles are read and decoded outside it
        # os.pread: no file position shared between threads, or with a forked process
        self._fd = os.open(tif.filehandle.path, os.O_RDONLY)

    @classmethod
    def open(
        cls,
        path: Path,
        level_dimensions: Sequence[tuple[int, int]],
        background: tuple[int, int, int],
        *,
        compressions: frozenset[int] = COMPRESSIONS,
        cache_bytes: int | None = None,
    ) -> TiffTiles | None:
        """The pyramid of ``path`` when tifffile sees the reader's levels (``level_dimensions``,
        (w, h)) as tiled 8-bit RGB pages in one of ``compressions``; None otherwise.
        ``cache_bytes``: decoded tiles kept for later reads (0 where reads never share tiles; None:
        ``CACHE_BYTES``)."""
        import tifffile

        try:
            tif = tifffile.TiffFile(path)
        except Exception:  # noqa: BLE001 -- not a TIFF tifffile reads: the reader keeps every read
            return None
        try:
            pages = _level_pages(tif, level_dimensions, compressions)
        except Exception:  # noqa: BLE001 -- odd structure: the reader keeps every read
            pages = None
        if pages is None:
            tif.close()
            return None
        return cls(tif, pages, background, cache_bytes=cache_bytes)

    def has_level(self, level: int) -> bool:
        """Whether ``level`` is decoded here (some levels may not be stored pages: virtual levels)."""
        return 0 <= level < len(self._pages) and self._pages[level] is not None

    def tile_size(self, level: int) -> tuple[int, int]:
        """(width, height) of ``level``'s tiles."""
        page = self._pages[level]
        return int(page.tilewidth), int(page.tilelength)

    def read(self, level: int, x: int, y: int, width: int, height: int) -> np.ndarray:
        """(height, width, 3) uint8: ``level``'s pixels from level pixel (x, y); outside the level
        is the background. ``level`` must be one of :meth:`has_level`."""
        page = self._pages[level]
        if page is None:
            raise ValueError(f"level {level} is not a stored tiled page")
        out = np.empty((height, width, 3), dtype=np.uint8)
        tile_w, tile_h = int(page.tilewidth), int(page.tilelength)
        image_w, image_h = int(page.imagewidth), int(page.imagelength)
        across = -(-image_w // tile_w)
        x0, y0 = max(0, x), max(0, y)
        x1, y1 = min(image_w, x + width), min(image_h, y + height)
        if (x0, y0, x1, y1) != (x, y, x + width, y + height):
            self._fill(out)  # partly outside the level
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
        """Tile ``index`` of ``level`` decoded, from the cache when there; None when not stored."""
        key = (level, index)
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
        page = self._pages[level]
        offset, count = int(page.dataoffsets[index]), int(page.databytecounts[index])
        tile = None
        if offset > 0 and count > 0:
            data = os.pread(self._fd, count, offset)
            if len(data) < count:
                raise ValueError(f"tile {index} of level {level} is cut short: the file is truncated")
            decoded, _, _ = page.decode(data, index, jpegtables=page.jpegtables)
            tile = np.asarray(decoded).reshape(int(page.tilelength), int(page.tilewidth), 3)
        if self._cache_limit <= 0:
            return tile
        with self._lock:
            if key not in self._cache:  # another thread may have decoded it meanwhile
                self._cache[key] = tile
                self._cached_bytes += 0 if tile is None else tile.nbytes
            while self._cached_bytes > self._cache_limit and len(self._cache) > 1:
                _, dropped = self._cache.popitem(last=False)
                self._cached_bytes -= 0 if dropped is None else dropped.nbytes
        return tile

    def agrees(self, reference: np.ndarray, level: int) -> bool:
        """Whether ``reference``, another reader's pixels from ``level``'s origin, equals this read."""
        height, width = reference.shape[:2]
        if not self.has_level(level):
            return False
        try:
            return bool(np.array_equal(self.read(level, 0, 0, width, height), reference))
        except Exception:  # noqa: BLE001 -- a tile tifffile cannot decode: not this reader's slide
            return False

    def close(self) -> None:
        with self._lock:
            self._cache.clear()
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        self._tif.close()


def _level_pages(
    tif: Any, level_dimensions: Sequence[tuple[int, int]], compressions: frozenset[int]
) -> list[Any] | None:
    """The tifffile page of each level: the next tiled page of the level's size, in file order
    (the thumbnail, label and macro images of an Aperio file lie between or after them), or None
    for a level without one or not a tiled 8-bit RGB page in one of ``compressions`` (a virtual
    level, say); None when no level has a page. (Walking the pages costs half of tifffile's
    ``series``, which parses every page's metadata.)"""
    import tifffile

    if tif.is_ndpi:
        return None
    candidates: list[Any] = []  # the tiled pages, read from the file as far as needed
    unread = iter(tif.pages)

    def candidate(index: int) -> Any | None:
        while len(candidates) <= index:
            page = next(unread, None)
            if page is None:
                return None
            if isinstance(page, tifffile.TiffPage) and page.is_tiled:
                candidates.append(page)
        return candidates[index]

    position = 0
    pages: list[Any] = []
    for width, height in level_dimensions:
        index, page = position, candidate(position)
        while page is not None and (int(page.imagewidth), int(page.imagelength)) != (width, height):
            index += 1
            page = candidate(index)
        if page is None:
            pages.append(None)
            continue
        position = index + 1
        pages.append(page if _decodable(page, compressions) else None)
    return pages if any(page is not None for page in pages) else None


def _decodable(page: Any, compressions: frozenset[int]) -> bool:
    return (
        page.tiledepth == 1
        and int(page.compression) in compressions
        and int(page.planarconfig) == 1
        and page.samplesperpixel == 3
        and page.bitspersample == 8
        and page.dtype == np.uint8
        and int(page.photometric) in (2, 6)  # RGB, YCbCr
    )
