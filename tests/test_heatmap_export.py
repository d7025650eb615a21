"""Heatmap outputs open in the readers users have, aligned with the slide, with the right values."""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import REFERENCE_COORDS
from wsi_mil.config import HeatmapConfig, load_config
from wsi_mil.explain.export_tiff import pyramid_factors
from wsi_mil.explain.heatmap import heatmap_run
from wsi_mil.explain.heatmap_slide import heatmap_slide
from wsi_mil.explain.scaling import range_of
from wsi_mil.explain.stitch import colormap_lut
from wsi_mil.io.discover import find_slides
from wsi_mil.store.scores import write_scores
from wsi_mil.tiling.tile import tile_slide

MODEL = "abmil"
ALL_FORMATS = ("zarr", "tiff", "rgba_tiff", "png", "geojson", "blend_tiff")


def _scores(coords: np.ndarray, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    n = len(coords)
    raw = rng.normal(size=n)
    return {
        "attention_raw": raw,
        "attention": np.exp(raw) / np.exp(raw).sum(),
        "attention_pct": (np.argsort(np.argsort(raw)) + 0.5) / n,
        "instance_logits": rng.normal(size=(n, 2)),
        "contribution": rng.normal(size=(n, 2)),
    }


def _write_run(run: Path, slide: Path) -> dict[str, np.ndarray]:
    config = load_config()
    tile_slide(find_slides([str(slide)], extensions=config.tiling.extensions)[0], run, config=config)
    from wsi_mil.store.bags import read_bag

    bag = read_bag(run / "bags" / f"{slide.stem}.h5")
    maps = _scores(bag.coords)
    geometry = {
        k: bag.attrs[k]
        for k in ("patch_size_level0", "patch_size", "patch_level", "slide_mpp", "target_mpp", "slide_path", "slide_id")
    }
    write_scores(
        run / "scores" / MODEL / f"{slide.stem}.h5",
        bag.coords,
        maps,
        coords_attrs=geometry,
        attrs={"probs": [0.3, 0.7], "pred": 1, "classes": ["normal", "tumor"], "model": MODEL},
    )
    return {"coords": bag.coords, **maps}


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory, reference_slide: Path) -> tuple[Path, dict[str, np.ndarray]]:
    run = tmp_path_factory.mktemp("heatmap_run")
    data = _write_run(run, reference_slide)
    options = HeatmapConfig(maps=("attention_pct", "logit"), formats=ALL_FORMATS, thumbnail_size=512)
    heatmap_slide(
        run / "scores" / MODEL / "reference.h5",
        out_dir=run / "out",
        bag_path=run / "bags" / "reference.h5",
        options=options,
    )
    return run, data


def _value_at(data: dict[str, np.ndarray], x: int, y: int, name: str = "attention_pct") -> float:
    coords = data["coords"]
    hit = np.flatnonzero(
        (coords[:, 0] <= x) & (x < coords[:, 0] + 256) & (coords[:, 1] <= y) & (y < coords[:, 1] + 256)
    )
    return float(data[name][hit[0]])


def test_ome_zarr_multiscales_and_values(run: tuple[Path, dict]) -> None:
    import zarr

    folder, data = run
    group = zarr.open_group(str(folder / "out" / "attention_pct.ome.zarr"), mode="r")
    multiscales = group.attrs["multiscales"][0]
    assert multiscales["version"] == "0.4" and [a["name"] for a in multiscales["axes"]] == ["y", "x"]
    assert multiscales["axes"][0]["unit"] == "micrometer"
    scales = [d["coordinateTransformations"][0]["scale"] for d in multiscales["datasets"]]
    assert scales[0] == [0.5, 0.5] and scales[1] == [1.0, 1.0]  # slide MPP 0.5, then 2x coarser
    level0 = group[multiscales["datasets"][0]["path"]]
    assert level0.shape == (3072, 4096) and level0.dtype == np.float32
    for x, y in REFERENCE_COORDS[:5]:
        assert level0[y + 100, x + 100] == pytest.approx(_value_at(data, x + 100, y + 100))
    assert np.isnan(level0[100, 100])  # glass
    level1 = group[multiscales["datasets"][1]["path"]]
    x, y = REFERENCE_COORDS[3]
    assert level1[(y + 128) // 2, (x + 128) // 2] == pytest.approx(_value_at(data, x + 128, y + 128))


def test_tiff_opens_in_openslide_and_tiffslide_aligned_with_the_slide(
    run: tuple[Path, dict], reference_slide: Path
) -> None:
    import openslide
    import tiffslide

    folder, data = run
    n_levels = len(pyramid_factors((3072, 4096)))
    slide = openslide.OpenSlide(str(reference_slide))
    rgba = openslide.OpenSlide(str(folder / "out" / "attention_pct_rgba.tiff"))
    assert rgba.dimensions == slide.dimensions == (4096, 3072)
    assert rgba.level_count == n_levels and rgba.level_downsamples[1] == pytest.approx(2.0)
    assert float(rgba.properties["openslide.mpp-x"]) == pytest.approx(0.5)
    lut = colormap_lut("jet")
    score_range = range_of(data["attention_pct"], signed=False, options=HeatmapConfig())  # no cohort given: the slide's
    assert score_range.clear is not None
    drawn = 0
    for x, y in REFERENCE_COORDS:
        pixel = np.asarray(rgba.read_region((x + 128, y + 100), 0, (1, 1)))[0, 0]
        value = np.array(_value_at(data, x + 128, y + 100))
        index = int(score_range.normalize(value) * 255 + 0.5)
        if value <= score_range.clear[1]:  # near-neutral: not drawn, the slide shows through
            assert tuple(pixel) == (0, 0, 0, 0)
        else:
            assert tuple(pixel) == (*lut[index], 255)
            drawn += 1
    assert 0 < drawn < len(REFERENCE_COORDS)
    assert np.asarray(rgba.read_region((50, 50), 0, (1, 1)))[0, 0, 3] == 0  # no data: transparent

    scores = tiffslide.TiffSlide(folder / "out" / "attention_pct.tiff")
    assert scores.dimensions == (4096, 3072) and scores.level_count == n_levels
    assert float(scores.properties["tiffslide.mpp-x"]) == pytest.approx(0.5)
    for x, y in REFERENCE_COORDS:
        value = scores.read_region((x + 200, y + 128), 0, (1, 1), as_array=True)
        assert float(value.ravel()[0]) == pytest.approx(_value_at(data, x + 200, y + 128), rel=1e-6)
    assert np.isnan(scores.read_region((50, 50), 0, (1, 1), as_array=True)).all()
    coloured = tiffslide.TiffSlide(folder / "out" / "attention_pct_rgba.tiff")
    assert coloured.level_count == n_levels and coloured.read_region((0, 0), 0, (2, 2), as_array=True).shape[-1] == 4


def test_blend_tiff_is_the_slide_under_the_colour_map(run: tuple[Path, dict], reference_slide: Path) -> None:
    import openslide

    folder, _ = run
    blend = openslide.OpenSlide(str(folder / "out" / "attention_pct_blend.tiff"))
    slide = openslide.OpenSlide(str(reference_slide))
    assert blend.dimensions == slide.dimensions and blend.level_count == slide.level_count
    glass = np.asarray(blend.read_region((64, 64), 0, (32, 32)))[..., :3].astype(int)
    original = np.asarray(slide.read_region((64, 64), 0, (32, 32)))[..., :3].astype(int)
    assert np.abs(glass - original).mean() < 6  # outside tissue: the slide (JPEG tolerance)
    x, y = REFERENCE_COORDS[0]
    tissue = np.asarray(blend.read_region((x + 64, y + 64), 0, (32, 32)))[..., :3].astype(int)
    assert np.abs(tissue - np.asarray(slide.read_region((x + 64, y + 64), 0, (32, 32)))[..., :3]).mean() > 10


def test_geojson_is_a_qupath_feature_collection(run: tuple[Path, dict]) -> None:
    import jsonschema

    folder, data = run
    collection = json.loads((folder / "out" / "patches.geojson").read_text())
    number = {"type": ["number", "null"]}
    schema = {
        "type": "object",
        "required": ["type", "features"],
        "properties": {
            "type": {"const": "FeatureCollection"},
            "features": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["type", "geometry", "properties"],
                    "properties": {
                        "type": {"const": "Feature"},
                        "geometry": {
                            "type": "object",
                            "required": ["type", "coordinates"],
                            "properties": {
                                "type": {"const": "Polygon"},
                                "coordinates": {
                                    "type": "array",
                                    "minItems": 1,
                                    "items": {
                                        "type": "array",
                                        "minItems": 4,
                                        "items": {
                                            "type": "array",
                                            "minItems": 2,
                                            "maxItems": 2,
                                            "items": {"type": "number"},
                                        },
                                    },
                                },
                            },
                        },
                        "properties": {
                            "type": "object",
                            "required": ["objectType", "measurements"],
                            "properties": {
                                "objectType": {"enum": ["tile", "detection", "annotation"]},
                                "measurements": {"type": "object", "additionalProperties": number, "minProperties": 1},
                            },
                        },
                    },
                },
            },
        },
    }
    jsonschema.validate(collection, schema)
    features = collection["features"]
    assert len(features) == len(data["coords"])
    first = features[0]
    x, y = data["coords"][0]
    assert first["geometry"]["coordinates"][0][0] == [x, y] and first["geometry"]["coordinates"][0][2] == [
        x + 256,
        y + 256,
    ]
    assert set(first["properties"]["measurements"]) == {"attention_pct", "logit_tumor"}
    assert first["properties"]["measurements"]["attention_pct"] == pytest.approx(data["attention_pct"][0], rel=1e-6)
    logits = data["instance_logits"][0]
    assert first["properties"]["measurements"]["logit_tumor"] == pytest.approx(logits[1] - logits[0], rel=1e-5)


def test_png_overlay_has_thumbnail_and_colour_bar(run: tuple[Path, dict]) -> None:
    from PIL import Image

    folder, _ = run
    image = Image.open(folder / "out" / "attention_pct_overlay.png")
    assert image.height == 384 and image.width > 512  # 512 x 384 thumbnail + the colour bar


def test_run_cli_manifest_skip_and_bad_slide(tmp_path: Path, make_slide: Callable[..., Path]) -> None:
    from wsi_mil.cli import main

    run = tmp_path / "run"
    _write_run(run, make_slide())
    bad = run / "scores" / MODEL / "broken.h5"
    bad.write_bytes(b"not hdf5")
    argv = ["heatmap", str(run), "--workers", "0", "--formats", "tiff", "geojson", "--maps", "attention_pct", "--quiet"]
    assert main(argv) == 1  # one slide failed
    rows = {r["slide_id"]: r for r in csv.DictReader((run / "manifest.csv").open()) if r["stage"] == "heatmap"}
    assert rows["reference"]["status"] == "done" and rows["broken"]["status"] == "failed"
    assert "broken.h5" in rows["broken"]["error"]
    out = run / "heatmaps" / MODEL / "reference"
    assert sorted(p.name for p in out.iterdir()) == ["attention_pct.tiff", "patches.geojson", "regions.geojson"]
    assert (run / "heatmaps" / MODEL / "colour_ranges.json").exists()  # scale: cohort
    bad.unlink()
    config = load_config(sets=["parallel.workers=0", "heatmap.formats=[tiff, geojson]", "heatmap.maps=[attention_pct]"])
    records = heatmap_run(run, config=config, progress=False)
    assert [r["status"] for r in records] == ["skipped"]


def test_a_damaged_map_file_is_written_again_not_skipped(tmp_path: Path, make_slide: Callable[..., Path]) -> None:
    """Resume checks outputs: a heatmap TIFF cut short or a PNG with a broken chunk is redone."""
    from PIL import Image

    run = tmp_path / "run"
    _write_run(run, make_slide())
    config = load_config(sets=["parallel.workers=0", "heatmap.formats=[tiff, png]", "heatmap.maps=[attention_pct]"])
    assert [r["status"] for r in heatmap_run(run, config=config, progress=False)] == ["done"]
    out = run / "heatmaps" / MODEL / "reference"
    tiff, png = out / "attention_pct.tiff", out / "attention_pct_overlay.png"
    whole_tiff, whole_png = tiff.read_bytes(), png.read_bytes()
    tiff.write_bytes(whole_tiff[: len(whole_tiff) // 2])
    png.write_bytes(whole_png[:100] + bytes(50) + whole_png[150:])
    records = heatmap_run(run, config=config, progress=False)
    assert [r["status"] for r in records] == ["done"] and records[0]["files_written"] == 2
    assert tiff.read_bytes() == whole_tiff and png.stat().st_size == len(whole_png)
    Image.open(png).verify()
    assert [r["status"] for r in heatmap_run(run, config=config, progress=False)] == ["skipped"]
