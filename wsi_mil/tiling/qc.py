"""QC image: the detection thumbnail with the tissue contour and the patch grid drawn on it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from wsi_mil.store.atomic import atomic_output

CONTOUR_COLOR = (0, 200, 0)
GRID_COLOR = (30, 80, 255)
QC_MIN_SIDE = 1024


def render_qc(
    rgb: np.ndarray, mask: np.ndarray, coords: np.ndarray, patch_size_level0: int, downsample: float
) -> Image.Image:
    """rgb (h, w, 3) uint8 thumbnail; mask (h, w) bool; coords (N, 2) level-0 patch corners.

    Small thumbnails are enlarged (nearest neighbour) to about ``QC_MIN_SIDE`` pixels
    so that the grid stays legible.
    """
    from skimage.segmentation import find_boundaries

    scale = max(1, QC_MIN_SIDE // max(1, max(rgb.shape[:2])))
    if scale > 1:
        rgb = np.repeat(np.repeat(rgb, scale, axis=0), scale, axis=1)
        mask = np.repeat(np.repeat(mask, scale, axis=0), scale, axis=1)
        downsample = downsample / scale
    canvas = rgb.copy()
    edge = find_boundaries(mask, mode="inner")
    edge |= np.roll(edge, 1, axis=0) | np.roll(edge, 1, axis=1)  # 2 px, visible when reduced
    canvas[edge] = CONTOUR_COLOR
    image = Image.fromarray(canvas)
    draw = ImageDraw.Draw(image)
    side = patch_size_level0 / downsample
    for x, y in np.asarray(coords, dtype=np.float64) / downsample:
        draw.rectangle([x, y, x + side - 1, y + side - 1], outline=GRID_COLOR)
    return image


def save_qc(image: Image.Image, path: str | Path) -> Path:
    path = Path(path)
    with atomic_output(path) as tmp:
        image.save(tmp, format="PNG")
    return path
