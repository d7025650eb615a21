"""``extract.slide_timeout``: a slide that passed tiling but whose level-0 tiles decode pathologically
slowly stops reading at the limit and fails with a clear message; the batch goes on.

The file is real and passes tiling: every level-0 JPEG tile's frame header claims 4096 x 4096 pixels
instead of 256 x 256. Tiling reads only the clean level below (its thumbnail) and succeeds; extraction
decodes each level-0 tile in full through imagecodecs (256x the pixels) before tifffile refuses it.
With a 20000-pixel claim one tile took 4 s and 1.2 GB (BENCHMARKS.md); 4096 keeps the test cheap."""

from __future__ import annotations

import csv
import struct
from pathlib import Path

import pytest

pytest.importorskip("torch")

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


def _extract_rows(run: Path) -> dict[str, dict[str, str]]:
    with (run / "manifest.csv").open(newline="") as handle:
        return {row["slide_id"]: row for row in csv.DictReader(handle) if row["stage"] == "extract"}


def test_a_slide_with_slow_tiles_passes_tiling_and_is_stopped_at_extraction(tmp_path: Path) -> None:
    slides, run = tmp_path / "slides", tmp_path / "run"
    _slow_tiles(slides / "slow.svs", claim=4096)
    write_synthetic_slide(
        slides / "good.svs", width=1024, height=768, mpp=0.5, downsamples=(1, 4), regions=(Region(256, 256, 768, 512),)
    )
    assert main(["tile", str(slides), "--out", str(run), "--patch-size", "256", *QUIET]) == 0

    extract = ["extract", str(run), "--encoder", "resnet18", "--weights", "random", "--batch-size", "4"]
    assert main([*extract, "--slide-timeout", "1", "--set", "extract.freeze=eager", *QUIET]) == 1
    rows = _extract_rows(run)
    assert rows["good"]["status"] == "done", rows["good"]
    slow = rows["slow"]
    assert slow["status"] == "failed", slow
    assert "per-slide time limit of 1 s (extract.slide_timeout)" in slow["error"], slow


def test_extract_slide_timeout_is_checked_like_other_options(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as stopped:
        main(["extract", str(tmp_path), "--slide-timeout", "-1"])
    assert stopped.value.code == 2
    assert "--slide-timeout" in capsys.readouterr().err
