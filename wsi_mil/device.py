"""The torch device of a stage, from a config value: shared by extraction, training, prediction and CAMs."""

from __future__ import annotations

from typing import Any

from wsi_mil.errors import ConfigError


def resolve_device(name: str = "auto") -> Any:
    """``auto`` -> cuda when available, else cpu; ``cpu``, ``cuda``, ``cuda:N`` as given (a ``torch.device``)."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} asked for, but torch sees no CUDA GPU; use --device cpu or auto")
    return device
