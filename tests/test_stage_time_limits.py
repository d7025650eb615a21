"""Time limits after tiling. ``extract.slide_timeout``: a slide that passed tiling but whose level-0
tiles decode pathologically slowly stops reading at the limit and fails with a clear message; the
batch goes on. ``heatmap.slide_timeout``: a slide whose file stops answering after extraction (a FIFO
in its place: ``open`` blocks in the kernel, as on a hung network mount) is stopped (a child process).

The file is real and passes tiling: every level-0 JPEG tile's frame header claims 4096 x 4096 pixels
instead of 256 x 256. Tiling reads only the clean level below (its thumbnail) and succeeds; extraction
decodes each level-0 tile in full through imagecodecs (256x the pixels) before tifffile refuses it.
Here 16000 px (770 MB a tile): without a limit its 35 patches took about 20 s here (BENCHMARKS.md),
against a limit of 8 s, which the good slide's few patches stay well inside on a loaded machine."""

from __future__ import annotations

import csv
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")

from tests.cli_runs import train_and_predict
from wsi_mil.cli import main
from wsi_mil.synthetic import Region, write_synthetic_slide

QUIET = ["--workers", "0", "--quiet"]


def _slow_tiles(path: Path, *, claim: int) -> Path:
    """A 2048 x 1536 Aperio-style slide whose level-0 JPEG tiles claim ``claim`` x ``claim`` pixels."""
    import tifffile

    write_synthetic_slide(
        path, width=2048, height=1536, mpp=0.5, downsamples=(1, 4), regions=(Region(256, 256, 1792, 1280),)
    )
    with tifffile.TiffFile(path) as tif:
        spans = list(zip(tif.pages[0].dataoffsets, tif.pages[0].databytecounts, strict=True))
    with path.open("r+b") as handle:
        for offset, count in spans:
            handle.seek(offset)
            frame = handle.read(count).index(b"\xff\xc0")  # SOF0: marker, length, precision, height, width
            handle.seek(offset + frame + 5)
            handle.write(struct.pack(">HH", claim, claim))
    return path


def _rows(run: Path, stage: str) -> dict[str, dict[str, str]]:
    with (run / "manifest.csv").open(newline="") as handle:
        return {row["slide_id"]: row for row in csv.DictReader(handle) if row["stage"] == stage}


@pytest.mark.slow
def test_a_slide_with_slow_tiles_passes_tiling_and_is_stopped_at_extraction(tmp_path: Path) -> None:
    slides, run = tmp_path / "slides", tmp_path / "run"
    _slow_tiles(slides / "slow.svs", claim=16000)
    write_synthetic_slide(
        slides / "good.svs", width=1024, height=768, mpp=0.5, downsamples=(1, 4), regions=(Region(256, 256, 768, 512),)
    )
    assert main(["tile", str(slides), "--out", str(run), "--patch-size", "256", *QUIET]) == 0

    extract = ["extract", str(run), "--encoder", "resnet18", "--weights", "random", "--batch-size", "4"]
    assert main([*extract, "--slide-timeout", "8", "--set", "extract.freeze=eager", *QUIET]) == 1
    rows = _rows(run, "extract")
    assert rows["good"]["status"] == "done", rows["good"]
    slow = rows["slow"]
    assert slow["status"] == "failed", slow
    assert "per-slide time limit of 8 s (extract.slide_timeout)" in slow["error"], slow
    assert float(slow["seconds"]) < 30, slow  # the limit, one tile's read, and the model's load


def test_extract_slide_timeout_is_checked_like_other_options(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as stopped:
        main(["extract", str(tmp_path), "--slide-timeout", "-1"])
    assert stopped.value.code == 2
    assert "--slide-timeout" in capsys.readouterr().err


@pytest.mark.slow
def test_a_slide_that_stops_answering_after_extraction_is_stopped_at_heatmap(tmp_path: Path) -> None:
    slides, run = tmp_path / "slides", tmp_path / "run"
    for index in range(4):
        region = Region(256, 256, 768, 512)
        write_synthetic_slide(slides / f"case{index}.svs", width=1024, height=768, mpp=0.5, regions=(region,))
    assert main(["tile", str(slides), "--out", str(run), "--patch-size", "128", *QUIET]) == 0
    extract = ["extract", str(run), "--encoder", "resnet18", "--weights", "random", "--batch-size", "16"]
    assert main([*extract, *QUIET]) == 0
    labels = tmp_path / "labels.csv"
    labels.write_text("slide_id,label\n" + "".join(f"case{i},{'tumor' if i % 2 else 'normal'}\n" for i in range(4)))
    train_and_predict(run, labels)
    (slides / "case1.svs").unlink()
    os.mkfifo(slides / "case1.svs")  # open() now blocks until a writer comes: never

    heatmap = [sys.executable, "-m", "wsi_mil", "heatmap", str(run), "--formats", "png", "--maps", "attention_pct"]
    settings = ["--set", "heatmap.cam_top_k=0", "--slide-timeout", "20", *QUIET]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([*heatmap, *settings], capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 1, done.stderr
    rows = _rows(run, "heatmap")
    assert "per-slide time limit of 20 s (heatmap.slide_timeout)" in rows["case1"]["error"], rows["case1"]
    assert all(rows[f"case{i}"]["status"] == "done" for i in (0, 2, 3)), rows
