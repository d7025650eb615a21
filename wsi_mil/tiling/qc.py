"""QC image: a picture of the slide with the tissue contour and the patch grid drawn on it.

The picture is the detection thumbnail when tiling read it whole, else the coarse level it
detected on (coarse-to-fine reads only parts of the thumbnail; reading it again for the
picture alone cost more than the detection), at most 2048 px on the longer side (small
slides enlarged toward 1024 px)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from wsi_mil.store.atomic import atomic_output
from wsi_mil.tiling.mask_ops import resize_nearest

CONTOUR_COLOR = (0, 200, 0)
GRID_COLOR = (30, 80, 255)
#: The QC picture's longer side: small thumbnails are enlarged to at least QC_MIN_SIDE so that
#: the grid stays legible, large ones reduced to at most QC_MAX_SIDE (a 19-Mpx PNG of an
#: 80,000-px slide took longer to encode than the slide took to tile).
QC_MIN_SIDE = 1024
QC_MAX_SIDE = 2048


def qc_shape(mask_shape: tuple[int, int]) -> tuple[int, int]:
    """(h, w) of the QC picture of a mask of ``mask_shape``: the same aspect, the longer side
    enlarged by a whole factor up to about QC_MIN_SIDE or reduced to QC_MAX_SIDE."""
    height, width = mask_shape
    longest = max(1, height, width)
    scale = QC_MAX_SIDE / longest if longest > QC_MAX_SIDE else float(max(1, QC_MIN_SIDE // longest))
    return max(1, round(height * scale)), max(1, round(width * scale))


def _resized(rgb: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """``rgb`` at ``shape`` (h, w): area-averaged when smaller, bilinear when larger."""
    import cv2

    if rgb.shape[:2] == shape:
        return rgb
    shrinking = shape[0] * shape[1] < rgb.shape[0] * rgb.shape[1]
    method = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    return cv2.resize(np.ascontiguousarray(rgb), (shape[1], shape[0]), interpolation=method)


def render_qc(
    rgb: np.ndarray, mask: np.ndarray, coords: np.ndarray, patch_size_level0: int, downsample: float
) -> Image.Image:
    """The QC picture: ``rgb`` (h, w, 3) uint8, a picture of the whole slide at any
    resolution (the detection thumbnail, or a coarser level when only part of the
    thumbnail was read); ``mask`` (H, W) bool, the tissue mask at ``downsample`` (level-0
    pixels per mask pixel); coords (N, 2) level-0 patch corners. Drawn at :func:`qc_shape`
    of the mask: the tissue contour (2 px) and the patch grid.
    """
    import cv2

    shape = qc_shape(mask.shape[:2])
    downsample = downsample * mask.shape[1] / shape[1]
    canvas = _resized(rgb, shape).copy()
    inside = resize_nearest(mask, shape).view(np.uint8)
    cross = cv2.getStructuringElement(cv2.MORPH_CROSS, (3, 3))
    edge = (inside > 0) & (cv2.erode(inside, cross) == 0)  # skimage's find_boundaries(mode="inner")
    edge |= np.roll(edge, 1, axis=0) | np.roll(edge, 1, axis=1)  # 2 px, visible when reduced
    canvas[edge] = CONTOUR_COLOR
    image = Image.fromarray(canvas)
    draw = ImageDraw.Draw(image)
    side = patch_size_level0 / downsample
    for x, y in np.asarray(coords, dtype=np.float64) / downsample:
        draw.rectangle([x, y, x + side - 1, y + side - 1], outline=GRID_COLOR)
    return image


def save_qc(image: Image.Image, path: str | Path) -> Path:
    """The picture as PNG at zlib level 1 (a third of the default level's time for a 10-20%
    larger file), every row with PNG's "up" filter: Pillow and libpng's default choose a filter
    per row by trying them all, 40% of the encoding for a 1% smaller file on a slide picture."""
    import cv2

    path = Path(path)
    with atomic_output(path) as tmp:
        if hasattr(cv2, "IMWRITE_PNG_FILTER"):  # older OpenCV builds cannot choose the filter
            bgr = cv2.cvtColor(np.asarray(image.convert("RGB")), cv2.COLOR_RGB2BGR)
            options = [cv2.IMWRITE_PNG_COMPRESSION, 1, cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_UP]
            ok, encoded = cv2.imencode(".png", bgr, options)
            if not ok:
                raise OSError(f"{path}: OpenCV could not encode the QC picture as PNG")
            tmp.write_bytes(encoded.tobytes())
        else:
            image.save(tmp, format="PNG", compress_level=1)
    return path
