"""Tissue detection on a low-resolution thumbnail, with scikit-image.

The thumbnail has a known physical resolution (``mpp``), so morphology sizes are
given in micrometres and mean the same thing on every slide. Steps:

1. a per-pixel score: HSV saturation (``hsv_otsu``; stain is coloured, glass
   is not), inverted grey level (``gray_otsu``) or brightness (``fluorescence``,
   dark background); ``auto`` (the default) picks fluorescence when most of the
   thumbnail is near black and ``hsv_otsu`` otherwise;
2. median filter, then an Otsu threshold clipped to a configured range, so an
   empty or a tissue-only thumbnail does not get an arbitrary split;
3. near-black pixels (scanner borders, out-of-slide areas) and, optionally, pen
   ink (red, green, blue marker) are removed;
4. morphological closing, removal of objects smaller than ``min_object_um2``,
   filling of holes smaller than ``max_hole_um2``.
"""

from __future__ import annotations

import numpy as np

from wsi_mil.config import TissueConfig


def _odd(n: int) -> int:
    return max(1, n | 1)


def _rgb2hsv(rgb: np.ndarray) -> np.ndarray:
    """``skimage.color.rgb2hsv``, bit-identical, about 2x faster.

    rgb2hsv takes the max and the peak-to-peak over the channel axis; numpy
    reduces a contiguous axis of length 3 slowly, but channels stored as three
    planes quickly (elementwise). Max and min are exact and every other step is
    elementwise, so the values do not change. The result is an (H, W, 3) view
    on planar storage: each channel, ``hsv[..., c]``, is contiguous as well.
    """
    from skimage import color

    planar = np.ascontiguousarray(np.moveaxis(rgb, -1, 0))
    return color.rgb2hsv(np.moveaxis(planar, 0, -1))


def _median(image: np.ndarray, size: int) -> np.ndarray:
    """Median over a ``size`` x ``size`` window (odd), edges repeated; uint8 in and out.

    Same output as ``skimage.filters.median(image, footprint=np.ones((size, size)))``
    (scipy's 'nearest' mode), about 3x faster: skimage's histogram-based rank
    median on an edge-padded copy, so that every window is full, then cropped.
    """
    from skimage.filters import rank

    pad = size // 2
    padded = np.pad(image, pad, mode="edge")
    filtered = rank.median(padded, footprint=np.ones((size, size), dtype=bool))
    return filtered[pad : pad + image.shape[0], pad : pad + image.shape[1]]


def _hue_degrees(hsv: np.ndarray) -> np.ndarray:
    hue = hsv[..., 0] * 360.0
    return np.where(hue > 180.0, hue - 360.0, hue)  # -180..180, red around 0


def pen_mask(hsv: np.ndarray) -> np.ndarray:
    """Marker ink cores: (H, W, 3) float HSV in 0-1 -> (H, W) bool.

    Green and blue ink have hues no H&E stain has. Red ink is redder (hue -20..10
    degrees) and more saturated than eosin (-45..-15, saturation below ~0.55), and
    its heavy strokes are a dark red-black that neither stain reaches.
    """
    hue, sat, val = _hue_degrees(hsv), hsv[..., 1], hsv[..., 2]
    green = (hue >= 90) & (hue < 190) & (sat > 0.2) & (val > 0.15)
    blue = ((hue >= 190) | (hue < -115)) & (sat > 0.45) & (val > 0.15)
    bright_red = (hue >= -20) & (hue < 10) & (sat > 0.55) & (val > 0.3)
    dark_red = (hue >= -45) & (hue < 10) & (sat > 0.35) & (val <= 0.45)
    return green | blue | bright_red | dark_red


def _ink_halo(hsv: np.ndarray) -> np.ndarray:
    """Pixels with an ink hue but faint: the blurred edge of a stroke, not ink by itself."""
    hue, sat = _hue_degrees(hsv), hsv[..., 1]
    green = (hue >= 90) & (hue < 190)
    blue = (hue >= 190) | (hue < -115)
    red = (hue >= -15) & (hue < 15)
    return (green | blue | red) & (sat > 0.1)


def detect_pen(hsv: np.ndarray, *, mpp: float, config: TissueConfig) -> np.ndarray:
    """Marker strokes with their blurred edges.

    Ink cores large enough to be strokes, plus faint ink-coloured pixels within
    ``pen_halo_um`` of a core (the blur of a stroke), plus a ``pen_margin_um`` margin.
    """
    from scipy import ndimage
    from skimage import morphology

    cores = morphology.opening(pen_mask(hsv), morphology.disk(1))
    # Ink strokes are large blobs; red blood cells and dense eosin give specks.
    cores = morphology.remove_small_objects(cores, max_size=int(config.min_pen_um2 / (mpp * mpp)))
    if not cores.any():
        return cores
    near = ndimage.distance_transform_edt(~cores) * mpp <= config.pen_halo_um
    ink = cores | (near & _ink_halo(hsv))
    radius = int(round(config.pen_margin_um / mpp))
    if radius > 0:
        ink = morphology.dilation(ink, morphology.disk(radius, decomposition="sequence"))
    return ink


def is_dark_background(hsv: np.ndarray) -> bool:
    """Fluorescence slides: most of the field is near black, not near white."""
    return float(np.median(hsv[..., 2])) < 0.3


def _fill_small_holes(mask: np.ndarray, max_pixels: int) -> np.ndarray:
    """Fill background components of at most ``max_pixels`` that do not touch the border."""
    from skimage import measure

    labels = measure.label(~mask, connectivity=1)
    if labels.max() == 0:
        return mask
    sizes = np.bincount(labels.ravel())
    border = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    fill = sizes <= max_pixels
    fill[0] = False
    fill[border] = False
    return mask | fill[labels]


def detect_tissue(rgb: np.ndarray, *, mpp: float, config: TissueConfig | None = None) -> np.ndarray:
    """Tissue mask of a thumbnail.

    rgb: (H, W, 3) uint8 at ``mpp`` um/px. Returns (H, W) bool.
    """
    from skimage import color, filters, morphology

    config = config or TissueConfig()
    methods = TissueConfig.CHOICES["method"]
    if config.method not in methods:
        raise ValueError(f"unknown tissue method {config.method!r}; choose one of {methods}")
    if rgb.size == 0:
        return np.zeros(rgb.shape[:2], dtype=bool)

    hsv = _rgb2hsv(rgb)
    method = config.method
    if method == "auto":
        method = "fluorescence" if is_dark_background(hsv) else "hsv_otsu"
    if method == "hsv_otsu":
        score, (low, high) = hsv[..., 1], config.saturation_range
    elif method == "gray_otsu":
        score, (low, high) = 1.0 - color.rgb2gray(rgb), config.darkness_range
    else:
        score, (low, high) = hsv[..., 2], config.brightness_range
    if method == "fluorescence":
        # Nuclei are sparse bright dots on black: a local mean, not a median, sees them as tissue.
        from scipy import ndimage

        size = max(3, _odd(int(round(config.closing_radius_um / mpp))))
        score = ndimage.uniform_filter(score.astype(np.float32), size=size)
    score8 = (np.clip(score, 0, 1) * 255).astype(np.uint8)
    if method != "fluorescence":
        score8 = _median(score8, _odd(config.median_size))

    background_like = score8 < 255 * low  # Otsu on glass-only pixels would split noise
    threshold = filters.threshold_otsu(score8) / 255 if np.ptp(score8) > 0 else high
    threshold = float(np.clip(threshold, low, high))
    mask = score8 > 255 * threshold
    if not background_like.any():  # tissue everywhere: any stain counts
        mask = score8 > 255 * low
    if method != "fluorescence":
        mask &= hsv[..., 2] > config.black_value

    pixel_area = mpp * mpp
    if config.remove_pen and method != "fluorescence":
        mask &= ~detect_pen(hsv, mpp=mpp, config=config)

    radius = int(round(config.closing_radius_um / mpp))
    if radius > 0:
        mask = morphology.closing(mask, morphology.disk(radius, decomposition="sequence"))
    mask = morphology.remove_small_objects(mask, max_size=int(config.min_object_um2 / pixel_area))
    mask = _fill_small_holes(mask, int(config.max_hole_um2 / pixel_area))
    return mask
