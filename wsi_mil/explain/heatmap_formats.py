"""The file formats of one map of one slide: OME-Zarr, float32 and RGBA TIFF pyramids, the
overlay PNG and the blended TIFF (file names in :data:`MAP_FILES`).

Every format paints the same scores through one :class:`MapCanvases` (the map's canvases
at any downsample); each file appears atomically and complete files are skipped unless
``overwrite``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from wsi_mil.config import HeatmapConfig
from wsi_mil.errors import WsiMilError
from wsi_mil.explain.maps import SlideScores
from wsi_mil.explain.stitch import CanvasGeometry, ScorePainter, ScoreRange, TissueMask, stitch_scores

TIFF_TILE = 256
#: Dask chunks of TIFF levels that are canvases (smoothed maps): one row of 256-px tiles per chunk row
TIFF_CHUNK = (TIFF_TILE, 2048)
logger = logging.getLogger(__name__)

#: file name pattern of each per-map format
MAP_FILES = {
    "zarr": "{map}.ome.zarr",
    "tiff": "{map}.tiff",
    "rgba_tiff": "{map}_rgba.tiff",
    "png": "{map}_overlay.png",
    "blend_tiff": "{map}_blend.tiff",
}


@dataclass(frozen=True)
class SlideGeometry:
    """What the canvases need from the slide: level-0 size, MPP, pyramid downsamples."""

    dimensions: tuple[int, int]
    mpp: float | None
    level_downsamples: tuple[float, ...]


def output_paths(out_dir: Path, map_names: Sequence[str], formats: Sequence[str]) -> list[Path]:
    """The files ``formats`` make for ``map_names`` in a slide's heatmap folder."""
    paths = [out_dir / MAP_FILES[f].format(map=m) for m in map_names for f in formats if f in MAP_FILES]
    if "geojson" in formats:
        from wsi_mil.explain.export_geojson import PATCHES_NAME, REGIONS_NAME

        paths.extend(out_dir / name for name in (PATCHES_NAME, REGIONS_NAME))
    return paths


def base_downsample(geometry: SlideGeometry, options: HeatmapConfig, slide_id: str) -> float:
    """The finest OME-Zarr level's downsample: ``heatmap.level`` or ``heatmap.mpp``, else level 0."""
    if options.level is not None:
        if not 0 <= options.level < len(geometry.level_downsamples):
            raise WsiMilError(
                f"{slide_id}: level {options.level} not in the slide's 0..{len(geometry.level_downsamples) - 1}"
            )
        return float(geometry.level_downsamples[options.level])
    if options.mpp is not None:
        if geometry.mpp is None:
            raise WsiMilError(f"{slide_id}: heatmap.mpp needs the slide's MPP, which is unknown; use heatmap.level")
        return max(1.0, options.mpp / geometry.mpp)
    return 1.0


@dataclass(frozen=True)
class MapCanvases:
    """One map's scores painted at any downsample. values: (N,) per patch of ``scores``."""

    scores: SlideScores
    values: np.ndarray
    geometry: SlideGeometry
    tissue: TissueMask | None
    options: HeatmapConfig
    #: downsample of the finest OME-Zarr level; smoothing (``smooth_sigma``) is in its pixels
    base: float

    def canvas(self, downsample: float, chunks: tuple[int, int], shape: tuple[int, int] | None = None) -> Any:
        """A lazy Dask canvas at ``downsample`` (the slide's size there, or ``shape``)."""
        geometry = (
            CanvasGeometry(shape, downsample)
            if shape
            else CanvasGeometry.for_slide(self.geometry.dimensions, downsample)
        )
        return stitch_scores(
            self.scores.coords,
            self.values,
            patch_size_level0=self.scores.patch_size_level0,
            geometry=geometry,
            chunks=chunks,
            tissue=self.tissue,
            smooth_sigma=self.options.smooth_sigma * self.base / downsample,
        )

    def tiff_level(self, downsample: float) -> Any:
        """A TIFF level painted tile by tile from the patch table, skipping tiles without patches.

        Smoothing needs each tile's neighbours, so smoothed maps stay Dask canvases.
        """
        if self.options.smooth_sigma > 0:
            return self.canvas(downsample, TIFF_CHUNK)
        return ScorePainter(
            self.scores.coords,
            self.values,
            patch_size_level0=self.scores.patch_size_level0,
            tissue=self.tissue,
            chunks=(TIFF_TILE, TIFF_TILE),
            geometry=CanvasGeometry.for_slide(self.geometry.dimensions, downsample),
        )


def provenance(
    name: str,
    scores: SlideScores,
    geometry: SlideGeometry,
    *,
    score_range: ScoreRange,
    scores_file: str,
    options: HeatmapConfig,
    cmap: str,
) -> dict[str, Any]:
    """What every map file records about how it was made (no absolute path of this machine)."""
    clear = None if score_range.clear is None else [float(v) if np.isfinite(v) else None for v in score_range.clear]
    return {
        "slide_id": scores.slide_id,
        "map": name,
        "model": scores.root_attrs.get("model"),
        "scores_file": scores_file,
        "vmin": score_range.vmin,
        "vmax": score_range.vmax,
        "clear": clear,
        "scale": options.scale,
        "cmap": cmap,
        "level0_dimensions": list(geometry.dimensions),
        "slide_mpp": geometry.mpp,
    }


def _redo(path: Path) -> bool:
    """True when ``path`` must be written: missing, or damaged since (a warning names it)."""
    from wsi_mil.store.complete import image_file_problem

    problem = image_file_problem(path)
    if problem not in (None, "missing"):
        logger.warning("%s: %s; writing it again", path, problem)
    return problem is not None


def write_map(
    name: str,
    values: np.ndarray,
    scores: SlideScores,
    geometry: SlideGeometry,
    slide: Any,
    tissue: TissueMask | None,
    out_dir: Path,
    options: HeatmapConfig,
    overwrite: bool,
    *,
    score_range: ScoreRange,
    scores_file: str,
) -> int:
    """Every file ``options.formats`` asks of one map (complete ones skipped); returns how many were written."""
    from wsi_mil.explain.scaling import map_cmap

    todo = {f: out_dir / MAP_FILES[f].format(map=name) for f in options.formats if f in MAP_FILES}
    todo = {f: p for f, p in todo.items() if overwrite or _redo(p)}
    if not todo:
        return 0
    cmap = map_cmap(name, options)
    canvases = MapCanvases(
        scores, values, geometry, tissue, options, base_downsample(geometry, options, scores.slide_id)
    )
    about = provenance(
        name, scores, geometry, score_range=score_range, scores_file=scores_file, options=options, cmap=cmap
    )
    for fmt, path in todo.items():
        if fmt == "zarr":
            _write_zarr(path, canvases, name=name, score_range=score_range, provenance=about)
        elif fmt in ("tiff", "rgba_tiff"):
            _write_tiff(path, canvases, rgba=fmt == "rgba_tiff", cmap=cmap, score_range=score_range, provenance=about)
        elif fmt == "png":
            from wsi_mil.explain.export_overview import write_slide_png

            notes = [scores.prediction_text(), f"scale: {options.scale}"]
            write_slide_png(
                path,
                canvases.canvas,
                slide,
                dimensions=geometry.dimensions,
                title=name,
                cmap=cmap,
                score_range=score_range,
                options=options,
                notes=notes,
            )
        elif fmt == "blend_tiff" and slide is not None:
            from wsi_mil.explain.blend import write_blend_tiff

            write_blend_tiff(
                path,
                slide,
                canvases.tiff_level,
                options=options,
                score_range=score_range,
                description=_description(about),
                cmap=cmap,
            )
    return len(todo)


def _description(provenance: dict[str, Any]) -> str:
    """The TIFF ImageDescription of a map file: its provenance as JSON."""
    return json.dumps({"wsi_mil_heatmap": provenance})


def _write_zarr(
    path: Path, canvases: MapCanvases, *, name: str, score_range: ScoreRange, provenance: dict[str, Any]
) -> None:
    """OME-Zarr multiscale from the finest level (``base``) down to about one chunk."""
    from wsi_mil.explain.export_tiff import pyramid_factors
    from wsi_mil.explain.export_zarr import write_ome_zarr

    options, base = canvases.options, canvases.base
    chunk = options.chunk_size
    finest = CanvasGeometry.for_slide(canvases.geometry.dimensions, base)
    factors = pyramid_factors(finest.shape, min_side=chunk // 2)
    levels = [canvases.canvas(base * f, (chunk, chunk)) for f in factors]
    write_ome_zarr(
        path,
        levels,
        level_downsamples=[base * f for f in factors],
        mpp=canvases.geometry.mpp,
        name=name,
        window=(score_range.vmin, score_range.vmax),
        attrs={**provenance, "level0_downsample": base},
        threads=options.threads,
    )


def _write_tiff(
    path: Path, canvases: MapCanvases, *, rgba: bool, cmap: str, score_range: ScoreRange, provenance: dict[str, Any]
) -> None:
    """A pyramidal TIFF at the slide's level-0 size: float32 scores, or colour-mapped RGBA (``rgba``)."""
    from wsi_mil.explain.export_tiff import pyramid_factors, write_pyramid_tiff
    from wsi_mil.explain.stitch import ColouredTiles, colorize

    level0 = CanvasGeometry.for_slide(canvases.geometry.dimensions, 1.0)
    levels = [canvases.tiff_level(f) for f in pyramid_factors(level0.shape)]
    if rgba:
        levels = [
            ColouredTiles(level, cmap=cmap, score_range=score_range)
            if isinstance(level, ScorePainter)
            else colorize(level, cmap=cmap, score_range=score_range)
            for level in levels
        ]
    write_pyramid_tiff(
        path,
        levels,
        mpp=canvases.geometry.mpp,
        kind="rgba" if rgba else "float32",
        description=_description(provenance),
        threads=canvases.options.threads,
    )
