"""The tiling stage: one slide -> one patch bag per target resolution, and a whole folder in bulk.

Layout under ``RUN_DIR``: with one target, ``bags/<slide_id>.h5|.zarr`` and
``qc/<slide_id>.png``; with several (e.g. 0.25, 0.5, 1 and 2 um/px), one set per
target: ``bags/<set>/<slide_id>.h5`` and ``qc/<set>/<slide_id>.png``, where the set is
named ``0.5mpp``, ``20x`` or ``level1``. Beside each QC image, ``<slide_id>.geojson`` holds
the tissue contours as QuPath annotations (:mod:`wsi_mil.geojson`).
"""

from __future__ import annotations

import functools
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from wsi_mil.config import Config, TilingConfig, config_to_dict, config_to_json
from wsi_mil.errors import SlideTimeoutError, WsiMilError
from wsi_mil.geojson import write_tissue_geojson
from wsi_mil.io.base import BaseReader
from wsi_mil.io.bounded import describe_unreadable
from wsi_mil.io.discover import SlideSource, check_unique_ids
from wsi_mil.io.library_warnings import attach_warnings, capture_library_warnings
from wsi_mil.io.open import open_slide
from wsi_mil.manifest import RunRecorder, failure_record
from wsi_mil.run_layout import RunLayout
from wsi_mil.store.atomic import atomic_output
from wsi_mil.store.bags import BAG_FORMAT_VERSION, TISSUE_FRACTION, TISSUE_MASK, bag_path, bag_problem, open_bag_writer
from wsi_mil.store.runlock import run_lock
from wsi_mil.tiling.grid import GridSpec, plan_grid, select_patches
from wsi_mil.tiling.mask_ops import one_opencv_thread
from wsi_mil.tiling.qc import render_qc, save_qc
from wsi_mil.tiling.slide_tissue import SlideTissue, detect_slide_tissue

logger = logging.getLogger(__name__)

STAGE = "tile"
PIXEL_BATCH = 64
#: What tiling imports as it runs: loaded once by the time limit's forkserver, not in every child.
CHILD_PRELOAD = (
    "openslide",
    "tiffslide",
    "h5py",
    "zarr",
    "shapely",
    "scipy.ndimage",
    "skimage.color",
    "skimage.filters",
    "skimage.filters.rank",
    "skimage.measure",
    "skimage.morphology",
    "skimage.segmentation",
    "skimage.util",
)


@dataclass(frozen=True)
class BagSet:
    """One output set of the run: a target resolution and where its files go."""

    name: str
    target_mpp: float | None
    level: int | None
    bag_dir: Path
    qc_dir: Path


def bag_sets(run_dir: str | Path, tiling: TilingConfig) -> list[BagSet]:
    layout = RunLayout(run_dir)
    if tiling.level is not None:
        targets: list[tuple[str, float | None]] = [(f"level{tiling.level}", None)]
    elif tiling.magnification:
        targets = [(f"{m:g}x", 10.0 / m) for m in tiling.magnification]
    else:
        targets = [(f"{m:g}mpp", m) for m in tiling.target_mpp]
    single = len(targets) == 1
    return [
        BagSet(
            name=name,
            target_mpp=mpp,
            level=tiling.level,
            bag_dir=layout.bag_dir("" if single else name),
            qc_dir=layout.qc_dir("" if single else name),
        )
        for name, mpp in targets
    ]


def qc_path(bag_set: BagSet, slide_id: str) -> Path:
    return bag_set.qc_dir / f"{slide_id}.png"


def _is_complete(bag_set: BagSet, slide_id: str, tiling: TilingConfig) -> bool:
    if tiling.qc and not qc_path(bag_set, slide_id).exists():
        return False
    path = bag_path(bag_set.bag_dir, slide_id, tiling.bag_format)
    problem = bag_problem(path) if path.exists() else "missing"
    if problem != "missing" and problem is not None:
        logger.warning("%s: %s; tiling it again", path, problem)
    return problem is None


def _record(source: SlideSource, bag_set: BagSet, **fields: Any) -> dict[str, Any]:
    record = {"stage": STAGE, "slide_id": source.slide_id, "bag_set": bag_set.name, "path": str(source.path)}
    record.update(fields)
    return record


def _read_pixels(slide: BaseReader, coords: np.ndarray, spec: GridSpec) -> np.ndarray:
    """(n, S, S, 3) uint8 patches at the target resolution, S = target_patch_size."""
    out = np.empty((len(coords), spec.target_patch_size, spec.target_patch_size, 3), dtype=np.uint8)
    size = (spec.patch_size, spec.patch_size)
    for i, (x, y) in enumerate(coords):
        patch = slide.read_region((int(x), int(y)), spec.patch_level, size)
        if spec.patch_size != spec.target_patch_size:
            patch = patch.resize((spec.target_patch_size,) * 2, Image.Resampling.LANCZOS)
        out[i] = np.asarray(patch)
    return out


@functools.lru_cache(maxsize=4)
def _config_json(config: Config) -> str:
    """The config as stored in every bag, encoded once per config (a batch shares one)."""
    return config_to_json(config)


def _bag_attrs(source: SlideSource, slide: BaseReader, spec: GridSpec, config: Config) -> dict[str, Any]:
    return {
        "patch_size": spec.patch_size,
        "patch_level": spec.patch_level,
        "patch_size_level0": spec.patch_size_level0,
        "step_level0": spec.step_level0,
        "target_patch_size": spec.target_patch_size,
        "target_mpp": spec.target_mpp,
        "slide_mpp": spec.slide_mpp,
        "mpp_source": slide.mpp_info.source,
        "level_dim": list(slide.dimensions),
        "slide_path": str(Path(source.path).resolve()),
        "slide_id": source.slide_id,
        "reader": slide.backend,
        "tissue_threshold": config.tiling.tissue_threshold,
        "format_version": BAG_FORMAT_VERSION,
        "tiling_config": _config_json(config),
    }


def _write_set(
    source: SlideSource,
    slide: BaseReader,
    tissue: SlideTissue,
    bag_set: BagSet,
    config: Config,
    started: float,
) -> dict[str, Any]:
    tiling = config.tiling
    mask, downsample = tissue.mask, tissue.plan.downsample
    spec = plan_grid(
        slide, patch_size=tiling.patch_size, target_mpp=bag_set.target_mpp, level=bag_set.level, overlap=tiling.overlap
    )
    coords, fractions = select_patches(mask, downsample, slide.dimensions, spec, tiling.tissue_threshold)
    note = ""
    width, height = slide.dimensions
    if min(width, height) < spec.patch_size_level0:
        note = f"slide ({width}x{height}) is smaller than one patch ({spec.patch_size_level0} level-0 px)"
    elif not mask.any():
        note = "no tissue found"
    elif len(coords) == 0:
        note = f"no patch reaches tissue_threshold {tiling.tissue_threshold}"
    if tissue.unreadable:
        note = "; ".join(filter(None, [note, f"{describe_unreadable(list(tissue.unreadable))} filled as background"]))

    if tiling.qc:  # before the bag: the bag is the set's completion marker
        qc = render_qc(tissue.picture, mask, coords, spec.patch_size_level0, downsample)
        save_qc(qc, qc_path(bag_set, source.slide_id))
        write_tissue_geojson(
            qc_path(bag_set, source.slide_id).with_suffix(".geojson"),
            mask,
            downsample,
            slide_id=source.slide_id,
            mpp=slide.mpp,
        )
    path = bag_path(bag_set.bag_dir, source.slide_id, tiling.bag_format)
    with open_bag_writer(path) as writer:
        writer.write_coords(coords, _bag_attrs(source, slide, spec, config))
        writer.write_array(TISSUE_FRACTION, fractions)
        writer.write_array(TISSUE_MASK, mask.view(np.uint8), {"downsample": downsample, "mpp": tissue.plan.mpp})
        if tiling.save_pixels:
            writer.create_pixels(len(coords), spec.target_patch_size)
            for start in range(0, len(coords), PIXEL_BATCH):
                writer.write_pixels(start, _read_pixels(slide, coords[start : start + PIXEL_BATCH], spec))
    if note:
        logger.info("%s [%s]: empty bag: %s", source.slide_id, bag_set.name, note)
    return _record(
        source,
        bag_set,
        reader=slide.backend,
        mpp=slide.mpp,
        mpp_source=slide.mpp_info.source,
        level=spec.patch_level,
        patch_size=spec.patch_size,
        n_patches=len(coords),
        seconds=round(time.perf_counter() - started, 3),
        status="done",
        error="",
        note=note,
    )


def tile_slide(
    source: SlideSource, run_dir: str | Path, *, config: Config, overwrite: bool = False, debug: bool = False
) -> list[dict[str, Any]]:
    """Tile one slide into one bag per target resolution.

    Never raises for a bad slide: each bag set gets a manifest record with
    status ``done``, ``skipped`` (complete output exists) or ``failed`` (error).
    """
    started = time.perf_counter()
    sets = bag_sets(run_dir, config.tiling)
    todo = [s for s in sets if overwrite or not _is_complete(s, source.slide_id, config.tiling)]
    records = [_record(source, s, status="skipped", note="complete bag exists") for s in sets if s not in todo]
    if not todo:
        return records
    with capture_library_warnings() as captured, one_opencv_thread():
        done = _tile_sets(source, todo, config, started, debug)
    return records + attach_warnings(done, captured, slide_id=source.slide_id)  # not printed raw


def _tile_slide_in_child(
    source: SlideSource,
    run_dir: str | Path,
    *,
    seconds: float,
    config: Config,
    overwrite: bool = False,
    debug: bool = False,
) -> list[dict[str, Any]]:
    """:func:`tile_slide` in a child process stopped after ``seconds``: a slide stuck inside a C call
    (which the reader's own time check cannot reach) fails and the batch goes on."""
    from wsi_mil.time_limit import ChildDiedError, run_with_time_limit

    started = time.perf_counter()
    try:
        return run_with_time_limit(
            tile_slide,
            source,
            seconds=seconds,
            preload=CHILD_PRELOAD,
            run_dir=run_dir,
            config=config,
            overwrite=overwrite,
            debug=debug,
        )
    except (SlideTimeoutError, ChildDiedError) as error:
        return [_failure(source, s, error, started, False) for s in bag_sets(run_dir, config.tiling)]


def _tile_sets(
    source: SlideSource, todo: list[BagSet], config: Config, started: float, debug: bool
) -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = []
    try:
        slide = open_slide(source.path, reader=config.tiling.reader, mpp=source.mpp or config.tiling.mpp)
    except Exception as error:  # noqa: BLE001 -- recorded as this slide's failure; the batch goes on
        return [_failure(source, s, error, started, debug) for s in todo]
    with slide:
        slide.set_time_limit(config.tiling.slide_timeout, elapsed=time.perf_counter() - started)
        if slide.mpp is None:  # fail fast, before any pixel work, where an MPP is needed
            for bag_set in [s for s in todo if s.target_mpp is not None]:
                try:
                    plan_grid(slide, patch_size=config.tiling.patch_size, target_mpp=bag_set.target_mpp)
                except Exception as error:  # noqa: BLE001 -- recorded as this set's failure
                    records.append(_failure(source, bag_set, error, started, debug))
                    todo.remove(bag_set)
            if not todo:
                return records
        try:
            limit = config.tiling.max_unreadable_fraction
            tissue = detect_slide_tissue(slide, config=config.tissue, max_unreadable=limit)
        except Exception as error:  # noqa: BLE001 -- recorded as this slide's failure; the batch goes on
            return records + [_failure(source, s, error, started, debug) for s in todo]
        for bag_set in todo:
            try:
                slide.check_deadline()
                records.append(_write_set(source, slide, tissue, bag_set, config, started))
            except Exception as error:  # noqa: BLE001 -- recorded as this set's failure
                records.append(_failure(source, bag_set, error, started, debug))
    return records


def _failure(source: SlideSource, bag_set: BagSet, error: BaseException, started: float, debug: bool) -> dict[str, Any]:
    if debug:
        logger.error("%s [%s] failed", source.slide_id, bag_set.name, exc_info=error)
    return failure_record(_record(source, bag_set), error, path=source.path, started=started)


def tile_slides(
    sources: Sequence[SlideSource],
    run_dir: str | Path,
    *,
    config: Config,
    overwrite: bool = False,
    debug: bool = False,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Tile every slide, one Dask task each; returns the manifest records of this call.

    Duplicate slide ids are refused before any work. Each finished slide is
    written to ``RUN_DIR/manifest.csv`` at once, so a killed run keeps its record.
    """
    check_unique_ids(sources)
    run_dir = Path(run_dir)
    with run_lock(run_dir, "tile"):  # a second writer stops here, before touching any file
        return _tile_locked(sources, run_dir, config=config, overwrite=overwrite, debug=debug, progress=progress)


def _tile_locked(
    sources: Sequence[SlideSource], run_dir: Path, *, config: Config, overwrite: bool, debug: bool, progress: bool
) -> list[dict[str, Any]]:
    from wsi_mil.parallel import map_slides

    with atomic_output(RunLayout(run_dir).tiling_config) as tmp:
        tmp.write_text(json.dumps(config_to_dict(config), indent=2, sort_keys=True))
    recorder = RunRecorder(run_dir, logger=logger)

    def on_crash(source: SlideSource, error: BaseException) -> None:
        message = (
            f"{source.path}: the worker processing this slide died ({type(error).__name__}: {error}); "
            "the file probably crashes its reader. Try --reader tiffslide, or check the file."
        )
        recorder.add(
            [
                _failure(source, s, WsiMilError(message), time.perf_counter(), False)
                for s in bag_sets(run_dir, config.tiling)
            ]
        )

    job: Callable[..., list[dict[str, Any]]] = tile_slide
    limit = config.tiling.slide_timeout
    if limit is not None:  # hard limit: each slide in a child process, stopped even inside a C call
        job = functools.partial(_tile_slide_in_child, seconds=limit)
    map_slides(
        job,
        list(sources),
        on_result=lambda _, records: recorder.add(records),
        on_crash=on_crash,
        workers=config.parallel.workers,
        scheduler=config.parallel.scheduler,
        desc="tiling",
        progress=progress,
        daemon=limit is None,  # a daemonic Dask worker may not start the child process
        run_dir=run_dir,
        config=config,
        overwrite=overwrite,
        debug=debug,
    )
    return recorder.records
