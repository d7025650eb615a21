"""Lazy RGB canvases of the colour-mapped scores blended over the slide's own pixels.

Each chunk reads only its slide region (from the finest pyramid level not finer than
the canvas, resized when the level does not match), so a level-0 blend of a huge slide
is produced chunk by chunk like the score canvas. Slide handles are opened once per
thread.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from wsi_mil.explain.export_overview import blend
from wsi_mil.explain.stitch import ScoreRange, colormap_lut


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

    def block_rgb(scores: np.ndarray, block_info: dict | None = None) -> np.ndarray:
        (r0, r1), (c0, c1) = block_info[0]["array-location"]
        rgb = read_slide_block(slides.get(), slice(r0, r1), slice(c0, c1), downsample)
        return blend(rgb, scores, lut=lut, score_range=score_range, alpha=alpha)

    return canvas.map_blocks(
        block_rgb, new_axis=2, chunks=(*canvas.chunks, (3,)), dtype=np.uint8, meta=np.empty((0, 0, 0), dtype=np.uint8)
    )


def open_per_thread(path: str | Path, *, reader: str = "auto", mpp: float | None = None) -> _SlidePerThread:
    """A per-thread slide opener for :func:`blended_canvas`; call ``close()`` when done."""
    return _SlidePerThread(Path(path), reader, mpp)
