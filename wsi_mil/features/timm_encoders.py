"""timm models: any of them by name, ``timm:<name>``, with ImageNet weights from the hub when
online or a local checkpoint; and registered pathology foundation models built exactly as
their model cards say (``uni``), whose checkpoints timm's defaults do not fit.

``timm:<name>`` builds timm's default model of that name with timm's default mean/std; a
checkpoint trained with other options (LayerScale, register tokens...) is refused by the
strict loading in :func:`~wsi_mil.features.weights.load_checkpoint`: such a model needs an
entry here, like ``uni``.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from wsi_mil.features.registry import (
    ENCODERS,
    IMAGENET_MEAN,
    IMAGENET_STD,
    Builder,
    EncoderConfig,
    EncoderError,
    register_encoder,
)
from wsi_mil.features.weights import hub_error, load_checkpoint
from wsi_mil.registry import Entry

#: UNI (Chen et al. 2024, Nature Medicine): ViT-L/16 with LayerScale, as its model card builds it.
UNI_TIMM_ARCH = "vit_large_patch16_224"
UNI_TIMM_KWARGS: dict[str, Any] = {"img_size": 224, "patch_size": 16, "init_values": 1e-5, "dynamic_img_size": True}
#: ``timm:<model name>``: the registered namespace of every timm model.
TIMM_PREFIX = "timm"


def autocast_precision(model: Any) -> str:
    """The autocast dtype a model's layers call for: ``bfloat16`` when it normalizes like a
    transformer (LayerNorm, RMSNorm: ViTs, BEiT, Swin, ConvNeXt), whose large activations can
    overflow float16; ``float16`` for the rest (BatchNorm CNNs). Read from the layers, not the name."""
    import torch

    norms = tuple(getattr(torch.nn, name) for name in ("LayerNorm", "RMSNorm") if hasattr(torch.nn, name))
    return "bfloat16" if any(isinstance(m, norms) for m in model.modules()) else "float16"


def _rgb(values: Any) -> tuple[float, float, float]:
    red, green, blue = values  # timm's mean/std: one value per RGB channel
    return float(red), float(green), float(blue)


def timm_config(arch: str) -> EncoderConfig:
    """The config of timm's default ``arch``: its feature width, input size, mean/std and precision."""
    import timm
    import torch

    name = f"{TIMM_PREFIX}:{arch}"
    if not timm.is_model(arch):
        raise EncoderError(f"{name}: timm has no model {arch!r} (see timm.list_models())")
    cfg = timm.get_pretrained_cfg(arch)
    with torch.device("meta"):  # shapes only: no memory, no initialisation (ViT-L: 6 s -> instant)
        model = timm.create_model(arch, pretrained=False, num_classes=0)
    size = (cfg.input_size if cfg else (3, 224, 224))[-1]
    return EncoderConfig(
        name,
        int(model.num_features),  # type: ignore[arg-type]  # torch types unknown Module attributes as Tensor | Module
        input_size=int(size),
        mean=_rgb(cfg.mean) if cfg else IMAGENET_MEAN,
        std=_rgb(cfg.std) if cfg else IMAGENET_STD,
        precision=autocast_precision(model),
        description=f"timm {arch}",
    )


def build_timm(arch: str, weights: str, checkpoint: Path | None) -> tuple[Any, str]:
    """timm's default ``arch`` without classifier: hub weights, a local checkpoint or random."""
    import timm

    name = f"{TIMM_PREFIX}:{arch}"
    if checkpoint is not None or weights == "random":
        model = timm.create_model(arch, pretrained=False, num_classes=0)
        if checkpoint is None:
            return model, "random"
        return model, load_checkpoint(model, checkpoint, encoder=name)
    try:
        model = timm.create_model(arch, pretrained=True, num_classes=0)
    except Exception as error:
        cfg = timm.get_pretrained_cfg(arch)
        hub_id = getattr(cfg, "hf_hub_id", None) or arch
        raise hub_error(
            name,
            error,
            filename=None,
            directory=None,
            hint=f"download model.safetensors of https://huggingface.co/{hub_id} and pass it as --checkpoint-path",
        ) from error
    return model, f"imagenet:timm:{arch}"


@ENCODERS.namespace(
    TIMM_PREFIX,
    description="any timm model as timm builds it by default; checkpoints of other architectures "
    "(UNI: use uni) need a registered entry",
    example="timm:vit_base_patch16_224",
)
def _timm_namespace(arch: str) -> Entry[EncoderConfig, Builder]:
    return Entry(timm_config(arch), functools.partial(build_timm, arch))


def create_uni_model() -> Any:
    """UNI's architecture, randomly initialised: 1024-d features, ``blocks.*.ls1.gamma`` LayerScale."""
    import timm

    return timm.create_model(UNI_TIMM_ARCH, pretrained=False, num_classes=0, **UNI_TIMM_KWARGS)


@register_encoder(
    EncoderConfig(
        "uni",
        1024,
        precision="bfloat16",
        description="UNI (Chen et al. 2024): ViT-L/16 + LayerScale, ImageNet mean/std; needs --checkpoint-path",
        checkpoint_source="https://huggingface.co/MahmoodLab/UNI (gated: accept its terms, download pytorch_model.bin)",
    )
)
def _uni(weights: str, checkpoint: Path | None) -> tuple[Any, str]:
    model = create_uni_model()
    if checkpoint is None:
        return model, "random"  # create_encoder let only an explicit weights="random" through
    return model, load_checkpoint(model, checkpoint, encoder="uni")
