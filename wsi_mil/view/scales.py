"""Colour scales of the viewer's map overlays: per slide, over the cohort, or a fixed range.

- ``slide``: the 1st-99th percentiles of this slide's patch values (what the exported
  heatmaps use), so every slide fills the whole colour bar;
- ``cohort``: the same percentiles over every slide of the run for that head and map, so
  one colour means one value on every slide (a normal slide stays cold);
- ``fixed``: a range the user types.

Signed maps (instance logits and contributions, ``logit_*`` / ``contribution_*``) use a
diverging colour map centred at 0 with a range symmetric about 0, so red is evidence for
the class and blue against it whatever the scale.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from wsi_mil.explain.stitch import ScoreRange

SCALES = ("slide", "cohort", "fixed")
PERCENTILES = (1.0, 99.0)
SEQUENTIAL_CMAP = "jet"
DIVERGING_CMAP = "RdBu_r"
SIGNED_PREFIXES = ("logit_", "contribution_")


class ScaleError(ValueError):
    """A colour scale request the viewer cannot honour (the web layer answers 400)."""


def is_signed(map_name: str) -> bool:
    return map_name.startswith(SIGNED_PREFIXES)


def cmap_for(map_name: str) -> str:
    return DIVERGING_CMAP if is_signed(map_name) else SEQUENTIAL_CMAP


def percentile_range(values: np.ndarray, *, signed: bool) -> ScoreRange:
    """The 1-99th percentile range of ``values`` (N,), symmetric about 0 for signed maps."""
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    if signed:
        reach = float(np.percentile(np.abs(values), PERCENTILES[1])) if values.size else 1.0
        reach = reach if reach > 0 else 1.0
        return ScoreRange(-reach, reach)
    return ScoreRange.of(values, percentiles=PERCENTILES)


@dataclass(frozen=True)
class Scale:
    mode: str
    score_range: ScoreRange
    cmap: str

    def json(self) -> dict[str, object]:
        return {"mode": self.mode, "vmin": self.score_range.vmin, "vmax": self.score_range.vmax, "cmap": self.cmap}


def fixed_range(vmin: str | None, vmax: str | None) -> ScoreRange:
    """The user's range from query text; ScaleError unless both are finite numbers with vmin < vmax."""
    try:
        low, high = float(vmin or ""), float(vmax or "")
    except ValueError as error:
        raise ScaleError("scale=fixed needs numbers vmin and vmax") from error
    if not (math.isfinite(low) and math.isfinite(high) and low < high):
        raise ScaleError(f"scale=fixed needs finite vmin < vmax (got {vmin}, {vmax})")
    return ScoreRange(low, high)
