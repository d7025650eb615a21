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

from dataclasses import dataclass

import numpy as np

from wsi_mil.config import TissueConfig
from wsi_mil.tiling.colours import Colours, HsvArray
from wsi_mil.tiling.mask_ops import (
    closing_disk,
    fill_small_holes,
    joined_components,
    median_uint8,
    otsu_uint8,
    remove_small_objects,
)


def _odd(n: int) -> int:
    return max(1, n | 1)


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


def _channels(hsv: np.ndarray | Colours) -> Colours | HsvArray:
    return HsvArray(hsv) if isinstance(hsv, np.ndarray) else hsv


def _ink_cores(colours: Colours | HsvArray, *, black_value: float) -> dict[str, np.ndarray]:
    """Colours no H&E stain takes, per ink family. Saturated violet-blue just past -120
    (red and green equally dark, blue much lighter) is ink too: blue ink over tissue.
    Black ink is dark grey but not near black (``black_value``): out-of-slide areas and
    scanner borders are not ink, and are not tissue anyway.

    Blue, green and red cores need a saturation above 0.3 and a value above 0.1: the hue
    is computed for those pixels only, and not where green is darker than red and no darker
    than blue (stain: hue -120..0, see above; red = green rounds to just below -120) unless
    the pixel could be red ink."""
    sat = colours.saturation
    coloured = (sat > 0.3) & colours.value_above(0.1)
    if isinstance(colours, Colours):
        red, green = colours.planes[0], colours.planes[1]
        coloured &= (green != colours.low) | (green == red) | (sat > 0.55) & colours.value_above(0.3)
    hue, sat_c = colours.hue_where(coloured), sat[coloured]
    cool, red = np.zeros(colours.shape, dtype=bool), np.zeros(colours.shape, dtype=bool)
    cool[coloured] = (hue >= 60) | (hue < _BLUE_INK_HUE) | (hue < -120) & (sat_c > 0.6)
    red[coloured] = (np.abs(hue) < _RED_INK_HUE) & (sat_c > 0.55) & colours.value_above(0.3)[coloured]
    black = colours.value_above(black_value) & colours.value_below(0.3) & (sat < 0.3)
    return {"cool": cool, "black": black, "red": red}


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


def pen_mask(hsv: np.ndarray | Colours, *, black_value: float = TissueConfig.black_value) -> np.ndarray:
    """Ink cores, colours no H&E stain takes: (H, W, 3) float HSV in 0-1 (or
    :class:`~wsi_mil.tiling.colours.Colours`) -> (H, W) bool.

    Blue and green ink (hue outside H&E's blue-to-red range, saturated), black ink (dark
    and grey), bright red ink (redder and more saturated than eosin). :func:`detect_pen`
    follows strokes from these cores into the tissue under them.
    """
    cores = _ink_cores(_channels(hsv), black_value=black_value)
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


def detect_pen(hsv: np.ndarray | Colours, *, mpp: float, config: TissueConfig) -> np.ndarray:
    """Marker strokes with their blurred edges.

    A stroke is a connected region of ink colours, at least ``min_pen_um2`` large, that
    holds an ink core (:func:`pen_mask`): in a stroke that crosses tissue the ink darkens
    the stain and takes a mixed hue, which counts only as part of a stroke, so dense
    tissue (tumour, lymphocytes) that looks like ink over tissue is never a stroke by
    itself. Added: faint pixels of the stroke's ink hue within ``pen_halo_um`` of it (its
    blur), and a ``pen_margin_um`` margin. ``hsv``: (H, W, 3) float HSV in 0-1, or
    :class:`~wsi_mil.tiling.colours.Colours`.
    """
    min_stroke = int(config.min_pen_um2 / (mpp * mpp))
    min_core = int(min_stroke * _MIN_CORE_FRACTION)
    colours = _channels(hsv)
    cores = _ink_cores(colours, black_value=config.black_value)
    ink = np.zeros(colours.shape, dtype=bool)
    if all(np.count_nonzero(cores[family]) <= min_core for family in _FAMILIES):
        return ink  # no stroke can start (see _strokes): the usual case, without the full hue
    from scipy import ndimage
    from skimage import morphology

    hue, sat, val = colours.hue, colours.saturation, colours.value
    bodies, halos = _ink_over_tissue(hue, sat, val), _ink_halo(hue, sat)
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


def is_dark_background(hsv: np.ndarray | Colours) -> bool:
    """Fluorescence slides: most of the field is near black, not near white."""
    if isinstance(hsv, np.ndarray):
        return float(np.median(hsv[..., 2])) < 0.3
    return hsv.median_value() < 0.3


def _with_faint(mask: np.ndarray, faint: np.ndarray) -> np.ndarray:
    """``mask`` plus the connected areas of ``faint`` that touch it (hysteresis thresholding).

    Pale stroma and fat (thin membranes around empty cells) stay below an Otsu threshold
    set by dense tissue; above ``faint_saturation`` and joined to it, they are tissue.
    ``faint`` has only a 3-px median (the 5-px one erases fat's membranes); glass stays
    below its level."""
    return joined_components(faint | mask, mask)


@dataclass(frozen=True)
class Detection:
    """What :func:`detect_tissue` decided on a thumbnail, for a finer pass over parts of it
    (:mod:`wsi_mil.tiling.refine`): the mask, the method used, the clipped Otsu threshold
    (0-1), whether tissue filled the whole image, and the ink strokes removed."""

    mask: np.ndarray
    method: str
    threshold: float
    everywhere: bool
    ink: np.ndarray | None


def detect_tissue(rgb: np.ndarray, *, mpp: float, config: TissueConfig | None = None) -> np.ndarray:
    """Tissue mask of a thumbnail.

    rgb: (H, W, 3) uint8 at ``mpp`` um/px. Returns (H, W) bool.
    """
    return detect(rgb, mpp=mpp, config=config).mask


def detect(rgb: np.ndarray, *, mpp: float, config: TissueConfig | None = None) -> Detection:
    """:func:`detect_tissue` with its intermediate decisions (:class:`Detection`)."""
    config = config or TissueConfig()
    methods = TissueConfig.CHOICES["method"]
    if config.method not in methods:
        raise ValueError(f"unknown tissue method {config.method!r}; choose one of {methods}")
    if rgb.size == 0:
        return Detection(np.zeros(rgb.shape[:2], dtype=bool), config.method, 1.0, False, None)

    colours = Colours(rgb)
    method = config.method
    if method == "auto":
        method = "fluorescence" if is_dark_background(colours) else "hsv_otsu"
    score: np.ndarray | None = None
    if method == "hsv_otsu":
        raw8, (low, high) = colours.saturation8, config.saturation_range
    elif method == "gray_otsu":
        from skimage import color

        score, (low, high) = 1.0 - color.rgb2gray(rgb), config.darkness_range
    else:
        score, (low, high) = colours.value, config.brightness_range
    if method == "fluorescence" and score is not None:
        # Nuclei are sparse bright dots on black: a local mean, not a median, sees them as tissue.
        from scipy import ndimage

        size = max(3, _odd(int(round(config.closing_radius_um / mpp))))
        score = ndimage.uniform_filter(score.astype(np.float32), size=size)
    if score is not None:
        raw8 = (np.clip(score, 0, 1) * 255).astype(np.uint8)
    score8 = median_uint8(raw8, _odd(config.median_size)) if method != "fluorescence" else raw8

    background_like = score8 < 255 * low  # Otsu on glass-only pixels would split noise
    threshold = otsu_uint8(score8) / 255 if np.ptp(score8) > 0 else high
    threshold = float(np.clip(threshold, low, high))
    mask = score8 > 255 * threshold
    faint = None
    everywhere = not background_like.any()
    if everywhere:  # tissue everywhere: any stain counts
        mask = score8 > 255 * low
    elif method == "hsv_otsu" and config.faint_saturation > 0:
        faint = median_uint8(raw8, 3) > 255 * config.faint_saturation  # a 3-px median: noise off, membranes kept
    if method != "fluorescence":
        mask &= colours.value_above(config.black_value)

    pixel_area = mpp * mpp
    ink = None
    if config.remove_pen and method != "fluorescence":
        ink = detect_pen(colours, mpp=mpp, config=config)
        mask &= ~ink
        if faint is not None and ink.any():  # an ink stroke's faint, blurred edge is not pale tissue
            from scipy import ndimage

            faint &= ndimage.distance_transform_edt(~ink) * mpp > config.pen_halo_um
    if faint is not None:
        mask = _with_faint(mask, faint)

    radius = int(round(config.closing_radius_um / mpp))
    if radius > 0:
        mask = closing_disk(mask, radius)
    mask = remove_small_objects(mask, int(config.min_object_um2 / pixel_area))
    mask = fill_small_holes(mask, int(config.max_hole_um2 / pixel_area))
    return Detection(mask, method, threshold, everywhere, ink)
