"""Read a slide at a fixed physical resolution for tissue detection, from the pyramid.

Level 0 of a large slide is never decoded whole: the coarsest level that is at
least as fine as the target is read block by block and box-reduced to the target
(a bounded read: :func:`wsi_mil.io.bounded.read_level_reduced`). A few undecodable
tiles are filled with the background and reported in ``Thumbnail.unreadable``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image

from wsi_mil.io.base import BaseReader
from wsi_mil.io.bounded import read_level_reduced

#: When a slide has no MPP, level 0 is assumed to be this fine (20x) to pick the thumbnail.
ASSUMED_MPP = 0.5


@dataclass(frozen=True)
class Thumbnail:
    """rgb: (h, w, 3) uint8; ``downsample`` level-0 px per thumbnail px; ``mpp`` or None.

    ``unreadable``: level-0 (x, y, w, h) of regions that could not be decoded (background-filled).
    """

    rgb: np.ndarray
    downsample: float
    mpp: float | None
    level: int
    unreadable: tuple[tuple[int, int, int, int], ...] = ()


@dataclass(frozen=True)
class ThumbnailPlan:
    """Where a detection thumbnail comes from: ``level`` box-reduced by ``factor`` to ``shape`` (h, w)."""

    level: int
    factor: int
    shape: tuple[int, int]
    downsample: float
    mpp: float | None

    def read_region(self, slide: BaseReader, x: int, y: int, width: int, height: int) -> np.ndarray:
        """(height, width, 3) uint8 of the thumbnail at thumbnail (x, y), read from the slide."""
        location = (x * self.factor, y * self.factor)
        size = (width * self.factor, height * self.factor)
        rgb = slide.read_level_region(self.level, location, size)
        if self.factor > 1:
            rgb = np.asarray(Image.fromarray(rgb).reduce(self.factor))
        return rgb


def plan_thumbnail(slide: BaseReader, *, target_mpp: float, max_mpp: float) -> ThumbnailPlan:
    """The level and reduction of :func:`read_detection_thumbnail`, before any pixel is read."""
    mpp = slide.mpp
    width0 = slide.dimensions[0]
    if mpp is None:
        wanted_downsample = max(1.0, target_mpp / ASSUMED_MPP)
    else:
        # A stored level already in range is used as is.
        for level in range(slide.level_count):
            level_mpp = mpp * slide.level_downsamples[level]
            if target_mpp * 0.99 <= level_mpp <= max_mpp * 1.01:
                width, height = slide.level_dimensions[level]
                return ThumbnailPlan(level, 1, (height, width), slide.level_downsamples[level], level_mpp)
        wanted_downsample = max(1.0, target_mpp / mpp)
    level = slide.get_best_level_for_downsample(wanted_downsample)
    factor = max(1, int(math.floor(wanted_downsample / slide.level_downsamples[level] + 1e-6)))
    width, height = slide.level_dimensions[level]
    shape = (max(1, height // factor), max(1, width // factor))
    # Effective downsample from the actual sizes (levels are not always exact multiples).
    downsample = width0 / shape[1]
    return ThumbnailPlan(level, factor, shape, downsample, None if mpp is None else mpp * downsample)


def read_detection_thumbnail(
    slide: BaseReader, *, target_mpp: float, max_mpp: float, max_unreadable: float = 0.0
) -> Thumbnail:
    """A thumbnail at ``target_mpp``..``max_mpp`` um/px.

    Without a slide MPP, level 0 is assumed to be ``ASSUMED_MPP`` um/px; the
    returned ``mpp`` is then None and callers use the assumption explicitly.
    ``max_unreadable``: the fraction of the read level that may be undecodable.
    """
    plan = plan_thumbnail(slide, target_mpp=target_mpp, max_mpp=max_mpp)
    read = read_level_reduced(slide, plan.level, plan.factor, max_unreadable=max_unreadable)
    return Thumbnail(read.rgb, plan.downsample, plan.mpp, plan.level, tuple(read.unreadable))
