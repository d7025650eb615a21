"""Small overviews: a PNG of the slide thumbnail under the colour-mapped scores, and GeoJSON patches.

The PNG blends the colour map over tissue only (no-data shows the plain slide) and
adds a colour bar with the global score range. The GeoJSON is a FeatureCollection of
patch squares in level-0 pixels, one Feature per patch with every map as a
measurement, in the form QuPath's ``File > Import objects`` reads
(``properties.objectType`` and a ``measurements`` name -> value mapping).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from wsi_mil.explain.stitch import ScoreRange, colormap_lut
from wsi_mil.store.atomic import atomic_output

BAR_WIDTH = 24
BAR_MARGIN = 12
LABEL_WIDTH = 90


def blend(rgb: np.ndarray, scores: np.ndarray, *, lut: np.ndarray, score_range: ScoreRange, alpha: float) -> np.ndarray:
    """(h, w, 3) uint8 slide pixels under the colour-mapped (h, w) scores; NaN keeps the slide."""
    valid = np.isfinite(scores)
    out = rgb.copy()
    if valid.any():
        index = (score_range.normalize(scores[valid]) * 255.0 + 0.5).astype(np.uint8)
        mixed = (1.0 - alpha) * rgb[valid].astype(np.float32) + alpha * lut[index].astype(np.float32)
        out[valid] = (mixed + 0.5).astype(np.uint8)
    return out


def _colour_bar(height: int, lut: np.ndarray, score_range: ScoreRange, title: str) -> Image.Image:
    """A vertical bar (top = vmax) with tick labels, on white."""
    panel = Image.new("RGB", (BAR_MARGIN * 2 + BAR_WIDTH + LABEL_WIDTH, height), (255, 255, 255))
    top, bottom = 28, max(40, height - 12)
    ramp = lut[np.linspace(255, 0, bottom - top).astype(np.uint8)]
    bar = np.repeat(ramp[:, None, :], BAR_WIDTH, axis=1)
    panel.paste(Image.fromarray(bar), (BAR_MARGIN, top))
    draw = ImageDraw.Draw(panel)
    font = ImageFont.load_default()
    draw.text((BAR_MARGIN, 6), title[:18], fill=(0, 0, 0), font=font)
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
) -> Path:
    """thumbnail: (h, w, 3) uint8; scores: (h, w) float on the same grid (NaN: no data)."""
    lut = colormap_lut(cmap)
    image = Image.fromarray(blend(thumbnail, scores, lut=lut, score_range=score_range, alpha=alpha))
    bar = _colour_bar(max(image.height, 160), lut, score_range, title)
    canvas = Image.new("RGB", (image.width + bar.width, max(image.height, bar.height)), (255, 255, 255))
    canvas.paste(image, (0, 0))
    canvas.paste(bar, (image.width, 0))
    path = Path(path)
    with atomic_output(path) as tmp:
        canvas.save(tmp, format="PNG")
    return path


def _number(value: float) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


def write_patch_geojson(
    path: str | Path,
    coords: np.ndarray,
    measurements: Mapping[str, np.ndarray],
    *,
    patch_size_level0: float,
    object_type: str = "tile",
) -> Path:
    """coords: (N, 2) level-0 (x, y); measurements: name -> (N,) values (NaN written as null)."""
    coords = np.asarray(coords, dtype=np.int64).reshape(-1, 2)
    size = float(patch_size_level0)
    names = list(measurements)
    columns = [np.asarray(measurements[name], dtype=np.float64).reshape(-1) for name in names]
    features = []
    for i, (x, y) in enumerate(coords.tolist()):
        x1, y1 = x + size, y + size
        features.append(
            {
                "type": "Feature",
                "geometry": {"type": "Polygon", "coordinates": [[[x, y], [x1, y], [x1, y1], [x, y1], [x, y]]]},
                "properties": {
                    "objectType": object_type,
                    "name": f"patch {i}",
                    "measurements": {name: _number(column[i]) for name, column in zip(names, columns, strict=True)},
                },
            }
        )
    path = Path(path)
    with atomic_output(path) as tmp:
        tmp.write_text(json.dumps({"type": "FeatureCollection", "features": features}, allow_nan=False))
    return path
