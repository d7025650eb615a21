"""Coarse-to-fine tissue detection (wsi_mil.tiling.refine): the coarse pyramid level whole,
the detection resolution only where the coarse mask is uncertain; the same tissue as
detecting the detection resolution whole. Pen strokes: tests/test_tissue.py."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from wsi_mil.config import Config, TissueConfig
from wsi_mil.io import open_slide
from wsi_mil.io.discover import SlideSource
from wsi_mil.store.bags import read_bag
from wsi_mil.synthetic import Region, tissue_texture
from wsi_mil.tiling.grid import tissue_fractions
from wsi_mil.tiling.refine import refine
from wsi_mil.tiling.slide_tissue import MAX_RATIO, coarse_level, detect_slide_tissue
from wsi_mil.tiling.thumbnail import plan_thumbnail, read_detection_thumbnail
from wsi_mil.tiling.tile import tile_slide
from wsi_mil.tiling.tissue import detect_tissue

FINE_MPP = 8.0


def _reduce(rgb: np.ndarray, factor: int) -> np.ndarray:
    return np.asarray(Image.fromarray(np.ascontiguousarray(rgb)).reduce(factor))


def _tissue_on_glass(size: int = 1024, seed: int = 0) -> np.ndarray:
    """An 8 um/px 'thumbnail': noisy glass with an H&E-textured ellipse, a rectangle and a
    small fragment."""
    rng = np.random.default_rng(seed)
    rgb = np.clip(rng.normal(238, 3, (size, size, 3)), 0, 255).astype(np.uint8)
    texture = np.tile(tissue_texture(256, seed=seed), (size // 256 + 1, size // 256 + 1, 1))[:size, :size]
    ys, xs = np.mgrid[:size, :size]
    inside = ((xs - 0.35 * size) / (0.25 * size)) ** 2 + ((ys - 0.4 * size) / (0.3 * size)) ** 2 <= 1
    inside |= (xs > 0.7 * size) & (xs < 0.9 * size) & (ys > 0.6 * size) & (ys < 0.85 * size)
    inside |= (xs - 0.8 * size) ** 2 + (ys - 0.2 * size) ** 2 <= 12**2  # about 0.03 mm^2
    rgb[inside] = texture[inside]
    return rgb


def _refine(fine: np.ndarray, config: TissueConfig, ratio: int = 4):
    requested: list[tuple[int, int, int, int]] = []

    def read_fine(x: int, y: int, w: int, h: int) -> np.ndarray:
        requested.append((x, y, w, h))
        return fine[y : y + h, x : x + w]

    refined = refine(
        _reduce(fine, ratio),
        coarse_mpp=FINE_MPP * ratio,
        fine_shape=fine.shape[:2],
        fine_mpp=FINE_MPP,
        read_fine=read_fine,
        config=config,
    )
    return refined, requested


def test_refinement_reads_only_near_edges_and_finds_the_same_tissue() -> None:
    fine = _tissue_on_glass()
    config = TissueConfig()
    refined, requested = _refine(fine, config)
    assert refined is not None
    full = detect_tissue(fine, mpp=FINE_MPP, config=config)
    assert refined.mask.shape == full.shape
    read = sum(w * h for *_, w, h in requested) / full.size
    assert 0 < read < 0.6 and refined.fine_share == pytest.approx(read)
    assert refined.mask[full].mean() > 0.995  # no tissue lost
    assert np.count_nonzero(refined.mask != full) < 0.01 * full.sum()
    # the patch grid (128 um patches, 16 px here) keeps the same patches
    xs = ys = np.arange(0, fine.shape[0] - 16 + 1, 16)
    same = (tissue_fractions(refined.mask, 1.0, xs, ys, 16) >= 0.5) == (tissue_fractions(full, 1.0, xs, ys, 16) >= 0.5)
    assert same.mean() > 0.99


def test_glass_alone_reads_nothing_of_the_fine_level() -> None:
    rng = np.random.default_rng(1)
    glass = np.clip(rng.normal(238, 3, (512, 512, 3)), 0, 255).astype(np.uint8)
    refined, requested = _refine(glass, TissueConfig())
    assert refined is not None and not refined.mask.any() and requested == []


def test_fluorescence_is_left_to_the_whole_detection() -> None:
    dark = np.full((256, 256, 3), 10, dtype=np.uint8)
    dark[100:150, 100:150] = 200
    assert _refine(dark, TissueConfig())[0] is None
    assert _refine(dark, TissueConfig(method="gray_otsu"))[0] is None


def test_real_tissue_is_kept(shared_data: Path) -> None:
    """GlaS glands on real glass (Kather EMPTY tiles), 2x2 of them, at 7.4 um/px: the refined
    mask holds every pixel the whole detection finds (to 0.5%)."""
    glass = np.asarray(Image.open(sorted((shared_data / "kather2016-samples" / "08_EMPTY").glob("*.tif"))[0]))
    images = sorted((shared_data / "glas" / "images").iterdir())[:4]
    tiles = [_reduce(np.asarray(Image.open(path).convert("RGB")), 12)[:40, :60] for path in images]
    fine = np.tile(_reduce(glass[..., :3], 12), (20, 20, 1))[:160, :240].copy()
    for index, tile in enumerate(tiles):
        top, left = 20 + 70 * (index // 2), 30 + 100 * (index % 2)
        fine[top : top + tile.shape[0], left : left + tile.shape[1]] = tile
    config = TissueConfig()
    refined, _ = _refine(fine, config)
    full = detect_tissue(fine, mpp=FINE_MPP, config=config)
    assert full.sum() > 4000
    assert refined.mask[full].mean() > 0.995


def _pyramid_slide(make_slide) -> Path:
    return make_slide(
        "pyramid",
        width=16384,
        height=12288,
        mpp=0.5,
        downsamples=(1, 4, 16, 64),
        regions=(Region(2048, 2048, 7000, 6000, "ellipse"), Region(10000, 7000, 4000, 3000)),
    )


def test_slide_detection_uses_the_coarse_level(make_slide) -> None:
    with open_slide(_pyramid_slide(make_slide)) as slide:
        config = TissueConfig()
        plan = plan_thumbnail(slide, target_mpp=config.thumbnail_mpp, max_mpp=config.thumbnail_mpp_max)
        assert coarse_level(slide, plan, config.coarse_mpp) == 3  # 32 um/px, 4x the 8 um/px level
        assert coarse_level(slide, plan, 0.0) is None
        assert coarse_level(slide, plan, 16.0) is None  # no level between 2x and 16 um/px
        tissue = detect_slide_tissue(slide, config=config)
        whole = read_detection_thumbnail(slide, target_mpp=8.0, max_mpp=16.0)
        full = detect_tissue(whole.rgb, mpp=whole.mpp, config=config)
        assert tissue.mask.shape == full.shape and tissue.plan.downsample == whole.downsample
        assert 0 < tissue.fine_share < 1
        assert tissue.mask[full].mean() > 0.995
        off = detect_slide_tissue(slide, config=dataclasses.replace(config, coarse_mpp=0.0))
        assert off.fine_share == 1.0 and np.array_equal(off.mask, full)
    assert MAX_RATIO == 4.0


def test_tiling_a_pyramid_keeps_the_patches_of_the_whole_detection(tmp_path: Path, make_slide) -> None:
    path = _pyramid_slide(make_slide)
    source = SlideSource(path, "pyramid")
    config = Config()
    whole = dataclasses.replace(config, tissue=dataclasses.replace(config.tissue, coarse_mpp=0.0))
    fast = tile_slide(source, tmp_path / "fast", config=config)
    slow = tile_slide(source, tmp_path / "slow", config=whole)
    assert fast[0]["status"] == slow[0]["status"] == "done"
    fast_bag, slow_bag = (
        read_bag(tmp_path / "fast" / "bags" / "pyramid.h5"),
        read_bag(tmp_path / "slow" / "bags" / "pyramid.h5"),
    )
    fast_coords = {tuple(c) for c in fast_bag.coords}
    slow_coords = {tuple(c) for c in slow_bag.coords}
    assert len(slow_coords) > 500
    assert len(fast_coords ^ slow_coords) <= 0.01 * len(slow_coords)
    assert fast_bag.tissue_mask.shape == slow_bag.tissue_mask.shape
    # the QC picture from the coarse level (no second read of the 8 um/px one), at the mask's size
    from PIL import Image

    with (
        Image.open(tmp_path / "fast" / "qc" / "pyramid.png") as fast_qc,
        Image.open(tmp_path / "slow" / "qc" / "pyramid.png") as slow_qc,
    ):
        assert fast_qc.size == slow_qc.size


def test_a_block_that_cannot_be_read_keeps_the_coarse_decision() -> None:
    fine = _tissue_on_glass(512)
    coarse = _reduce(fine, 4)
    config = TissueConfig()

    def read_fine(x: int, y: int, w: int, h: int) -> np.ndarray | None:
        return None if y < 128 else fine[y : y + h, x : x + w]

    refined = refine(
        coarse,
        coarse_mpp=4 * FINE_MPP,
        fine_shape=fine.shape[:2],
        fine_mpp=FINE_MPP,
        read_fine=read_fine,
        config=config,
    )
    assert refined is not None
    upsampled = np.repeat(np.repeat(refined.coarse.mask, 4, axis=0), 4, axis=1)
    assert np.array_equal(refined.mask[:120], upsampled[:120])
    full = detect_tissue(fine, mpp=FINE_MPP, config=config)
    assert refined.mask[200:][full[200:]].mean() > 0.995


def test_fine_level_reduced_from_a_finer_one(make_slide) -> None:
    """No stored 8-16 um/px level: the fine image is level 1 (2 um/px) box-reduced by 4, read in
    blocks; the coarse level is 64x (32 um/px)."""
    path = make_slide(
        "no8",
        width=8192,
        height=8192,
        mpp=0.5,
        downsamples=(1, 4, 64),
        tile=128,
        regions=(Region(1024, 1024, 4096, 3072), Region(5000, 5000, 2000, 2500, "ellipse")),
    )
    with open_slide(path) as slide:
        config = TissueConfig()
        assert len(slide.level_dimensions) == 3
        tissue = detect_slide_tissue(slide, config=config)
        assert (tissue.plan.level, tissue.plan.factor) == (1, 4)
        assert 0 < tissue.fine_share < 1
        whole = read_detection_thumbnail(slide, target_mpp=8.0, max_mpp=16.0)
        full = detect_tissue(whole.rgb, mpp=whole.mpp, config=config)
        assert tissue.mask.shape == full.shape
        assert tissue.mask[full].mean() > 0.995 and np.count_nonzero(tissue.mask != full) < 0.01 * full.sum()
