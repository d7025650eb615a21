"""Patch pixels for explanations: read back the way extraction read them, with surroundings."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np


def read_patch_pixels(bag_path: Path, coords: np.ndarray, *, reader: str = "auto", margin: int = 0) -> np.ndarray:
    """(k, H + 2 margin, W + 2 margin, 3) uint8 pixels of the patches at ``coords``, read the
    way extraction read them, with ``margin`` pixels (at the patch level) of surroundings on
    each side. The surroundings come from the slide; beyond its edge, or when the bag's
    stored pixels are all there is, the patch is mirrored instead."""
    from wsi_mil.features.reading import make_source
    from wsi_mil.io.open import open_slide
    from wsi_mil.store.bags import read_bag

    bag = read_bag(bag_path)
    if bag.has_pixels:
        where = {tuple(c): i for i, c in enumerate(bag.coords.tolist())}
        pixels = bag.read_pixels(np.array([where[tuple(c)] for c in coords.tolist()]))
        return mirror_pad(pixels, ((margin, margin), (margin, margin)))
    with open_slide(bag.attrs["slide_path"], reader=reader, mpp=bag.attrs.get("slide_mpp")) as slide:
        if margin:
            return np.stack(
                [
                    read_with_margin(slide, c, int(bag.attrs["patch_level"]), int(bag.attrs["patch_size"]), margin)
                    for c in np.asarray(coords).tolist()
                ]
            )
        source = make_source(replace(bag, coords=np.asarray(coords, np.int64)), slide, reader=reader)
        try:
            return np.stack([source.read(i) for i in range(len(coords))])
        finally:
            source.close()


def mirror_pad(pixels: np.ndarray, pad: tuple[tuple[int, int], tuple[int, int]]) -> np.ndarray:
    """Pad (..., H, W, 3) by mirroring (the edge pixel repeated once, like np 'symmetric')."""
    if not any(sum(p) for p in pad):
        return pixels
    return np.pad(pixels, ((0, 0),) * (pixels.ndim - 3) + pad + ((0, 0),), mode="symmetric")


def read_with_margin(slide: Any, coord: Sequence[int], level: int, size: int, margin: int) -> np.ndarray:
    """One patch with ``margin`` level pixels around it, clipped to the slide and mirrored beyond."""
    downsample = float(slide.level_downsamples[level])
    width, height = slide.level_dimensions[level]
    x0, y0 = round(coord[0] / downsample) - margin, round(coord[1] / downsample) - margin
    side = size + 2 * margin
    cx0, cy0 = max(0, x0), max(0, y0)
    cx1, cy1 = min(width, x0 + side), min(height, y0 + side)
    if cx1 <= cx0 or cy1 <= cy0:
        raise ValueError(f"patch at {tuple(coord)} lies outside the slide")
    region = slide.read_region(
        (round(cx0 * downsample), round(cy0 * downsample)), level, (cx1 - cx0, cy1 - cy0), as_array=True
    )
    return mirror_pad(region, ((cy0 - y0, y0 + side - cy1), (cx0 - x0, x0 + side - cx1)))
