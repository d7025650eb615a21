"""Coarse-to-fine tissue detection: the whole slide at a coarse pyramid level, the detection
resolution only where the coarse mask could be wrong.

Detecting a slide at ``tissue.thumbnail_mpp`` (8 um/px) decodes and filters 16 times the
pixels of a 32 um/px level (where CLAM segments). Most of a slide is plainly glass or plainly
tissue at 32 um/px; the finer level decides where the mask's edge runs and what faint or
thin tissue is kept. So:

1. :func:`~wsi_mil.tiling.tissue.detect` on the coarse level (a stored level of about
   ``tissue.coarse_mpp``, read as is): its mask, Otsu threshold and ink strokes;
2. uncertain coarse pixels: the mask's edge (one pixel either side), holes in the mask (pale
   tissue averages to glass there), pixels outside the mask whose saturation reaches half of
   ``faint_saturation`` (half a coarse pixel of faint tissue) in areas that touch the mask or
   are large, and one more pixel around those;
3. the fine level is read only in blocks of ``BLOCK_ROWS`` x ``BLOCK_COLS`` fine pixels that hold uncertain pixels
   (neighbouring blocks of a row read at once, with a margin); there each pixel is classified
   as :func:`~wsi_mil.tiling.tissue.detect_tissue` classifies it: median-filtered saturation
   above the coarse Otsu threshold, or faint and joined to such pixels or to the coarse
   mask's certain part (hysteresis); not near-black; not ink (the coarse strokes, and ink
   colours within a coarse pixel of them, with ``pen_margin_um``) or the faint edge of a stroke
   found at the coarse level; then the same closing;
4. the mask at the fine resolution: the coarse mask upsampled, with step 3's pixels where
   the coarse pixel was uncertain.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from wsi_mil.config import TissueConfig
from wsi_mil.tiling.colours import Colours
from wsi_mil.tiling.mask_ops import (
    closing_disk,
    edge_labels,
    fill_small_holes,
    histogram_uint8,
    joined_components,
    label_components,
    median_uint8,
    otsu_counts,
    remove_small_objects,
    resize_nearest,
)
from wsi_mil.tiling.tissue import Detection, detect, pen_mask

logger = logging.getLogger(__name__)

#: Height and width of a refinement block, in fine pixels. Narrow, to follow a mask edge that
#: runs down the slide; tall, so that the rows read around a block for its filters (``_MARGIN``)
#: and for judging small objects and holes (``_context_width``, about 30 px) are few per row
#: refined, and fewer regions pay numpy's and OpenCV's fixed cost per call: against 48 x 48,
#: 10-20% less tiling CPU on 20k and 40k px slides of varied layouts, the same patches.
BLOCK_ROWS, BLOCK_COLS = 128, 32
#: The context around a refined region for small objects and holes, at most (fine pixels).
MAX_CONTEXT = 48
#: A fine pixel's classification looks this far around it (median windows, closing).
_MARGIN = 4
#: A pixel read in blocks costs about this many read whole (OpenSlide at a level whose
#: downsample is not an integer resamples every region read off the origin); above
#: 1 / PARTIAL_READ_COST of the blocks the fine image is read whole.
PARTIAL_READ_COST = 3.0
#: Coarse pixels outside the mask are uncertain from this share of ``faint_saturation`` up.
_POSSIBLE_SHARE = 0.5

#: Near a stroke, a fine pixel this dark (HSV value) is ink over tissue (blue, green, black).
_INK_DARK = 0.25

#: (x, y, width, height) in fine pixels -> (height, width, 3) uint8 of the fine image, or None
#: where it cannot be read (the coarse decision stays there).
FineReader = Callable[[int, int, int, int], "np.ndarray | None"]


@dataclass(frozen=True)
class Refined:
    """``mask``: (h, w) bool at the fine resolution; ``fine_share``: share of the fine image read;
    ``coarse``: the coarse level's detection; ``fine_rgb``: the fine image when it was read whole."""

    mask: np.ndarray
    fine_share: float
    coarse: Detection
    fine_rgb: np.ndarray | None = None


def coarse_config(config: TissueConfig, *, coarse_mpp: float, fine_mpp: float) -> TissueConfig:
    """The detection settings for the coarse level: the median window (in pixels) scaled to it,
    at least 3 pixels; everything else is physical (um, um^2) and unchanged."""
    window = int(round(config.median_size * fine_mpp / coarse_mpp))
    return dataclasses.replace(config, median_size=max(3, window | 1))


def _dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    import cv2

    if radius <= 0:
        return mask
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
    return cv2.dilate(np.ascontiguousarray(mask).view(np.uint8), kernel).view(bool)


def uncertain_pixels(
    coarse_rgb: np.ndarray, detection: Detection, config: TissueConfig, *, coarse_mpp: float
) -> np.ndarray:
    """Coarse pixels whose fine pixels may be classified otherwise than the coarse mask says."""
    import cv2

    mask = np.ascontiguousarray(detection.mask).view(np.uint8)
    square = np.ones((3, 3), dtype=np.uint8)
    edge = cv2.dilate(mask, square) != cv2.erode(mask, square)
    floor = int(255 * config.faint_saturation * _POSSIBLE_SHARE)
    possible = (Colours(coarse_rgb).saturation8 > floor) & ~detection.mask
    # Glass noise makes specks of a few pixels; faint tissue joins the mask or spreads wider.
    labels, areas = label_components(possible, 8)
    keep = areas * (coarse_mpp * coarse_mpp) >= config.min_object_um2 * _POSSIBLE_SHARE**2
    keep[labels[possible & (cv2.dilate(mask, square) > 0)]] = True
    keep[0] = False
    return _dilate(edge | keep[labels] | _enclosed(~detection.mask), 1)


def _enclosed(background: np.ndarray) -> np.ndarray:
    """Background areas that do not reach the image's border: holes in the tissue, where pale
    tissue (fat, loose stroma) averages to glass at the coarse level."""
    labels, areas = label_components(background, 4)
    inner = np.ones(len(areas), dtype=bool)
    inner[edge_labels(labels)] = False
    inner[0] = False
    return inner[labels]


def _blocks(uncertain: np.ndarray, fine_shape: tuple[int, int]) -> np.ndarray:
    """(rows, cols) bool: fine blocks (``BLOCK_ROWS`` x ``BLOCK_COLS`` px) that hold part of an uncertain coarse pixel."""
    height, width = fine_shape
    coarse_h, coarse_w = uncertain.shape
    out = np.zeros((-(-height // BLOCK_ROWS), -(-width // BLOCK_COLS)), dtype=bool)
    ys, xs = np.nonzero(uncertain)
    if len(ys) == 0:
        return out
    # coarse pixel c covers fine pixels floor(c * fine / coarse) .. floor((c + 1) * fine / coarse) - 1
    x0, x1 = (xs * width) // coarse_w, np.maximum((xs + 1) * width // coarse_w - 1, (xs * width) // coarse_w)
    y0, y1 = (ys * height) // coarse_h, np.maximum((ys + 1) * height // coarse_h - 1, (ys * height) // coarse_h)
    for by in (y0 // BLOCK_ROWS, np.minimum(y1, height - 1) // BLOCK_ROWS):
        for bx in (x0 // BLOCK_COLS, np.minimum(x1, width - 1) // BLOCK_COLS):
            out[by, bx] = True
    return out


def _runs(row: np.ndarray) -> list[tuple[int, int]]:
    """[start, stop) of the runs of True in a 1-D bool array."""
    padded = np.concatenate([[False], row, [False]]).astype(np.int8)
    edges = np.flatnonzero(np.diff(padded))
    return list(zip(edges[::2].tolist(), edges[1::2].tolist(), strict=True))


@dataclass(frozen=True)
class _Context:
    """The coarse decisions at the fine resolution, for classifying fine pixels."""

    sure: np.ndarray  #: coarse tissue, not uncertain
    ink: np.ndarray | None  #: coarse ink strokes less their outer coarse pixel
    ink_edge: np.ndarray | None  #: a coarse pixel either side of a stroke's edge: ink where ink-coloured
    near_ink: np.ndarray | None  #: within ``pen_halo_um`` of a stroke
    threshold: float
    everywhere: bool


@dataclass
class _Run:
    """A read region of the fine image: where it lies, its colours and median-filtered saturation."""

    box: tuple[slice, slice]
    colours: Colours
    score8: np.ndarray


def _read_run(rgb: np.ndarray, box: tuple[slice, slice], config: TissueConfig) -> _Run:
    colours = Colours(rgb)
    return _Run(box, colours, median_uint8(colours.saturation8, max(1, config.median_size | 1)))


def _classify(run: _Run, context: _Context, config: TissueConfig, mpp: float) -> np.ndarray:
    """Tissue at the fine resolution in ``run``, as :func:`~wsi_mil.tiling.tissue.detect`
    decides it up to the closing (:func:`_clean` does the rest). Faint areas that reach the
    region's edge are kept: they may join tissue outside it."""
    colours, box = run.colours, run.box
    saturation8 = colours.saturation8
    low = config.saturation_range[0]
    strong = run.score8 > 255 * (low if context.everywhere else context.threshold)
    strong &= colours.value_above(config.black_value)
    candidates = strong
    if not context.everywhere and config.faint_saturation > 0:
        faint = median_uint8(saturation8, 3) > 255 * config.faint_saturation
        if context.near_ink is not None:
            faint &= ~context.near_ink[box]
        candidates = strong | faint
    if context.ink is not None and context.ink_edge is not None:
        inky = pen_mask(colours, black_value=config.black_value) | colours.value_below(_INK_DARK)
        ink = context.ink[box] | context.ink_edge[box] & inky
        margin = int(round(config.pen_margin_um / mpp))
        ink = _dilate(ink, margin) if margin > 0 and ink.any() else ink
        strong &= ~ink
        candidates &= ~ink
    sure = context.sure[box]
    tissue = candidates | sure
    if candidates is not strong:  # hysteresis: faint areas joined to stain, to the coarse mask or to the edge
        tissue = joined_components(tissue, strong | sure, keep_edges=True)
    radius = int(round(config.closing_radius_um / mpp))
    if radius > 0:
        tissue = closing_disk(tissue, radius)
    return tissue


def _clean(mask: np.ndarray, window: tuple[slice, slice], config: TissueConfig, mpp: float) -> np.ndarray:
    """``mask[window]`` with small objects removed and small holes filled, as in
    :func:`~wsi_mil.tiling.tissue.detect`, for those wholly inside the window (what reaches its
    edge may go on outside it: kept as it is)."""
    pixel_area = mpp * mpp
    tissue = remove_small_objects(mask[window], int(config.min_object_um2 / pixel_area), keep_edges=True)
    return fill_small_holes(tissue, int(config.max_hole_um2 / pixel_area))


def _context_width(config: TissueConfig, mpp: float) -> int:
    """Fine pixels around a refined region that decide whether a hole or object in it is small:
    the diameter of a disc of ``max_hole_um2`` (or ``min_object_um2``), at most ``MAX_CONTEXT``."""
    area = max(config.max_hole_um2, config.min_object_um2) / (mpp * mpp)
    return min(MAX_CONTEXT, int(np.ceil(2 * np.sqrt(area / np.pi))) + 2)


def refine(
    coarse_rgb: np.ndarray,
    *,
    coarse_mpp: float,
    fine_shape: tuple[int, int],
    fine_mpp: float,
    read_fine: FineReader,
    config: TissueConfig,
    read_all: Callable[[], np.ndarray] | None = None,
) -> Refined | None:
    """Coarse-to-fine detection (module docstring); None when the coarse level is not detected
    by saturation (fluorescence, ``gray_otsu``): the caller then detects the fine image whole."""
    import cv2

    coarse = detect(coarse_rgb, mpp=coarse_mpp, config=coarse_config(config, coarse_mpp=coarse_mpp, fine_mpp=fine_mpp))
    if coarse.method != "hsv_otsu":
        return None
    uncertain = uncertain_pixels(coarse_rgb, coarse, config, coarse_mpp=coarse_mpp)
    mask = resize_nearest(coarse.mask, fine_shape)
    blocks = _blocks(uncertain, fine_shape)
    if not blocks.any():
        return Refined(mask, 0.0, coarse, None)
    uncertain_fine = resize_nearest(uncertain, fine_shape)
    ink = ink_edge = near_ink = None
    if coarse.ink is not None and coarse.ink.any():
        halo = int(np.ceil(config.pen_halo_um / coarse_mpp))
        core = cv2.erode(coarse.ink.view(np.uint8), np.ones((3, 3), dtype=np.uint8)).view(bool)
        ink = resize_nearest(core, fine_shape)
        ink_edge = resize_nearest(_dilate(coarse.ink, 1), fine_shape) & ~ink
        near_ink = resize_nearest(_dilate(coarse.ink, halo), fine_shape)
    context = _Context(mask & ~uncertain_fine, ink, ink_edge, near_ink, coarse.threshold, coarse.everywhere)
    height, width = fine_shape
    whole = None
    if read_all is not None and blocks.mean() * PARTIAL_READ_COST >= 1.0:  # one read of the whole is cheaper
        whole = read_all()
        read_fine = lambda x, y, w, h: whole[y : y + h, x : x + w]  # noqa: E731
    runs = []
    for block_row in range(blocks.shape[0]):
        y0, y1 = block_row * BLOCK_ROWS, min(height, (block_row + 1) * BLOCK_ROWS)
        for start, stop in _runs(blocks[block_row]):
            x0, x1 = start * BLOCK_COLS, min(width, stop * BLOCK_COLS)
            ry0, ry1 = max(0, y0 - _MARGIN), min(height, y1 + _MARGIN)
            rx0, rx1 = max(0, x0 - _MARGIN), min(width, x1 + _MARGIN)
            rgb = read_fine(rx0, ry0, rx1 - rx0, ry1 - ry0)
            if rgb is not None:
                runs.append((y0, y1, x0, x1, _read_run(rgb, (slice(ry0, ry1), slice(rx0, rx1)), config)))
    if not runs:
        return Refined(mask, 0.0, coarse, whole)
    # The coarse level's Otsu threshold, or the one of the fine pixels read where it is lower
    # (averaging over coarse pixels blurs stain into glass): a pixel is never dropped for
    # the coarse level's sake.
    counts = np.sum([histogram_uint8(run.score8) for *_, run in runs], axis=0)
    low, high = config.saturation_range
    fine_threshold = float(np.clip(otsu_counts(counts) / 255, low, high))
    context = dataclasses.replace(context, threshold=min(context.threshold, fine_threshold))
    read = 0
    for y0, y1, x0, x1, run in runs:
        read += run.score8.size
        tissue = _classify(run, context, config, fine_mpp)
        top, left = run.box[0].start, run.box[1].start
        inner = tissue[y0 - top : y1 - top, x0 - left : x1 - left]
        where = uncertain_fine[y0:y1, x0:x1]
        mask[y0:y1, x0:x1][where] = inner[where]
    # Small objects and holes once every run is refined, each run with the mask around it
    pad = _context_width(config, fine_mpp)
    for y0, y1, x0, x1, _ in runs:
        wy0, wx0 = max(0, y0 - pad), max(0, x0 - pad)
        window = (slice(wy0, min(height, y1 + pad)), slice(wx0, min(width, x1 + pad)))
        cleaned = _clean(mask, window, config, fine_mpp)
        mask[y0:y1, x0:x1] = cleaned[y0 - wy0 : y1 - wy0, x0 - wx0 : x1 - wx0]
    return Refined(mask, read / float(height * width), coarse, whole)
