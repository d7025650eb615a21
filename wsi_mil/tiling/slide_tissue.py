"""A slide's tissue mask from its pyramid: coarse to fine (:mod:`wsi_mil.tiling.refine`) when a
level of about ``tissue.coarse_mpp`` exists, else the detection thumbnail whole
(:func:`~wsi_mil.tiling.tissue.detect_tissue`)."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from wsi_mil.config import TissueConfig
from wsi_mil.errors import SlideReadError
from wsi_mil.io.base import BaseReader
from wsi_mil.io.bounded import describe_unreadable, read_level_reduced
from wsi_mil.tiling.refine import refine
from wsi_mil.tiling.thumbnail import ASSUMED_MPP, ThumbnailPlan, plan_thumbnail
from wsi_mil.tiling.tissue import detect_tissue

logger = logging.getLogger(__name__)

#: The coarse level is at most this many times coarser than the detection resolution: averaged
#: over more pixels, pale tissue (BreakHis fields at 2 -> 32 um/px) falls below what the
#: coarse pass flags as uncertain.
MAX_RATIO = 4.0


@dataclass(frozen=True)
class SlideTissue:
    """A slide's tissue mask at the detection resolution (``plan``'s shape, downsample and MPP).

    ``picture``: the whole slide for the QC image: the detection thumbnail when it was read
    whole, else the coarse level (coarse-to-fine reads only parts of the thumbnail);
    ``unreadable``: level-0 (x, y, w, h) left undecoded; ``fine_share``: share of the
    detection resolution decoded."""

    mask: np.ndarray
    plan: ThumbnailPlan
    unreadable: tuple[tuple[int, int, int, int], ...]
    picture: np.ndarray
    fine_share: float


def coarse_level(slide: BaseReader, plan: ThumbnailPlan, coarse_mpp: float) -> int | None:
    """The coarsest stored level at most ``coarse_mpp`` um/px and 2 to ``MAX_RATIO`` times as
    coarse as the detection thumbnail; None when there is none (or ``coarse_mpp`` is 0)."""
    if coarse_mpp <= 0:
        return None
    mpp = slide.mpp or ASSUMED_MPP
    found = None
    for level, downsample in enumerate(slide.level_downsamples):
        ratio = downsample / plan.downsample
        if 2 * 0.99 <= ratio <= MAX_RATIO * 1.01 and mpp * downsample <= coarse_mpp * 1.01:
            found = level
    return found


def detect_slide_tissue(slide: BaseReader, *, config: TissueConfig, max_unreadable: float = 0.0) -> SlideTissue:
    """Tissue of a slide at ``config.thumbnail_mpp``: coarse-to-fine (:func:`refine`) when the
    pyramid has a level of about ``config.coarse_mpp``, else the detection thumbnail whole."""
    plan = plan_thumbnail(slide, target_mpp=config.thumbnail_mpp, max_mpp=config.thumbnail_mpp_max)
    fine_mpp = plan.mpp or ASSUMED_MPP * plan.downsample
    level = coarse_level(slide, plan, config.coarse_mpp) if config.method in ("auto", "hsv_otsu") else None
    if level is not None:
        coarse = read_level_reduced(slide, level, 1, max_unreadable=max_unreadable)
        coarse_mpp = (slide.mpp or ASSUMED_MPP) * slide.dimensions[0] / coarse.rgb.shape[1]
        lost: list[tuple[int, int, int, int]] = []

        def read_fine(x: int, y: int, width: int, height: int) -> np.ndarray | None:
            try:
                return plan.read_region(slide, x, y, width, height)
            except SlideReadError:  # the coarse decision stays there
                scale = plan.downsample
                lost.append((int(x * scale), int(y * scale), int(width * scale), int(height * scale)))
                return None

        def read_all() -> np.ndarray:
            read = read_level_reduced(slide, plan.level, plan.factor, max_unreadable=max_unreadable)
            lost.extend(read.unreadable)
            return read.rgb

        refined = refine(
            coarse.rgb,
            coarse_mpp=coarse_mpp,
            fine_shape=plan.shape,
            fine_mpp=fine_mpp,
            read_fine=read_fine,
            config=config,
            read_all=read_all,
        )
        if refined is not None:
            if lost:
                logger.warning(
                    "%s: %s kept at the coarse level's detection", slide.path.name, describe_unreadable(lost)
                )
            unreadable = tuple(coarse.unreadable + lost)
            picture = coarse.rgb if refined.fine_rgb is None else refined.fine_rgb
            return SlideTissue(refined.mask, plan, unreadable, picture, refined.fine_share)
    whole = read_level_reduced(slide, plan.level, plan.factor, max_unreadable=max_unreadable)  # the plan's thumbnail
    mask = detect_tissue(whole.rgb, mpp=fine_mpp, config=config)
    return SlideTissue(mask, plan, tuple(whole.unreadable), whole.rgb, 1.0)
