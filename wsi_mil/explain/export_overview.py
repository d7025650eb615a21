"""The overview PNG: the slide thumbnail under the colour-mapped scores, with a legend.

The PNG blends the colour map over tissue only (no-data and near-neutral values show
the plain slide) and adds a legend: the map's name, the slide's predicted class and
probability, the colour scale, and a colour bar with the values of the map's range.
(QuPath GeoJSON: :mod:`wsi_mil.explain.export_geojson`.)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from wsi_mil.config import HeatmapConfig
from wsi_mil.explain.stitch import ScoreRange, colormap_lut
from wsi_mil.store.atomic import atomic_output

BAR_WIDTH = 24
BAR_MARGIN = 12
LABEL_WIDTH = 90
LINE_HEIGHT = 13
#: The legend's near-neutral band (values drawn transparent on the slide).
CLEAR_GREY = (225, 225, 225)


def blend(rgb: np.ndarray, scores: np.ndarray, *, lut: np.ndarray, score_range: ScoreRange, alpha: float) -> np.ndarray:
    """(h, w, 3) uint8 slide pixels under the colour-mapped (h, w) scores; NaN and near-neutral keep the slide."""
    valid = score_range.visible(scores)
    out = rgb.copy()
    if valid.any():
        index = (score_range.normalize(scores[valid]) * 255.0 + 0.5).astype(np.uint8)
        mixed = (1.0 - alpha) * rgb[valid].astype(np.float32) + alpha * lut[index].astype(np.float32)
        out[valid] = (mixed + 0.5).astype(np.uint8)
    return out


def _colour_bar(
    height: int, lut: np.ndarray, score_range: ScoreRange, title: str, notes: Sequence[str] = ()
) -> Image.Image:
    """A legend on white: the title and ``notes`` (prediction, scale) above a vertical bar
    (top = vmax) with value ticks; the near-neutral band, left undrawn on the slide, is grey."""
    font = ImageFont.load_default()
    lines = [title, *notes]
    text_width = max(int(ImageDraw.Draw(Image.new("RGB", (1, 1))).textlength(line, font=font)) for line in lines)
    panel = Image.new(
        "RGB", (max(BAR_MARGIN * 2 + BAR_WIDTH + LABEL_WIDTH, text_width + 2 * BAR_MARGIN), height), (255, 255, 255)
    )
    top, bottom = 16 + LINE_HEIGHT * len(lines), max(16 + LINE_HEIGHT * len(lines) + 40, height - 12)
    values = np.linspace(score_range.vmax, score_range.vmin, bottom - top)
    ramp = lut[(score_range.normalize(values) * 255.0 + 0.5).astype(np.uint8)]
    ramp[~score_range.visible(values)] = CLEAR_GREY
    bar = np.repeat(ramp[:, None, :], BAR_WIDTH, axis=1)
    panel.paste(Image.fromarray(bar), (BAR_MARGIN, top))
    draw = ImageDraw.Draw(panel)
    for row, line in enumerate(lines):
        draw.text((BAR_MARGIN, 6 + LINE_HEIGHT * row), line, fill=(0, 0, 0), font=font)
    for fraction in (0.0, 0.25, 0.5, 0.75, 1.0):
        y = int(bottom - fraction * (bottom - top - 1))
        value = score_range.vmin + fraction * (score_range.vmax - score_range.vmin)
        draw.line([(BAR_MARGIN + BAR_WIDTH, y), (BAR_MARGIN + BAR_WIDTH + 4, y)], fill=(0, 0, 0))
        draw.text((BAR_MARGIN + BAR_WIDTH + 7, y - 6), f"{value:.3g}", fill=(0, 0, 0), font=font)
    return panel


def write_overlay_png(
    path: str | Path,
    thumbnail: np.ndarray,
    scores: np.ndarray,
    *,
    cmap: str,
    score_range: ScoreRange,
    alpha: float = 0.5,
    title: str = "",
    notes: Sequence[str] = (),
) -> Path:
    """thumbnail: (h, w, 3) uint8; scores: (h, w) float on the same grid (NaN: no data).

    ``notes``: lines under the title (the slide's predicted class and probability, the scale).
    """
    lut = colormap_lut(cmap)
    image = Image.fromarray(blend(thumbnail, scores, lut=lut, score_range=score_range, alpha=alpha))
    bar = _colour_bar(max(image.height, 160 + LINE_HEIGHT * len(notes)), lut, score_range, title, notes)
    canvas = Image.new("RGB", (image.width + bar.width, max(image.height, bar.height)), (255, 255, 255))
    canvas.paste(image, (0, 0))
    canvas.paste(bar, (image.width, 0))
    path = Path(path)
    with atomic_output(path) as tmp:
        canvas.save(tmp, format="PNG")
    return path


def write_slide_png(
    path: Path,
    canvas: Callable[..., Any],
    slide: Any,
    *,
    dimensions: tuple[int, int],
    title: str,
    cmap: str,
    score_range: ScoreRange,
    options: HeatmapConfig,
    notes: Sequence[str] = (),
) -> Path:
    """The overlay PNG of one map: the slide's thumbnail (white without a slide) under the map.

    ``canvas(downsample, chunks, shape=...)`` paints the map's lazy canvas at that downsample.
    """
    width, height = dimensions
    if slide is not None:
        thumbnail = np.asarray(slide.get_thumbnail((options.thumbnail_size, options.thumbnail_size)))
    else:
        scale = options.thumbnail_size / max(width, height)
        thumbnail = np.full((max(1, int(height * scale)), max(1, int(width * scale)), 3), 255, dtype=np.uint8)
    rows, cols = thumbnail.shape[:2]
    downsample = max(width / cols, height / rows)
    scores = canvas(downsample, (rows, cols), shape=(rows, cols)).compute(scheduler="threads")
    return write_overlay_png(
        path,
        thumbnail,
        scores,
        cmap=cmap,
        score_range=score_range,
        alpha=options.alpha,
        title=title,
        notes=[n for n in notes if n],
    )
