"""Lazy RGB canvases of the colour-mapped scores blended over the slide's own pixels.

Each tile or chunk reads only its slide region (from the finest pyramid level not finer
than the canvas, resized when the level does not match), so a level-0 blend of a huge
slide is produced piece by piece like the score canvas. Slide handles are opened once
per thread.

Most of a level-0 overlay has no score: those tiles are the slide's own pixels. When the
slide stores that level as JPEG tiles on the same 256-px grid (Aperio SVS, tifffile
pyramids), :class:`BlendTiles` copies their stored bytes into the output -- no decode,
no re-encode, and no second JPEG generation loss -- and decodes only tiles under scores.
The reduced levels do the same with the slide's reduced levels, also when a level is a
pixel short of the canvas (sizes rounded down). Tiles under a patch grid are blended
patch by patch (:class:`~wsi_mil.explain.blend_patches.PatchBlender`: one uint8 map per
colour, no float scores painted), so a tile's cost is its JPEG decode and encode.
"""

from __future__ import annotations

import math
import os
import threading
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from wsi_mil.config import HeatmapConfig
from wsi_mil.explain.blend_patches import PatchBlender, TileBlender
from wsi_mil.explain.export_overview import blend
from wsi_mil.explain.export_tiff import TILE, JpegLayout
from wsi_mil.explain.stitch import ScorePainter, ScoreRange, colormap_lut

#: TIFF Compression JPEG; PhotometricInterpretation RGB and YCbCr
_JPEG, _RGB, _YCBCR = 7, 2, 6


class _SlidePerThread:
    """One open slide per thread (OpenSlide handles are not shared across threads here)."""

    def __init__(self, path: Path, reader: str, mpp: float | None) -> None:
        self.path, self.reader, self.mpp = path, reader, mpp
        self._local = threading.local()
        self._opened: list[Any] = []
        self._lock = threading.Lock()

    def get(self) -> Any:
        slide = getattr(self._local, "slide", None)
        if slide is None:
            from wsi_mil.io.open import open_slide

            slide = open_slide(self.path, reader=self.reader, mpp=self.mpp)
            self._local.slide = slide
            with self._lock:
                self._opened.append(slide)
        return slide

    def close(self) -> None:
        with self._lock:
            for slide in self._opened:
                slide.close()
            self._opened.clear()


def read_slide_block(slide: Any, rows: slice, cols: slice, downsample: float) -> np.ndarray:
    """(h, w, 3) uint8 slide pixels of canvas block ``[rows, cols]`` at ``downsample``."""
    level = slide.get_best_level_for_downsample(downsample)
    level_downsample = slide.level_downsamples[level]
    h, w = rows.stop - rows.start, cols.stop - cols.start
    x0, y0 = int(round(cols.start * downsample)), int(round(rows.start * downsample))
    scale = downsample / level_downsample
    size = (max(1, int(round(w * scale))), max(1, int(round(h * scale))))
    region = slide.read_region((x0, y0), level, size, as_array=True)
    if size != (w, h):
        region = np.asarray(Image.fromarray(region).resize((w, h), Image.Resampling.BOX))
    return region


def blended_canvas(
    canvas: Any,
    slides: _SlidePerThread,
    *,
    downsample: float,
    cmap: str,
    score_range: ScoreRange,
    alpha: float,
) -> Any:
    """A lazy (H, W, 3) uint8 Dask array: the slide at ``downsample`` under the colour map.

    canvas: the (H, W) float32 score canvas at the same ``downsample``.
    """
    lut = colormap_lut(cmap)

    def block_rgb(scores: np.ndarray, block_info: dict) -> np.ndarray:
        (r0, r1), (c0, c1) = block_info[0]["array-location"]
        rgb = read_slide_block(slides.get(), slice(r0, r1), slice(c0, c1), downsample)
        return blend(rgb, scores, lut=lut, score_range=score_range, alpha=alpha)

    return canvas.map_blocks(
        block_rgb, new_axis=2, chunks=(*canvas.chunks, (3,)), dtype=np.uint8, meta=np.empty((0, 0, 0), dtype=np.uint8)
    )


def open_per_thread(path: str | Path, *, reader: str = "auto", mpp: float | None = None) -> _SlidePerThread:
    """A per-thread slide opener for :func:`blended_canvas`; call ``close()`` when done."""
    return _SlidePerThread(Path(path), reader, mpp)


class StoredJpegTiles:
    """A slide level's own JPEG tiles, as complete JPEG streams read from the file without decoding."""

    def __init__(
        self,
        path: Path,
        offsets: np.ndarray,
        bytecounts: np.ndarray,
        tables: bytes | None,
        shape: tuple[int, int],
        layout: JpegLayout,
        tile: int = TILE,
    ) -> None:
        self.offsets, self.bytecounts, self.tables = offsets, bytecounts, tables
        #: the level's (rows, cols) and its tile grid
        self.shape, self.layout = shape, layout
        self.tiles_down, self.tiles_across = -(-shape[0] // tile), -(-shape[1] // tile)
        self._fd = os.open(path, os.O_RDONLY)  # os.pread: no shared file position between threads

    @classmethod
    def find(cls, path: Path, shape: tuple[int, int], *, tile: int = TILE) -> StoredJpegTiles | None:
        """The page of ``path`` stored as ``shape`` (rows, cols) in ``tile``-px 8-bit RGB JPEG tiles, if any."""
        import tifffile

        try:
            tif = tifffile.TiffFile(path)
        except (OSError, ValueError, tifffile.TiffFileError):  # not a TIFF (MIRAX, DICOM...): decode instead
            return None
        with tif:
            for page in tif.pages:
                if (
                    isinstance(page, tifffile.TiffPage)
                    and page.shape[:2] == tuple(shape)
                    and page.is_tiled
                    and (page.tilelength, page.tilewidth) == (tile, tile)
                    and page.compression == _JPEG
                    and page.photometric in (_RGB, _YCBCR)
                    and page.planarconfig == 1
                    and page.samplesperpixel == 3
                    and page.bitspersample == 8
                ):
                    sub_h, sub_v = page.subsampling or (2, 2)
                    layout = (
                        JpegLayout("YCBCR", (sub_h, sub_v)) if page.photometric == _YCBCR else JpegLayout("RGB", (1, 1))
                    )
                    return cls(
                        path,
                        np.asarray(page.dataoffsets),
                        np.asarray(page.databytecounts),
                        page.jpegtables,
                        (int(shape[0]), int(shape[1])),
                        layout,
                        tile,
                    )
        return None

    def tile(self, row: int, col: int) -> bytes | None:
        """Tile (row, col) as a self-contained JPEG; None when the file leaves it out (sparse)."""
        index = row * self.tiles_across + col
        count = int(self.bytecounts[index])
        if count == 0:
            return None
        data = os.pread(self._fd, count, int(self.offsets[index]))
        if self.tables:  # abbreviated stream (Aperio): splice in the shared tables, tables' EOI and tile's SOI dropped
            data = self.tables[:-2] + data[2:]
        return data

    def decode(self, row: int, col: int) -> np.ndarray | None:
        """(tile, tile, 3) uint8 pixels of tile (row, col), as OpenSlide decodes them (same libjpeg, same colour space)."""
        import imagecodecs

        data = self.tile(row, col)
        if data is None:
            return None
        return imagecodecs.jpeg8_decode(data, colorspace=self.layout.photometric, outcolorspace="RGB")

    def close(self) -> None:
        os.close(self._fd)


class BlendTiles:
    """One level of the blended overlay, tile by tile: a tile source for ``write_pyramid_tiff``.

    scores: the level's :class:`ScorePainter` with 256-px chunks (the TIFF tile grid).
    Tiles without a drawn patch are the slide's stored bytes where it has them; the others
    are decoded (or read) and blended, patch by patch when the patches do not overlap.
    """

    def __init__(
        self,
        scores: ScorePainter,
        slides: _SlidePerThread,
        *,
        downsample: float,
        cmap: str,
        score_range: ScoreRange,
        alpha: float,
        stored: StoredJpegTiles | None = None,
        background: tuple[int, int, int] = (255, 255, 255),
    ) -> None:
        self.scores, self.slides, self.downsample, self.stored = scores, slides, downsample, stored
        self.background = background
        self.blend = TileBlender(cmap=cmap, score_range=score_range, alpha=alpha)
        #: disjoint patches (a tiling grid): blended by table lookups, without painting scores
        self.patches = (
            PatchBlender(scores, cmap=cmap, score_range=score_range, alpha=alpha) if scores.disjoint else None
        )
        self.shape = (*scores.shape, 3)
        #: copied tiles keep the slide's JPEG layout, so the whole level must use it
        self.jpeg_layout = stored.layout if stored is not None else None

    def has_data(self, row: int, col: int) -> bool:
        return True  # every tile shows the slide

    def tile(self, row: int, col: int) -> np.ndarray | bytes:
        rows, cols = self.scores.bounds(row, col)
        # drawn: a patch's colour is over the tile (not when all its scores are in the clear band)
        drawn = self.scores.has_data(row, col) if self.patches is None else self.patches.shows(row, col)
        rgb = self._stored_pixels(row, col, rows, cols, copy=not drawn)
        if isinstance(rgb, bytes):
            return rgb
        if rgb is None:
            rgb = read_slide_block(self.slides.get(), rows, cols, self.downsample)
        if not drawn:
            return rgb
        if self.patches is None:
            return self.blend(rgb, self.scores.tile(row, col))
        return self.patches(rgb if rgb.flags.writeable else rgb.copy(), row, col)

    def _stored_pixels(self, row: int, col: int, rows: slice, cols: slice, *, copy: bool) -> np.ndarray | bytes | None:
        """Tile (row, col) from the slide's stored tiles: their bytes (``copy``, tile inside the level) or pixels.

        The level may be a pixel short of the canvas (the canvas rounds its size up): pixels
        past it are the slide's background, as the slide reader gives them. None: not stored.
        """
        stored = self.stored
        if stored is None or row >= stored.tiles_down or col >= stored.tiles_across:
            return None
        inside = rows.stop <= stored.shape[0] and cols.stop <= stored.shape[1]
        if copy and inside:
            data = stored.tile(row, col)
            if data is not None:
                return data
        rgb = stored.decode(row, col)
        if rgb is None:
            return None
        rgb = rgb[: rows.stop - rows.start, : cols.stop - cols.start]  # a stored edge tile is padded
        if not inside:
            rgb[stored.shape[0] - rows.start :] = self.background
            rgb[:, stored.shape[1] - cols.start :] = self.background
        return rgb


def stored_tiles_for(slide: Any, shape: tuple[int, int], downsample: float) -> StoredJpegTiles | None:
    """The slide's stored JPEG tiles for a canvas of ``shape`` at ``downsample``, when they are its pixels.

    That is when the slide level :func:`read_slide_block` reads for this downsample is
    the canvas (canvas pixel = level pixel), stored on the same 256-px tile grid. The
    level may be a pixel short of the canvas on each side: the canvas rounds the slide's
    size divided by the downsample up, a slide level (Aperio) down; it then lies less
    than a pixel from the canvas's grid everywhere.
    """
    level = slide.get_best_level_for_downsample(downsample)
    width, height = slide.level_dimensions[level]
    if not (0 <= shape[0] - height <= 1 and 0 <= shape[1] - width <= 1):
        return None
    if not math.isclose(slide.level_downsamples[level], downsample, rel_tol=0.01):
        return None
    return StoredJpegTiles.find(Path(slide.path), (height, width))


def write_blend_tiff(
    path: Path,
    slide: Any,
    scores: Any,
    *,
    options: HeatmapConfig,
    score_range: ScoreRange,
    description: str | None = None,
    cmap: str | None = None,
) -> Path:
    """A JPEG RGB pyramid of the colour map blended with the slide, one level per slide level.

    ``scores(downsample)`` gives the level's scores: a :class:`ScorePainter` with
    256-px chunks (blended tile by tile, copying the slide's own JPEG tiles where there
    is no score) or a Dask canvas with 256-px row chunks (blended chunk by chunk).
    """
    from wsi_mil.explain.export_tiff import write_pyramid_tiff

    slides = open_per_thread(slide.path, reader=slide.backend, mpp=slide.mpp)
    stored = []
    try:
        levels: list[Any] = []
        for downsample in slide.level_downsamples:
            downsample = float(round(downsample))
            level_scores = scores(downsample)
            if levels and max(level_scores.shape) < 256:
                break
            blend_options: dict[str, Any] = {
                "downsample": downsample,
                "cmap": cmap or options.cmap,
                "score_range": score_range,
                "alpha": options.alpha,
            }
            if isinstance(level_scores, ScorePainter):
                stored.append(stored_tiles_for(slide, level_scores.shape, downsample))
                background = getattr(slide, "background", (255, 255, 255))
                levels.append(
                    BlendTiles(level_scores, slides, stored=stored[-1], background=background, **blend_options)
                )
            else:
                levels.append(blended_canvas(level_scores, slides, **blend_options))
        return write_pyramid_tiff(
            path, levels, mpp=slide.mpp, kind="rgb_jpeg", description=description, threads=options.threads
        )
    finally:
        for tiles in stored:
            if tiles is not None:
                tiles.close()
        slides.close()
