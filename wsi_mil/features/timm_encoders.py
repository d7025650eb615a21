"""timm models: any of them by name, ``timm:<name>``, with ImageNet weights from the hub when
online or a local checkpoint; and registered pathology foundation models built exactly as
their model cards say (``uni``), whose checkpoints timm's defaults do not fit.

``timm:<name>`` builds timm's default model of that name with timm's default mean/std; a
checkpoint trained with other options (LayerScale, register tokens...) is refused by the
strict loading in :func:`~wsi_mil.features.weights.load_checkpoint`: such a model needs an
entry here, like ``uni``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from wsi_mil.features.registry import EncoderConfig, EncoderError, register_encoder
from wsi_mil.features.weights import hub_error, load_checkpoint

#: UNI (Chen et al. 2024, Nature Medicine): ViT-L/16 with LayerScale, as its model card builds it.
UNI_TIMM_ARCH = "vit_large_patch16_224"
UNI_TIMM_KWARGS: dict[str, Any] = {"img_size": 224, "patch_size": 16, "init_values": 1e-5, "dynamic_img_size": True}


def _arch(name: str) -> str:
    return name.split(":", 1)[1]


def _rgb(values: Any) -> tuple[float, float, float]:
    red, green, blue = values  # timm's mean/std: one value per RGB channel
    return float(red), float(green), float(blue)


def timm_config(name: str) -> EncoderConfig:
    import timm

    arch = _arch(name)
    if not timm.is_model(arch):
        raise EncoderError(f"{name}: timm has no model {arch!r} (see timm.list_models())")
    cfg = timm.get_pretrained_cfg(arch)
    import torch

    with torch.device("meta"):  # shapes only: no memory, no initialisation (ViT-L: 6 s -> instant)
        model = timm.create_model(arch, pretrained=False, num_classes=0)
    size = (cfg.input_size if cfg else (3, 224, 224))[-1]
    is_transformer = "vit" in arch or "deit" in arch or "swin" in arch or "eva" in arch
    return EncoderConfig(
        name,
        int(model.num_features),  # type: ignore[arg-type]  # torch types unknown Module attributes as Tensor | Module
        input_size=int(size),
        mean=_rgb(cfg.mean) if cfg else (0.485, 0.456, 0.406),
        std=_rgb(cfg.std) if cfg else (0.229, 0.224, 0.225),
        precision="bfloat16" if is_transformer else "float16",
        description=f"timm {arch}",
    )


def build_timm(name: str, weights: str, checkpoint: Path | None) -> tuple[Any, str]:
    import timm

    arch = _arch(name)
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
            name, error, filename=None, directory=None,
            hint=f"download model.safetensors of https://huggingface.co/{hub_id} and pass it as --checkpoint-path",
        ) from error  # fmt: skip
    return model, f"imagenet:timm:{arch}"


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
