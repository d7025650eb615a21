"""One slide's heatmaps: a scores file -> every requested map file in the slide's heatmap folder.

The per-map formats are written by :mod:`wsi_mil.explain.heatmap_formats`; this module
gathers what they share (the slide, its geometry and tissue mask, the colour ranges)
once per slide.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from wsi_mil.config import HeatmapConfig
from wsi_mil.explain.heatmap_formats import SlideGeometry, write_map
from wsi_mil.explain.maps import SlideScores, read_scores, select_maps
from wsi_mil.explain.stitch import ScoreRange, TissueMask

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class BagInfo:
    """What the heatmaps take from the slide's bag: its attributes and tissue mask (either may be empty)."""

    attrs: dict[str, Any]
    tissue: TissueMask | None


def read_bag_info(bag_path: str | Path | None) -> BagInfo:
    """The bag's attributes and tissue mask, read once; empty without a bag."""
    if bag_path is None or not Path(bag_path).exists():
        return BagInfo({}, None)
    from wsi_mil.store.bags import read_bag

    bag = read_bag(bag_path)
    downsample = bag.mask_attrs.get("downsample")
    tissue = None if bag.tissue_mask is None or downsample is None else TissueMask(bag.tissue_mask, float(downsample))
    return BagInfo(bag.attrs, tissue)


def slide_geometry(scores: SlideScores, slide: Any, bag_attrs: Mapping[str, Any]) -> SlideGeometry:
    """The slide's geometry: from the open slide, else the bag's ``level_dim``, else the patches' extent."""
    mpp = scores.attrs.get("slide_mpp")
    mpp = float(mpp) if mpp is not None and np.isfinite(float(mpp)) else None
    if slide is not None:
        return SlideGeometry(tuple(slide.dimensions), mpp or slide.mpp, tuple(slide.level_downsamples))
    dims = bag_attrs.get("level_dim") or scores.attrs.get("level_dim")
    if dims is None:  # no slide, no bag: the patches' extent
        size = scores.patch_size_level0
        dims = (
            (int(scores.coords[:, 0].max() + size), int(scores.coords[:, 1].max() + size))
            if len(scores.coords)
            else (1, 1)
        )
    return SlideGeometry((int(dims[0]), int(dims[1])), mpp, (1.0,))


def _open_slide(scores: SlideScores, slide_path: str | Path | None, *, reader: str, options: HeatmapConfig) -> Any:
    """The slide the scores were made from, or None (with a warning when an output needs it)."""
    recorded = slide_path or scores.attrs.get("slide_path")
    path = Path(str(recorded)) if recorded else None  # never Path(""), which is the working directory
    if path is not None and path.exists():
        from wsi_mil.io.open import open_slide

        return open_slide(path, reader=reader, mpp=scores.attrs.get("slide_mpp"))
    if any(f in options.formats for f in ("png", "blend_tiff")):
        logger.warning("%s: slide %s not found; PNG overlays without the slide, no blend", scores.slide_id, path)
    return None


def heatmap_slide(
    scores: SlideScores | str | Path,
    *,
    out_dir: str | Path,
    slide_path: str | Path | None = None,
    bag_path: str | Path | None = None,
    options: HeatmapConfig | None = None,
    reader: str = "auto",
    overwrite: bool = False,
    run_dir: str | Path | None = None,
    cohort: Mapping[str, ScoreRange] | None = None,
) -> dict[str, Any]:
    """Write every requested output of one slide; returns counts. Raises on slide-level errors.

    ``scores``: the slide's scores (:func:`wsi_mil.explain.maps.read_scores`) or their file.
    ``cohort``: each map's colour range over the run (``scale: cohort``; from
    :func:`wsi_mil.explain.scaling.cohort_ranges`); without it, the slide's own.
    ``run_dir``: provenance names the scores file relative to it.
    """
    from wsi_mil.explain.scaling import slide_ranges
    from wsi_mil.run_layout import RunLayout

    options = options or HeatmapConfig()
    scores = scores if isinstance(scores, SlideScores) else read_scores(scores)
    out_dir = Path(out_dir)
    maps = select_maps(scores, options.maps)
    ranges = slide_ranges(maps, options=options, cohort=cohort)
    scores_file = RunLayout(run_dir).relative(scores.path) if run_dir else Path(scores.path).name
    bag = read_bag_info(bag_path)
    slide = _open_slide(scores, slide_path, reader=reader, options=options)
    try:
        geometry = slide_geometry(scores, slide, bag.attrs)
        written = sum(
            write_map(
                name,
                values,
                scores,
                geometry,
                slide,
                bag.tissue,
                out_dir,
                options,
                overwrite,
                score_range=ranges[name],
                scores_file=scores_file,
            )
            for name, values in maps.items()
        )
        if "geojson" in options.formats:
            from wsi_mil.explain.export_geojson import write_slide_geojson

            written += write_slide_geojson(
                scores, maps, ranges, out_dir=out_dir, options=options, mpp=geometry.mpp, overwrite=overwrite
            )
    finally:
        if slide is not None:
            slide.close()
    return {
        "n_patches": len(scores.coords),
        "maps": " ".join(maps),
        "files_written": written,
        "tissue_mask": bag.tissue is not None,
    }
