"""Synthetic pyramidal slides written with tifffile, for tests, benchmarks and the demo.

The files are Aperio-style tiled JPEG TIFFs (``Aperio`` image description with
``MPP`` and ``AppMag``), so OpenSlide and tiffslide read them like scanner output,
with a known MPP and a known tissue layout. Tissue is an H&E-like texture (pink
stroma, purple nuclei); everything else is glass.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

GLASS = (242, 240, 244)
THUMBNAIL_SIDE = 512


@dataclass(frozen=True)
class Region:
    """A tissue region in level-0 pixels: a rectangle, or the ellipse inscribed in it."""

    x: int
    y: int
    width: int
    height: int
    shape: str = "rect"

    def mask(self, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
        """Boolean (len(ys), len(xs)) membership of level-0 sample points."""
        inside_x = (xs >= self.x) & (xs < self.x + self.width)
        inside_y = (ys >= self.y) & (ys < self.y + self.height)
        if self.shape == "rect":
            return inside_y[:, None] & inside_x[None, :]
        cx, cy = self.x + self.width / 2, self.y + self.height / 2
        dx = (xs[None, :] + 0.5 - cx) / (self.width / 2)
        dy = (ys[:, None] + 0.5 - cy) / (self.height / 2)
        return dx * dx + dy * dy <= 1.0


def tissue_texture(size: int, *, seed: int = 0) -> np.ndarray:
    """An H&E-like (size, size, 3) uint8 texture: eosin background with hematoxylin nuclei."""
    rng = np.random.default_rng(seed)
    base = np.empty((size, size, 3), dtype=np.float32)
    base[:] = (222, 150, 190)
    base += rng.normal(0, 10, (size, size, 1))
    count = max(1, size * size // 400)
    cx, cy = rng.integers(0, size, count), rng.integers(0, size, count)
    yy, xx = np.ogrid[:size, :size]
    nuclei = np.zeros((size, size), dtype=bool)
    for x, y in zip(cx, cy, strict=True):
        x0, x1, y0, y1 = max(0, x - 5), min(size, x + 6), max(0, y - 5), min(size, y + 6)
        nuclei[y0:y1, x0:x1] |= (xx[:, x0:x1] - x) ** 2 + (yy[y0:y1] - y) ** 2 <= 16
    base[nuclei] = (110, 60, 150)
    return np.clip(base, 0, 255).astype(np.uint8)


def _tiles(
    width: int, height: int, downsample: float, tile: int, regions: Sequence[Region], textures: list[np.ndarray]
) -> Iterator[np.ndarray]:
    for ty in range(0, height, tile):
        for tx in range(0, width, tile):
            out = np.empty((tile, tile, 3), dtype=np.uint8)
            out[:] = GLASS
            xs = ((np.arange(tx, tx + tile) + 0.5) * downsample).astype(np.int64)
            ys = ((np.arange(ty, ty + tile) + 0.5) * downsample).astype(np.int64)
            inside = np.zeros((tile, tile), dtype=bool)
            for region in regions:
                inside |= region.mask(xs, ys)
            if inside.any():
                texture = textures[((tx // tile) * 7 + (ty // tile) * 13) % len(textures)]
                out[inside] = texture[inside]
            yield out


def _thumbnail(width: int, height: int, regions: Sequence[Region], texture: np.ndarray) -> np.ndarray:
    downsample = max(width, height) / THUMBNAIL_SIDE
    w, h = max(1, int(width / downsample)), max(1, int(height / downsample))
    out = np.empty((h, w, 3), dtype=np.uint8)
    out[:] = GLASS
    xs = ((np.arange(w) + 0.5) * downsample).astype(np.int64)
    ys = ((np.arange(h) + 0.5) * downsample).astype(np.int64)
    for region in regions:
        out[region.mask(xs, ys)] = texture[0, 0]
    return out


def write_image_slide(
    path: str | Path,
    image: np.ndarray,
    *,
    mpp: float,
    downsamples: Sequence[int] = (1, 2, 8),
    tile: int = 256,
    quality: int = 85,
) -> Path:
    """Write an (H, W, 3) uint8 image as an Aperio-style pyramidal JPEG TIFF with ``mpp``.

    Levels are box-filtered from level 0; IFD 1 is the stripped thumbnail, as in Aperio files.
    """
    import tifffile
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    height, width = image.shape[:2]
    description = (
        f"Aperio Image Library v12.0.0 \r\n{width}x{height} ({tile}x{tile}) JPEG/RGB Q={quality}"
        f"|AppMag = {round(10.0 / mpp):g}|MPP = {mpp:.4f}"
    )
    pil = Image.fromarray(image)
    jpeg: dict[str, Any] = {
        "photometric": "rgb",
        "compression": "jpeg",
        "compressionargs": {"level": quality},
        "metadata": None,
        "subfiletype": 0,
    }
    with tifffile.TiffWriter(path, bigtiff=width * height * 3 > 2**31) as writer:
        for index, downsample in enumerate(downsamples):
            level_w, level_h = width // downsample, height // downsample
            if index > 0 and max(level_w, level_h) < tile:
                break
            level = image if downsample == 1 else np.asarray(pil.resize((level_w, level_h), Image.Resampling.BOX))
            text = description if index == 0 else f"Aperio Image Library v12.0.0 \r\n{level_w}x{level_h}"
            writer.write(level, tile=(tile, tile), description=text, **jpeg)
            if index == 0:
                scale = THUMBNAIL_SIDE / max(width, height)
                thumbnail = pil.resize(
                    (max(1, round(width * scale)), max(1, round(height * scale))), Image.Resampling.BOX
                )
                writer.write(
                    np.asarray(thumbnail),
                    description=f"Aperio Image Library v12.0.0 \r\n{width}x{height} -> thumbnail",
                    **jpeg,
                )
    return path


def write_synthetic_slide(
    path: str | Path,
    *,
    width: int,
    height: int,
    mpp: float | None = 0.25,
    regions: Sequence[Region] = (),
    downsamples: Sequence[int] = (1, 4, 16, 64),
    tile: int = 256,
    quality: int = 85,
    magnification: float | None = None,
) -> Path:
    """Write an Aperio-style pyramidal JPEG TIFF and return its path.

    ``mpp=None`` writes no MPP (and no magnification unless given), for the
    missing-MPP paths. Levels stop once a level would be smaller than one tile.
    """
    import tifffile

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    textures = [tissue_texture(tile, seed=s) for s in range(8)]
    parts = [f"Aperio Image Library v12.0.0 \r\n{width}x{height} ({tile}x{tile}) JPEG/RGB Q={quality}"]
    if magnification is None and mpp is not None:
        magnification = round(10.0 / mpp)
    if magnification is not None:
        parts.append(f"AppMag = {magnification:g}")
    if mpp is not None:
        parts.append(f"MPP = {mpp:.4f}")
    description = "|".join(parts)
    with tifffile.TiffWriter(path, bigtiff=width * height * 3 > 2**31) as writer:
        for index, downsample in enumerate(downsamples):
            level_w, level_h = width // downsample, height // downsample
            if index > 0 and max(level_w, level_h) < tile:
                break
            writer.write(
                _tiles(level_w, level_h, downsample, tile, regions, textures),
                shape=(level_h, level_w, 3),
                dtype=np.uint8,
                tile=(tile, tile),
                photometric="rgb",
                compression="jpeg",
                compressionargs={"level": quality},
                description=description if index == 0 else f"Aperio Image Library v12.0.0 \r\n{level_w}x{level_h}",
                metadata=None,
                subfiletype=0,
            )
            if index == 0:  # Aperio layout: IFD 1 is a stripped thumbnail, then the levels
                writer.write(
                    _thumbnail(width, height, regions, textures[0]),
                    photometric="rgb",
                    compression="jpeg",
                    description=f"Aperio Image Library v12.0.0 \r\n{width}x{height} -> thumbnail",
                    metadata=None,
                    subfiletype=0,
                )
    return path
