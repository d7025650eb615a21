"""The MPP-aware grid: level choice, read sizes, exact vectorized tissue fractions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from wsi_mil.errors import MissingMPPError
from wsi_mil.io import open_slide
from wsi_mil.tiling.grid import candidate_axes, plan_grid, select_patches, tissue_fractions


@pytest.fixture(scope="module")
def slide_025(make_slide):
    """0.25 um/px (40x) with Aperio-like downsamples 1, 4, 16."""
    return make_slide("forty_x", width=8192, height=4096, mpp=0.25, regions=())


@pytest.mark.parametrize(
    ("target", "level", "read_size", "size0"),
    [
        (0.25, 0, 256, 256),
        (0.5, 0, 512, 512),  # 2x: no stored level, read level 0 and resize
        (1.0, 1, 256, 1024),  # exactly level 1
        (2.0, 1, 512, 2048),
        (4.0, 2, 256, 4096),
        (0.3, 0, 307, 307),
    ],
)
def test_level_with_least_downsampling(slide_025: Path, target: float, level: int, read_size: int, size0: int) -> None:
    with open_slide(slide_025) as slide:
        spec = plan_grid(slide, patch_size=256, target_mpp=target)
    assert (spec.patch_level, spec.patch_size, spec.patch_size_level0) == (level, read_size, size0)
    assert spec.target_patch_size == 256 and spec.step_level0 == size0


def test_overlap_and_level_mode(slide_025: Path) -> None:
    with open_slide(slide_025) as slide:
        spec = plan_grid(slide, patch_size=256, target_mpp=0.5, overlap=0.25)
        assert spec.step_level0 == 384
        fixed = plan_grid(slide, patch_size=224, target_mpp=None, level=1)
    assert (fixed.patch_level, fixed.patch_size, fixed.patch_size_level0, fixed.target_mpp) == (1, 224, 896, None)


def test_missing_mpp_message_names_slide_and_both_fixes(make_slide) -> None:
    path = make_slide("no_mpp", mpp=None)
    with open_slide(path) as slide, pytest.raises(MissingMPPError) as info:
        plan_grid(slide, patch_size=256, target_mpp=0.5)
    message = str(info.value)
    assert str(path) in message and "--mpp" in message and "mpp' column" in message
    with open_slide(path) as slide:  # level mode needs no MPP
        assert plan_grid(slide, patch_size=256, target_mpp=None).patch_size_level0 == 256


def _brute_force(mask: np.ndarray, downsample: float, xs, ys, size0: int) -> np.ndarray:
    """Upsample the mask to level 0 and count: the slow, obviously right answer."""
    full = np.repeat(np.repeat(mask, int(downsample), axis=0), int(downsample), axis=1)
    return np.array([[full[y : y + size0, x : x + size0].mean() for x in xs] for y in ys])


@pytest.mark.parametrize(("size0", "step"), [(64, 64), (40, 24), (100, 100)])
def test_fractions_are_exact_at_any_scale(size0: int, step: int) -> None:
    rng = np.random.default_rng(1)
    mask = rng.random((30, 40)) < 0.4
    downsample = 8.0
    xs = np.arange(0, 40 * 8 - size0 + 1, step)
    ys = np.arange(0, 30 * 8 - size0 + 1, step)
    fast = tissue_fractions(mask, downsample, xs, ys, size0)
    np.testing.assert_allclose(fast, _brute_force(mask, downsample, xs, ys, size0), atol=1e-9)


def test_selection_is_exact_on_a_known_layout(reference_slide: Path) -> None:
    from tests.conftest import REFERENCE_COORDS

    mask = np.zeros((192, 256), dtype=bool)  # 16 level-0 px per mask px
    mask[32:96, 64:160] = True  # the reference tissue rectangle
    with open_slide(reference_slide) as slide:
        spec = plan_grid(slide, patch_size=256, target_mpp=0.5)
        coords, fractions = select_patches(mask, 16.0, slide.dimensions, spec, threshold=0.5)
    assert sorted(map(tuple, coords.tolist())) == REFERENCE_COORDS
    assert coords.dtype == np.int64 and fractions.min() == 1.0
    # Half-covered patches are kept at threshold 0.5 and dropped above it.
    shifted = np.zeros_like(mask)
    shifted[32:96, 72:168] = True  # moved by half a patch
    with open_slide(reference_slide) as slide:
        kept, _ = select_patches(shifted, 16.0, slide.dimensions, spec, threshold=0.5)
        strict, _ = select_patches(shifted, 16.0, slide.dimensions, spec, threshold=0.75)
    assert len(kept) == 7 * 4 and len(strict) == 5 * 4


def test_only_whole_patches_inside_the_slide(reference_slide: Path) -> None:
    with open_slide(reference_slide) as slide:
        spec = plan_grid(slide, patch_size=1000, target_mpp=0.5)
        xs, ys = candidate_axes(slide.dimensions, spec)
    assert xs.tolist() == [0, 1000, 2000, 3000] and ys.tolist() == [0, 1000, 2000]


def test_millions_of_candidates_are_fast() -> None:
    """Vectorized: 2,000 x 2,000 candidates on a 5,000 x 5,000 mask in well under a minute."""
    mask = np.zeros((5000, 5000), dtype=bool)
    mask[1000:4000, 500:4500] = True
    xs = np.arange(0, 5000 * 4 - 10, 10)
    ys = np.arange(0, 5000 * 4 - 10, 10)
    fractions = tissue_fractions(mask, 4.0, xs, ys, 10)
    assert fractions.shape == (len(ys), len(xs))
    assert fractions.sum() == pytest.approx((3000 * 4000 * 16) / 100, rel=0.01)
