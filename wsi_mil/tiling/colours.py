"""HSV channels of a uint8 RGB thumbnail for tissue and ink detection, each computed when needed.

The values are ``skimage.color.rgb2hsv``'s, bit for bit (tests/test_tissue_colours.py),
without converting the image to float: saturation and value depend on a pixel's largest
and smallest channel only, so they come from a 256 x 256 table; hue is computed only
for the pixels that ask for it.
"""

from __future__ import annotations

import functools

import numpy as np


@functools.cache
def _saturation_tables() -> tuple[np.ndarray, np.ndarray]:
    """HSV saturation by (max, min) channel value, (256, 256): float64 and uint8 (x 255, truncated).

    The arithmetic of ``skimage.color.rgb2hsv`` on uint8 input: channels scaled by
    1/255 in float64, ``(max - min) / max``, 0 where max == min. Saturation depends on a
    pixel's largest and smallest channel only, so one gather from this table replaces
    the whole conversion (tests/test_tissue.py checks every (max, min) pair).
    """
    scaled = np.arange(256, dtype=np.float64) * (1.0 / 255)
    high, low = scaled[:, None], scaled[None, :]
    delta = high - low
    with np.errstate(divide="ignore", invalid="ignore"):
        saturation = np.where(delta > 0.0, delta / high, 0.0)
    return saturation, (np.clip(saturation, 0, 1) * 255).astype(np.uint8)


class Colours:
    """HSV channels of an (H, W, 3) uint8 RGB image, each computed when first needed.

    Values are those of ``skimage.color.rgb2hsv`` (hue in degrees, -180..180, red at 0),
    bit for bit; saturation and value come from the max and min channel without a float
    conversion of the image, hue is computed only where it is asked for.
    """

    def __init__(self, rgb: np.ndarray) -> None:
        self.planes = _planes(rgb)  # numpy reduces planes quickly
        self.high = np.maximum(np.maximum(self.planes[0], self.planes[1]), self.planes[2])
        self.low = np.minimum(np.minimum(self.planes[0], self.planes[1]), self.planes[2])
        self.shape = self.high.shape

    @functools.cached_property
    def _pair(self) -> np.ndarray:
        """(H, W) uint16: max channel x 256 + min channel, the index into the saturation tables."""
        return (self.high.astype(np.uint16) << 8) | self.low

    @functools.cached_property
    def saturation(self) -> np.ndarray:
        return np.take(_saturation_tables()[0].ravel(), self._pair)

    @functools.cached_property
    def saturation8(self) -> np.ndarray:
        """(H, W) uint8: saturation x 255, truncated."""
        return np.take(_saturation_tables()[1].ravel(), self._pair)

    @functools.cached_property
    def value(self) -> np.ndarray:
        return self.high * (1.0 / 255)

    def value_above(self, threshold: float) -> np.ndarray:
        """``value > threshold`` without a float image: the max channel against an integer bound."""
        return self.high >= int(np.count_nonzero(np.arange(256) * (1.0 / 255) <= threshold))

    def value_below(self, threshold: float) -> np.ndarray:
        return self.high < int(np.count_nonzero(np.arange(256) * (1.0 / 255) < threshold))

    def median_value(self) -> float:
        """``np.median`` of the value channel, from a histogram of the max channel."""
        counts = np.cumsum(np.bincount(self.high.ravel(), minlength=256))
        n = int(counts[-1])
        middle = [int(np.searchsorted(counts, k, side="right")) for k in {(n - 1) // 2, n // 2}]
        return float(np.mean([m * (1.0 / 255) for m in middle]))

    @functools.cached_property
    def hue(self) -> np.ndarray:
        return self.hue_where(np.ones(self.shape, dtype=bool)).reshape(self.shape)

    def hue_where(self, where: np.ndarray) -> np.ndarray:
        """Hue in degrees (-180..180) of the pixels where ``where`` is True, as a 1-D array."""
        r, g, b = (plane[where] * (1.0 / 255) for plane in self.planes)
        high, low = self.high[where] * (1.0 / 255), self.low[where] * (1.0 / 255)
        delta = high - low
        with np.errstate(divide="ignore", invalid="ignore"):  # grey pixels: set to 0 below, as rgb2hsv does
            # rgb2hsv assigns red-, green- then blue-is-max in turn: a later one wins a tie
            sector = np.where(
                b == high, 4.0 + (r - g) / delta, np.where(g == high, 2.0 + (b - r) / delta, (g - b) / delta)
            )
            hue = (sector / 6.0) % 1.0
        hue[delta == 0.0] = 0.0
        hue *= 360.0
        return np.where(hue > 180.0, hue - 360.0, hue)


def _planes(rgb: np.ndarray) -> list[np.ndarray]:
    """The three channels of an (H, W, 3) uint8 image as contiguous planes (OpenCV's split is
    about twice as quick as copying strided views)."""
    import cv2

    if rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3 and rgb.size:
        # a crop of a larger image splits as it is: OpenCV takes any row stride
        return list(cv2.split(rgb if rgb.strides[1:] == (3, 1) else np.ascontiguousarray(rgb)))
    return [np.ascontiguousarray(rgb[..., c]) for c in range(3)]


class HsvArray:
    """The :class:`Colours` interface over an (H, W, 3) float HSV array (``rgb2hsv``'s output)."""

    def __init__(self, hsv: np.ndarray) -> None:
        self.hue, self.saturation, self.value = hue_degrees(hsv), hsv[..., 1], hsv[..., 2]
        self.shape = self.value.shape

    def value_above(self, threshold: float) -> np.ndarray:
        return self.value > threshold

    def value_below(self, threshold: float) -> np.ndarray:
        return self.value < threshold

    def hue_where(self, where: np.ndarray) -> np.ndarray:
        return self.hue[where]


def hue_degrees(hsv: np.ndarray) -> np.ndarray:
    hue = hsv[..., 0] * 360.0
    return np.where(hue > 180.0, hue - 360.0, hue)  # -180..180, red around 0
