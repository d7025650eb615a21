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

            state = load_file(str(path))
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
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix) :]: v for k, v in state.items()}
    return state


def load_checkpoint(module: Any, path: Path, *, ignore: tuple[str, ...] = ()) -> str:
    """Load a local checkpoint into ``module``; every weight of the module must be filled.

    Keys of the checkpoint the module does not have (classification heads, projection
    layers) are ignored and logged. Returns the weights id ``checkpoint:<name>:<sha>``.
    """
    state = read_state_dict(path)
    own = module.state_dict()
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked") and not k.startswith(ignore)]
    if missing:
        raise EncoderError(
            f"{path}: does not fit this encoder: {len(missing)} weights missing (first: {', '.join(missing[:4])}). "
            "Check that the checkpoint belongs to this architecture."
        )
    mismatched = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if mismatched:
        k = mismatched[0]
        raise EncoderError(f"{path}: shape mismatch for {k}: {tuple(state[k].shape)} vs {tuple(own[k].shape)}")
    unused = [k for k in state if k not in own]
    if unused:
        logger.info("%s: ignoring %d checkpoint keys not in the encoder (e.g. %s)", path.name, len(unused), unused[0])
    module.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)
    return f"checkpoint:{path.name}:{file_digest(path)}"


def hub_error(name: str, error: BaseException, *, filename: str | None, directory: Path | None, hint: str = "") -> WeightsUnavailableError:
    """The error for ImageNet weights that cannot be downloaded here."""
    where = f"put {filename} in {directory}" if filename and directory else hint
    return WeightsUnavailableError(
        f"{name}: ImageNet weights could not be downloaded ({type(error).__name__}: {error}). "
        f"Offline, {where}, or pass --checkpoint-path FILE, or use the offline default encoder "
        "efficientnet_lite0, or --weights random for plumbing tests only."
    )
