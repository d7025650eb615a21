"""Tissue detection on a low-resolution thumbnail, with scikit-image.

The thumbnail has a known physical resolution (``mpp``), so morphology sizes are
given in micrometres and mean the same thing on every slide. Steps:

1. a per-pixel score: HSV saturation (``hsv_otsu``; stain is coloured, glass
   is not), inverted grey level (``gray_otsu``) or brightness (``fluorescence``,
   dark background); ``auto`` (the default) picks fluorescence when most of the
   thumbnail is near black and ``hsv_otsu`` otherwise;
2. median filter, then an Otsu threshold clipped to a configured range, so an
   empty or a tissue-only thumbnail does not get an arbitrary split; faint pixels
   (``faint_saturation``: pale stroma, fat's membranes) joined to what passes it are
   tissue too (hysteresis);
3. near-black pixels (scanner borders, out-of-slide areas) and, optionally, pen
   ink (blue, green, black and red marker) are removed: strokes that hold a colour
   no H&E stain takes (see ``detect_pen``), so dense tissue is not taken for ink;
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


# Why colour tells ink from H&E: hematoxylin and eosin both absorb green most (Ruifrok's
# optical densities, R G B: hematoxylin 0.65 0.70 0.29, eosin 0.07 0.99 0.11), so in
# stained tissue, and in any mix of the two stains, green is the darkest channel: the hue
# lies between blue (-120 degrees here) and red (0), hematoxylin at the blue end, eosin at
# the red end. Blue and green ink make red the darkest channel (hue beyond -120, towards
# cyan and green); black ink is dark and grey; red ink is redder than eosin. Ink over
# tissue darkens it and mixes the hues, into colours dense H&E takes as well (dark
# tumour, lymphocytes): those count as ink only as part of a stroke that holds ink of an
# unmistakable colour.
#: Hues from here towards cyan and green (-180..-125 and 60..180) are blue or green ink;
#: dense hematoxylin reaches about -110.
_BLUE_INK_HUE = -125.0
#: Red ink: hue within this many degrees of pure red (eosin: about -50..-15).
_RED_INK_HUE = 12.0
#: Ink cores smaller than this fraction of ``min_pen_um2`` do not start a stroke.
_MIN_CORE_FRACTION = 0.25
#: Ink families: blue and green ink, black ink, red ink.
_FAMILIES = ("cool", "black", "red")


def _hue_sat_val(hsv: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return _hue_degrees(hsv), hsv[..., 1], hsv[..., 2]


def _ink_cores(hue: np.ndarray, sat: np.ndarray, val: np.ndarray, *, black_value: float) -> dict[str, np.ndarray]:
    """Colours no H&E stain takes, per ink family. Saturated violet-blue just past -120
    (red and green equally dark, blue much lighter) is ink too: blue ink over tissue.
    Black ink is dark grey but not near black (``black_value``): out-of-slide areas and
    scanner borders are not ink, and are not tissue anyway."""
    cool = ((hue >= 60) | (hue < _BLUE_INK_HUE)) & (sat > 0.3) | (hue < -120) & (sat > 0.6)
    return {
        "cool": cool & (val > 0.1),
        "black": (val > black_value) & (val < 0.3) & (sat < 0.3),
        "red": (np.abs(hue) < _RED_INK_HUE) & (sat > 0.55) & (val > 0.3),
    }


def _ink_over_tissue(hue: np.ndarray, sat: np.ndarray, val: np.ndarray) -> dict[str, np.ndarray]:
    """Colours of ink over stained tissue, per family: dense H&E takes them too, so they
    count as ink only when connected to a core of the same family."""
    dark = val < 0.25
    return {
        "cool": dark | (hue >= _BLUE_INK_HUE) & (hue < -85) & (sat > 0.5),  # saturated blue-purple
        "black": dark,
        "red": (hue >= -45) & (hue < _RED_INK_HUE) & (sat > 0.35) & (val <= 0.45),  # red-black
    }


def _ink_halo(hue: np.ndarray, sat: np.ndarray) -> dict[str, np.ndarray]:
    """Faint pixels of an ink family's hue: the blurred edge of a stroke, not ink by itself.
    Black ink's edge is a grey that is not tissue anyway."""
    faint = sat > 0.1
    return {
        "cool": ((hue >= 60) | (hue < _BLUE_INK_HUE)) & faint,
        "black": np.zeros_like(faint),
        "red": (np.abs(hue) < _RED_INK_HUE) & faint,
    }


def pen_mask(hsv: np.ndarray, *, black_value: float = TissueConfig.black_value) -> np.ndarray:
    """Ink cores, colours no H&E stain takes: (H, W, 3) float HSV in 0-1 -> (H, W) bool.

    Blue and green ink (hue outside H&E's blue-to-red range, saturated), black ink (dark
    and grey), bright red ink (redder and more saturated than eosin). :func:`detect_pen`
    follows strokes from these cores into the tissue under them.
    """
    cores = _ink_cores(*_hue_sat_val(hsv), black_value=black_value)
    return cores["cool"] | cores["black"] | cores["red"]


def _strokes(cores: np.ndarray, body: np.ndarray, *, min_core: int, min_stroke: int) -> np.ndarray:
    """Connected pixels of ``cores | body`` that hold a core of at least ``min_core`` px, if
    they make at least ``min_stroke`` px. An opening first cuts the thin paths by which
    body colours scattered through tissue (dark nuclei) would join a stroke."""
    from scipy import ndimage
    from skimage import morphology

    if np.count_nonzero(cores) <= min_core:  # no ink of this family: the usual case, and quick
        return np.zeros_like(cores)
    footprint = morphology.disk(1)
    seeds = morphology.remove_small_objects(morphology.opening(cores, footprint), max_size=min_core)
    if not seeds.any():
        return seeds
    labels, _ = ndimage.label(morphology.opening(cores | body, footprint), structure=np.ones((3, 3), dtype=bool))
    keep = np.zeros(labels.max() + 1, dtype=bool)
    keep[np.unique(labels[seeds])] = True
    keep[0] = False
    return morphology.remove_small_objects(keep[labels], max_size=min_stroke)


def detect_pen(hsv: np.ndarray, *, mpp: float, config: TissueConfig) -> np.ndarray:
    """Marker strokes with their blurred edges.

    A stroke is a connected region of ink colours, at least ``min_pen_um2`` large, that
    holds an ink core (:func:`pen_mask`): in a stroke that crosses tissue the ink darkens
    the stain and takes a mixed hue, which counts only as part of a stroke, so dense
    tissue (tumour, lymphocytes) that looks like ink over tissue is never a stroke by
    itself. Added: faint pixels of the stroke's ink hue within ``pen_halo_um`` of it (its
    blur), and a ``pen_margin_um`` margin.
    """
    from scipy import ndimage
    from skimage import morphology

    min_stroke = int(config.min_pen_um2 / (mpp * mpp))
    min_core = int(min_stroke * _MIN_CORE_FRACTION)
    hue, sat, val = _hue_sat_val(hsv)
    cores = _ink_cores(hue, sat, val, black_value=config.black_value)
    bodies, halos = _ink_over_tissue(hue, sat, val), _ink_halo(hue, sat)
    ink = np.zeros(hsv.shape[:2], dtype=bool)
    for family in _FAMILIES:
        strokes = _strokes(cores[family], bodies[family], min_core=min_core, min_stroke=min_stroke)
        if strokes.any() and halos[family].any():
            near = ndimage.distance_transform_edt(~strokes) * mpp <= config.pen_halo_um
            strokes |= near & halos[family]
        ink |= strokes
    radius = int(round(config.pen_margin_um / mpp))
    if radius > 0 and ink.any():
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


def _with_faint(mask: np.ndarray, faint: np.ndarray) -> np.ndarray:
    """``mask`` plus the connected areas of ``faint`` that touch it (hysteresis thresholding).

    Pale stroma and fat (thin membranes around empty cells) stay below an Otsu threshold
    set by dense tissue; above ``faint_saturation`` and joined to it, they are tissue.
    ``faint`` has only a 3-px median (the 5-px one erases fat's membranes); glass stays
    below its level."""
    from scipy import ndimage

    labels, count = ndimage.label(faint | mask, structure=np.ones((3, 3), dtype=bool))
    if count == 0:
        return mask
    keep = np.zeros(count + 1, dtype=bool)
    keep[np.unique(labels[mask])] = True
    keep[0] = False
    return keep[labels]


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
    raw8 = (np.clip(score, 0, 1) * 255).astype(np.uint8)
    score8 = _median(raw8, _odd(config.median_size)) if method != "fluorescence" else raw8

    background_like = score8 < 255 * low  # Otsu on glass-only pixels would split noise
    threshold = filters.threshold_otsu(score8) / 255 if np.ptp(score8) > 0 else high
    threshold = float(np.clip(threshold, low, high))
    mask = score8 > 255 * threshold
    faint = None
    if not background_like.any():  # tissue everywhere: any stain counts
        mask = score8 > 255 * low
    elif method == "hsv_otsu" and config.faint_saturation > 0:
        faint = _median(raw8, 3) > 255 * config.faint_saturation  # a 3-px median: noise off, membranes kept
    if method != "fluorescence":
        mask &= hsv[..., 2] > config.black_value

    pixel_area = mpp * mpp
    if config.remove_pen and method != "fluorescence":
        ink = detect_pen(hsv, mpp=mpp, config=config)
        mask &= ~ink
        if faint is not None and ink.any():  # an ink stroke's faint, blurred edge is not pale tissue
            from scipy import ndimage

            faint &= ndimage.distance_transform_edt(~ink) * mpp > config.pen_halo_um
    if faint is not None:
        mask = _with_faint(mask, faint)

    radius = int(round(config.closing_radius_um / mpp))
    if radius > 0:
        mask = morphology.closing(mask, morphology.disk(radius, decomposition="sequence"))
    mask = morphology.remove_small_objects(mask, max_size=int(config.min_object_um2 / pixel_area))
    mask = _fill_small_holes(mask, int(config.max_hole_um2 / pixel_area))
    return mask
