"""Tissue detection on the real tiles: tissue is found, glass and pen ink are not."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from wsi_mil.config import TissueConfig
from wsi_mil.tiling.tissue import detect_tissue

#: The tiles are crops at various pyramid levels; detection runs as if each were a
#: thumbnail at 2 um/px, where the morphology sizes are a few pixels.
TILE_MPP = 2.0

TISSUE_TILES = [
    "tissue-level0-4302-10273-4814-10785",
    "tissue-level0-7352-11762-7864-12274",
    "tissue-level2-1784-6289-5880-10386",
    "tissue-level2-3000-7666-7096-11763",
    "tissue-level2-4640-4649-8736-8746",
    "tissue-level2-4760-5241-8856-9338",
    "high-nuclei-score-level0",
    "medium-nuclei-score-level0",
    "medium-nuclei-score-level1-2",
    "very-low-nuclei-score-level0",
]
EMPTY_TILES = ["no-tissue", "no-tissue2", "no-tissue-line", "almost-white-1", "almost-white-2", "almost-white-ihc"]
PEN_ONLY_TILES = ["no-tissue-red-pen", "no-tissue-green-pen"]
PEN_ON_TISSUE_TILES = ["high-nuclei-score-red-pen-level1", "medium-nuclei-score-green-pen-level1"]


def _tile(shared_data: Path, name: str) -> np.ndarray:
    return np.asarray(Image.open(shared_data / "tiles" / f"{name}.png").convert("RGB"))


def _fraction(rgb: np.ndarray, **options) -> float:
    return float(detect_tissue(rgb, mpp=TILE_MPP, config=TissueConfig(**options)).mean())


@pytest.mark.parametrize("name", TISSUE_TILES)
@pytest.mark.parametrize("method", ["auto", "hsv_otsu", "gray_otsu"])
def test_tissue_tiles_are_tissue(shared_data: Path, name: str, method: str) -> None:
    assert _fraction(_tile(shared_data, name), method=method) > 0.6


@pytest.mark.parametrize("name", EMPTY_TILES)
@pytest.mark.parametrize("method", ["auto", "hsv_otsu", "gray_otsu"])
def test_glass_is_not_tissue(shared_data: Path, name: str, method: str) -> None:
    assert _fraction(_tile(shared_data, name), method=method) < 0.05


@pytest.mark.parametrize("name", PEN_ONLY_TILES)
def test_pen_marks_are_not_tissue_when_pen_removal_is_on(shared_data: Path, name: str) -> None:
    rgb = _tile(shared_data, name)
    assert _fraction(rgb, remove_pen=True) < 0.1
    assert _fraction(rgb, remove_pen=False) > 0.5  # the ink alone would pass as tissue


@pytest.mark.parametrize("name", PEN_ON_TISSUE_TILES)
def test_pen_on_tissue_removes_the_ink_and_keeps_tissue(shared_data: Path, name: str) -> None:
    rgb = _tile(shared_data, name)
    with_removal = _fraction(rgb, remove_pen=True)
    assert 0.25 < with_removal < _fraction(rgb, remove_pen=False) - 0.05


def test_small_ihc_crops(shared_data: Path) -> None:
    """Kidney IHC crops are 50x30 px at level 0 (~0.5 um/px): tissue present, glass not."""
    config = TissueConfig(min_object_um2=50.0, max_hole_um2=50.0, closing_radius_um=1.0)
    tissue = _tile(shared_data, "kidney-ihc-level0-340-520-390-550")
    assert detect_tissue(tissue, mpp=0.5, config=config).mean() > 0.5
    glass = _tile(shared_data, "almost-white-ihc")
    assert detect_tissue(glass, mpp=0.5, config=config).mean() < 0.05


def test_fluorescence_is_detected_on_a_dark_background() -> None:
    rng = np.random.default_rng(0)
    rgb = np.zeros((200, 200, 3), dtype=np.uint8)
    rgb[..., 2] = rng.integers(0, 12, (200, 200))
    block = rgb[50:150, 40:160]
    nuclei = rng.random(block.shape[:2]) < 0.4
    block[nuclei, 2] = 220
    mask = detect_tissue(rgb, mpp=8.0)
    assert mask[60:140, 50:150].mean() > 0.9
    assert mask[:40].mean() == 0 and mask[160:].mean() == 0


def test_morphology_sizes_are_physical() -> None:
    """A 100x100 um fragment is dropped at the default 20,000 um^2 minimum, a 200x200 um one kept."""
    rgb = np.full((400, 400, 3), 240, dtype=np.uint8)
    rgb[20:32, 20:32] = (200, 100, 170)  # 12 px * 8 um = 96 um
    rgb[200:225, 200:225] = (200, 100, 170)  # 25 px * 8 um = 200 um
    mask = detect_tissue(rgb, mpp=8.0)
    assert not mask[20:32, 20:32].any()
    assert mask[205:220, 205:220].all()


def test_unknown_method_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown tissue method"):
        detect_tissue(np.zeros((8, 8, 3), np.uint8), mpp=8.0, config=TissueConfig(method="magic"))
