"""Loading weights: local checkpoints (``weights_only=True``), and clear errors when a hub is out of reach."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any

from wsi_mil.features.registry import EncoderError, WeightsUnavailableError

logger = logging.getLogger(__name__)

#: Wrapper keys under which training scripts nest the state dict.
_NESTED_KEYS = ("state_dict", "model", "model_state_dict", "teacher", "student")
#: Prefixes added by DataParallel, Lightning or wrappers.
_PREFIXES = ("module.", "model.", "backbone.", "encoder.")
#: Checkpoint keys a feature extractor drops: classification heads (timm's ``head``/``head_dist``,
#: torchvision's ``fc``/``classifier``), which an encoder built with ``num_classes=0`` lacks.
HEAD_PREFIXES = ("head.", "head_dist.", "fc.", "classifier.")
_SHOWN = 4  # keys named in an error


def file_digest(path: Path, length: int = 16) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:length]


def read_state_dict(path: Path) -> dict[str, Any]:
    """A state dict from ``.safetensors``, ``.pth``/``.pt``/``.bin`` (never unpickling code)."""
    if not path.is_file():
        raise EncoderError(f"{path}: checkpoint file not found")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state: Any = load_file(str(path))
        else:
            import torch

            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise EncoderError(
            f"{path}: cannot be read as a weights file ({type(error).__name__}: {error}). "
            "wsi-mil loads plain state dicts (weights_only=True) or .safetensors files."
        ) from error
    for key in _NESTED_KEYS:
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise EncoderError(f"{path}: holds a {type(state).__name__}, not a state dict")
    for prefix in _PREFIXES:
        # a self-supervised checkpoint keeps its projection head beside the prefixed backbone
        body = [k for k in state if not k.startswith(HEAD_PREFIXES)]
        if body and all(k.startswith(prefix) for k in body):
            state = {k.removeprefix(prefix): v for k, v in state.items()}
    return state


def _first(keys: list[str]) -> str:
    more = f", ... ({len(keys)} in all)" if len(keys) > _SHOWN else ""
    return ", ".join(keys[:_SHOWN]) + more


def _shape(value: Any) -> tuple[int, ...] | None:
    return tuple(value.shape) if hasattr(value, "shape") else None  # a non-tensor fits nothing


def load_checkpoint(
    module: Any,
    path: Path,
    *,
    encoder: str = "",
    ignore: tuple[str, ...] = HEAD_PREFIXES,
    discard: tuple[str, ...] = (),
) -> str:
    """Load a local checkpoint into ``module`` strictly; returns the weights id ``checkpoint:<name>:<sha>``.

    Every weight of ``module`` must come from the checkpoint with its shape, and every
    checkpoint weight must be used, except checkpoint keys under ``ignore`` (a classifier
    head the module does not have) and module keys under ``discard`` (parts the caller
    removes after loading). Anything else means the checkpoint is of another architecture
    or variant, whose features would silently not be the checkpoint model's: an error.
    """
    state = read_state_dict(path)
    own = module.state_dict()
    # BatchNorm's step counters only matter in training; many checkpoints lack them.
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked") and not k.startswith(discard)]
    unused = [k for k in state if k not in own and not k.startswith(ignore)]
    who = f"{encoder}: " if encoder else ""
    if missing or unused:
        found = []
        if missing:
            found.append(f"{len(missing)} encoder weight(s) missing from it ({_first(missing)})")
        if unused:
            found.append(f"{len(unused)} checkpoint weight(s) with no place in the encoder ({_first(unused)})")
        raise EncoderError(
            f"{who}checkpoint {path} does not fit this encoder: {'; '.join(found)}. Loading it anyway would "
            "leave weights random or unused, and the features would not be the checkpoint model's. Use the "
            "encoder the checkpoint was trained as: a model built with non-default options (UNI's LayerScale, "
            "blocks.*.ls1.gamma) needs a registered encoder built the same way (see `wsi-mil encoders`, e.g. "
            f"`uni`), not timm's default `timm:<name>`. Only classifier heads ({', '.join(ignore)}) are dropped."
        )
    wrong = [k for k in own if k in state and _shape(state[k]) != tuple(own[k].shape)]
    if wrong:
        shapes = ", ".join(f"{k} {_shape(state[k])} vs {tuple(own[k].shape)}" for k in wrong[:_SHOWN])
        raise EncoderError(
            f"{who}checkpoint {path} does not fit this encoder: {len(wrong)} weights have another shape "
            f"(checkpoint vs encoder: {shapes}). The checkpoint is of another size or variant of the "
            "architecture (width, patch size, image size): pick the encoder it was trained as."
        )
    dropped = [k for k in state if k not in own]
    if dropped:
        logger.info("%s: dropped %d classifier weights (%s)", path.name, len(dropped), _first(dropped))
    module.load_state_dict({k: state[k] for k in own if k in state}, strict=False)
    return f"checkpoint:{path.name}:{file_digest(path)}"


def hub_error(
    name: str, error: BaseException, *, filename: str | None, directory: Path | None, hint: str = ""
) -> WeightsUnavailableError:
    """The error for ImageNet weights that cannot be downloaded here."""
    where = f"put {filename} in {directory}" if filename and directory else hint
    return WeightsUnavailableError(
        f"{name}: ImageNet weights could not be downloaded ({type(error).__name__}: {error}). "
        f"Offline, {where}, or pass --checkpoint-path FILE, or use the offline default encoder "
        "efficientnet_lite0, or --weights random for plumbing tests only."
    )
