"""Microns per pixel (MPP) from slide metadata, with sanity checks and fallbacks.

Order, first usable value wins:

1. an explicit override (per slide from a CSV column, or per run from ``--mpp``);
2. ``openslide.mpp-x``/``-y`` or ``tiffslide.mpp-x``/``-y`` (what the readers derived);
3. ``aperio.MPP``;
4. TIFF ``XResolution``/``YResolution`` when ``ResolutionUnit`` is centimeter,
   millimeter, micrometer or inch (unit ``none`` carries no physical meaning);
5. the objective power, assuming the common convention 10 / power um/px
   (40x -> 0.25, 20x -> 0.5), logged as an assumption.

Values outside ``MPP_RANGE`` are nonsense for a microscope slide (a 72-dpi
resolution tag gives 352.8 um/px, for instance) and are treated as missing.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger(__name__)

#: Plausible level-0 MPP of a scanned slide or microscope field, in um/px.
MPP_RANGE = (0.05, 25.0)

_UNIT_TO_UM = {
    "centimeter": 1e4,
    "millimeter": 1e3,
    "micrometer": 1.0,
    "micron": 1.0,
    "inch": 25_400.0,
}


@dataclass(frozen=True)
class MppInfo:
    """The resolved MPP of a slide and where it came from."""

    mpp: float | None
    source: str

    @property
    def usable(self) -> bool:
        return self.mpp is not None


def is_plausible_mpp(value: float | None) -> bool:
    return value is not None and MPP_RANGE[0] <= value <= MPP_RANGE[1]


def _as_float(value: Any) -> float | None:
    if value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if number == number and number > 0 else None  # drops NaN


def _pair(properties: Mapping[str, Any], key_x: str, key_y: str) -> float | None:
    x = _as_float(properties.get(key_x))
    y = _as_float(properties.get(key_y))
    if x is None:
        return None
    if y is not None and abs(x - y) / x > 0.01:
        logger.warning("anisotropic pixels (%s=%s, %s=%s): using their mean", key_x, x, key_y, y)
        return (x + y) / 2
    return x


def _from_resolution_tags(properties: Mapping[str, Any]) -> float | None:
    unit = str(properties.get("tiff.ResolutionUnit", "")).strip().lower()
    scale = _UNIT_TO_UM.get(unit)
    x_res = _as_float(properties.get("tiff.XResolution"))
    if scale is None or x_res is None:
        return None
    y_res = _as_float(properties.get("tiff.YResolution")) or x_res
    return scale * (1 / x_res + 1 / y_res) / 2


def _objective_power(properties: Mapping[str, Any]) -> float | None:
    for key in ("openslide.objective-power", "tiffslide.objective-power", "aperio.AppMag"):
        power = _as_float(properties.get(key))
        if power is not None:
            return power
    return None


def resolve_mpp(
    properties: Mapping[str, Any],
    *,
    override: float | None = None,
    slide_name: str = "slide",
) -> MppInfo:
    """Resolve the level-0 MPP of a slide from its metadata properties.

    ``properties`` uses OpenSlide's key names (``openslide.mpp-x``,
    ``aperio.MPP``, ``tiff.XResolution``...); tiffslide's ``tiffslide.*``
    keys are accepted too.
    """
    if override is not None:
        if not is_plausible_mpp(override):
            raise ValueError(
                f"{slide_name}: MPP override {override} is outside the plausible range "
                f"{MPP_RANGE[0]}-{MPP_RANGE[1]} um/px"
            )
        return MppInfo(float(override), "override")

    candidates = [
        ("openslide.mpp", _pair(properties, "openslide.mpp-x", "openslide.mpp-y")),
        ("tiffslide.mpp", _pair(properties, "tiffslide.mpp-x", "tiffslide.mpp-y")),
        ("aperio.MPP", _as_float(properties.get("aperio.MPP"))),
        ("tiff.resolution", _from_resolution_tags(properties)),
    ]
    for source, value in candidates:
        if value is None:
            continue
        if is_plausible_mpp(value):
            return MppInfo(value, source)
        logger.info("%s: ignoring implausible MPP %.4g um/px from %s", slide_name, value, source)

    power = _objective_power(properties)
    if power is not None and is_plausible_mpp(10.0 / power):
        mpp = 10.0 / power
        logger.warning(
            "%s: no MPP in the metadata; assuming %.3g um/px from objective power %gx "
            "(10/power). Pass --mpp or a per-slide mpp column if that is wrong.",
            slide_name,
            mpp,
            power,
        )
        return MppInfo(mpp, f"objective-power {power:g}x (assumed 10/power)")
    return MppInfo(None, "missing")
