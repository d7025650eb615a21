"""Pyramidal tiled TIFFs that OpenSlide, tiffslide and QuPath open aligned with the slide.

Layout: a plain (Big)TIFF whose top-level pages are the pyramid levels, full size
first, each reduced page marked ``NewSubfileType = 1``, all tiled 256 x 256, with
``XResolution``/``YResolution`` in pixels per centimetre from the slide's MPP. This is
the layout OpenSlide's ``generic-tiff`` driver reads as a pyramid (it ignores
SubIFDs) and that tifffile/tiffslide also group into one multi-level series; both
report ``mpp-x``/``mpp-y`` from the resolution tags. Page 0 has the slide's level-0
size, so the file overlays the slide pixel for pixel.

Pixel types (see :func:`write_pyramid_tiff`):
- float32, one sample, deflate: the scores themselves, NaN for no data. tiffslide,
  tifffile, napari and QuPath (Bio-Formats) read it; OpenSlide cannot decode 32-bit
  samples (``TIFFRGBAImageOK``), so for OpenSlide use the RGBA variant.
- uint8 RGBA, deflate: colour-mapped scores, alpha 0 for no data. Every reader,
  OpenSlide included.
- uint8 RGB, JPEG: the colour map blended with the slide (level-0 overlay).

Every level is computed one row of tiles at a time from a lazy canvas (the next row
is computed while tifffile compresses the current one), so memory holds a couple of
tile rows, never a level.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from wsi_mil.store.atomic import atomic_output

logger = logging.getLogger(__name__)

TILE = 256
#: Stop adding levels once a level fits in this many pixels per side.
MIN_LEVEL_SIDE = 512


def pyramid_factors(shape: tuple[int, int], *, min_side: int = MIN_LEVEL_SIDE) -> list[int]:
    """Downsample factors 1, 2, 4, ... until a level fits in ``min_side`` pixels."""
    factors = [1]
    while max(-(-shape[0] // factors[-1]), -(-shape[1] // factors[-1])) > min_side:
        factors.append(factors[-1] * 2)
    return factors


def _row_blocks(compute_row: Callable[[int], np.ndarray], n_rows: int) -> Iterator[np.ndarray]:
    """Row blocks in order, each computed in a helper thread while the previous one is consumed."""
    if n_rows == 0:
        return
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="tiff-row") as pool:
        future = pool.submit(compute_row, 0)
        for row in range(n_rows):
            block = future.result()
            if row + 1 < n_rows:
                future = pool.submit(compute_row, row + 1)
            yield block


def iter_tiles(array: Any, *, tile: int = TILE, threads: int | None = None,
               encode: Callable[[np.ndarray], bytes] | None = None) -> Iterator[np.ndarray | bytes]:  # fmt: skip
    """Tiles of a lazy (H, W[, S]) Dask array in TIFF order, computing one row of tiles at a time.

    The array's row chunks must be ``tile`` high. With ``encode``, tiles come out encoded
    (padded to full size; computed with the row, in the helper thread's pool), and tiles
    that are all zero bits or all NaN -- no data -- are encoded once and reused.
    """
    if any(c != tile for c in array.chunks[0][:-1]):
        raise ValueError(f"row chunks must be {tile} high, got {array.chunks[0][:3]}...")
    width = array.shape[1]
    rows = [array.blocks[i] for i in range(array.numblocks[0])]
    empty: dict[str, bytes] = {}
    pool = ThreadPoolExecutor(max_workers=threads or None, thread_name_prefix="tiff-encode") if encode else None

    def encoded(piece: np.ndarray) -> bytes:
        if piece.shape[:2] != (tile, tile):
            padded = np.zeros((tile, tile, *piece.shape[2:]), dtype=piece.dtype)
            padded[: piece.shape[0], : piece.shape[1]] = piece
            piece = padded
        kind = "nan" if piece.dtype.kind == "f" and np.isnan(piece).all() else "zero" if not piece.any() else ""
        if kind:
            if kind not in empty:
                empty[kind] = encode(piece)
            return empty[kind]
        return encode(piece)

    def compute_row(index: int) -> Any:
        block = np.asarray(rows[index].compute(scheduler="threads", num_workers=threads))
        if pool is None:
            return block
        return list(pool.map(encoded, [block[:, x : x + tile] for x in range(0, width, tile)]))

    try:
        for block in _row_blocks(compute_row, len(rows)):
            if pool is None:
                for x in range(0, width, tile):
                    yield block[:, x : x + tile]
            else:
                yield from block
    finally:
        if pool is not None:
            pool.shutdown()


def write_pyramid_tiff(
    path: str | Path,
    levels: Sequence[Any],
    *,
    mpp: float | None,
    kind: str,
    description: str | None = None,
    tile: int = TILE,
    threads: int | None = None,
) -> Path:
    """Write lazy pyramid ``levels`` (full size first, each a 2-D or (H, W, S) Dask array).

    ``kind``: ``float32`` ((H, W) scores), ``rgba`` ((H, W, 4) uint8) or ``rgb_jpeg``
    ((H, W, 3) uint8). ``mpp`` is level 0's um/px; each level's resolution tags use its
    own downsample, taken from the level widths. The file appears atomically.
    """
    import tifffile

    import imagecodecs

    options: dict[str, Any]
    encode = None
    if kind in ("float32", "rgba"):  # deflate, encoded here so that no-data tiles are encoded once
        def encode(piece: np.ndarray) -> bytes:
            return imagecodecs.zlib_encode(np.ascontiguousarray(piece), level=1)

    if kind == "float32":
        options = {"photometric": "minisblack", "compression": "zlib"}
    elif kind == "rgba":
        options = {"photometric": "rgb", "extrasamples": ["unassalpha"], "compression": "zlib"}
    elif kind == "rgb_jpeg":
        options = {"photometric": "rgb", "compression": "jpeg", "compressionargs": {"level": 85}}
    else:
        raise ValueError(f"unknown TIFF kind {kind!r}; use float32, rgba or rgb_jpeg")
    dtype = np.float32 if kind == "float32" else np.uint8
    width0 = levels[0].shape[1]
    path = Path(path)
    with atomic_output(path) as tmp:
        big = sum(int(np.prod(level.shape)) * np.dtype(dtype).itemsize for level in levels) > 2**31
        with tifffile.TiffWriter(tmp, bigtiff=big) as writer:
            for index, level in enumerate(levels):
                downsample = width0 / level.shape[1]
                resolution = {}
                if mpp:
                    per_cm = 1e4 / (mpp * downsample)
                    resolution = {"resolution": (per_cm, per_cm), "resolutionunit": "CENTIMETER"}
                writer.write(
                    iter_tiles(level, tile=tile, threads=threads, encode=encode),
                    shape=level.shape,
                    dtype=dtype,
                    tile=(tile, tile),
                    subfiletype=0 if index == 0 else 1,
                    description=description if index == 0 else None,
                    metadata=None,
                    maxworkers=threads,
                    **resolution,
                    **options,
                )
    logger.debug("wrote %s (%d levels)", path, len(levels))
    return path
