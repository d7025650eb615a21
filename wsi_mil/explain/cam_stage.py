"""The heatmap stage's CAM part: a slide's top patches explained, written and stitched.

CAMs never fail a slide: a method that cannot run on the encoder (Grad-CAM and its
family on a transformer), or any error while explaining, is named in the manifest
record's note, and every map that could be made is written.
"""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING, Any

import numpy as np

from wsi_mil.config import HeatmapConfig
from wsi_mil.explain.heatmap_formats import TIFF_CHUNK
from wsi_mil.explain.heatmap_slide import read_bag_info, slide_geometry
from wsi_mil.explain.maps import SlideScores, safe_name
from wsi_mil.explain.stitch import CanvasGeometry

if TYPE_CHECKING:  # the heatmap stage calls this module: no import at run time
    from wsi_mil.explain.heatmap import HeatmapJob

logger = logging.getLogger(__name__)


def cam_outputs(
    job: HeatmapJob,
    scores: SlideScores,
    *,
    options: HeatmapConfig,
    reader: str = "auto",
    overwrite: bool = False,
    checkpoint_path: str | None = None,
) -> dict[str, Any]:
    """CAMs of the slide's top patches (``scores``: the job's scores file, read): cams.h5, the
    gallery and a stitched canvas per method.

    Returns record fields; ``cam_note`` says what was skipped and why (heads, features or
    bag missing, methods the encoder cannot run, errors), and never raises for a slide.
    ``checkpoint_path``: the encoder's local weights (``extract.checkpoint_path``), for
    features made with a checkpoint (``uni``, ``timm:<name>`` with own weights).
    """
    from wsi_mil.explain.cams_file import CAMS_NAME, SKIPPED_ATTR, read_cams
    from wsi_mil.explain.patch_cams import cam_slide, locate_cam_inputs

    cams_path = job.out_dir / CAMS_NAME
    try:
        if cams_path.exists() and not overwrite:
            cams = read_cams(cams_path)
        elif job.run_dir is None:  # the heads and features are found through the run folder
            return {"cams": "skipped", "cam_note": "no CAMs: the scores are not inside a run folder"}
        else:
            inputs = locate_cam_inputs(
                scores, run_dir=job.run_dir, model=job.model, subset=job.subset, bag_path=job.bag_path
            )
            if isinstance(inputs, str):
                logger.warning("%s: no CAMs: %s", job.slide_id, inputs)
                return {"cams": "skipped", "cam_note": f"no CAMs: {inputs}"}
            cams = cam_slide(
                scores,
                inputs,
                job.out_dir,
                methods=options.cam_methods,
                top_k=options.cam_top_k,
                ig_steps=options.cam_ig_steps,
                reader=reader,
                device=options.cam_device,
                checkpoint_path=checkpoint_path,
                context=options.cam_context,
            )
        written = _write_cam_canvases(job, scores, cams, options, overwrite)
    except Exception as error:  # noqa: BLE001 -- a CAM never fails the slide: its maps are written already
        logger.warning("%s: no CAMs: %s: %s", job.slide_id, type(error).__name__, error)
        return {"cams": "skipped", "cam_note": f"no CAMs: {type(error).__name__}: {error}"}
    skipped = json.loads(cams.attrs.get(SKIPPED_ATTR) or "{}")
    note = "; ".join(f"{method} skipped: {why}" for method, why in skipped.items())
    return {
        "cams": " ".join(cams.maps),
        "cam_patches": len(cams.coords),
        "cam_files_written": written,
        "cam_note": note,
    }


def _write_cam_canvases(
    job: HeatmapJob, scores: SlideScores, cams: Any, options: HeatmapConfig, overwrite: bool
) -> int:
    """One OME-Zarr and one float32 TIFF canvas per method (as ``options.formats`` asks)."""
    from wsi_mil.explain.cam_gallery import cam_range
    from wsi_mil.explain.export_tiff import pyramid_factors, write_pyramid_tiff
    from wsi_mil.explain.export_zarr import write_ome_zarr
    from wsi_mil.explain.stitch_cams import stitch_patch_maps

    geometry = slide_geometry(scores, None, read_bag_info(job.bag_path).attrs)
    patch_size_level0 = scores.patch_size_level0
    level0 = CanvasGeometry.for_slide(geometry.dimensions, 1.0)
    written = 0
    for method, maps in cams.maps.items():
        name = f"cam_{safe_name(method)}"
        low, high = cam_range(maps)
        provenance = {
            "slide_id": job.slide_id,
            "map": name,
            "vmin": low,
            "vmax": high,
            "top_k": len(maps),
            "level0_dimensions": list(geometry.dimensions),
            "slide_mpp": geometry.mpp,
        }

        def canvas(downsample: float, chunks: tuple[int, int], maps: np.ndarray = maps) -> Any:
            return stitch_patch_maps(
                cams.coords,
                maps,
                patch_size_level0=patch_size_level0,
                geometry=CanvasGeometry.for_slide(geometry.dimensions, downsample),
                chunks=chunks,
            )

        zarr_path, tiff_path = job.out_dir / f"{name}.ome.zarr", job.out_dir / f"{name}.tiff"
        if "zarr" in options.formats and (overwrite or not zarr_path.exists()):
            factors = pyramid_factors(level0.shape, min_side=options.chunk_size // 2)
            write_ome_zarr(
                zarr_path,
                [canvas(f, (options.chunk_size,) * 2) for f in factors],
                level_downsamples=factors,
                mpp=geometry.mpp,
                name=name,
                window=(low, high),
                attrs=provenance,
                threads=options.threads,
            )
            written += 1
        if "tiff" in options.formats and (overwrite or not tiff_path.exists()):
            write_pyramid_tiff(
                tiff_path,
                [canvas(f, TIFF_CHUNK) for f in pyramid_factors(level0.shape)],
                mpp=geometry.mpp,
                kind="float32",
                description=json.dumps({"wsi_mil_heatmap": provenance}),
                threads=options.threads,
            )
            written += 1
    return written
