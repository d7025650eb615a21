"""Warnings of the slide libraries reach the slide's manifest row and one log line naming the slide,
in every stage that reads slides (tile, extract, heatmap, evaluate-maps), never printed raw.

The trigger is real: a flat TIFF (OpenSlide refuses it, so ``auto`` reads it with tiffslide)
whose Software tag holds bytes that are neither UTF-8 nor cp1252; tifffile logs "coercing
invalid ASCII to bytes" each time it parses the file."""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")

from tests.cli_runs import train_and_predict
from wsi_mil.cli import main
from wsi_mil.synthetic import tissue_texture

QUIET = ["--quiet", "--workers", "0"]
RAW = "coercing invalid ASCII"


def _flat_tiff(path: Path, *, bad_tag: bool) -> Path:
    """A 1024 x 1024 strip TIFF at 0.5 um/px with tissue in its centre; ``bad_tag``: a Software
    tag of undecodable bytes."""
    import tifffile

    rgb = np.full((1024, 1024, 3), 240, np.uint8)
    rgb[256:768, 256:768] = np.tile(tissue_texture(256, seed=1), (2, 2, 1))
    tifffile.imwrite(
        path,
        rgb,
        photometric="rgb",
        resolution=(2e4, 2e4),
        resolutionunit="CENTIMETER",
        software="wsi-mil test",
        rowsperstrip=64,
    )
    if bad_tag:
        with tifffile.TiffFile(path) as tif:
            tag = tif.pages[0].tags[305]
            offset, count = tag.valueoffset, tag.count
        with path.open("r+b") as handle:
            handle.seek(offset)
            handle.write(b"\x81" * (count - 1) + b"\0")
    return path


def _rows(run: Path, stage: str) -> dict[str, dict[str, str]]:
    with (run / "manifest.csv").open(newline="") as handle:
        return {row["slide_id"]: row for row in csv.DictReader(handle) if row["stage"] == stage}


def _check_stage(run: Path, stage: str, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture) -> None:
    err = capsys.readouterr().err
    raw = [r for r in caplog.records if r.name.split(".")[0] in ("tifffile", "tiffslide")]
    caplog.clear()
    assert not raw, f"{stage}: printed raw: {raw[0].getMessage()}"
    named = [line for line in err.splitlines() if RAW in line]
    assert named and all(line.startswith("case1: library warnings: tifffile: ") for line in named), err
    rows = _rows(run, stage)
    assert RAW in rows["case1"]["warnings"] and "TiffTag 305" in rows["case1"]["warnings"], rows["case1"]
    assert not rows["case0"].get("warnings"), rows["case0"]


@pytest.mark.slow
def test_library_warnings_name_their_slide_in_every_stage(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    slides, run, masks = tmp_path / "slides", tmp_path / "run", tmp_path / "masks"
    slides.mkdir()
    masks.mkdir()
    lesion = [[256, 256], [512, 256], [512, 512], [256, 512], [256, 256]]
    for index in range(4):
        _flat_tiff(slides / f"case{index}.tif", bad_tag=index == 1)
        features = [{"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [lesion]}, "properties": {}}]
        (masks / f"case{index}.geojson").write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    labels = tmp_path / "labels.csv"
    labels.write_text("slide_id,label\n" + "".join(f"case{i},{'tumor' if i % 2 else 'normal'}\n" for i in range(4)))
    caplog.set_level(logging.WARNING)

    assert main(["tile", str(slides), "--out", str(run), "--patch-size", "128", *QUIET]) == 0
    _check_stage(run, "tile", capsys, caplog)
    assert (
        main(["extract", str(run), "--encoder", "resnet18", "--weights", "random", "--batch-size", "16", *QUIET]) == 0
    )
    _check_stage(run, "extract", capsys, caplog)
    train_and_predict(run, labels)
    capsys.readouterr()
    assert (
        main(
            ["heatmap", str(run), "--formats", "png", "--maps", "attention_pct", "--set", "heatmap.cam_top_k=0", *QUIET]
        )
        == 0
    )  # the maps read the slide; CAMs (slow here) would add nothing
    _check_stage(run, "heatmap", capsys, caplog)
    assert main(["evaluate-maps", str(run), "--masks", str(masks), "--no-faithfulness", "--quiet"]) == 0
    _check_stage(run, "evaluate-maps", capsys, caplog)
