"""Bounded reads: no stage decodes more pixels than a slide can plausibly hold, or than it needs.

- :func:`check_claimed_size`: a header that claims far more pixels than the file's bytes
  could hold (a forged or truncated TIFF claiming 400,000 x 400,000 px in 7 KB) is refused
  when the slide is opened, before any pixel is read.
- :func:`read_level_reduced`: a whole pyramid level read block by block and box-reduced,
  for thumbnails. The level must hold at most ``MAX_LEVEL_READ_PIXELS`` (a single-level
  gigapixel image is refused with advice to add a pyramid, instead of being decoded for
  minutes). Blocks that cannot be decoded are retried piece by piece: undecodable pieces
  are filled with the background and reported with their level-0 positions, and the
  read fails only when they cover more than ``max_unreadable`` of the level.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from wsi_mil.errors import SlideReadError, SlideTooLargeError

if TYPE_CHECKING:
    from wsi_mil.io.base import BaseReader

logger = logging.getLogger(__name__)

#: Claimed level-0 pixels per byte of file above which a header is not believed. Real slides
#: hold 0.1-10 px per byte; mostly blank sparse pyramids a few hundred; a forged header millions.
MAX_PIXELS_PER_BYTE = 10_000
#: Formats whose pixels live in other files than the one opened: the byte count says nothing.
MULTI_FILE_SUFFIXES = frozenset({".mrxs", ".vms", ".vmu", ".dcm"})
#: Most pixels one thumbnail may decode from a single level (about 65,000 x 65,000).
MAX_LEVEL_READ_PIXELS = 2**32
#: Read blocks of at most this many pixels per side.
BLOCK = 4096
#: Undecodable blocks are retried in pieces of this side (pixels at the read level).
PIECE = 256
#: How many unreadable positions a message lists.
LISTED = 10


def check_claimed_size(path: Path, width: int, height: int) -> None:
    """Raise :class:`SlideTooLargeError` when ``width`` x ``height`` cannot come from ``path``'s bytes."""
    if path.is_dir() or path.suffix.lower() in MULTI_FILE_SUFFIXES:
        return
    size = max(1, path.stat().st_size)
    pixels = int(width) * int(height)
    if pixels > MAX_PIXELS_PER_BYTE * size:
        raise SlideTooLargeError(
            f"{path}: the header claims {width}x{height} px ({pixels / 1e9:.3g} gigapixels) but the file holds "
            f"only {size:,} bytes (more than {MAX_PIXELS_PER_BYTE:,} px per byte): the header is corrupt or forged, "
            "or the file is truncated. Re-copy or re-export the slide."
        )


@dataclass
class ReducedLevel:
    """rgb: (h, w, 3) uint8; ``unreadable``: level-0 (x, y, w, h) of pieces filled as background."""

    rgb: np.ndarray
    unreadable: list[tuple[int, int, int, int]] = field(default_factory=list)
    unreadable_fraction: float = 0.0


def describe_unreadable(rects: list[tuple[int, int, int, int]]) -> str:
    """``"3 undecodable regions at level-0 (x, y) (256, 0), ..."`` for notes and messages."""
    listed = ", ".join(f"({x}, {y})" for x, y, _, _ in rects[:LISTED])
    more = f" and {len(rects) - LISTED} more" if len(rects) > LISTED else ""
    size = f"{rects[0][2]}x{rects[0][3]}" if rects else ""
    return f"{len(rects)} undecodable region(s) of up to {size} level-0 px at level-0 (x, y) {listed}{more}"


def read_level_reduced(
    slide: BaseReader,
    level: int,
    factor: int,
    *,
    max_pixels: int = MAX_LEVEL_READ_PIXELS,
    max_unreadable: float = 0.0,
) -> ReducedLevel:
    """Read ``level`` whole, block by block, each block box-reduced by ``factor``."""
    width, height = slide.level_dimensions[level]
    if width * height > max_pixels:
        raise SlideTooLargeError(
            f"{slide.path}: a thumbnail would decode {width}x{height} px of level {level} "
            f"({width * height / 1e9:.3g} gigapixels; the limit is {max_pixels / 1e9:.3g}): the slide has no "
            "coarser pyramid level. Convert it to a pyramidal TIFF (e.g. vips tiffsave IN OUT.tif --tile "
            "--pyramid --compression jpeg) and tile that."
        )
    out_w, out_h = max(1, width // factor), max(1, height // factor)
    span_w, span_h = min(width, out_w * factor), min(height, out_h * factor)
    block = max(factor, (BLOCK // factor) * factor)
    out = np.empty((out_h, out_w, 3), dtype=np.uint8)
    bad: list[tuple[int, int, int, int]] = []
    bad_area = 0
    for y in range(0, span_h, block):
        for x in range(0, span_w, block):
            bw, bh = min(block, span_w - x), min(block, span_h - y)
            region, lost = _read_block(slide, level, x, y, bw, bh, bad)
            bad_area += lost
            if factor > 1:
                region = np.asarray(Image.fromarray(region).reduce(factor))
            out[y // factor : y // factor + region.shape[0], x // factor : x // factor + region.shape[1]] = region
    fraction = bad_area / float(span_w * span_h)
    if bad and fraction > max_unreadable:
        raise SlideReadError(
            f"{slide.path}: {fraction:.1%} of level {level} cannot be decoded ({describe_unreadable(bad)}); more "
            f"than the {max_unreadable:.1%} tolerated (tiling.max_unreadable_fraction). The file is damaged; "
            "re-copy or re-export it."
        )
    if bad:
        logger.warning("%s: %s filled as background", slide.path.name, describe_unreadable(bad))
    return ReducedLevel(out, bad, fraction)


def _read_block(
    slide: BaseReader, level: int, x: int, y: int, width: int, height: int, bad: list[tuple[int, int, int, int]]
) -> tuple[np.ndarray, int]:
    """(height, width, 3) pixels of ``level`` at level-``level`` (x, y), and the area lost to bad pieces."""
    downsample = slide.level_downsamples[level]
    try:
        return slide.read_level_region(level, (x, y), (width, height)), 0
    except SlideReadError:
        pass
    out = np.empty((height, width, 3), dtype=np.uint8)
    lost = 0
    for py in range(0, height, PIECE):
        for px in range(0, width, PIECE):
            pw, ph = min(PIECE, width - px), min(PIECE, height - py)
            location = _level0(x + px, y + py, downsample)
            try:
                out[py : py + ph, px : px + pw] = slide.read_level_region(level, (x + px, y + py), (pw, ph))
            except SlideReadError:
                out[py : py + ph, px : px + pw] = slide.background
                bad.append((*location, int(round(pw * downsample)), int(round(ph * downsample))))
                lost += pw * ph
    return out, lost


def _level0(x: int, y: int, downsample: float) -> tuple[int, int]:
    return int(round(x * downsample)), int(round(y * downsample))
