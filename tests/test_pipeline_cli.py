"""Every stage through the real CLI on a small synthetic cohort: tile -> extract -> train ->
predict -> heatmap (with CAMs of the top patches) -> evaluate-maps. Plumbing only: the
encoder has random weights and the labels are arbitrary, so no accuracy is claimed."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")

from tests.cli_runs import train_and_predict
from wsi_mil.cli import main
from wsi_mil.synthetic import Region, write_synthetic_slide

LESION = [[1024, 1024], [1536, 1024], [1536, 1536], [1024, 1536], [1024, 1024]]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("pipeline")
    slides, run = root / "slides", root / "run"
    for index in range(4):
        write_synthetic_slide(
            slides / f"case{index}.svs",
            width=2560,
            height=2048,
            mpp=0.5,
            regions=[Region(512 + 256 * (index % 2), 512, 1536, 1280)],
            downsamples=(1, 4),
        )
    labels = run / "labels.csv"
    labels.parent.mkdir(parents=True)
    labels.write_text("slide_id,label\n" + "".join(f"case{i},{'tumor' if i % 2 else 'normal'}\n" for i in range(4)))
    quiet = ["--quiet", "--workers", "0"]
    assert main(["tile", str(slides), "--out", str(run), *quiet]) == 0
    assert (
        main(["extract", str(run), "--encoder", "resnet18", "--weights", "random", "--batch-size", "16", *quiet]) == 0
    )
    train_and_predict(run, labels, model="ilam", epochs=2)
    assert (
        main(
            [
                "heatmap",
                str(run),
                "--formats",
                "zarr",
                "tiff",
                "png",
                "geojson",
                "gallery",
                "--maps",
                "attention_pct",
                "contribution",
                "--set",
                "heatmap.cam_top_k=3",
                "--set",
                "heatmap.cam_methods=[gradcam,integrated_gradients]",
                "--set",
                "heatmap.cam_ig_steps=2",
                "--set",
                "heatmap.cam_device=cpu",
                *quiet,
            ]
        )
        == 0
    )
    return run


def test_heatmaps_and_cams_for_every_slide(run: Path) -> None:
    import tiffslide

    from wsi_mil.explain.cams_file import read_cams

    for index in range(4):
        out = run / "heatmaps" / "ilam" / f"case{index}"
        for name in (
            "attention_pct.ome.zarr",
            "attention_pct.tiff",
            "contribution_tumor.tiff",
            "patches.geojson",
            "cam_gallery.png",
            "cams.h5",
            "cam_gradcam.tiff",
            "cam_integrated_gradients.ome.zarr",
            "attention_pct_gallery.png",
            "contribution_tumor_gallery.png",
        ):
            assert (out / name).exists(), out / name
        cams = read_cams(out / "cams.h5")
        assert cams.maps["gradcam"].shape == (3, 224, 224) and cams.images.shape == (3, 224, 224, 3)
        assert cams.attrs["folds"] and set(cams.faithfulness["gradcam"]) == {"average_drop_pct", "increase_pct"}
        with tiffslide.TiffSlide(out / "cam_gradcam.tiff") as tiff:
            assert tiff.dimensions == (2560, 2048)
            x, y = (int(v) for v in cams.coords[0])
            inside = np.asarray(tiff.read_region((x + 8, y + 8), 0, (240, 240), as_array=True))
            assert np.isfinite(inside).all()  # the explained patch is painted over its whole square
            outside = np.asarray(tiff.read_region((0, 0), 0, (256, 256), as_array=True))
            assert np.isnan(outside).all()  # glass: no patch, no value


def test_evaluate_maps_from_the_cli(run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    masks = run / "masks"
    masks.mkdir(exist_ok=True)
    for index in range(4):
        features = [{"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [LESION]}, "properties": {}}]
        (masks / f"case{index}.geojson").write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    capsys.readouterr()
    assert main(["evaluate-maps", str(run), "--masks", str(masks)]) == 0
    table = (run / "explanations" / "ilam" / "explanations.md").read_text()
    assert "| attention_pct | 4/4 |" in table and "contribution_tumor" in table
    assert "| attention_pct | 4/4 |" in capsys.readouterr().out  # the table is printed too
    curves = (run / "explanations" / "ilam" / "faithfulness_per_slide.csv").read_text().splitlines()
    assert {line.split(",")[0] for line in curves[1:]} == {
        f"case{i}" for i in range(4)
    }  # every slide, its predicted class
    assert {line.split(",")[1] for line in curves[1:]} == {
        "attention_raw",
        "manifold",
        "logit_pred",
        "contribution_pred",
        "random",
    }
    assert "## Bag-level faithfulness" in table and "| random |" in table
    cams = (run / "explanations" / "ilam" / "cams_per_slide.csv").read_text().splitlines()
    assert cams[0].startswith("slide_id,method,patches,average_drop_pct,increase_pct,pixel_auc,hit")
    assert len(cams) == 1 + 4 * 2  # 4 slides x (gradcam, integrated_gradients)
    assert "| gradcam | 4 |" in table
    assert main(["evaluate-maps", str(run), "--masks", str(run / "nowhere")]) == 2
    assert "no such masks folder" in capsys.readouterr().err


def test_one_bad_annotation_costs_its_slide_not_the_table(
    run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    masks = tmp_path / "masks"
    masks.mkdir()
    for index in range(3):
        features = [{"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [LESION]}, "properties": {}}]
        (masks / f"case{index}.geojson").write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    (masks / "case3.geojson").write_text('{"type": "FeatureCollection", "features": [')  # cut short
    capsys.readouterr()
    assert main(["evaluate-maps", str(run), "--masks", str(masks), "--no-faithfulness"]) == 1  # like tile, extract
    out = run / "explanations" / "ilam"
    assert "| attention_pct | 3/3 |" in (out / "explanations.md").read_text()
    rows = (out / "explanations_per_slide.csv").read_text().splitlines()
    bad = [line for line in rows if line.startswith("case3,")]
    assert len(bad) == 1 and "case3.geojson" in bad[0], rows
    err = capsys.readouterr().err
    assert "case3: not evaluated" in err and "evaluate-maps: 3 done, 1 failed" in err
    with (run / "manifest.csv").open(newline="") as handle:
        status = {r["slide_id"]: r for r in csv.DictReader(handle) if r["stage"] == "evaluate-maps"}
    assert {k: r["status"] for k, r in status.items()} == {
        "case0": "done",
        "case1": "done",
        "case2": "done",
        "case3": "failed",
    }
    assert "case3.geojson" in status["case3"]["error"]


def test_a_slide_whose_curves_fail_costs_its_row_not_the_command(
    run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    scores = copy / "scores" / "ilam" / "case2.h5"
    scores.write_bytes(scores.read_bytes()[:4096])  # truncated: the faithfulness curves cannot read it
    capsys.readouterr()
    assert main(["evaluate-maps", str(copy), "--quiet"]) == 1  # before: the first bad slide stopped the command
    assert "case2: not evaluated" in capsys.readouterr().err
    with (copy / "manifest.csv").open(newline="") as handle:
        status = {r["slide_id"]: r["status"] for r in csv.DictReader(handle) if r["stage"] == "evaluate-maps"}
    assert status == {"case0": "done", "case1": "done", "case2": "failed", "case3": "done"}
    curves = (copy / "explanations" / "ilam" / "faithfulness_per_slide.csv").read_text()
    assert "case3," in curves and "case2," not in curves
