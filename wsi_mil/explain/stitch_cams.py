"""Sub-patch stitching: each explained patch's (S, S) map resized onto its square of the canvas.

Like :func:`wsi_mil.explain.stitch.stitch_scores`, the canvas is a lazy Dask array
whose chunks only touch the patches that intersect them; overlapping patches are
averaged per pixel; pixels outside every explained patch are NaN.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from wsi_mil.explain.stitch import CanvasGeometry, PatchIndex, patch_extents

if TYPE_CHECKING:
    import dask.array


def paint_maps_block(extents: np.ndarray, maps: np.ndarray, rows: slice, cols: slice) -> np.ndarray:
    """(h, w) float32 canvas block; extents (n, 4) ``[col0, col1, row0, row1)``, maps (n, S, S)."""
    import cv2

    h, w = rows.stop - rows.start, cols.stop - cols.start
    total = np.zeros((h, w), np.float64)
    count = np.zeros((h, w), np.uint16)
    for (c0, c1, r0, r1), values in zip(extents.tolist(), maps, strict=True):
        width, height = c1 - c0, r1 - r0
        if width <= 0 or height <= 0:
            continue
        # cv2 resizes float32 bilinearly; INTER_AREA when shrinking averages instead of skipping pixels
        shrink = width < values.shape[1] or height < values.shape[0]
        resized = cv2.resize(
            np.asarray(values, np.float32),
            (width, height),
            interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR,
        )
        y0, y1 = max(r0, rows.start), min(r1, rows.stop)
        x0, x1 = max(c0, cols.start), min(c1, cols.stop)
        if y1 <= y0 or x1 <= x0:
            continue
        block = (slice(y0 - rows.start, y1 - rows.start), slice(x0 - cols.start, x1 - cols.start))
        total[block] += resized[y0 - r0 : y1 - r0, x0 - c0 : x1 - c0]
        count[block] += 1
    out = np.full((h, w), np.nan, np.float32)
    covered = count > 0
    out[covered] = total[covered] / count[covered]
    return out


def stitch_patch_maps(
    coords: np.ndarray,
    maps: np.ndarray,
    *,
    patch_size_level0: float,
    geometry: CanvasGeometry,
    chunks: tuple[int, int] = (1024, 1024),
) -> dask.array.Array:
    """A lazy (rows, cols) float32 canvas of within-patch maps. coords: (k, 2) level-0 (x, y);
    maps: (k, S, S), each stretched over its patch's square."""
    import dask.array as da

    coords = np.asarray(coords).reshape(-1, 2)
    maps = np.asarray(maps, np.float32)
    if len(maps) != len(coords):
        raise ValueError(f"{len(maps)} maps for {len(coords)} patches")
    rows, cols = geometry.shape
    chunks = (min(chunks[0], rows), min(chunks[1], cols))
    extents = patch_extents(coords, patch_size_level0, geometry.downsample)
    index = PatchIndex(extents, geometry.shape, chunks)

    def block(block_info: dict) -> np.ndarray:
        info = block_info[None]
        (r0, r1), (c0, c1) = info["array-location"]
        picked = index.in_block(*info["chunk-location"])
        return paint_maps_block(extents[picked], maps[picked], slice(r0, r1), slice(c0, c1))

    return da.map_blocks(
        block,
        chunks=da.core.normalize_chunks(chunks, geometry.shape),
        dtype=np.float32,
        meta=np.empty((0, 0), np.float32),
    )
