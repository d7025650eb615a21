"""Non-learned per-patch maps from the stain alone: the baseline every learned map is read against.

A heatmap that localizes lesions no better than "where the hematoxylin is" has learned
nothing a colour threshold would not give. Two maps, computed from the patches' pixels:

- ``stain_hematoxylin``: mean hematoxylin optical density of the patch's tissue pixels
  (colour deconvolution, Ruifrok & Johnston 2001, scikit-image's ``rgb2hed``);
- ``stain_darkness``: the fraction of the patch's pixels that are very dark (mean optical
  density over R, G, B above :data:`DARK_OD`, i.e. darker than about 90/255): dense nuclei,
  lymphocytes, debris and folds.

Patches are read at a coarse pyramid level (about ``read_px`` pixels across), so the
baseline costs a fraction of feature extraction.
"""

from __future__ import annotations

import logging
import math

import numpy as np

from wsi_mil.io.base import SlideReader

logger = logging.getLogger(__name__)

HEMATOXYLIN = "stain_hematoxylin"
DARKNESS = "stain_darkness"
STAIN_MAPS = (HEMATOXYLIN, DARKNESS)
#: A pixel is very dark when its mean optical density over R, G, B exceeds this (~90/255).
DARK_OD = 1.0
#: A pixel is tissue (not glass) when its summed optical density exceeds this.
TISSUE_OD = 0.3


def stain_statistics(rgb: np.ndarray) -> tuple[float, float]:
    """(mean hematoxylin OD of the tissue pixels, fraction of very dark pixels) of one (H, W, 3) uint8 image."""
    from skimage.color import rgb2hed

    pixels = np.asarray(rgb)[..., :3]
    density = -np.log(np.maximum(pixels.astype(np.float32), 1.0) / 255.0)
    tissue = density.sum(-1) > TISSUE_OD
    dark = float((density.mean(-1) > DARK_OD).mean())
    if not tissue.any():
        return 0.0, dark
    hematoxylin = rgb2hed(pixels)[..., 0]
    return float(hematoxylin[tissue].mean()), dark


def stain_baseline_scores(
    slide: SlideReader, coords: np.ndarray, patch_size_level0: float, *, read_px: int = 64
) -> dict[str, np.ndarray]:
    """Per-patch stain maps of a slide: name -> (N,) float64, same order as ``coords``.

    slide: an open reader (wsi_mil.io.open_slide); coords: (N, 2) level-0 (x, y) of each
    patch's top-left corner; patch_size_level0: the patch side in level-0 pixels. Each patch
    is read at the coarsest level that still gives at least ``read_px`` pixels across it.
    """
    coords = np.asarray(coords, dtype=np.int64).reshape(-1, 2)
    level = slide.get_best_level_for_downsample(max(1.0, patch_size_level0 / read_px))
    downsample = float(slide.level_downsamples[level])
    side = max(1, math.ceil(patch_size_level0 / downsample))
    out = {name: np.zeros(len(coords), np.float64) for name in STAIN_MAPS}
    for index, (x, y) in enumerate(coords):
        rgb = slide.read_region((int(x), int(y)), level, (side, side), as_array=True)
        out[HEMATOXYLIN][index], out[DARKNESS][index] = stain_statistics(rgb)
    logger.debug("%s: stain baseline of %d patches at level %d (%d px)", slide.path, len(coords), level, side)
    return out


#: Per-slide statistics of the stain maps (each: higher should mean "lesion" if stain alone told).
SLIDE_STATISTICS = ("mean_hematoxylin", "max_hematoxylin", "max_darkness", "mean_darkness")


def slide_stain_statistics(maps: dict[str, np.ndarray]) -> dict[str, float]:
    """Per-slide summaries of :func:`stain_baseline_scores`: mean and maximum patch hematoxylin, mean
    patch darkness, and the darkness of the darkest patch (the "darkest window" statistic)."""
    hematoxylin, darkness = np.asarray(maps[HEMATOXYLIN]), np.asarray(maps[DARKNESS])
    if len(hematoxylin) == 0:
        return dict.fromkeys(SLIDE_STATISTICS, math.nan)
    return {
        "mean_hematoxylin": float(hematoxylin.mean()),
        "max_hematoxylin": float(hematoxylin.max()),
        "max_darkness": float(darkness.max()),
        "mean_darkness": float(darkness.mean()),
    }
