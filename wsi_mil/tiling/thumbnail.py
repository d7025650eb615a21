"""Read a slide at a fixed physical resolution for tissue detection, from the pyramid.

Level 0 of a large slide is never decoded whole: the coarsest level that is at
least as fine as the target is read block by block and box-reduced to the target.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from wsi_mil.io.base import BaseReader

#: When a slide has no MPP, level 0 is assumed to be this fine (20x) to pick the thumbnail.
ASSUMED_MPP = 0.5
#: Read blocks of at most this many pixels per side while building a thumbnail.
BLOCK = 4096


@dataclass(frozen=True)
class Thumbnail:
    """rgb: (h, w, 3) uint8; ``downsample`` level-0 px per thumbnail px; ``mpp`` or None."""

    rgb: np.ndarray
    downsample: float
    mpp: float | None
    level: int


def _read_reduced(slide: BaseReader, level: int, factor: int) -> np.ndarray:
    """Read a whole level block by block, each block box-reduced by ``factor``."""
    width, height = slide.level_dimensions[level]
    level_downsample = slide.level_downsamples[level]
    out_w, out_h = max(1, width // factor), max(1, height // factor)
    if factor == 1:
        return slide.read_region((0, 0), level, (width, height), as_array=True)
    block = max(factor, (BLOCK // factor) * factor)
    out = np.empty((out_h, out_w, 3), dtype=np.uint8)
    for y in range(0, out_h * factor, block):
        for x in range(0, out_w * factor, block):
            bw = min(block, out_w * factor - x)
            bh = min(block, out_h * factor - y)
            region = slide.read_region(
                (int(round(x * level_downsample)), int(round(y * level_downsample))), level, (bw, bh)
            )
            reduced = region.reduce(factor)
            out[y // factor : y // factor + reduced.height, x // factor : x // factor + reduced.width] = reduced
    return out


def read_detection_thumbnail(slide: BaseReader, *, target_mpp: float, max_mpp: float) -> Thumbnail:
    """A thumbnail at ``target_mpp``..``max_mpp`` um/px.

    Without a slide MPP, level 0 is assumed to be ``ASSUMED_MPP`` um/px; the
    returned ``mpp`` is then None and callers use the assumption explicitly.
    """
    mpp = slide.mpp
    width0 = slide.dimensions[0]
    if mpp is None:
        wanted_downsample = max(1.0, target_mpp / ASSUMED_MPP)
    else:
        # A stored level already in range is used as is.
        for level in range(slide.level_count):
            level_mpp = mpp * slide.level_downsamples[level]
            if target_mpp * 0.99 <= level_mpp <= max_mpp * 1.01:
                rgb = slide.read_region((0, 0), level, slide.level_dimensions[level], as_array=True)
                return Thumbnail(rgb, slide.level_downsamples[level], level_mpp, level)
        wanted_downsample = max(1.0, target_mpp / mpp)

    level = slide.get_best_level_for_downsample(wanted_downsample)
    factor = max(1, int(math.floor(wanted_downsample / slide.level_downsamples[level] + 1e-6)))
    rgb = _read_reduced(slide, level, factor)
    # Effective downsample from the actual sizes (levels are not always exact multiples).
    downsample = width0 / rgb.shape[1] if rgb.shape[1] else 1.0
    return Thumbnail(rgb, downsample, None if mpp is None else mpp * downsample, level)

