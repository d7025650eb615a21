"""Within-patch maps: CAM methods (pytorch-grad-cam) and integrated gradients (captum)
through the frozen encoder and the MIL head, targeting each patch's class contribution.

The explained function is :class:`PatchContribution`: normalized patches (B, 3, S, S)
-> (B, C) contributions m^c = a s^c of each patch to the bag's logits, where s is the
head's instance logit and a = exp(w - log Z) its attention weight with the slide's
softmax normalizer Z fixed (taken from the scores file). For ILAM this is exactly
m_i^c; for ABMIL the bag logits are sum_i a_i (W h_i + b), so the same product is
exactly each patch's share. The target is the contribution margin of one class over
the mean of the others (two classes: m^t - m^other).

Maps are not min-max scaled per patch (pytorch-grad-cam does that by default, which
makes patches incomparable): :func:`unscaled` removes the per-image scaling and keeps
only the resize to the input size, so one global range serves a whole slide.
FullGrad normalizes each layer's map inside the method itself, so its values are
comparable within a patch only (documented in the table).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from typing import Any

import numpy as np
import torch
from torch import nn

from wsi_mil.config import CAM_METHODS, DEFAULT_CAM_METHODS
from wsi_mil.errors import WsiMilError

logger = logging.getLogger(__name__)

#: name -> pytorch_grad_cam class name
CAM_CLASSES = {
    "gradcam": "GradCAM",
    "hirescam": "HiResCAM",
    "gradcam++": "GradCAMPlusPlus",
    "scorecam": "ScoreCAM",
    "ablationcam": "AblationCAM",
    "eigencam": "EigenCAM",
    "layercam": "LayerCAM",
    "fullgrad": "FullGrad",
}
INTEGRATED_GRADIENTS = "integrated_gradients"


class CamError(WsiMilError, ValueError):
    """A CAM method cannot run on this encoder or input."""


class PatchContribution(nn.Module):
    """(B, 3, S, S) normalized patches -> (B, C) contributions a * s with the slide's log Z fixed."""

    def __init__(
        self,
        encoder: nn.Module,
        head: nn.Module,
        log_normalizer: float,
        *,
        mean: Sequence[float] = (0.0, 0.0, 0.0),
        std: Sequence[float] = (1.0, 1.0, 1.0),
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = head
        self.log_normalizer = float(log_normalizer)
        #: a black pixel after the encoder's normalization, (1, 3, 1, 1)
        self.black = (-torch.tensor(mean, dtype=torch.float32) / torch.tensor(std, dtype=torch.float32)).view(
            1, 3, 1, 1
        )
        if getattr(head, "context", None) is not None:
            logger.warning(
                "the head's instance transformer mixes patches: CAM targets use each patch's attention "
                "computed on the explained batch, not on the whole slide"
            )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        out = self.head(self.encoder(images))
        weight = torch.exp(out.attention_raw.reshape(-1) - self.log_normalizer)
        return weight.unsqueeze(1) * out.instance_logits


class ClassMargin:
    """A pytorch-grad-cam target: output[t] minus the mean of the other classes."""

    def __init__(self, target: int) -> None:
        self.target = int(target)

    def __call__(self, output: torch.Tensor) -> torch.Tensor:
        if output.ndim == 1:
            others = torch.cat([output[: self.target], output[self.target + 1 :]])
            return output[self.target] - (others.mean() if len(others) else 0.0)
        others = torch.cat([output[:, : self.target], output[:, self.target + 1 :]], dim=1)
        return output[:, self.target] - (others.mean(dim=1) if others.shape[1] else 0.0)


def find_target_layer(encoder: nn.Module, input_size: int) -> nn.Module:
    """The module producing the encoder's last spatial feature map (the usual CAM layer)."""
    return target_layer_and_stride(encoder, input_size)[0]


def target_layer_and_stride(encoder: nn.Module, input_size: int) -> tuple[nn.Module, int]:
    """The encoder's last spatial feature map: its module and its stride in input pixels.

    Found by one forward pass: the last module (in completion order) whose output is a
    (B, K, H, W) tensor with H, W > 1. When token tensors (B, T, K) come after it, the
    encoder is a transformer whose only spatial map is the patch embedding: refused.
    """
    finished: list[tuple[nn.Module, int, int]] = []  # module, ndim, map height (0: no map)

    def hook(module: nn.Module, _: Any, output: Any) -> None:
        if isinstance(output, torch.Tensor):
            is_map = output.ndim == 4 and min(output.shape[-2:]) > 1
            finished.append((module, output.ndim, int(output.shape[-2]) if is_map else 0))

    handles = [m.register_forward_hook(hook) for m in encoder.modules() if m is not encoder]
    try:
        with torch.no_grad():
            encoder(torch.zeros(1, 3, input_size, input_size))
    finally:
        for handle in handles:
            handle.remove()
    spatial = [i for i, (_, _, height) in enumerate(finished) if height]
    if not spatial or any(ndim == 3 for _, ndim, _ in finished[spatial[-1] + 1 :]):
        raise CamError(
            "this encoder has no final spatial feature map (a transformer?); CAM methods need a CNN "
            f"encoder. Use {INTEGRATED_GRADIENTS}, which works on any encoder"
        )
    module, _, height = finished[spatial[-1]]
    return module, max(1, round(input_size / height))


def is_spatial(encoder: nn.Module, input_size: int) -> bool:
    """Whether the encoder ends in a spatial feature map (a CNN): CAM methods and context apply."""
    try:
        target_layer_and_stride(encoder, input_size)
    except CamError:
        return False
    return True


def context_margin(stride: int, input_size: int, fraction: float) -> int:
    """Context on each side of a patch, in input pixels: ``fraction`` of the patch side,
    rounded up to whole cells of the last feature map (so the patch's cells line up)."""
    if fraction <= 0:
        return 0
    return int(np.ceil(fraction * input_size / stride)) * stride


@contextmanager
def pooled_over_patch(layer: nn.Module, margin_cells: int) -> Iterator[None]:
    """While active, what follows ``layer`` sees its feature map only over the central patch
    (``margin_cells`` cells of context on each side are zeroed), scaled so that the
    encoder's global mean pool gives the mean over the patch's cells: the encoder then
    describes the patch, seen with its surroundings instead of zero padding at its border.
    Hooks registered on ``layer`` before this one see the unmasked map."""

    def hook(_: nn.Module, __: Any, output: torch.Tensor) -> torch.Tensor:
        height, width = output.shape[-2:]
        inner = (height - 2 * margin_cells) * (width - 2 * margin_cells)
        if inner <= 0:
            raise CamError(f"a {margin_cells}-cell context margin leaves no patch in a {height}x{width} feature map")
        mask = torch.zeros((1, 1, height, width), dtype=output.dtype, device=output.device)
        mask[..., margin_cells : height - margin_cells, margin_cells : width - margin_cells] = height * width / inner
        return output * mask

    handle = layer.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def unscaled(cam_class: type, *, crop_cells: int = 0, size: int | None = None) -> type:
    """``cam_class`` without pytorch-grad-cam's per-image min-max scaling (resize only).

    With ``crop_cells``, activations and gradients are cut to their central cells (the
    patch, without its context) before the map is made (EigenCAM's principal component is
    then the patch's), and the map is resized to ``size`` a side: cutting after the resize
    would blend context cells into the patch's border."""
    from pytorch_grad_cam.base_cam import BaseCAM

    def resize(cams: np.ndarray, size: tuple[int, int]) -> np.ndarray:
        import cv2

        return np.stack([cv2.resize(np.asarray(c, np.float32), size) for c in cams]).astype(np.float32)

    # pytorch-grad-cam ships no types: its CAM classes are Any to the type checker.
    base: Any = cam_class

    class Unscaled(base):
        def compute_cam_per_layer(self, input_tensor: torch.Tensor, targets: list, eigen_smooth: bool) -> list:
            if base.compute_cam_per_layer is not BaseCAM.compute_cam_per_layer:
                return super().compute_cam_per_layer(input_tensor, targets, eigen_smooth)  # FullGrad: its own
            cut = (..., slice(crop_cells, -crop_cells or None), slice(crop_cells, -crop_cells or None))
            activations = [a.cpu().data.numpy()[cut] for a in self.activations_and_grads.activations]
            grads = [g.cpu().data.numpy()[cut] for g in self.activations_and_grads.gradients]
            target_size = (size, size) if size else self.get_target_width_height(input_tensor)
            per_layer = []
            for i, layer in enumerate(self.target_layers):
                cam = self.get_cam_image(
                    input_tensor,
                    layer,
                    targets,
                    activations[i] if i < len(activations) else None,
                    grads[i] if i < len(grads) else None,
                    eigen_smooth,
                )
                per_layer.append(resize(np.maximum(cam, 0), target_size)[:, None])
            return per_layer

        def aggregate_multi_layers(self, cam_per_target_layer: list | np.ndarray) -> np.ndarray:
            # (B, layers, H, W): a list of per-layer maps, or FullGrad's one array
            stacked = (
                cam_per_target_layer
                if isinstance(cam_per_target_layer, np.ndarray)
                else np.concatenate(cam_per_target_layer, axis=1)
            )
            return np.maximum(stacked, 0).mean(axis=1)

    Unscaled.__name__ = f"Unscaled{cam_class.__name__}"
    return Unscaled


def _integrated_gradients(model: PatchContribution, images: torch.Tensor, target: int, steps: int) -> np.ndarray:
    """(B, S, S) signed attribution summed over colour channels; baseline: the all-zero
    normalized image (the encoder's mean colour)."""
    from captum.attr import IntegratedGradients

    margin = ClassMargin(target)
    explainer = IntegratedGradients(lambda x: margin(model(x)))
    attributions = explainer.attribute(
        images, baselines=torch.zeros_like(images), n_steps=steps, internal_batch_size=max(1, len(images)) * 8
    )
    return attributions.sum(dim=1).detach().cpu().numpy().astype(np.float32)


def compute_maps(
    model: PatchContribution,
    images: torch.Tensor,
    *,
    target: int,
    methods: Sequence[str] = DEFAULT_CAM_METHODS,
    input_size: int,
    batch_size: int = 16,
    ig_steps: int = 32,
    context: int = 0,
) -> dict[str, np.ndarray]:
    """Each method's (B, S, S) float32 map of ``images`` for class ``target``.

    images: normalized (B, 3, S, S) patches, or with ``context`` > 0 (B, 3, S + 2c, S + 2c):
    each patch with ``context`` input pixels of its surroundings on every side (a multiple
    of the last feature map's stride, see :func:`context_margin`). The encoder then pools
    only the patch's cells (:func:`pooled_over_patch`) and the maps are cropped to the patch.
    Without context, the zero padding at the patch border draws a ring into CAMs.
    """
    import pytorch_grad_cam

    unknown = [m for m in methods if m not in CAM_METHODS]
    if unknown:
        raise CamError(f"unknown CAM method(s) {', '.join(unknown)}; choose from {', '.join(CAM_METHODS)}")
    model.eval()
    # The encoder's weights are frozen: gradients reach its feature maps only through the input.
    images = images.detach().contiguous().requires_grad_(True)
    maps: dict[str, np.ndarray] = {}
    cam_methods = [m for m in methods if m in CAM_CLASSES]
    layer, stride = target_layer_and_stride(model.encoder, input_size) if cam_methods or context else (None, 1)
    if context % stride or images.shape[-1] != input_size + 2 * context:
        raise CamError(
            f"context of {context} px for {tuple(images.shape[-2:])} inputs: expected "
            f"{input_size} + 2 x a multiple of {stride}"
        )
    cells = context // stride

    def pooling() -> Any:  # entered after pytorch-grad-cam's hooks: they keep the unmasked activations
        return pooled_over_patch(layer, cells) if context and layer is not None else nullcontext()

    with torch.enable_grad():
        for method in cam_methods:
            cam_class = unscaled(getattr(pytorch_grad_cam, CAM_CLASSES[method]), crop_cells=cells, size=input_size)
            with cam_class(model=model, target_layers=[layer]) as cam, pooling():
                if hasattr(cam, "batch_size"):
                    cam.batch_size = batch_size
                parts = [
                    cam(
                        input_tensor=images[i : i + batch_size],
                        targets=[ClassMargin(target)] * len(images[i : i + batch_size]),
                    )
                    for i in range(0, len(images), batch_size)
                ]
            maps[method] = np.concatenate(parts).astype(np.float32)
        if INTEGRATED_GRADIENTS in methods:
            with pooling():
                maps[INTEGRATED_GRADIENTS] = np.concatenate(
                    [
                        _integrated_gradients(model, images[i : i + batch_size], target, ig_steps)
                        for i in range(0, len(images), batch_size)
                    ]
                )
    # Pixel-resolution maps (integrated gradients, FullGrad) cover the context: cut to the patch.
    return {
        method: np.ascontiguousarray(values[:, context:-context, context:-context])
        if values.shape[-1] > input_size
        else values
        for method, values in maps.items()
    }


def patch_confidence(model: PatchContribution, images: torch.Tensor, target: int) -> np.ndarray:
    """(B,) the head's own instance probability of class ``target`` for each patch."""
    with torch.no_grad():
        out = model.head(model.encoder(images))
        return torch.softmax(out.instance_logits, dim=1)[:, target].cpu().numpy()


def confidence_change(
    model: PatchContribution, images: torch.Tensor, maps: np.ndarray, target: int
) -> dict[str, float]:
    """Grad-CAM++'s Average Drop % and % Increase in Confidence of one method's maps.

    Each patch is multiplied by its map, scaled to [0, 1] within the patch (the metric's
    definition; the stored maps stay unscaled), in pixel space; Y is the confidence on the
    patch, O on the masked patch: drop = mean(max(0, Y - O) / Y) * 100, increase = % of O > Y.
    """
    low = maps.reshape(len(maps), -1).min(axis=1)[:, None, None]
    high = maps.reshape(len(maps), -1).max(axis=1)[:, None, None]
    unit = torch.from_numpy((maps - low) / np.maximum(high - low, 1e-12)).to(images.dtype).unsqueeze(1)
    # p * m in pixel space is x * m + (1 - m) * black in the normalized space.
    masked = images * unit + (1 - unit) * model.black.to(images.device, images.dtype)
    y = patch_confidence(model, images, target)
    o = patch_confidence(model, masked, target)
    return {
        "average_drop_pct": float(np.mean(np.maximum(0.0, y - o) / np.maximum(y, 1e-12)) * 100),
        "increase_pct": float(np.mean(o > y) * 100),
    }
