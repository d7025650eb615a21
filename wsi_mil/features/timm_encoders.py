"""Any timm model by name, ``timm:<name>`` (e.g. ``timm:vit_large_patch16_224`` for UNI),
with ImageNet weights from the hub when online or a local checkpoint (UNI, CONCH-style files)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from wsi_mil.features.registry import EncoderConfig, EncoderError
from wsi_mil.features.weights import hub_error, load_checkpoint


def _arch(name: str) -> str:
    return name.split(":", 1)[1]


def timm_config(name: str) -> EncoderConfig:
    import timm

    arch = _arch(name)
    if not timm.is_model(arch):
        raise EncoderError(f"{name}: timm has no model {arch!r} (see timm.list_models())")
    cfg = timm.get_pretrained_cfg(arch)
    model = timm.create_model(arch, pretrained=False, num_classes=0)
    size = (cfg.input_size if cfg else (3, 224, 224))[-1]
    is_transformer = "vit" in arch or "deit" in arch or "swin" in arch or "eva" in arch
    return EncoderConfig(
        name,
        int(model.num_features),
        input_size=int(size),
        mean=tuple(cfg.mean) if cfg else (0.485, 0.456, 0.406),
        std=tuple(cfg.std) if cfg else (0.229, 0.224, 0.225),
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
        return model, load_checkpoint(model, checkpoint, ignore=("head.", "fc.", "classifier."))
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
