"""The extraction stage: every bag of a run -> ``features/<encoder>/<slide_id>.h5|.zarr``.

One slide at a time per device (extract_slide.py), one Dask task per slide; the checkpoint
is checked once before any slide (encoder_cache.py).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from wsi_mil.config import Config, ExtractConfig
from wsi_mil.errors import ConfigError, WsiMilError
from wsi_mil.features.encoder_cache import check_checkpoint
from wsi_mil.features.extract_slide import STAGE, extract_job
from wsi_mil.features.jobs import ExtractionJob
from wsi_mil.io.slide_ids import check_slide_id
from wsi_mil.run_layout import RunLayout

logger = logging.getLogger(__name__)


def find_jobs(run_dir: str | Path, config: ExtractConfig) -> list[ExtractionJob]:
    """Every bag under ``RUN_DIR/bags`` (and its per-resolution sets), with its output path."""
    layout = RunLayout(run_dir)
    if not layout.bags_root.is_dir():
        raise WsiMilError(f"{run_dir}: no bags/ folder; run `wsi-mil tile ... --out {run_dir}` first")
    return [
        ExtractionJob(
            check_slide_id(bag.stem, where=bag),
            set_name or "-",
            bag,
            layout.features_dir(config.encoder, set_name) / f"{bag.stem}.{config.feature_format}",
            clam_dir=layout.clam_dir(config.encoder, set_name),
        )
        for set_name, bag in layout.find_bags()
    ]


def extract_run(
    run_dir: str | Path,
    *,
    config: Config,
    overwrite: bool = False,
    debug: bool = False,
    progress: bool = True,
    jobs: Sequence[ExtractionJob] | None = None,
    coords: str | Path | None = None,
    slides: str | Path | None = None,
) -> list[dict[str, Any]]:
    """Extract every bag of a run; one Dask task per slide, one worker per device.

    ``coords`` and ``slides``: extract the CLAM or TRIDENT coords files of folder ``coords``
    instead of ``RUN_DIR/bags``, each with its slide from ``slides`` (interop.py).
    """
    from wsi_mil.features.registry import check_weights
    from wsi_mil.store.runlock import run_lock

    # unknown names, missing checkpoint files and file-only weights fail before any work
    check_weights(
        config.extract.encoder, weights=config.extract.weights, checkpoint_path=config.extract.checkpoint_path
    )
    check_checkpoint(
        config.extract.encoder,
        config.extract.checkpoint_path,
        weights=config.extract.weights,
        keep=config.parallel.workers == 0,
    )  # in-process extraction reuses the loaded encoder
    if coords is not None or slides is not None:
        from wsi_mil.features.interop import find_coords_jobs

        if coords is None or slides is None:
            raise ConfigError("--coords and --slides go together: the coords files, and the slides they were made from")
        jobs = find_coords_jobs(
            run_dir,
            coords,
            slides,
            encoder=config.extract.encoder,
            feature_format=config.extract.feature_format,
            extensions=config.tiling.extensions,
        )
    jobs = list(jobs) if jobs is not None else find_jobs(run_dir, config.extract)
    with run_lock(run_dir, "extract"):  # one writer per run folder
        return _extract_locked(run_dir, jobs, config=config, overwrite=overwrite, debug=debug, progress=progress)


def _extract_locked(
    run_dir: str | Path, jobs: list[ExtractionJob], *, config: Config, overwrite: bool, debug: bool, progress: bool
) -> list[dict[str, Any]]:
    from wsi_mil.device import resolve_device
    from wsi_mil.manifest import RunRecorder
    from wsi_mil.parallel import map_slides
    from wsi_mil.progress import on_a_terminal

    device = resolve_device(config.extract.device)
    recorder = RunRecorder(run_dir, logger=logger)

    def on_crash(job: ExtractionJob, error: BaseException) -> None:
        recorder.crashed(
            {"stage": STAGE, "slide_id": job.slide_id, "bag_set": job.bag_set, "path": str(job.bag_path)}, error
        )

    import torch

    gpus = torch.cuda.device_count() if device.type == "cuda" else 0
    workers = config.parallel.workers
    if workers is None:
        workers = max(1, gpus) if device.type == "cuda" and config.extract.device == "auto" else 1
    map_slides(
        extract_job,
        jobs,
        on_result=lambda _, record: recorder.add([record]),
        on_crash=on_crash,
        workers=workers,
        scheduler=config.parallel.scheduler,
        desc="extracting",
        progress=progress,
        daemon=False,  # tasks start DataLoader worker processes
        resources={"GPU": 1} if config.parallel.scheduler and device.type == "cuda" else None,
        config=config,
        overwrite=overwrite,
        debug=debug,
        show_patches=progress and workers == 0 and on_a_terminal(),  # a bar redrawn in place: terminals only
    )
    return recorder.records
