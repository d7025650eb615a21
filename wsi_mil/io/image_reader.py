"""Plain-image backend: PNG/JPEG/BMP (Pillow) and flat TIFF (tifffile) with a virtual pyramid.

Large microscope fields (BreakHis, BACH) are not pyramidal. The image is decoded
once; coarser levels are made on demand by 2x box downsampling until the longest
side is at most ``MIN_LEVEL_SIZE``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from wsi_mil.errors import SlideTooLargeError
from wsi_mil.io.base import BaseReader, to_rgb_uint8
from wsi_mil.io.bounded import check_claimed_size

#: Stop adding virtual pyramid levels when the longest side is at most this.
MIN_LEVEL_SIZE = 512
#: Largest image decoded whole (about 32,000 x 32,000 px, 3 GiB as RGB).
MAX_DECODE_PIXELS = 2**30

TIFF_SUFFIXES = {".tif", ".tiff"}


def _check_decode_size(path: Path, width: int, height: int) -> None:
    """Before decoding a whole image: its header must be plausible and its size within ``MAX_DECODE_PIXELS``."""
    check_claimed_size(path, width, height)
    if width * height > MAX_DECODE_PIXELS:
        raise SlideTooLargeError(
            f"{path}: {width}x{height} px is too large to decode whole into memory (the plain-image reader's "
            f"limit is {MAX_DECODE_PIXELS / 1e9:.3g} gigapixels). Convert it to a tiled pyramidal TIFF (e.g. vips "
            "tiffsave IN OUT.tif --tile --pyramid), which the openslide and tiffslide readers read piece by piece."
        )


def _read_with_pillow(path: Path) -> tuple[np.ndarray, dict[str, Any]]:
    with Image.open(path) as image:
        _check_decode_size(path, *image.size)
        image.load()
        properties: dict[str, Any] = {"image.format": image.format or ""}
        dpi = image.info.get("dpi")
        if dpi:
            properties.update({"tiff.ResolutionUnit": "inch", "tiff.XResolution": dpi[0], "tiff.YResolution": dpi[1]})
        if image.mode in ("RGB", "RGBA", "L", "LA"):
            return np.asarray(image), properties
        return np.asarray(image.convert("RGBA" if "A" in image.getbands() else "RGB")), properties


def _read_with_tifffile(path: Path) -> tuple[np.ndarray, dict[str, Any]]:
    import tifffile

    with tifffile.TiffFile(path) as tif:
        page = tif.series[0].levels[0].keyframe
        _check_decode_size(path, int(page.imagewidth), int(page.imagelength))
        properties: dict[str, Any] = {"image.format": "TIFF"}
        tags = page.tags
        if "XResolution" in tags and "ResolutionUnit" in tags:
            unit = tags["ResolutionUnit"].value
            x_num, x_den = tags["XResolution"].value
            y_num, y_den = tags["YResolution" if "YResolution" in tags else "XResolution"].value
            properties.update(
                {
                    "tiff.ResolutionUnit": getattr(unit, "name", str(unit)).lower(),
                    "tiff.XResolution": x_num / x_den if x_den else 0,
                    "tiff.YResolution": y_num / y_den if y_den else 0,
                }
            )
        array = tif.series[0].levels[0].asarray()
    if array.ndim == 3 and array.shape[0] in (3, 4) and array.shape[-1] not in (3, 4):
        array = np.moveaxis(array, 0, -1)  # planar configuration
    return array, properties


class ImageReader(BaseReader):
    backend = "image"

    def __init__(self, path: str | Path, *, mpp_override: float | None = None) -> None:
        super().__init__(path, mpp_override=mpp_override)
        reader = _read_with_tifffile if self.path.suffix.lower() in TIFF_SUFFIXES else _read_with_pillow
        previous_limit = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None  # microscope fields are legitimately huge
        try:
            array, self._properties = reader(self.path)
        finally:
            Image.MAX_IMAGE_PIXELS = previous_limit
        self._levels: list[np.ndarray] = [to_rgb_uint8(array)]
        height, width = self._levels[0].shape[:2]
        dims = [(width, height)]
        while max(dims[-1]) > MIN_LEVEL_SIZE:
            dims.append((max(1, dims[-1][0] // 2), max(1, dims[-1][1] // 2)))
        self._dims = tuple(dims)

    @property
    def level_dimensions(self) -> tuple[tuple[int, int], ...]:
        return self._dims

    @property
    def level_downsamples(self) -> tuple[float, ...]:
        width = self._dims[0][0]
        return tuple(width / w for w, _ in self._dims)

    @property
    def properties(self) -> Mapping[str, Any]:
        return self._properties

    def _level(self, level: int) -> np.ndarray:
        while len(self._levels) <= level:
            previous = Image.fromarray(self._levels[-1])
            width, height = self._dims[len(self._levels)]
            self._levels.append(np.asarray(previous.resize((width, height), Image.Resampling.BOX)))
        return self._levels[level]

    def _read_rgb(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> np.ndarray:
        source = self._level(level)
        downsample = self.level_downsamples[level]
        x0 = int(round(location[0] / downsample))
        y0 = int(round(location[1] / downsample))
        width, height = size
        out = np.empty((height, width, 3), dtype=np.uint8)
        out[:] = self.background
        src_h, src_w = source.shape[:2]
        xs, ys = max(x0, 0), max(y0, 0)
        xe, ye = min(x0 + width, src_w), min(y0 + height, src_h)
        if xe > xs and ye > ys:
            out[ys - y0 : ye - y0, xs - x0 : xe - x0] = source[ys:ye, xs:xe]
        return out

    def close(self) -> None:
        self._levels = []
