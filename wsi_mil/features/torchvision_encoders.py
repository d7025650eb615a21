"""torchvision backbones: CLAM's truncated ResNet-50 and the seeds' classic CNNs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from wsi_mil.features.registry import EncoderConfig, register_encoder
from wsi_mil.features.weights import hub_error, load_checkpoint


def _torchvision(
    arch: str, weights: str, checkpoint: Path | None, *, head: str, discard: tuple[str, ...] = (), **kwargs: Any
) -> tuple[Any, str]:
    """torchvision's ``arch`` with its classifier ``head`` replaced by an identity, so that a
    checkpoint is loaded strictly into the weights the features use (``discard``: module
    prefixes the caller cuts off after loading, which the checkpoint may lack)."""
    import torch
    import torchvision

    builder = getattr(torchvision.models, arch)
    enum = torchvision.models.get_model_weights(arch).DEFAULT
    if checkpoint is not None or weights == "random":
        model = _head_off(builder(weights=None, **kwargs), head)
        if checkpoint is None:
            return model, "random"
        # googlenet's auxiliary classifiers exist only in training
        ignore = (f"{head}.", "aux1.", "aux2.") if arch == "googlenet" else (f"{head}.",)
        return model, load_checkpoint(model, checkpoint, encoder=arch, ignore=ignore, discard=discard)
    try:
        model = builder(weights=enum, **kwargs)
    except Exception as error:  # URLError, HTTPError, socket errors, hash mismatch
        filename = enum.url.rsplit("/", 1)[-1]
        raise hub_error(arch, error, filename=filename, directory=Path(torch.hub.get_dir()) / "checkpoints") from error
    return _head_off(model, head), f"imagenet:torchvision:{enum.url.rsplit('/', 1)[-1]}"


def _head_off(model: Any, attribute: str) -> Any:
    import torch

    setattr(model, attribute, torch.nn.Identity())
    return model


class ResNetTrunc:
    """ResNet-50 up to layer3, then global average pooling: 1024-d (CLAM's features)."""

    @staticmethod
    def build(model: Any) -> Any:
        import torch

        return torch.nn.Sequential(
            model.conv1,
            model.bn1,
            model.relu,
            model.maxpool,
            model.layer1,
            model.layer2,
            model.layer3,
            torch.nn.AdaptiveAvgPool2d(1),
            torch.nn.Flatten(1),
        )


@register_encoder(
    EncoderConfig("resnet50_trunc", 1024, description="torchvision ResNet-50 to layer3 + avg pool (CLAM)")
)
def _resnet50_trunc(weights: str, checkpoint: Path | None) -> tuple[Any, str]:
    model, weights_id = _torchvision("resnet50", weights, checkpoint, head="fc", discard=("layer4.",))
    return ResNetTrunc.build(model), weights_id


def _classic(arch: str, dim: int, head: str, **kwargs: Any) -> None:
    @register_encoder(EncoderConfig(arch, dim, description=f"torchvision {arch}, classifier removed"))
    def build(weights: str, checkpoint: Path | None) -> tuple[Any, str]:
        return _torchvision(arch, weights, checkpoint, head=head, **kwargs)


for _arch, _dim, _head in [
    ("resnet18", 512, "fc"),
    ("resnet50", 2048, "fc"),
    ("resnet101", 2048, "fc"),
    ("densenet121", 1024, "classifier"),
    ("densenet201", 1920, "classifier"),
    ("mobilenet_v2", 1280, "classifier"),
]:
    _classic(_arch, _dim, _head)
_classic("googlenet", 1024, "fc", aux_logits=False, init_weights=False)
