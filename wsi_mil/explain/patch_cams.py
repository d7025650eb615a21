"""CAM maps of a slide's top-attended patches: pixels -> maps -> ``cams.h5`` and a gallery PNG
(the heatmap stage stitches them into sub-patch-resolution canvases: cam_stage.py).

The pieces live beside this orchestration: the file format in cams_file.py, the gallery in
cam_gallery.py, patch pixels in patch_pixels.py and the encoder cache in cam_encoders.py.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from wsi_mil.explain.cam_gallery import GALLERY_NAME, write_gallery_png
from wsi_mil.explain.cams_file import CAMS_NAME, SKIPPED_ATTR, PatchCams, write_cams
from wsi_mil.explain.maps import SlideScores
from wsi_mil.explain.patch_pixels import read_patch_pixels

logger = logging.getLogger(__name__)


def top_patches(scores: SlideScores, k: int) -> np.ndarray:
    """Rows of the ``k`` most attended patches (pre-softmax attention), best first."""
    attention = np.asarray(scores.arrays["attention_raw"], dtype=np.float64).reshape(-1)
    return np.argsort(-attention, kind="stable")[: max(0, k)]


def explain_patches(
    images: np.ndarray,
    *,
    encoder: Any,
    head: Any,
    log_normalizer: float,
    target: int,
    methods: Sequence[str],
    ig_steps: int = 32,
    device: Any = "cpu",
    margin: int = 0,
    context: int = 0,
) -> tuple[dict, dict, np.ndarray]:
    """Maps of uint8 ``images`` (k, H + 2 margin, W + 2 margin, 3) through ``encoder`` and one
    trained ``head``: each patch with ``margin`` pixels of surroundings, shown to the
    encoder as ``context`` input pixels on each side (0, 0: the patch alone).

    Returns (method -> (k, S, S) maps, method -> faithfulness, (k, S, S, 3) uint8: the
    patches as the encoder saw them, resized)."""
    import torch

    from wsi_mil.explain.cam import PatchContribution, compute_maps, confidence_change
    from wsi_mil.features.registry import make_batch_transform

    batch = torch.from_numpy(np.ascontiguousarray(images))
    patches = batch[:, margin : batch.shape[1] - margin, margin : batch.shape[2] - margin] if margin else batch
    x = encoder.transform(patches.to(device)).float()
    size = encoder.config.input_size
    wide = (
        make_batch_transform(replace(encoder.config, input_size=size + 2 * context))(batch.to(device)).float()
        if context
        else x
    )
    model = PatchContribution(
        encoder.model.to(device),
        head.to(device).eval(),
        log_normalizer,
        mean=encoder.config.mean,
        std=encoder.config.std,
    )
    maps = compute_maps(
        model, wide, target=target, methods=methods, input_size=size, ig_steps=ig_steps, context=context
    )
    # Faithfulness masks the patch alone, as extraction saw it.
    faithfulness = {method: confidence_change(model, x, values, target) for method, values in maps.items()}
    mean = torch.tensor(encoder.config.mean).view(1, 3, 1, 1)
    std = torch.tensor(encoder.config.std).view(1, 3, 1, 1)
    seen = ((encoder.transform(patches).float() * std + mean).clamp(0, 1) * 255 + 0.5).to(torch.uint8)
    return maps, faithfulness, seen.permute(0, 2, 3, 1).contiguous().numpy()


# ----------------------------------------------------------------------------- one slide of a run


@dataclass(frozen=True)
class CamInputs:
    """Where a scored slide's explanation comes from: its fold heads, feature file and bag."""

    fold_dirs: tuple[Path, ...]
    feature_path: Path
    bag_path: Path


def locate_cam_inputs(
    scores: SlideScores, *, run_dir: Path, model: str, subset: Path, bag_path: Path | None
) -> CamInputs | str:
    """The heads that scored this slide (the folds in its scores file), its feature file and
    bag; or a reason why CAMs cannot be made (a message, logged by the caller)."""
    from wsi_mil.explain.faithfulness import locate_heads

    heads = locate_heads(scores, run_dir=run_dir, model=model, subset=subset)
    if isinstance(heads, str):
        return heads
    if bag_path is None or not bag_path.exists():
        return "no bag (CAMs read the patches through it)"
    return CamInputs(heads.fold_dirs, heads.feature_path, bag_path)


def cam_slide(
    scores: SlideScores,
    inputs: CamInputs,
    out_dir: Path,
    *,
    methods: Sequence[str],
    top_k: int,
    ig_steps: int,
    reader: str = "auto",
    checkpoint_path: str | None = None,
    device: str = "auto",
    context: float = 0.0,
) -> PatchCams:
    """Explain the slide's ``top_k`` most attended patches; writes cams.h5 and the gallery PNG.

    ``context``: slide around each patch, a fraction of its side (CNN encoders only; see
    :func:`wsi_mil.explain.cam.compute_maps`). A transformer encoder gets integrated
    gradients only. A method that fails is left out and named in the ``skipped_methods``
    attribute; when none can be made, :class:`~wsi_mil.explain.cam.CamError`.
    """
    import torch

    from wsi_mil.device import resolve_device
    from wsi_mil.explain.cam import CAM_CLASSES, INTEGRATED_GRADIENTS, CamError, context_margin, target_layer_and_stride
    from wsi_mil.explain.cam_encoders import encoder_for
    from wsi_mil.explain.faithfulness import load_heads
    from wsi_mil.mil.data import read_bag_features
    from wsi_mil.store.bags import read_bag

    torch_device = resolve_device(device)
    rows = top_patches(scores, top_k)
    coords = scores.coords[rows]
    features, feature_coords, feature_attrs = read_bag_features(inputs.feature_path)
    encoder = encoder_for(feature_attrs, checkpoint_path)
    skipped: dict[str, str] = {}
    size = encoder.config.input_size
    try:
        stride = target_layer_and_stride(encoder.model, size)[1]
    except CamError:  # a transformer: no spatial map for CAMs or context
        stride = 0
        why = f"{encoder.name} has no spatial feature map (a transformer); {INTEGRATED_GRADIENTS} only"
        skipped = {m: why for m in methods if m in CAM_CLASSES}
        methods = [INTEGRATED_GRADIENTS]
    margin_input = context_margin(stride, size, context) if stride else 0
    margin = round(margin_input * int(read_bag(inputs.bag_path).attrs["patch_size"]) / size) if margin_input else 0
    heads = load_heads(inputs.fold_dirs, torch_device)
    x = torch.from_numpy(np.ascontiguousarray(features, np.float32)).to(torch_device)
    c = torch.from_numpy(np.asarray(feature_coords)).to(torch_device)
    with torch.no_grad():  # each head's own softmax normalizer over the whole slide
        normalizers = [float(torch.logsumexp(head(x, c).attention_raw.reshape(-1), 0)) for head in heads]
    target = scores.target_class()
    maps: dict[str, np.ndarray] = {}
    faithfulness: dict[str, dict[str, float]] = {}
    images = read_patch_pixels(inputs.bag_path, coords, reader=reader, margin=margin)
    seen = None
    for method in methods:  # one at a time: a method that fails costs only its own maps
        try:
            for head, log_z in zip(
                heads, normalizers, strict=True
            ):  # several heads (fold mean): maps and metrics averaged
                part, faith, seen = explain_patches(
                    images,
                    encoder=encoder,
                    head=head,
                    log_normalizer=log_z,
                    target=target,
                    methods=[method],
                    ig_steps=ig_steps,
                    device=torch_device,
                    margin=margin,
                    context=margin_input,
                )
                maps[method] = maps.get(method, 0) + part[method] / len(heads)
                faithfulness[method] = {
                    k: faithfulness.get(method, {}).get(k, 0.0) + v / len(heads) for k, v in faith[method].items()
                }
        except Exception as error:  # noqa: BLE001 -- e.g. a method the encoder's layers do not support
            logger.warning("%s: %s skipped: %s: %s", scores.slide_id, method, type(error).__name__, error)
            skipped[method] = f"{type(error).__name__}: {error}"
            maps.pop(method, None)
            faithfulness.pop(method, None)
    if not maps or seen is None:  # seen: the patches as the encoder saw them, set with the first maps
        raise CamError("no CAM method could run: " + "; ".join(f"{m}: {why}" for m, why in skipped.items()))
    cams = PatchCams(
        coords,
        rows,
        seen,
        maps,
        faithfulness,
        {
            "patch_size_level0": scores.patch_size_level0,
            "slide_id": scores.slide_id,
            "target_class": target,
            "classes": scores.classes,
            "encoder": encoder.name,
            "folds": [d.name for d in inputs.fold_dirs],
            "context_px": margin,
            SKIPPED_ATTR: json.dumps(skipped),
        },
    )
    write_gallery_png(out_dir / GALLERY_NAME, cams)
    write_cams(out_dir / CAMS_NAME, cams)
    return cams
