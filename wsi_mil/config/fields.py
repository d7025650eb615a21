"""What a config field declares beyond its type and default, and the checks several sections share."""

from __future__ import annotations

import dataclasses
import re
from typing import Any

#: Field metadata key: False on a key that changes how the work is done, not what it writes.
AFFECTS_OUTPUTS = "affects_outputs"
#: What a device key accepts (wsi_mil.features.freeze.resolve_device turns it into a torch device).
DEVICE_CHOICES = "auto (cuda when available), cpu, cuda or cuda:N"
_DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?")


def neutral_field(default: Any) -> Any:
    """A field that changes how the work is done (workers, devices, threads...), not what it
    writes: a rerun into a run folder made with another value keeps that folder's outputs."""
    return dataclasses.field(default=default, metadata={AFFECTS_OUTPUTS: False})


def check_device(key: str, value: str) -> None:
    """Raise ValueError unless ``value`` is a device name :data:`DEVICE_CHOICES` allows."""
    if not _DEVICE.fullmatch(value):
        raise ValueError(f"{key} must be {DEVICE_CHOICES}, got {value!r}")
