"""Attribute values to and from HDF5/Zarr: shared by bags, feature, score and CAM files.

HDF5 attributes hold no ``None``, dicts or mixed lists: :func:`h5_attr` encodes them
(``None`` -> NaN, number lists -> arrays, other containers -> JSON); :func:`clean_attrs`
turns what either store returns back into plain Python values.
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np

#: Attributes that are floats and may be unknown (stored as NaN in HDF5, null in Zarr).
OPTIONAL_FLOATS = ("target_mpp", "slide_mpp")


def h5_attr(value: Any) -> Any:
    """``value`` as an HDF5 attribute can hold it."""
    if value is None:
        return math.nan
    if isinstance(value, (list, tuple)) and all(isinstance(v, (int, float)) for v in value):
        return np.asarray(value)
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value)
    return value


def clean_attrs(raw: dict[str, Any]) -> dict[str, Any]:
    """Stored attributes as plain Python values (str, int, float, list; unknown MPPs None).

    A CLAM coords file without ``patch_size_level0`` gets it from ``patch_size`` and
    ``downsample`` when both were recorded.
    """
    attrs: dict[str, Any] = {}
    for key, value in raw.items():
        if isinstance(value, bytes):
            value = value.decode()
        if isinstance(value, np.generic):
            value = value.item()
        if isinstance(value, np.ndarray):
            value = value.tolist()
        if key in OPTIONAL_FLOATS and isinstance(value, float) and math.isnan(value):
            value = None
        attrs[key] = value
    if "patch_size_level0" not in attrs and "patch_size" in attrs:
        # CLAM files: the read size times the level downsample, when it was recorded.
        downsample = attrs.get("downsample")
        if isinstance(downsample, (list, tuple)) and downsample:
            attrs["patch_size_level0"] = int(round(float(attrs["patch_size"]) * float(downsample[0])))
    return attrs
