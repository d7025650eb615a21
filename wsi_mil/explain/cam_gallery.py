"""The CAM gallery of a slide: its top patches, and each method's maps over them, in one PNG."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from wsi_mil.explain.cams_file import PatchCams
from wsi_mil.store.atomic import atomic_output

GALLERY_NAME = "cam_gallery.png"


def cam_range(values: np.ndarray) -> tuple[float, float]:
    """One colour range for all of a slide's patches of one method: 1st..99th percentile."""
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return 0.0, 1.0
    low, high = np.percentile(finite, [1.0, 99.0])
    return float(low), float(high if high > low else low + 1e-12)


def write_gallery_png(path: str | Path, cams: PatchCams, *, cmap: str = "jet", alpha: float = 0.45) -> Path:
    """A grid: first row the patches, then one row per method (global range per method)."""
    from PIL import Image, ImageDraw

    from wsi_mil.explain.stitch import colormap_lut

    lut = colormap_lut(cmap)
    k, size = len(cams.images), cams.images.shape[1]
    label = 110
    sheet = Image.new("RGB", (label + k * size, (1 + len(cams.maps)) * size), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    draw.text((4, size // 2), "patch", fill=(0, 0, 0))
    for column, image in enumerate(cams.images):
        sheet.paste(Image.fromarray(image), (label + column * size, 0))
    for row, (method, values) in enumerate(cams.maps.items(), start=1):
        low, high = cam_range(values)
        drop = cams.faithfulness.get(method, {}).get("average_drop_pct")
        draw.text((4, row * size + size // 2 - 12), method, fill=(0, 0, 0))
        if drop is not None:
            draw.text((4, row * size + size // 2 + 2), f"avg drop {drop:.0f}%", fill=(0, 0, 0))
        for column, (image, cam) in enumerate(zip(cams.images, values, strict=True)):
            index = (np.clip((cam - low) / (high - low), 0, 1) * 255 + 0.5).astype(np.uint8)
            mixed = (1 - alpha) * image.astype(np.float32) + alpha * lut[index].astype(np.float32)
            sheet.paste(Image.fromarray((mixed + 0.5).astype(np.uint8)), (label + column * size, row * size))
    with atomic_output(path) as tmp:
        sheet.save(tmp, format="PNG")
    return Path(path)
