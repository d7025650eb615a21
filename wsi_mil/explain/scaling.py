"""How a map's values become colours, so maps compare across slides.

Range (``heatmap.scale``):
- ``slide``: the ``heatmap.percentiles`` of this slide's patch values. Every slide fills
  the whole colour bar, so a normal slide looks as hot as a tumour slide.
- ``cohort``: the same percentiles over all of the run's slides for that map (one bag
  set at a time): one colour means one value in every slide of the run.
- ``fixed``: ``heatmap.range`` for every map drawn.

Signed maps (instance logits and contributions, ``logit_*`` / ``contribution_*``) use a
diverging colormap (``heatmap.diverging_cmap``) on a range symmetric about 0, so 0 is
the neutral middle colour and the sign reads at a glance: the half-width is the upper
percentile of ``|value|`` (or the larger end of a fixed range). Other maps use
``heatmap.cmap`` from the low to the high end.

Near-neutral values (``heatmap.neutral``, a fraction of the range) are not drawn: within
that fraction of the half-width around 0 for signed maps, and in the bottom fraction of
the range for the others. The slide shows through there.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np

from wsi_mil.config import HeatmapConfig
from wsi_mil.explain.maps import ScoresFormatError, read_scores, select_maps
from wsi_mil.explain.stitch import ScoreRange
from wsi_mil.store.atomic import atomic_output

logger = logging.getLogger(__name__)

#: Maps whose values are signed evidence, centred at 0.
SIGNED_PREFIXES = ("logit_", "contribution_")
#: The cohort's ranges, beside the heatmaps of one bag set: heatmaps/<model>[/<bag set>]/colour_ranges.json
RANGES_NAME = "colour_ranges.json"


def is_signed(name: str) -> bool:
    """Whether a map is signed evidence (drawn with the diverging colormap, centred at 0)."""
    return name.startswith(SIGNED_PREFIXES)


def map_cmap(name: str, options: HeatmapConfig) -> str:
    return options.diverging_cmap if is_signed(name) else options.cmap


def range_of(values: np.ndarray, *, signed: bool, options: HeatmapConfig) -> ScoreRange:
    """The colour range of ``values`` (N,) (one slide, or a whole cohort), near-neutral band included.

    ``scale: fixed`` ignores the values and uses ``options.range``.
    """
    if options.scale == "fixed":
        if options.range is None:
            raise ValueError("heatmap.scale fixed needs heatmap.range: [low, high]")
        low, high = (float(v) for v in options.range)
    else:
        finite = np.asarray(values, dtype=np.float64).reshape(-1)
        finite = finite[np.isfinite(finite)]
        if finite.size == 0:
            low, high = (-1.0, 1.0) if signed else (0.0, 1.0)
        elif signed:
            half = float(np.percentile(np.abs(finite), options.percentiles[1]))
            low, high = -half, half
        else:
            low, high = (float(v) for v in np.percentile(finite, options.percentiles))
    if signed:
        half = max(abs(low), abs(high))
        low, high = -(half or 1.0), half or 1.0
    elif not high > low:
        high = low + 1.0
    band = options.neutral
    if band <= 0:
        return ScoreRange(low, high)
    if signed:
        return ScoreRange(low, high, clear=(-band * high, band * high))
    return ScoreRange(low, high, clear=(-np.inf, low + band * (high - low)))


def slide_ranges(
    maps: Mapping[str, np.ndarray], *, options: HeatmapConfig, cohort: Mapping[str, ScoreRange] | None = None
) -> dict[str, ScoreRange]:
    """The range of each of one slide's maps: the cohort's where given (``scale: cohort``), else its own."""
    ranges = {}
    for name, values in maps.items():
        if options.scale == "cohort" and cohort is not None and name in cohort:
            ranges[name] = cohort[name]
        else:
            if options.scale == "cohort":
                logger.info("%s: no cohort range given; colouring by this slide's values", name)
            ranges[name] = range_of(values, signed=is_signed(name), options=options)
    return ranges


def cohort_ranges(scores_paths: Iterable[Path], *, options: HeatmapConfig) -> dict[str, ScoreRange]:
    """Each map's range over all ``scores_paths`` (one bag set of a run); unreadable files are left out
    (their own heatmap job reports them)."""
    pooled: dict[str, list[np.ndarray]] = {}
    for path in scores_paths:
        try:
            maps = select_maps(read_scores(path), options.maps)
        except ScoresFormatError as error:
            logger.warning("cohort colour range leaves out %s: %s", path.name, error)
            continue
        for name, values in maps.items():
            pooled.setdefault(name, []).append(np.asarray(values, dtype=np.float32))
    return {
        name: range_of(np.concatenate(parts), signed=is_signed(name), options=options)
        for name, parts in sorted(pooled.items())
    }


def write_cohort_ranges(
    scores_by_set: Mapping[str, Iterable[Path]], out_root: Path, *, options: HeatmapConfig
) -> dict[str, dict[str, ScoreRange]]:
    """Each bag set's cohort ranges (bag set, as a POSIX sub-folder of ``out_root`` -> map -> range),
    each also written to ``out_root/<bag set>/colour_ranges.json``."""
    cohort = {}
    for subset, paths in scores_by_set.items():
        cohort[subset] = cohort_ranges(paths, options=options)
        (out_root / subset).mkdir(parents=True, exist_ok=True)
        write_ranges(out_root / subset / RANGES_NAME, cohort[subset], options=options)
    return cohort


def ranges_record(ranges: Mapping[str, ScoreRange], *, options: HeatmapConfig) -> dict:
    """JSON-ready: how each map was coloured (also read by viewers to show the same colours)."""
    maps = {}
    for name, score_range in ranges.items():
        clear = None if score_range.clear is None else [_finite(v) for v in score_range.clear]
        maps[name] = {
            "vmin": score_range.vmin,
            "vmax": score_range.vmax,
            "clear": clear,
            "cmap": map_cmap(name, options),
            "signed": is_signed(name),
        }
    return {"scale": options.scale, "percentiles": list(options.percentiles), "neutral": options.neutral, "maps": maps}


def write_ranges(path: Path, ranges: Mapping[str, ScoreRange], *, options: HeatmapConfig) -> Path:
    with atomic_output(path) as tmp:
        tmp.write_text(json.dumps(ranges_record(ranges, options=options), indent=2, sort_keys=True))
    return path


def _finite(value: float) -> float | None:
    return float(value) if np.isfinite(value) else None
