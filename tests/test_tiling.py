"""The tiling stage on synthetic slides with a known layout and on the real slides."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import REFERENCE_COORDS
from wsi_mil.config import Config, ParallelConfig, TilingConfig
from wsi_mil.io import open_slide
from wsi_mil.io.discover import SlideSource
from wsi_mil.store import read_bag
from wsi_mil.synthetic import Region
from wsi_mil.tiling import tile_slide, tile_slides

INLINE = ParallelConfig(workers=0)


def _config(**tiling) -> Config:
    return Config(tiling=TilingConfig(**tiling), parallel=INLINE)


def _source(path: Path, **kwargs) -> SlideSource:
    return SlideSource(path, path.stem, **kwargs)


@pytest.mark.parametrize("fmt", ["h5", "zarr"])
def test_exact_patches_on_known_layout(tmp_path: Path, reference_slide: Path, fmt: str) -> None:
    [record] = tile_slide(_source(reference_slide), tmp_path, config=_config(bag_format=fmt))
    assert record["status"] == "done" and record["n_patches"] == 24
    bag = read_bag(tmp_path / "bags" / f"reference.{fmt}")
    assert sorted(map(tuple, bag.coords.tolist())) == REFERENCE_COORDS
    attrs = bag.attrs
    assert (attrs["patch_size"], attrs["patch_level"], attrs["patch_size_level0"]) == (256, 0, 256)
    assert attrs["target_mpp"] == 0.5 and attrs["slide_mpp"] == pytest.approx(0.5)
    assert attrs["slide_id"] == "reference" and attrs["slide_path"] == str(reference_slide.resolve())
    assert attrs["tissue_threshold"] == 0.5 and attrs["format_version"] == "1.0"
    assert json.loads(attrs["tiling_config"])["tiling"]["bag_format"] == fmt
    assert bag.tissue_mask.shape == (192, 256) and bag.mask_attrs["downsample"] == pytest.approx(16.0)
    qc = Image.open(tmp_path / "qc" / "reference.png")
    assert qc.mode == "RGB" and max(qc.size) >= 1024
    assert (np.asarray(qc) == (30, 80, 255)).all(axis=-1).any()  # the grid is drawn


def test_several_target_mpps_give_one_bag_set_each(tmp_path: Path, make_slide) -> None:
    slide = make_slide("forty_x_tissue", width=8192, height=8192, mpp=0.25, regions=(Region(2048, 2048, 4096, 4096),))
    records = tile_slide(_source(slide), tmp_path, config=_config(target_mpp=(0.25, 0.5, 1.0, 2.0)))
    counts = {r["bag_set"]: r["n_patches"] for r in records}
    # 4096 x 4096 level-0 px of tissue, patches of 256 px at each resolution
    assert counts == {"0.25mpp": 16 * 16, "0.5mpp": 8 * 8, "1mpp": 4 * 4, "2mpp": 2 * 2}
    levels = {r["bag_set"]: (r["level"], r["patch_size"]) for r in records}
    assert levels == {"0.25mpp": (0, 256), "0.5mpp": (0, 512), "1mpp": (1, 256), "2mpp": (1, 512)}
    for name in counts:
        assert (tmp_path / "bags" / name / "forty_x_tissue.h5").exists()
        assert (tmp_path / "qc" / name / "forty_x_tissue.png").exists()


def test_magnification_and_level_modes(tmp_path: Path, reference_slide: Path) -> None:
    [by_mag] = tile_slide(_source(reference_slide), tmp_path / "mag", config=_config(magnification=(10.0,)))
    assert by_mag["bag_set"] == "10x" and by_mag["n_patches"] == 3 * 2  # 512-px patches
    [by_level] = tile_slide(_source(reference_slide), tmp_path / "lvl", config=_config(level=1, patch_size=64))
    assert by_level["bag_set"] == "level1" and by_level["level"] == 1 and by_level["n_patches"] == 24


def test_saved_pixels_match_the_slide(tmp_path: Path, make_slide) -> None:
    slide = make_slide("forty_x_small", width=4096, height=4096, mpp=0.25, regions=(Region(1024, 1024, 1024, 1024),))
    config = _config(target_mpp=(1.0,), patch_size=64, save_pixels=True)
    [record] = tile_slide(_source(slide), tmp_path, config=config)
    bag = read_bag(tmp_path / "bags" / "forty_x_small.h5")
    pixels = bag.read_pixels()
    assert pixels.shape == (record["n_patches"], 64, 64, 3) and len(pixels) == 16
    with open_slide(slide) as reader:
        x, y = bag.coords[5]
        expected = reader.read_region((int(x), int(y)), 1, (64, 64), as_array=True)
    np.testing.assert_array_equal(pixels[5], expected)


def test_resampled_pixels_have_the_target_size(tmp_path: Path, reference_slide: Path) -> None:
    config = _config(target_mpp=(0.8,), patch_size=100, save_pixels=True, bag_format="zarr")
    [record] = tile_slide(_source(reference_slide), tmp_path, config=config)
    bag = read_bag(tmp_path / "bags" / "reference.zarr")
    assert bag.attrs["patch_size"] == 160 and bag.read_pixels().shape == (record["n_patches"], 100, 100, 3)


def test_no_tissue_and_tiny_slides_give_empty_bags(tmp_path: Path, make_slide) -> None:
    glass = make_slide("glass", regions=())
    tiny = make_slide("tiny", width=200, height=150, regions=(Region(0, 0, 200, 150),), downsamples=(1,))
    records = tile_slides([_source(glass), _source(tiny)], tmp_path, config=_config())
    notes = {r["slide_id"]: (r["status"], r["n_patches"], r["note"]) for r in records}
    assert notes["glass"] == ("done", 0, "no tissue found")
    assert notes["tiny"][:2] == ("done", 0) and "smaller than one patch" in notes["tiny"][2]
    assert len(read_bag(tmp_path / "bags" / "glass.h5")) == 0


def test_missing_mpp_fails_fast_and_overrides_fix_it(tmp_path: Path, make_slide) -> None:
    slide = make_slide("no_mpp_tissue", mpp=None)
    [failed] = tile_slide(_source(slide), tmp_path, config=_config())
    assert failed["status"] == "failed" and str(slide) in failed["error"] and "--mpp" in failed["error"]
    [per_slide] = tile_slide(_source(slide, mpp=0.5), tmp_path / "a", config=_config())
    [per_run] = tile_slide(_source(slide), tmp_path / "b", config=_config(mpp=0.5))
    assert per_slide["n_patches"] == per_run["n_patches"] == 24
    assert per_run["mpp_source"] == "override"


def test_rerun_skips_and_overwrite_redoes(tmp_path: Path, reference_slide: Path) -> None:
    config = _config()
    tile_slide(_source(reference_slide), tmp_path, config=config)
    bag = tmp_path / "bags" / "reference.h5"
    before = bag.stat().st_mtime_ns
    [again] = tile_slide(_source(reference_slide), tmp_path, config=config)
    assert again["status"] == "skipped" and bag.stat().st_mtime_ns == before
    [redo] = tile_slide(_source(reference_slide), tmp_path, config=config, overwrite=True)
    assert redo["status"] == "done" and bag.stat().st_mtime_ns != before


def test_bad_slide_does_not_stop_the_batch(tmp_path: Path, reference_slide: Path) -> None:
    broken = tmp_path / "broken.svs"
    broken.write_bytes(reference_slide.read_bytes()[:5000])  # truncated copy
    records = tile_slides([_source(broken), _source(reference_slide)], tmp_path / "run", config=_config())
    status = {r["slide_id"]: r["status"] for r in records}
    assert status == {"broken": "failed", "reference": "done"}
    manifest = (tmp_path / "run" / "manifest.csv").read_text()
    assert "broken" in manifest and str(broken) in manifest


@pytest.mark.parametrize(
    ("name", "mpp", "min_patches"),
    [
        ("CMU-1-Small-Region.svs", None, 20),
        pytest.param("TCGA-CR-7395-01A-01-TS1.svs", 0.5, 100, marks=pytest.mark.restricted_data),
        ("test3-DAPI-2-(387).ndpi", None, 10),
    ],
)
def test_real_slides(tmp_path: Path, shared_data: Path, name: str, mpp: float | None, min_patches: int) -> None:
    path = shared_data / "slides" / name
    [record] = tile_slide(SlideSource(path, path.stem, mpp), tmp_path, config=_config())
    assert record["status"] == "done" and record["n_patches"] >= min_patches
    bag = read_bag(tmp_path / "bags" / f"{path.stem}.h5")
    with open_slide(path, mpp=mpp) as slide:
        width, height = slide.dimensions
    size0 = bag.attrs["patch_size_level0"]
    assert (bag.coords >= 0).all()
    assert (bag.coords[:, 0] + size0 <= width).all() and (bag.coords[:, 1] + size0 <= height).all()
    assert (bag.tissue_fraction >= 0.5).all()


def test_real_tissue_patches_are_tissue(tmp_path: Path, shared_data: Path) -> None:
    """Kept patches on CMU-1 hold stained tissue; the background of the slide is not kept."""
    from skimage.color import rgb2hsv

    path = shared_data / "slides" / "CMU-1-Small-Region.svs"
    config = replace(_config(target_mpp=(1.0,), patch_size=128, save_pixels=True))
    tile_slide(SlideSource(path, path.stem), tmp_path, config=config)
    pixels = read_bag(tmp_path / "bags" / f"{path.stem}.h5").read_pixels()
    saturation = np.array([rgb2hsv(p)[..., 1].mean() for p in pixels])
    assert np.median(saturation) > 0.15
