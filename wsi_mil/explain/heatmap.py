"""The heatmap stage: scores files -> ``RUN_DIR/heatmaps/<model>/<slide_id>/``.

Per slide and map: ``<map>.ome.zarr`` (OME-NGFF 0.4 multiscale, float32),
``<map>.tiff`` (float32 OME-TIFF pyramid at the slide's level-0 size), ``<map>_rgba.tiff``
(colour-mapped uint8 RGBA pyramid, for OpenSlide), ``<map>_overlay.png`` (thumbnail
overlay with a legend and the slide's prediction), optionally ``<map>_blend.tiff``
(level-0 colour map blended with the slide); and ``patches.geojson`` (every map as a
measurement) with ``regions.geojson`` (each map's hot regions), both for QuPath.
Colours follow ``heatmap.scale`` (:mod:`wsi_mil.explain.scaling`): with ``cohort``, the
run's ranges are written to ``colour_ranges.json`` beside the slides' folders.
Each file appears atomically; complete files are skipped on a rerun. No output holds an
absolute path of this machine: provenance names files relative to the run directory.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from wsi_mil.config import Config, HeatmapConfig
from wsi_mil.errors import WsiMilError
from wsi_mil.explain.maps import SlideScores, read_scores, select_maps
from wsi_mil.explain.stitch import CanvasGeometry, ScorePainter, ScoreRange, TissueMask, stitch_scores
from wsi_mil.io.library_warnings import attach_warnings, capture_library_warnings
from wsi_mil.io.slide_ids import check_slide_id
from wsi_mil.manifest import failure_record

logger = logging.getLogger(__name__)

STAGE = "heatmap"
TIFF_TILE = 256
#: Dask chunks of TIFF levels that are canvases (smoothed maps): one row of 256-px tiles per chunk row
TIFF_CHUNK = (TIFF_TILE, 2048)
#: file name pattern of each per-map format
MAP_FILES = {
    "zarr": "{map}.ome.zarr",
    "tiff": "{map}.tiff",
    "rgba_tiff": "{map}_rgba.tiff",
    "png": "{map}_overlay.png",
    "blend_tiff": "{map}_blend.tiff",
}


@dataclass(frozen=True)
class HeatmapJob:
    slide_id: str
    scores_path: Path
    out_dir: Path
    slide_path: Path | None = None
    bag_path: Path | None = None
    #: manifest ``bag_set`` column: the model, and the bag set when scores have several
    label: str = "-"
    #: for CAMs: the run, the scores folder's model name and bag-set sub-folder
    run_dir: Path | None = None
    model: str = ""
    subset: Path = Path(".")


@dataclass(frozen=True)
class SlideGeometry:
    """What the canvases need from the slide: level-0 size, MPP, pyramid downsamples."""

    dimensions: tuple[int, int]
    mpp: float | None
    level_downsamples: tuple[float, ...]


def output_paths(out_dir: Path, map_names: Sequence[str], formats: Sequence[str]) -> list[Path]:
    paths = [out_dir / MAP_FILES[f].format(map=m) for m in map_names for f in formats if f in MAP_FILES]
    if "geojson" in formats:
        from wsi_mil.explain.export_geojson import PATCHES_NAME, REGIONS_NAME

        paths.extend(out_dir / name for name in (PATCHES_NAME, REGIONS_NAME))
    return paths


def run_relative(path: Path, run_dir: Path | None) -> str:
    """``path`` relative to the run directory (POSIX), or its bare name outside one: never absolute."""
    if run_dir is not None:
        try:
            return Path(path).resolve().relative_to(Path(run_dir).resolve()).as_posix()
        except ValueError:
            pass
    return Path(path).name


def _slide_geometry(scores: SlideScores, slide: Any, bag_attrs: dict[str, Any]) -> SlideGeometry:
    mpp = scores.attrs.get("slide_mpp")
    mpp = float(mpp) if mpp is not None and np.isfinite(float(mpp)) else None
    if slide is not None:
        return SlideGeometry(tuple(slide.dimensions), mpp or slide.mpp, tuple(slide.level_downsamples))
    dims = bag_attrs.get("level_dim") or scores.attrs.get("level_dim")
    if dims is None:  # no slide, no bag: the patches' extent
        size = scores.patch_size_level0
        dims = (int(scores.coords[:, 0].max() + size), int(scores.coords[:, 1].max() + size)) if len(scores.coords) else (1, 1)
    return SlideGeometry((int(dims[0]), int(dims[1])), mpp, (1.0,))


def _tissue(bag_path: Path | None) -> TissueMask | None:
    if bag_path is None or not bag_path.exists():
        return None
    from wsi_mil.store.bags import read_bag

    bag = read_bag(bag_path)
    downsample = bag.mask_attrs.get("downsample")
    if bag.tissue_mask is None or downsample is None:
        return None
    return TissueMask(bag.tissue_mask, float(downsample))


def _base_downsample(geometry: SlideGeometry, options: HeatmapConfig, slide_id: str) -> float:
    if options.level is not None:
        if not 0 <= options.level < len(geometry.level_downsamples):
            raise WsiMilError(f"{slide_id}: level {options.level} not in the slide's 0..{len(geometry.level_downsamples) - 1}")
        return float(geometry.level_downsamples[options.level])
    if options.mpp is not None:
        if geometry.mpp is None:
            raise WsiMilError(f"{slide_id}: heatmap.mpp needs the slide's MPP, which is unknown; use heatmap.level")
        return max(1.0, options.mpp / geometry.mpp)
    return 1.0


def heatmap_slide(
    scores_path: str | Path,
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

    ``cohort``: each map's colour range over the run (``scale: cohort``; from
    :func:`wsi_mil.explain.scaling.cohort_ranges`); without it, the slide's own.
    ``run_dir``: provenance names the scores file relative to it.
    """
    from wsi_mil.explain.scaling import slide_ranges

    options = options or HeatmapConfig()
    scores = read_scores(scores_path)
    out_dir = Path(out_dir)
    maps = select_maps(scores, options.maps)
    ranges = slide_ranges(maps, options=options, cohort=cohort)
    scores_file = run_relative(scores.path, Path(run_dir) if run_dir else None)
    recorded = slide_path or scores.attrs.get("slide_path")
    slide_path = Path(str(recorded)) if recorded else None  # never Path(""), which is the working directory
    slide = None
    if slide_path is not None and slide_path.exists():
        from wsi_mil.io.open import open_slide

        slide = open_slide(slide_path, reader=reader, mpp=scores.attrs.get("slide_mpp"))
    elif any(f in options.formats for f in ("png", "blend_tiff")):
        logger.warning("%s: slide %s not found; PNG overlays without the slide, no blend", scores.slide_id, slide_path)
    bag_attrs: dict[str, Any] = {}
    bag_path = Path(bag_path) if bag_path else None
    tissue = _tissue(bag_path)
    if bag_path is not None and bag_path.exists():
        from wsi_mil.store.bags import read_bag

        bag_attrs = read_bag(bag_path).attrs
    try:
        geometry = _slide_geometry(scores, slide, bag_attrs)
        written = 0
        for name, values in maps.items():
            written += _write_map(name, values, scores, geometry, slide, tissue, out_dir, options, overwrite,
                                  score_range=ranges[name], scores_file=scores_file)  # fmt: skip
        if "geojson" in options.formats:
            from wsi_mil.explain.export_geojson import write_slide_geojson

            written += write_slide_geojson(scores, maps, ranges, out_dir=out_dir, options=options, mpp=geometry.mpp,
                                           overwrite=overwrite)  # fmt: skip
    finally:
        if slide is not None:
            slide.close()
    return {"n_patches": len(scores.coords), "maps": " ".join(maps), "files_written": written,
            "tissue_mask": tissue is not None}  # fmt: skip


def _write_map(
    name: str, values: np.ndarray, scores: SlideScores, geometry: SlideGeometry, slide: Any,
    tissue: TissueMask | None, out_dir: Path, options: HeatmapConfig, overwrite: bool, *,
    score_range: ScoreRange, scores_file: str,
) -> int:  # fmt: skip
    from wsi_mil.explain.export_tiff import pyramid_factors, write_pyramid_tiff
    from wsi_mil.explain.scaling import map_cmap
    from wsi_mil.explain.stitch import ColouredTiles, colorize

    todo = {f: out_dir / MAP_FILES[f].format(map=name) for f in options.formats if f in MAP_FILES}
    todo = {f: p for f, p in todo.items() if overwrite or not p.exists()}
    if not todo:
        return 0
    cmap = map_cmap(name, options)
    base = _base_downsample(geometry, options, scores.slide_id)
    size = scores.patch_size_level0
    chunk = options.chunk_size

    def canvas(downsample: float, chunks: tuple[int, int], shape: tuple[int, int] | None = None) -> Any:
        geo = CanvasGeometry(shape, downsample) if shape else CanvasGeometry.for_slide(geometry.dimensions, downsample)
        sigma = options.smooth_sigma * base / downsample
        return stitch_scores(scores.coords, values, patch_size_level0=size, geometry=geo, chunks=chunks,
                             tissue=tissue, smooth_sigma=sigma)  # fmt: skip

    def tiff_level(downsample: float) -> Any:
        """A TIFF level painted tile by tile from the patch table, skipping tiles without patches.

        Smoothing needs each tile's neighbours, so smoothed maps stay Dask canvases.
        """
        if options.smooth_sigma > 0:
            return canvas(downsample, TIFF_CHUNK)
        return ScorePainter(scores.coords, values, patch_size_level0=size, tissue=tissue, chunks=(TIFF_TILE, TIFF_TILE),
                            geometry=CanvasGeometry.for_slide(geometry.dimensions, downsample))  # fmt: skip

    level0 = CanvasGeometry.for_slide(geometry.dimensions, 1.0)
    tiff_factors = pyramid_factors(level0.shape)
    provenance = {"slide_id": scores.slide_id, "map": name, "model": scores.root_attrs.get("model"),
                  "scores_file": scores_file, "vmin": score_range.vmin, "vmax": score_range.vmax,
                  "clear": None if score_range.clear is None else [float(v) if np.isfinite(v) else None
                                                                   for v in score_range.clear],
                  "scale": options.scale, "cmap": cmap,
                  "level0_dimensions": list(geometry.dimensions), "slide_mpp": geometry.mpp}  # fmt: skip
    description = json.dumps({"wsi_mil_heatmap": provenance})
    for fmt, path in todo.items():
        if fmt == "zarr":
            from wsi_mil.explain.export_zarr import write_ome_zarr

            finest = CanvasGeometry.for_slide(geometry.dimensions, base)
            factors = pyramid_factors(finest.shape, min_side=chunk // 2)
            levels = [canvas(base * f, (chunk, chunk)) for f in factors]
            write_ome_zarr(path, levels, level_downsamples=[base * f for f in factors], mpp=geometry.mpp, name=name,
                           window=(score_range.vmin, score_range.vmax), attrs={**provenance, "level0_downsample": base},
                           threads=options.threads)  # fmt: skip
        elif fmt in ("tiff", "rgba_tiff"):
            levels = [tiff_level(f) for f in tiff_factors]
            if fmt == "rgba_tiff":
                colour: dict[str, Any] = {"cmap": cmap, "score_range": score_range}
                levels = [ColouredTiles(level, **colour) if isinstance(level, ScorePainter) else colorize(level, **colour)
                          for level in levels]  # fmt: skip
            write_pyramid_tiff(path, levels, mpp=geometry.mpp, kind="float32" if fmt == "tiff" else "rgba",
                               description=description, threads=options.threads)  # fmt: skip
        elif fmt == "png":
            from wsi_mil.explain.export_overview import write_slide_png

            notes = [scores.prediction_text(), f"scale: {options.scale}"]
            write_slide_png(path, canvas, slide, dimensions=geometry.dimensions, title=name, cmap=cmap,
                            score_range=score_range, options=options, notes=notes)  # fmt: skip
        elif fmt == "blend_tiff" and slide is not None:
            from wsi_mil.explain.blend import write_blend_tiff

            write_blend_tiff(path, slide, tiff_level, options=options, score_range=score_range, description=description,
                             cmap=cmap)  # fmt: skip
    return len(todo)


# ----------------------------------------------------------------------------- bulk


def find_jobs(run_dir: str | Path, *, model: str | None = None) -> tuple[str, list[HeatmapJob]]:
    """Every scores file under ``RUN_DIR/scores/<model>/`` (and its bag-set folders); the model may be omitted when there is one."""
    run_dir = Path(run_dir)
    root = run_dir / "scores"
    models = sorted(d.name for d in root.iterdir() if d.is_dir()) if root.is_dir() else []
    if not models:
        raise WsiMilError(f"{run_dir}: no scores/<model>/ folder; run `wsi-mil predict` first")
    if model is None:
        if len(models) > 1:
            raise WsiMilError(f"{run_dir}: scores of several models ({', '.join(models)}); choose one with --model")
        model = models[0]
    if model not in models:
        raise WsiMilError(f"{run_dir}: no scores for model {model!r}; found: {', '.join(models)}")
    jobs = []
    for path in sorted((root / model).rglob("*.h5")):
        if path.name.startswith("."):
            continue
        subset = path.parent.relative_to(root / model)  # a bag set (e.g. 0.5mpp) or nothing
        label = model if subset == Path(".") else f"{model}/{subset.as_posix()}"
        slide_id = check_slide_id(path.stem, where=path)
        jobs.append(HeatmapJob(slide_id, path, run_dir / "heatmaps" / model / subset / path.stem,
                               bag_path=_find_bag(run_dir, subset, path.stem), label=label, run_dir=run_dir,
                               model=model, subset=subset))  # fmt: skip
    return model, jobs


def _find_bag(run_dir: Path, subset: Path, slide_id: str) -> Path | None:
    """The slide's bag (for its tissue mask): same bag set first, else any."""
    for folder in (run_dir / "bags" / subset, run_dir / "bags"):
        for suffix in (".h5", ".zarr"):
            if (folder / f"{slide_id}{suffix}").exists():
                return folder / f"{slide_id}{suffix}"
    for suffix in (".h5", ".zarr"):
        matches = sorted((run_dir / "bags").glob(f"**/{slide_id}{suffix}"))
        if matches:
            return matches[0]
    return None


def heatmap_job(job: HeatmapJob, *, options: HeatmapConfig, reader: str = "auto", overwrite: bool = False,
                debug: bool = False, cohort: Mapping[str, Mapping[str, ScoreRange]] | None = None,
                checkpoint_path: str | None = None) -> dict[str, Any]:  # fmt: skip
    """One manifest record: ``done``, ``skipped`` or ``failed``; never raises for a bad slide.

    ``cohort``: bag set (``job.subset`` as POSIX) -> map -> colour range, for ``scale: cohort``.
    ``checkpoint_path``: the encoder checkpoint the features were made with (CAMs need it).
    CAMs never fail a slide: what could not be explained is named in the record's note.
    """
    record: dict[str, Any] = {"stage": STAGE, "slide_id": job.slide_id, "bag_set": job.label, "path": str(job.scores_path)}
    started = time.perf_counter()
    with capture_library_warnings() as captured:  # attached to the slide's row, not printed raw
        done = _heatmap_outputs(job, record, started, options=options, reader=reader, overwrite=overwrite, debug=debug,
                                cohort=cohort, checkpoint_path=checkpoint_path)  # fmt: skip
    return attach_warnings([done], captured, slide_id=job.slide_id)[0]


def _heatmap_outputs(job: HeatmapJob, record: dict[str, Any], started: float, *, options: HeatmapConfig, reader: str,
                     overwrite: bool, debug: bool, cohort: Mapping[str, Mapping[str, ScoreRange]] | None,
                     checkpoint_path: str | None) -> dict[str, Any]:  # fmt: skip
    try:
        result = heatmap_slide(job.scores_path, out_dir=job.out_dir, slide_path=job.slide_path, bag_path=job.bag_path,
                               options=options, reader=reader, overwrite=overwrite, run_dir=job.run_dir,
                               cohort=(cohort or {}).get(job.subset.as_posix()))  # fmt: skip
        if "gallery" in options.formats and job.bag_path is not None:
            from wsi_mil.explain.galleries import write_map_galleries

            scores = read_scores(job.scores_path)
            result["galleries_written"] = write_map_galleries(
                scores, select_maps(scores, options.maps), bag_path=job.bag_path, out_dir=job.out_dir,
                k=options.gallery_k, reader=reader, overwrite=overwrite)  # fmt: skip
        if options.cam_top_k and options.cam_methods and job.run_dir is not None:
            from wsi_mil.explain.cam_stage import cam_outputs

            result.update(cam_outputs(job, options=options, reader=reader, overwrite=overwrite,
                                      checkpoint_path=checkpoint_path))  # fmt: skip
    except Exception as error:
        if debug:
            logger.exception("%s: heatmap failed", job.slide_id)
        return failure_record(record, error, path=job.scores_path, started=started)
    written = result["files_written"] + result.get("cam_files_written", 0) + result.get("galleries_written", 0)
    status = "done" if written else "skipped"
    note = "; ".join(n for n in ("" if written else "complete outputs exist", result.pop("cam_note", "")) if n)
    return {**record, **result, "status": status, "error": "", "note": note,
            "seconds": round(time.perf_counter() - started, 3)}  # fmt: skip


def heatmap_run(run_dir: str | Path, *, config: Config, model: str | None = None, overwrite: bool = False,
                debug: bool = False, progress: bool = True) -> list[dict[str, Any]]:  # fmt: skip
    """Heatmaps of every scored slide of a run, one Dask task per slide; manifest rows as they finish."""
    from wsi_mil.manifest import RunRecorder
    from wsi_mil.parallel import map_slides
    from wsi_mil.store.atomic import atomic_output

    run_dir = Path(run_dir)
    model, jobs = find_jobs(run_dir, model=model)
    if config.heatmap.cam_top_k and config.heatmap.cam_methods:
        _check_cam_checkpoint(jobs, config.extract.checkpoint_path)
    out_root = run_dir / "heatmaps" / model
    out_root.mkdir(parents=True, exist_ok=True)
    with atomic_output(out_root / "heatmap_config.json") as tmp:
        tmp.write_text(json.dumps(asdict(config.heatmap), indent=2, sort_keys=True))
    cohort = None
    if config.heatmap.scale == "cohort":
        from wsi_mil.explain.scaling import write_cohort_ranges

        by_set: dict[str, list[Path]] = {}
        for job in jobs:
            by_set.setdefault(job.subset.as_posix(), []).append(job.scores_path)
        cohort = write_cohort_ranges(by_set, out_root, options=config.heatmap)
    recorder = RunRecorder(run_dir, logger=logger)

    def on_crash(job: HeatmapJob, error: BaseException) -> None:
        recorder.crashed({"stage": STAGE, "slide_id": job.slide_id, "bag_set": job.label, "path": str(job.scores_path)}, error)

    map_slides(heatmap_job, jobs, on_result=lambda _, record: recorder.add([record]), on_crash=on_crash,
               workers=config.parallel.workers,
               scheduler=config.parallel.scheduler, desc="heatmaps", progress=progress, options=config.heatmap,
               reader=config.tiling.reader, overwrite=overwrite, debug=debug, cohort=cohort,
               checkpoint_path=config.extract.checkpoint_path)  # fmt: skip
    return recorder.records


def _check_cam_checkpoint(jobs: list[HeatmapJob], checkpoint_path: str | None) -> None:
    """CAMs of features made with a local checkpoint need that file: checked (and loaded) once, before any
    slide, on the first slide whose feature file can be found (a broken slide is left to its own task).
    A missing, different or unloadable file is one warning here; every slide's maps are still made and
    its record notes why it has no CAMs (the CAM stage loads a checkpoint only when its hash matches)."""
    from wsi_mil.explain.patch_cams import locate_cam_inputs
    from wsi_mil.features.extract import check_checkpoint
    from wsi_mil.store.features import read_feature_attrs

    for job in jobs:
        if job.run_dir is None:
            continue
        try:
            inputs = locate_cam_inputs(read_scores(job.scores_path), run_dir=job.run_dir, model=job.model,
                                       subset=job.subset, bag_path=job.bag_path)  # fmt: skip
            attrs = {} if isinstance(inputs, str) else read_feature_attrs(inputs.feature_path)
        except Exception:  # noqa: BLE001, S112 -- this slide's task reports it
            continue
        if attrs:
            weights = str(attrs.get("weights", ""))
            if weights.startswith("checkpoint:"):
                try:
                    check_checkpoint(str(attrs.get("encoder")), checkpoint_path, made_with=weights)
                except WsiMilError as error:  # CAMs are skipped with a note per slide; the maps are still made
                    logger.warning("no CAMs for any slide: %s", error)
            return
