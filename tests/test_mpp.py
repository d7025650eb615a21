"""MPP from metadata, its sanity checks and fallbacks."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from wsi_mil.io import open_slide, resolve_mpp


def test_openslide_property_wins() -> None:
    info = resolve_mpp({"openslide.mpp-x": "0.2527", "openslide.mpp-y": "0.2527", "aperio.MPP": "0.5"})
    assert info.mpp == pytest.approx(0.2527) and info.source == "openslide.mpp"


def test_aperio_mpp() -> None:
    assert resolve_mpp({"aperio.MPP": "0.4990"}).mpp == pytest.approx(0.499)


@pytest.mark.parametrize(
    ("unit", "resolution", "expected"),
    [("centimeter", 40000.0, 0.25), ("inch", 101600.0, 0.25), ("millimeter", 2000.0, 0.5)],
)
def test_resolution_tags_with_a_physical_unit(unit: str, resolution: float, expected: float) -> None:
    properties = {"tiff.ResolutionUnit": unit, "tiff.XResolution": resolution, "tiff.YResolution": resolution}
    info = resolve_mpp(properties)
    assert info.mpp == pytest.approx(expected) and info.source == "tiff.resolution"


def test_resolution_without_unit_is_ignored() -> None:
    assert resolve_mpp({"tiff.ResolutionUnit": "none", "tiff.XResolution": 40000}).mpp is None


def test_nonsense_values_are_treated_as_missing() -> None:
    # boxes.tiff: 28.35 px/cm (72 dpi) -> 352.8 um/px
    info = resolve_mpp(
        {"openslide.mpp-x": "352.77777983377013", "tiff.ResolutionUnit": "centimeter", "tiff.XResolution": 28.3464}
    )
    assert info.mpp is None and info.source == "missing"


def test_objective_power_fallback_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        info = resolve_mpp({"openslide.objective-power": "40"}, slide_name="s1.svs")
    assert info.mpp == pytest.approx(0.25)
    assert "objective" in info.source
    assert "s1.svs" in caplog.text and "assuming" in caplog.text


def test_override_beats_metadata_and_is_checked() -> None:
    assert resolve_mpp({"openslide.mpp-x": "0.25"}, override=0.5).mpp == 0.5
    with pytest.raises(ValueError, match="plausible"):
        resolve_mpp({}, override=500.0)


def test_anisotropic_pixels_use_the_mean(caplog: pytest.LogCaptureFixture) -> None:
    info = resolve_mpp({"openslide.mpp-x": "0.25", "openslide.mpp-y": "0.27"})
    assert info.mpp == pytest.approx(0.26)
    assert "anisotropic" in caplog.text


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("CMU-1-Small-Region.svs", 0.499),
        ("test3-DAPI-2-(387).ndpi", 0.228175),
        pytest.param(
            "boxes.tiff", None, marks=pytest.mark.restricted_data
        ),  # 352.8 um/px from its resolution tags: nonsense
        pytest.param(
            "TCGA-CR-7395-01A-01-TS1.svs", None, marks=pytest.mark.restricted_data
        ),  # no MPP and no objective power
        pytest.param("kidney-ihc-strip.tif", None, marks=pytest.mark.restricted_data),
    ],
)
def test_real_slides(shared_data: Path, name: str, expected: float | None) -> None:
    with open_slide(shared_data / "slides" / name) as slide:
        if expected is None:
            assert slide.mpp is None
        else:
            assert slide.mpp == pytest.approx(expected, rel=1e-4)


@pytest.mark.restricted_data
def test_per_run_override_reaches_the_reader(shared_data: Path) -> None:
    with open_slide(shared_data / "slides" / "boxes.tiff", mpp=0.25) as slide:
        assert slide.mpp == 0.25 and slide.mpp_info.source == "override"
