"""The encoder registry: ``create_encoder(name, ...)`` and ``list_encoders()``, after timm.

Each entry has a frozen :class:`EncoderConfig` and a builder returning the bare
``torch.nn.Module`` that maps a normalized (B, 3, S, S) batch to (B, D) features.
:func:`create_encoder` wraps it into an :class:`Encoder`: the model, its batch
transform (uint8 (B, H, W, 3) -> normalized float (B, 3, S, S), run on the device),
and the precision, so the extraction loop never branches on a model name.
"""

from __future__ import annotations

import fnmatch
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from wsi_mil.errors import WsiMilError

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
WEIGHT_CHOICES = ("imagenet", "random")


class EncoderError(WsiMilError, ValueError):
    """Unknown encoder, impossible weights, or a checkpoint that does not fit."""


class WeightsUnavailableError(EncoderError, FileNotFoundError):
    """Pretrained weights cannot be downloaded here and are not in the cache."""


@dataclass(frozen=True)
class EncoderConfig:
    """What the extraction loop needs to know about an encoder."""

    name: str
    embed_dim: int
    input_size: int = 224
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    #: Autocast dtype on CUDA: ``float16`` for CNNs, ``bfloat16`` for ViTs. CPU runs float32.
    precision: str = "float16"
    description: str = ""
    #: For weights that only come as a local file (gated models such as UNI): where to get it.
    #: Such an encoder needs ``checkpoint_path`` (or ``weights="random"``, asked for).
    checkpoint_source: str = ""


#: name -> (config, builder(weights, checkpoint_path) -> (module, weights_id))
Builder = Callable[[str, "Path | None"], "tuple[torch.nn.Module, str]"]
_REGISTRY: dict[str, tuple[EncoderConfig, Builder]] = {}


def register_encoder(config: EncoderConfig) -> Callable[[Builder], Builder]:
    def decorate(builder: Builder) -> Builder:
        if config.name in _REGISTRY:
            raise ValueError(f"encoder {config.name!r} registered twice")
        _REGISTRY[config.name] = (config, builder)
        return builder

    return decorate


def list_encoders(pattern: str = "*") -> list[str]:
    """Registered encoder names matching a glob ``pattern``; any ``timm:<name>`` works too."""
    _load_entries()
    return sorted(name for name in _REGISTRY if fnmatch.fnmatch(name, pattern))


def encoder_config(name: str) -> EncoderConfig:
    _load_entries()
    if name.startswith("timm:"):
        from wsi_mil.features.timm_encoders import timm_config

        return timm_config(name)
    if name not in _REGISTRY:
        raise EncoderError(
            f"unknown encoder {name!r}; choose one of {', '.join(list_encoders())} or timm:<model name>"
        )
    return _REGISTRY[name][0]


@dataclass
class Encoder:
    """A ready encoder: the frozen model, its batch transform and precision."""

    config: EncoderConfig
    model: Any  # torch.nn.Module
    transform: Callable[[Any], Any]  # uint8 (B, H, W, 3) tensor -> float (B, 3, S, S)
    precision: str
    weights: str  #: "imagenet:<source>", "checkpoint:<sha256>" or "random"

    @property
    def name(self) -> str:
        return self.config.name


def make_batch_transform(config: EncoderConfig) -> Callable[[Any], Any]:
    """uint8 (B, H, W, 3) -> float32 (B, 3, S, S), resized (antialiased) and normalized.

    Runs on whatever device the batch is on, so on a GPU it costs the CPU nothing.
    """
    import torch
    import torch.nn.functional as F

    mean = torch.tensor(config.mean).view(1, 3, 1, 1)
    std = torch.tensor(config.std).view(1, 3, 1, 1)
    size = config.input_size

    def transform(batch: torch.Tensor) -> torch.Tensor:
        x = batch.permute(0, 3, 1, 2).float().div_(255.0)
        if x.shape[-2:] != (size, size):
            x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        x = (x - mean.to(x.device)) / std.to(x.device)
        return x.contiguous(memory_format=torch.channels_last)

    return transform


def check_weights(name: str, *, weights: str = "imagenet", checkpoint_path: str | Path | None = None) -> EncoderConfig:
    """The encoder's config, once its weights can be had: a known choice, an existing checkpoint
    file, or a checkpoint for an encoder whose weights only come as a file (``uni``). Cheap:
    call it before any work, as :func:`create_encoder` does."""
    if weights not in WEIGHT_CHOICES:
        raise EncoderError(f"weights must be one of {WEIGHT_CHOICES} (or give checkpoint_path), got {weights!r}")
    config = encoder_config(name)
    if checkpoint_path is not None and not Path(checkpoint_path).is_file():
        raise EncoderError(f"{name}: checkpoint file {checkpoint_path} not found (extract.checkpoint_path)")
    if config.checkpoint_source and checkpoint_path is None and weights != "random":
        raise WeightsUnavailableError(
            f"{name}: its weights are not downloadable here; get them from {config.checkpoint_source} and pass "
            "the file as extract.checkpoint_path (--checkpoint-path), or ask for --weights random (plumbing tests only)"
        )
    return config


def create_encoder(name: str, *, weights: str = "imagenet", checkpoint_path: str | Path | None = None) -> Encoder:
    """Build an encoder by name with ``weights`` = ``imagenet`` or ``random``, or a local checkpoint.

    ``checkpoint_path`` (a state dict, loaded with ``weights_only=True`` or from
    ``.safetensors``) replaces ``weights``; it must fit the encoder exactly (only a
    classifier head is dropped), else :class:`EncoderError`. Random weights must be asked
    for; they are logged and recorded.
    """
    config = check_weights(name, weights=weights, checkpoint_path=checkpoint_path)
    import torch

    if weights == "random" and checkpoint_path is None:
        torch.manual_seed(0)  # the same "random" encoder in every process and run
    if name.startswith("timm:"):
        from wsi_mil.features.timm_encoders import build_timm

        module, weights_id = build_timm(name, weights, Path(checkpoint_path) if checkpoint_path else None)
    else:
        builder = _REGISTRY[name][1]
        module, weights_id = builder(weights, Path(checkpoint_path) if checkpoint_path else None)
    if weights_id == "random":
        logger.warning("%s: RANDOM weights (asked for); these features carry no pretrained knowledge", name)
    module.eval()
    for parameter in module.parameters():
        parameter.requires_grad_(False)
    return Encoder(config, module, make_batch_transform(config), config.precision, weights_id)


def _load_entries() -> None:
    """Import the modules whose decorators fill the registry (cheap until first use)."""
    import wsi_mil.features.efficientnet_lite
    import wsi_mil.features.timm_encoders
    import wsi_mil.features.torchvision_encoders  # noqa: F401
