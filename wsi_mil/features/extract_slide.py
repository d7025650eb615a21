"""One slide of the extraction stage: a bag -> ``features/<encoder>/<slide_id>.h5|.zarr``.

Patches stream through a loader (loaders.py: reading threads on CPU; on CUDA a torch
DataLoader with worker processes, each with its own slide handle, pinned memory and
prefetch); the batch transform (resize + normalize) runs on the device; the encoder is
frozen for inference once per process (encoder_cache.py) and reused for every slide.
With ``extract.clam_files``, CLAM's h5_files/ and pt_files/ are written beside each feature file.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from wsi_mil.config import Config, ExtractConfig
from wsi_mil.errors import SlideMismatchError, SlideTimeoutError
from wsi_mil.features.encoder_cache import cached_encoder, frozen_encoder
from wsi_mil.features.jobs import ExtractionJob
from wsi_mil.io.library_warnings import attach_warnings, capture_library_warnings
from wsi_mil.manifest import failure_record
from wsi_mil.store.bags import read_bag
from wsi_mil.store.features import features_problem, write_features

logger = logging.getLogger(__name__)

STAGE = "extract"


def _defaults(config: ExtractConfig, device: Any) -> tuple[int, int, int]:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    cuda = device.type == "cuda"
    batch = config.batch_size or (256 if cuda else 32)
    workers = config.num_workers if config.num_workers is not None else (min(8, cores) if cuda else 1)
    threads = config.threads or cores
    return batch, workers, threads


def _worker_device(device: Any) -> Any:
    """``cuda`` on a machine with several GPUs: Dask worker k takes GPU k (one slide per device)."""
    import torch

    if device.type != "cuda" or device.index is not None or torch.cuda.device_count() < 2:
        return device
    try:
        from distributed import get_worker

        index = int(get_worker().name) % torch.cuda.device_count()
    except (ImportError, ValueError, TypeError):
        return device
    return torch.device("cuda", index)


def _open_checked(bag: Any, config: Config) -> Any:
    """Open the bag's slide and refuse it when it is not the slide the bag was made from."""
    from wsi_mil.io.open import open_slide

    slide_path = Path(str(bag.attrs.get("slide_path", "")))
    if not slide_path.exists():
        raise SlideMismatchError(
            f"{bag.path}: its slide {slide_path} is not there; move it back or re-tile (the bag has no stored pixels)"
        )
    slide = open_slide(slide_path, reader=config.tiling.reader, mpp=bag.attrs.get("slide_mpp"))
    expected = bag.attrs.get("level_dim")
    width, height = slide.dimensions
    if expected is not None and tuple(int(v) for v in expected) != (width, height):
        slide.close()
        raise SlideMismatchError(
            f"{bag.path}: made from a {expected[0]}x{expected[1]} slide, but {slide_path} is "
            f"{width}x{height} now. Re-tile it: wsi-mil tile ... --overwrite"
        )
    return slide


def extract_bag(job: ExtractionJob, *, config: Config, progress: bool = False) -> dict[str, Any]:
    """Extract one bag; raises on slide-level errors (the caller records them)."""
    import torch

    from wsi_mil.device import resolve_device
    from wsi_mil.features.loaders import make_loader, resolve_loader, ring_size
    from wsi_mil.features.reading import PatchDataset, make_source

    started = time.perf_counter()
    options = config.extract
    device = _worker_device(resolve_device(options.device))
    batch_size, num_workers, threads = _defaults(options, device)
    if device.type == "cpu":
        torch.set_num_threads(threads)
    encoder = cached_encoder(options)
    bag = read_bag(job.bag_path)
    if job.foreign:
        from wsi_mil.features.interop import open_foreign

        bag, slide = open_foreign(
            bag, job.slide_path, slide_id=job.slide_id, reader=config.tiling.reader, mpp=config.tiling.mpp
        )
    else:
        slide = None if bag.has_pixels or len(bag) == 0 else _open_checked(bag, config)
    n = len(bag)
    features = np.zeros((n, encoder.config.embed_dim), dtype=options.dtype)
    valid = np.zeros(n, dtype=bool)
    source_kind = "none"
    try:
        if n:
            source = make_source(
                bag,
                slide,
                reader=config.tiling.reader,
                mpp=bag.attrs.get("slide_mpp"),
                direct_tiles=options.direct_tiles,
            )
            source_kind = source.kind
            blank = int(source.size or bag.attrs.get("target_patch_size") or bag.attrs["patch_size"])
            # counted from the first read: the model's load is not the slide's
            deadline = None if options.slide_timeout is None else time.monotonic() + options.slide_timeout
            loader = make_loader(
                PatchDataset(source, blank_size=blank, ring_size=ring_size(), deadline=deadline),
                kind=resolve_loader(options.loader, device),
                batch_size=batch_size,
                workers=num_workers,
                pin_memory=device.type == "cuda",
            )
            try:
                _run_loader(loader, encoder, device, options, features, valid, progress, job.slide_id, deadline)
            finally:
                source.close()
    finally:
        if slide is not None:
            slide.close()
    seconds = time.perf_counter() - started
    attrs = {
        "encoder": encoder.name,
        "embed_dim": encoder.config.embed_dim,
        "weights": encoder.weights,
        "input_size": encoder.config.input_size,
        "slide_id": job.slide_id,
        "bag_path": str(job.bag_path.resolve()),
        "patch_source": source_kind,
        "patch_size_level0": bag.attrs.get("patch_size_level0"),
        "target_mpp": bag.attrs.get("target_mpp"),
    }
    write_features(job.out_path, features[valid], bag.coords[valid], attrs, failed_coords=bag.coords[~valid])
    if options.clam_files:
        _write_clam(job, config)
    n_failed = int(n - valid.sum())
    if n_failed:
        logger.warning(
            "%s: %d of %d patches unreadable (corrupt tiles); removed and listed in failed_coords",
            job.slide_id,
            n_failed,
            n,
        )
    return {
        "encoder": encoder.name,
        "n_patches": int(valid.sum()),
        "n_failed": n_failed,
        "dim": encoder.config.embed_dim,
        "patch_source": source_kind,
        "device": str(device),
        "seconds": round(seconds, 3),
        "patches_per_s": round(n / seconds, 1) if seconds > 0 else "",
    }


def _write_clam(job: ExtractionJob, config: Config, *, only_missing: bool = False) -> None:
    """CLAM's h5_files/ and pt_files/ for this job's feature file, with ``extract.clam_files``."""
    if not config.extract.clam_files or job.clam_dir is None:
        return
    from wsi_mil.features.interop import clam_files_missing, write_clam_files

    if not only_missing or clam_files_missing(job.out_path, job.clam_dir):
        write_clam_files(job.out_path, job.clam_dir)


def _run_loader(
    loader: Any,
    encoder: Any,
    device: Any,
    options: ExtractConfig,
    features: np.ndarray,
    valid: np.ndarray,
    progress: bool,
    slide_id: str,
    deadline: float | None = None,
) -> None:
    import torch
    from tqdm import tqdm

    from wsi_mil.features.freeze import autocast_context

    model, seen = None, 0
    with tqdm(total=len(features), desc=slide_id, unit="patch", disable=not progress, leave=False) as bar:
        for images, ok, index in loader:
            x = encoder.transform(images.to(device, non_blocking=True))
            if model is None:
                model = frozen_encoder(encoder, x, device, options.freeze)
            with torch.inference_mode(), autocast_context(device, encoder.precision):
                out = model(x)
            rows = index.numpy()
            features[rows] = out.float().cpu().numpy().astype(features.dtype, copy=False)
            valid[rows] = ok.numpy()
            bar.update(len(rows))
            seen += len(rows)
            if deadline is not None and time.monotonic() > deadline and (seen < len(features) or not ok.all()):
                raise SlideTimeoutError(
                    f"stopped after the per-slide time limit of {options.slide_timeout:g} s "
                    f"(extract.slide_timeout), {int(valid.sum())} of {len(features)} patches read; its tiles "
                    "decode pathologically slowly or its storage is slow. Check the file, or raise the limit."
                )


def extract_job(
    job: ExtractionJob, *, config: Config, overwrite: bool = False, debug: bool = False, show_patches: bool = False
) -> dict[str, Any]:
    """One manifest record for one bag: ``done``, ``skipped`` or ``failed``; never raises for a bad slide."""
    record: dict[str, Any] = {
        "stage": STAGE,
        "slide_id": job.slide_id,
        "bag_set": job.bag_set,
        "path": str(job.bag_path),
    }
    redo = ""
    if job.out_path.exists() and not overwrite:
        problem = features_problem(job.out_path)
        if problem is None:
            try:
                _write_clam(job, config, only_missing=True)
            except Exception as error:  # noqa: BLE001 -- recorded as this slide's failure; the batch goes on
                return failure_record(record, error, path=job.out_path, started=time.perf_counter())
            return {**record, "status": "skipped", "note": "complete feature file exists"}
        redo = f"redone: the previous feature file was {problem}"
        logger.warning("%s: %s", job.out_path, redo)
    started = time.perf_counter()
    with capture_library_warnings() as captured:  # attached to the slide's row, not printed raw
        try:
            result = {
                **record,
                **extract_bag(job, config=config, progress=show_patches),
                "status": "done",
                "error": "",
                "note": redo,
            }
        except Exception as error:
            if debug:
                logger.exception("%s: extraction failed", job.slide_id)
            result = failure_record(record, error, path=job.bag_path, started=started)
    return attach_warnings([result], captured, slide_id=job.slide_id)[0]
