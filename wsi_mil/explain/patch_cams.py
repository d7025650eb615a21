"""CAM maps of a slide's top-attended patches: pixels -> maps -> ``cams.h5``, a gallery PNG,
and a sub-patch-resolution canvas for the heatmap exporters.

``cams.h5`` (in the slide's heatmap folder) holds ``coords`` (k, 2) level-0 (x, y) of
the explained patches (with ``patch_size_level0``), ``rows`` (k,) their rows in the
scores file, ``images`` (k, S, S, 3) uint8 as the encoder saw them, and one (k, S, S)
float32 dataset per method, unscaled (one global range per slide and method), with
attributes ``average_drop_pct`` and ``increase_pct`` (Grad-CAM++'s faithfulness).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from wsi_mil.explain.maps import SlideScores
from wsi_mil.store.atomic import atomic_output

logger = logging.getLogger(__name__)

CAMS_NAME = "cams.h5"
GALLERY_NAME = "cam_gallery.png"
#: attribute of ``coords`` in cams.h5: JSON {method: why it was not made}
SKIPPED_ATTR = "skipped_methods"


@dataclass
class PatchCams:
    """coords: (k, 2) level-0; rows: (k,) scores-file rows; images: (k, S, S, 3) uint8;
    maps: method -> (k, S, S) float32; faithfulness: method -> metric -> value."""

    coords: np.ndarray
    rows: np.ndarray
    images: np.ndarray
    maps: dict[str, np.ndarray]
    faithfulness: dict[str, dict[str, float]] = field(default_factory=dict)
    attrs: dict[str, Any] = field(default_factory=dict)


def top_patches(scores: SlideScores, k: int) -> np.ndarray:
    """Rows of the ``k`` most attended patches (pre-softmax attention), best first."""
    attention = np.asarray(scores.arrays["attention_raw"], dtype=np.float64).reshape(-1)
    return np.argsort(-attention, kind="stable")[: max(0, k)]


def read_patch_pixels(bag_path: Path, coords: np.ndarray, *, reader: str = "auto", margin: int = 0) -> np.ndarray:
    """(k, H + 2 margin, W + 2 margin, 3) uint8 pixels of the patches at ``coords``, read the
    way extraction read them, with ``margin`` pixels (at the patch level) of surroundings on
    each side. The surroundings come from the slide; beyond its edge, or when the bag's
    stored pixels are all there is, the patch is mirrored instead."""
    from wsi_mil.features.reading import make_source
    from wsi_mil.io.open import open_slide
    from wsi_mil.store.bags import read_bag

    bag = read_bag(bag_path)
    if bag.has_pixels:
        where = {tuple(c): i for i, c in enumerate(bag.coords.tolist())}
        pixels = bag.read_pixels(np.array([where[tuple(c)] for c in coords.tolist()]))
        return _mirror(pixels, ((margin, margin), (margin, margin)))
    with open_slide(bag.attrs["slide_path"], reader=reader, mpp=bag.attrs.get("slide_mpp")) as slide:
        if margin:
            return np.stack([_read_with_margin(slide, c, int(bag.attrs["patch_level"]), int(bag.attrs["patch_size"]), margin)
                             for c in np.asarray(coords).tolist()])  # fmt: skip
        source = make_source(replace(bag, coords=np.asarray(coords, np.int64)), slide, reader=reader)
        try:
            return np.stack([source.read(i) for i in range(len(coords))])
        finally:
            source.close()


def _mirror(pixels: np.ndarray, pad: tuple[tuple[int, int], tuple[int, int]]) -> np.ndarray:
    """Pad (..., H, W, 3) by mirroring (the edge pixel repeated once, like np 'symmetric')."""
    if not any(sum(p) for p in pad):
        return pixels
    return np.pad(pixels, ((0, 0),) * (pixels.ndim - 3) + pad + ((0, 0),), mode="symmetric")


def _read_with_margin(slide: Any, coord: Sequence[int], level: int, size: int, margin: int) -> np.ndarray:
    """One patch with ``margin`` level pixels around it, clipped to the slide and mirrored beyond."""
    downsample = float(slide.level_downsamples[level])
    width, height = slide.level_dimensions[level]
    x0, y0 = round(coord[0] / downsample) - margin, round(coord[1] / downsample) - margin
    side = size + 2 * margin
    cx0, cy0 = max(0, x0), max(0, y0)
    cx1, cy1 = min(width, x0 + side), min(height, y0 + side)
    if cx1 <= cx0 or cy1 <= cy0:
        raise ValueError(f"patch at {tuple(coord)} lies outside the slide")
    region = slide.read_region((round(cx0 * downsample), round(cy0 * downsample)), level, (cx1 - cx0, cy1 - cy0), as_array=True)
    return _mirror(region, ((cy0 - y0, y0 + side - cy1), (cx0 - x0, x0 + side - cx1)))


def explain_patches(images: np.ndarray, *, encoder: Any, head: Any, log_normalizer: float, target: int,
                    methods: Sequence[str], ig_steps: int = 32, device: Any = "cpu",
                    margin: int = 0, context: int = 0) -> tuple[dict, dict, np.ndarray]:  # fmt: skip
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
    wide = make_batch_transform(replace(encoder.config, input_size=size + 2 * context))(batch.to(device)).float() if context else x
    model = PatchContribution(encoder.model.to(device), head.to(device).eval(), log_normalizer,
                              mean=encoder.config.mean, std=encoder.config.std)  # fmt: skip
    maps = compute_maps(model, wide, target=target, methods=methods, input_size=size, ig_steps=ig_steps, context=context)
    # Faithfulness masks the patch alone, as extraction saw it.
    faithfulness = {method: confidence_change(model, x, values, target) for method, values in maps.items()}
    mean = torch.tensor(encoder.config.mean).view(1, 3, 1, 1)
    std = torch.tensor(encoder.config.std).view(1, 3, 1, 1)
    seen = ((encoder.transform(patches).float() * std + mean).clamp(0, 1) * 255 + 0.5).to(torch.uint8)
    return maps, faithfulness, seen.permute(0, 2, 3, 1).contiguous().numpy()


def write_cams(path: str | Path, cams: PatchCams) -> Path:
    import h5py

    from wsi_mil.store.bags import _h5_attr

    with atomic_output(path) as tmp:
        with h5py.File(tmp, "w") as f:
            coords = f.create_dataset("coords", data=np.asarray(cams.coords, np.int64))
            for key, value in cams.attrs.items():
                if value is not None:
                    coords.attrs[key] = _h5_attr(value)
            f.create_dataset("rows", data=np.asarray(cams.rows, np.int64))
            f.create_dataset("images", data=cams.images, compression="gzip")
            for method, values in cams.maps.items():
                dataset = f.create_dataset(f"maps/{method}", data=np.asarray(values, np.float32))
                for key, value in cams.faithfulness.get(method, {}).items():
                    dataset.attrs[key] = value
    return Path(path)


def read_cams(path: str | Path) -> PatchCams:
    import h5py

    from wsi_mil.store.bags import _clean_attrs

    with h5py.File(path, "r") as f:
        maps = {name: f["maps"][name][...] for name in f["maps"]}
        faithfulness = {name: {k: float(v) for k, v in f["maps"][name].attrs.items()} for name in f["maps"]}
        return PatchCams(f["coords"][...], f["rows"][...], f["images"][...], maps, faithfulness,
                         _clean_attrs(dict(f["coords"].attrs)))  # fmt: skip


def cam_range(values: np.ndarray) -> tuple[float, float]:
    """One colour range for all of a slide's patches of one method: 1st..99th percentile."""
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return 0.0, 1.0
    low, high = np.percentile(finite, [1.0, 99.0])
    return float(low), float(high if high > low else low + 1e-12)


def write_gallery_png(path: str | Path, cams: PatchCams, *, cmap: str = "jet", alpha: float = 0.45) -> Path:
    """A grid: first row the patches, then one row per method (global range per method)."""
    from PIL import Image, ImageDraw

    from wsi_mil.explain.stitch import colormap_lut

    lut = colormap_lut(cmap)
    k, size = len(cams.images), cams.images.shape[1]
    label = 110
    sheet = Image.new("RGB", (label + k * size, (1 + len(cams.maps)) * size), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    draw.text((4, size // 2), "patch", fill=(0, 0, 0))
    for column, image in enumerate(cams.images):
        sheet.paste(Image.fromarray(image), (label + column * size, 0))
    for row, (method, values) in enumerate(cams.maps.items(), start=1):
        low, high = cam_range(values)
        drop = cams.faithfulness.get(method, {}).get("average_drop_pct")
        draw.text((4, row * size + size // 2 - 12), method, fill=(0, 0, 0))
        if drop is not None:
            draw.text((4, row * size + size // 2 + 2), f"avg drop {drop:.0f}%", fill=(0, 0, 0))
        for column, (image, cam) in enumerate(zip(cams.images, values, strict=True)):
            index = (np.clip((cam - low) / (high - low), 0, 1) * 255 + 0.5).astype(np.uint8)
            mixed = (1 - alpha) * image.astype(np.float32) + alpha * lut[index].astype(np.float32)
            sheet.paste(Image.fromarray((mixed + 0.5).astype(np.uint8)), (label + column * size, row * size))
    with atomic_output(path) as tmp:
        sheet.save(tmp, format="PNG")
    return Path(path)


# ----------------------------------------------------------------------------- one slide of a run


@dataclass(frozen=True)
class CamInputs:
    """Where a scored slide's explanation comes from: its fold heads, feature file and bag."""

    fold_dirs: tuple[Path, ...]
    feature_path: Path
    bag_path: Path


def locate_cam_inputs(scores: SlideScores, *, run_dir: Path, model: str, subset: Path,
                      bag_path: Path | None) -> CamInputs | str:  # fmt: skip
    """The heads that scored this slide (the folds in its scores file), its feature file and
    bag; or a reason why CAMs cannot be made (a message, logged by the caller)."""
    from wsi_mil.explain.faithfulness import locate_heads

    heads = locate_heads(scores, run_dir=run_dir, model=model, subset=subset)
    if isinstance(heads, str):
        return heads
    if bag_path is None or not bag_path.exists():
        return "no bag (CAMs read the patches through it)"
    return CamInputs(heads.fold_dirs, heads.feature_path, bag_path)


_ENCODERS: dict[tuple, Any] = {}


def _encoder_for(feature_attrs: dict[str, Any], checkpoint_path: str | None) -> Any:
    """The frozen encoder that made the features (its name and weights are in the feature file)."""
    from wsi_mil.explain.cam import CamError
    from wsi_mil.features.registry import create_encoder

    name, weights = str(feature_attrs.get("encoder")), str(feature_attrs.get("weights", ""))
    if weights.startswith("checkpoint:") and not checkpoint_path:
        raise CamError(f"the features come from a local checkpoint ({weights}); set extract.checkpoint_path to it")
    key = (name, weights, checkpoint_path)
    if key not in _ENCODERS:
        kind = "random" if weights == "random" else "imagenet"
        encoder = create_encoder(name, weights=kind, checkpoint_path=checkpoint_path if weights.startswith("checkpoint:") else None)
        if weights.startswith("checkpoint:") and encoder.weights.rsplit(":", 1)[-1] != weights.rsplit(":", 1)[-1]:
            raise CamError(f"extract.checkpoint_path {checkpoint_path} ({encoder.weights}) is not the checkpoint "
                           f"that made the features ({weights}): its contents differ")  # fmt: skip
        _ENCODERS[key] = encoder
    return _ENCODERS[key]


def cam_slide(scores: SlideScores, inputs: CamInputs, out_dir: Path, *, methods: Sequence[str], top_k: int,
              ig_steps: int, reader: str = "auto", checkpoint_path: str | None = None,
              device: str = "auto", context: float = 0.0) -> PatchCams:  # fmt: skip
    """Explain the slide's ``top_k`` most attended patches; writes cams.h5 and the gallery PNG.

    ``context``: slide around each patch, a fraction of its side (CNN encoders only; see
    :func:`wsi_mil.explain.cam.compute_maps`). A transformer encoder gets integrated
    gradients only. A method that fails is left out and named in the ``skipped_methods``
    attribute; when none can be made, :class:`~wsi_mil.explain.cam.CamError`.
    """
    import torch

    from wsi_mil.explain.cam import CAM_CLASSES, INTEGRATED_GRADIENTS, CamError, context_margin, target_layer_and_stride
    from wsi_mil.explain.faithfulness import load_heads
    from wsi_mil.features.freeze import resolve_device
    from wsi_mil.mil.data import read_bag_features
    from wsi_mil.store.bags import read_bag

    torch_device = resolve_device(device)
    rows = top_patches(scores, top_k)
    coords = scores.coords[rows]
    features, feature_coords, feature_attrs = read_bag_features(inputs.feature_path)
    encoder = _encoder_for(feature_attrs, checkpoint_path)
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
            for head, log_z in zip(heads, normalizers, strict=True):  # several heads (fold mean): maps and metrics averaged
                part, faith, seen = explain_patches(images, encoder=encoder, head=head, log_normalizer=log_z, target=target,
                                                    methods=[method], ig_steps=ig_steps, device=torch_device,
                                                    margin=margin, context=margin_input)  # fmt: skip
                maps[method] = maps.get(method, 0) + part[method] / len(heads)
                faithfulness[method] = {k: faithfulness.get(method, {}).get(k, 0.0) + v / len(heads)
                                        for k, v in faith[method].items()}  # fmt: skip
        except Exception as error:  # noqa: BLE001 -- e.g. a method the encoder's layers do not support
            logger.warning("%s: %s skipped: %s: %s", scores.slide_id, method, type(error).__name__, error)
            skipped[method] = f"{type(error).__name__}: {error}"
            maps.pop(method, None)
            faithfulness.pop(method, None)
    if not maps or seen is None:  # seen: the patches as the encoder saw them, set with the first maps
        raise CamError("no CAM method could run: " + "; ".join(f"{m}: {why}" for m, why in skipped.items()))
    cams = PatchCams(coords, rows, seen, maps, faithfulness,
                     {"patch_size_level0": scores.patch_size_level0, "slide_id": scores.slide_id, "target_class": target,
                      "classes": scores.classes, "encoder": encoder.name, "folds": [d.name for d in inputs.fold_dirs],
                      "context_px": margin, SKIPPED_ATTR: json.dumps(skipped)})  # fmt: skip
    write_gallery_png(out_dir / GALLERY_NAME, cams)
    write_cams(out_dir / CAMS_NAME, cams)
    return cams
