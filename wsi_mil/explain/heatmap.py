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

This module is the stage (jobs, one manifest record per slide, the Dask run); one slide's
outputs are made by :mod:`~wsi_mil.explain.heatmap_slide`, each map's file formats by
:mod:`~wsi_mil.explain.heatmap_formats`, its CAMs by :mod:`~wsi_mil.explain.cam_stage`.
"""

from __future__ import annotations

import functools
import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from wsi_mil.config import Config, HeatmapConfig
from wsi_mil.errors import SlideTimeoutError, WsiMilError
from wsi_mil.explain.heatmap_slide import heatmap_slide
from wsi_mil.explain.maps import read_scores, select_maps
from wsi_mil.explain.stitch import ScoreRange
from wsi_mil.io.library_warnings import attach_warnings, capture_library_warnings
from wsi_mil.io.slide_ids import check_slide_id
from wsi_mil.manifest import failure_record
from wsi_mil.run_layout import HEATMAP_CONFIG, RunLayout

logger = logging.getLogger(__name__)

STAGE = "heatmap"
#: Modules a slide's child process imports, loaded once by the forkserver (see wsi_mil.time_limit).
CHILD_PRELOAD = ("openslide", "tiffslide", "zarr", "tifffile", "matplotlib", "wsi_mil.explain.heatmap_formats")


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


def find_jobs(run_dir: str | Path, *, model: str | None = None) -> tuple[str, list[HeatmapJob]]:
    """Every scores file under ``RUN_DIR/scores/<model>/`` (and its bag-set folders); the model may be omitted when there is one."""
    layout = RunLayout(run_dir)
    models = layout.scored_heads()
    if not models:
        raise WsiMilError(f"{run_dir}: no scores/<model>/ folder; run `wsi-mil predict` first")
    if model is None:
        if len(models) > 1:
            raise WsiMilError(f"{run_dir}: scores of several models ({', '.join(models)}); choose one with --model")
        model = models[0]
    if model not in models:
        raise WsiMilError(f"{run_dir}: no scores for model {model!r}; found: {', '.join(models)}")
    jobs = []
    for _, subset, path in layout.find_scores(model):  # subset: a bag set (e.g. 0.5mpp) or nothing
        label = model if subset == Path(".") else f"{model}/{subset.as_posix()}"
        slide_id = check_slide_id(path.stem, where=path)
        # the bag gives the tissue mask, in level-0 terms: any set's will do
        jobs.append(
            HeatmapJob(
                slide_id,
                path,
                layout.heatmap_dir(model, slide_id, subset),
                bag_path=layout.find_bag(slide_id, subset, other_sets=True),
                label=label,
                run_dir=layout.root,
                model=model,
                subset=subset,
            )
        )
    return model, jobs


def heatmap_job(
    job: HeatmapJob,
    *,
    options: HeatmapConfig,
    reader: str = "auto",
    overwrite: bool = False,
    debug: bool = False,
    cohort: Mapping[str, Mapping[str, ScoreRange]] | None = None,
    checkpoint_path: str | None = None,
) -> dict[str, Any]:
    """One manifest record: ``done``, ``skipped`` or ``failed``; never raises for a bad slide.

    ``cohort``: bag set (``job.subset`` as POSIX) -> map -> colour range, for ``scale: cohort``.
    ``checkpoint_path``: the encoder checkpoint the features were made with (CAMs need it).
    CAMs never fail a slide: what could not be explained is named in the record's note.
    """
    record: dict[str, Any] = {
        "stage": STAGE,
        "slide_id": job.slide_id,
        "bag_set": job.label,
        "path": str(job.scores_path),
    }
    started = time.perf_counter()
    with capture_library_warnings() as captured:  # attached to the slide's row, not printed raw
        done = _heatmap_outputs(
            job,
            record,
            started,
            options=options,
            reader=reader,
            overwrite=overwrite,
            debug=debug,
            cohort=cohort,
            checkpoint_path=checkpoint_path,
        )
    return attach_warnings([done], captured, slide_id=job.slide_id)[0]


def _heatmap_outputs(
    job: HeatmapJob,
    record: dict[str, Any],
    started: float,
    *,
    options: HeatmapConfig,
    reader: str,
    overwrite: bool,
    debug: bool,
    cohort: Mapping[str, Mapping[str, ScoreRange]] | None,
    checkpoint_path: str | None,
) -> dict[str, Any]:
    try:
        scores = read_scores(job.scores_path)  # once: the maps, galleries and CAMs share it
        result = heatmap_slide(
            scores,
            out_dir=job.out_dir,
            slide_path=job.slide_path,
            bag_path=job.bag_path,
            options=options,
            reader=reader,
            overwrite=overwrite,
            run_dir=job.run_dir,
            cohort=(cohort or {}).get(job.subset.as_posix()),
        )
        if "gallery" in options.formats and job.bag_path is not None:
            from wsi_mil.explain.galleries import write_map_galleries

            result["galleries_written"] = write_map_galleries(
                scores,
                select_maps(scores, options.maps),
                bag_path=job.bag_path,
                out_dir=job.out_dir,
                k=options.gallery_k,
                reader=reader,
                overwrite=overwrite,
            )
        if options.cam_top_k and options.cam_methods and job.run_dir is not None:
            from wsi_mil.explain.cam_stage import cam_outputs

            result.update(
                cam_outputs(
                    job, scores, options=options, reader=reader, overwrite=overwrite, checkpoint_path=checkpoint_path
                )
            )
    except Exception as error:
        if debug:
            logger.exception("%s: heatmap failed", job.slide_id)
        return failure_record(record, error, path=job.scores_path, started=started)
    written = result["files_written"] + result.get("cam_files_written", 0) + result.get("galleries_written", 0)
    status = "done" if written else "skipped"
    note = "; ".join(n for n in ("" if written else "complete outputs exist", result.pop("cam_note", "")) if n)
    return {
        **record,
        **result,
        "status": status,
        "error": "",
        "note": note,
        "seconds": round(time.perf_counter() - started, 3),
    }


def heatmap_run(
    run_dir: str | Path,
    *,
    config: Config,
    model: str | None = None,
    overwrite: bool = False,
    debug: bool = False,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Heatmaps of every scored slide of a run, one Dask task per slide; manifest rows as they finish."""
    from wsi_mil.manifest import RunRecorder
    from wsi_mil.parallel import map_slides
    from wsi_mil.store.atomic import atomic_output

    run_dir = Path(run_dir)
    model, jobs = find_jobs(run_dir, model=model)
    if config.heatmap.cam_top_k and config.heatmap.cam_methods:
        _check_cam_checkpoint(jobs, config.extract.checkpoint_path)
    out_root = RunLayout(run_dir).heatmap_head_dir(model)
    out_root.mkdir(parents=True, exist_ok=True)
    with atomic_output(out_root / HEATMAP_CONFIG) as tmp:
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
        recorder.crashed(
            {"stage": STAGE, "slide_id": job.slide_id, "bag_set": job.label, "path": str(job.scores_path)}, error
        )

    job_function: Callable[..., dict[str, Any]] = heatmap_job
    limit = config.heatmap.slide_timeout
    if limit is not None:  # hard limit: each slide in a child process, stopped even inside a C call
        job_function = functools.partial(_heatmap_job_in_child, seconds=limit)
    map_slides(
        job_function,
        jobs,
        on_result=lambda _, record: recorder.add([record]),
        on_crash=on_crash,
        workers=config.parallel.workers,
        scheduler=config.parallel.scheduler,
        desc="heatmaps",
        progress=progress,
        daemon=limit is None,  # a daemonic Dask worker may not start the child process
        options=config.heatmap,
        reader=config.tiling.reader,
        overwrite=overwrite,
        debug=debug,
        cohort=cohort,
        checkpoint_path=config.extract.checkpoint_path,
    )
    return recorder.records


def _heatmap_job_in_child(job: HeatmapJob, *, seconds: float, **kwargs: Any) -> dict[str, Any]:
    """:func:`heatmap_job` in a child process stopped after ``seconds``: a slide whose reads never
    return (a storage that does not answer) or crash its reader fails, and the batch goes on."""
    from wsi_mil.time_limit import ChildDiedError, run_with_time_limit

    started = time.perf_counter()
    try:
        return run_with_time_limit(
            heatmap_job, job, seconds=seconds, preload=CHILD_PRELOAD, limit_key="heatmap.slide_timeout", **kwargs
        )
    except (SlideTimeoutError, ChildDiedError) as error:
        record = {"stage": STAGE, "slide_id": job.slide_id, "bag_set": job.label, "path": str(job.scores_path)}
        return failure_record(record, error, path=job.slide_path or job.scores_path, started=started)


def _check_cam_checkpoint(jobs: list[HeatmapJob], checkpoint_path: str | None) -> None:
    """CAMs of features made with a local checkpoint need that file: checked (and loaded) once, before any
    slide, on the first slide whose feature file can be found (a broken slide is left to its own task).
    A missing, different or unloadable file is one warning here; every slide's maps are still made and
    its record notes why it has no CAMs (the CAM stage loads a checkpoint only when its hash matches)."""
    from wsi_mil.explain.patch_cams import locate_cam_inputs
    from wsi_mil.features.encoder_cache import check_checkpoint
    from wsi_mil.store.features import read_feature_attrs

    for job in jobs:
        if job.run_dir is None:
            continue
        try:
            inputs = locate_cam_inputs(
                read_scores(job.scores_path),
                run_dir=job.run_dir,
                model=job.model,
                subset=job.subset,
                bag_path=job.bag_path,
            )
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
