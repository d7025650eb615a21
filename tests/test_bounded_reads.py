"""Bounded reads: forged headers fail fast, thumbnails are bounded, corrupt tiles are tolerated
up to a documented fraction, a per-slide time limit, and library warnings attached to the slide."""

from __future__ import annotations

import csv
import time
from pathlib import Path

import numpy as np
import pytest

from wsi_mil.cli import main
from wsi_mil.config import Config, TilingConfig
from wsi_mil.errors import SlideTooLargeError
from wsi_mil.io.bounded import read_level_reduced
from wsi_mil.io.discover import SlideSource
from wsi_mil.io.open import open_slide
from wsi_mil.synthetic import Region, write_synthetic_slide
from wsi_mil.tiling.thumbnail import read_detection_thumbnail
from wsi_mil.tiling.tile import tile_slide

CLAIM = 400_000


def _forged_tiff(path: Path) -> Path:
    """A small real tiled TIFF whose header then claims CLAIM x CLAIM px."""
    import tifffile

    tifffile.imwrite(path, np.full((64, 64, 3), 200, np.uint8), photometric="rgb", tile=(64, 64), compression="zlib")
    with tifffile.TiffFile(path, mode="r+b") as tif:
        tif.pages[0].tags["ImageWidth"].overwrite(CLAIM)
        tif.pages[0].tags["ImageLength"].overwrite(CLAIM)
    return path


def _corrupt_tiles(path: Path, page: int, tiles: list[int]) -> None:
    """Overwrite the start (the JPEG header) of some tiles of one TIFF page with zeros."""
    import tifffile

    with tifffile.TiffFile(path) as tif:
        offsets = [tif.pages[page].dataoffsets[i] for i in tiles]
    with path.open("r+b") as handle:
        for offset in offsets:
            handle.seek(offset)
            handle.write(b"\0" * 32)


def _manifest(run: Path) -> dict[str, dict[str, str]]:
    with (run / "manifest.csv").open(newline="") as handle:
        return {row["slide_id"]: row for row in csv.DictReader(handle)}


def test_forged_header_fails_fast_in_a_batch(tmp_path: Path, reference_slide: Path, capfd) -> None:
    bomb = _forged_tiff(tmp_path / "bomb.tif")
    assert bomb.stat().st_size < 16_000
    started = time.perf_counter()
    with pytest.raises(SlideTooLargeError, match="claims 400000x400000"):
        open_slide(bomb)
    assert time.perf_counter() - started < 5

    run = tmp_path / "run"
    # --mpp: without it the forged file would fail for lack of an MPP before reading pixels.
    code = main(
        ["tile", str(bomb), str(reference_slide), "--out", str(run), "--workers", "0", "--quiet", "--mpp", "0.5"]
    )
    assert code == 1  # one failed, the batch went on
    rows = _manifest(run)
    assert rows["bomb"]["status"] == "failed" and "corrupt or forged" in rows["bomb"]["error"]
    assert float(rows["bomb"]["seconds"]) < 5
    assert rows["reference"]["status"] == "done" and rows["reference"]["n_patches"] == "24"
    # tifffile's complaint about the header is attached to the slide's row and log line, not printed raw.
    assert "shaped series shape does not match page shape" in rows["bomb"]["warnings"]
    err = capfd.readouterr().err
    assert all(line.startswith("bomb: ") for line in err.splitlines() if "shaped series" in line)


def test_forged_png_header_is_refused_before_decoding(tmp_path: Path) -> None:
    import struct
    import zlib

    from PIL import Image

    path = tmp_path / "field.png"
    Image.new("RGB", (32, 32), (200, 120, 150)).save(path)
    data = bytearray(path.read_bytes())
    ihdr = data[12:29]  # b"IHDR" + width, height, depth, colour, compression, filter, interlace
    ihdr[4:12] = struct.pack(">II", 90_000, 90_000)
    data[12:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(ihdr)))
    path.write_bytes(bytes(data))
    started = time.perf_counter()
    with pytest.raises(SlideTooLargeError, match="90000x90000"):
        open_slide(path)
    assert time.perf_counter() - started < 5


def test_thumbnail_reads_are_capped(reference_slide: Path) -> None:
    with open_slide(reference_slide) as slide:
        with pytest.raises(SlideTooLargeError, match="pyramid"):
            read_level_reduced(slide, 0, 16, max_pixels=1_000_000)
        assert read_level_reduced(slide, 2, 1).rgb.shape == (192, 256, 3)
        assert slide.get_thumbnail((128, 128)).size == (128, 96)


@pytest.fixture(scope="module")
def corrupt_slides(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Single-level 2048 x 2048 Aperio-style JPEG slides (8 x 8 tiles of 256 px), some tiles corrupted."""
    folder = tmp_path_factory.mktemp("corrupt")
    slides = {}
    for name, tiles in (("one_bad_tile", [9]), ("many_bad_tiles", [0, 1, 2, 3, 9, 10, 11, 12])):
        path = write_synthetic_slide(
            folder / f"{name}.svs",
            width=2048,
            height=2048,
            mpp=0.5,
            regions=(Region(256, 256, 1536, 1536),),
            downsamples=(1,),
        )
        _corrupt_tiles(path, 0, tiles)
        slides[name] = path
    return slides


@pytest.mark.parametrize("reader", ["openslide", "tiffslide"])
def test_a_few_corrupt_tiles_are_filled_and_listed(
    tmp_path: Path, corrupt_slides: dict[str, Path], reader: str
) -> None:
    config = Config(tiling=TilingConfig(reader=reader))
    [record] = tile_slide(SlideSource(corrupt_slides["one_bad_tile"], "one"), tmp_path, config=config)
    assert record["status"] == "done", record["error"]
    assert "1 undecodable region" in record["note"] and "(256, 256)" in record["note"]
    assert record["n_patches"] > 0


@pytest.mark.parametrize("reader", ["openslide", "tiffslide"])
def test_too_much_unreadable_fails_the_slide(tmp_path: Path, corrupt_slides: dict[str, Path], reader: str) -> None:
    config = Config(tiling=TilingConfig(reader=reader))
    [record] = tile_slide(SlideSource(corrupt_slides["many_bad_tiles"], "many"), tmp_path, config=config)
    assert record["status"] == "failed"
    assert "12.5% of level 0 cannot be decoded" in record["error"] and "(0, 0)" in record["error"]
    assert "max_unreadable_fraction" in record["error"]


def test_probe_tolerates_a_corrupt_first_tile(tmp_path: Path) -> None:
    path = write_synthetic_slide(
        tmp_path / "pyramid.svs",
        width=2048,
        height=2048,
        mpp=0.5,
        regions=(Region(256, 256, 1536, 1536),),
        downsamples=(1, 4),
    )
    _corrupt_tiles(path, 2, [0])  # page 2: level 1 (page 1 is the Aperio thumbnail); tile (0, 0)
    with open_slide(path, reader="openslide") as slide:
        thumb = read_detection_thumbnail(slide, target_mpp=8.0, max_mpp=16.0, max_unreadable=0.5)
    assert thumb.unreadable == ((0, 0, 1024, 1024),)


def test_unreadable_real_file_still_fails_cleanly(tmp_path: Path, shared_data: Path) -> None:
    [record] = tile_slide(SlideSource(shared_data / "bad" / "unreadable.svs", "unreadable"), tmp_path, config=Config())
    assert record["status"] == "failed"
    assert "unreadable.svs" in record["error"] and "re-copy" in record["error"]


def test_slide_time_limit_fails_the_slide_not_the_batch(tmp_path: Path, reference_slide: Path) -> None:
    run = tmp_path / "run"
    code = main(
        [
            "tile",
            str(reference_slide),
            "--out",
            str(run),
            "--workers",
            "0",
            "--quiet",
            "--set",
            "tiling.slide_timeout=0.000001",
        ]
    )
    assert code == 1
    row = _manifest(run)["reference"]
    assert row["status"] == "failed" and "time limit of 1e-06 s" in row["error"]
    assert (
        main(["tile", str(reference_slide), "--out", str(run), "--workers", "0", "--quiet", "--slide-timeout", "600"])
        == 0
    )
    assert _manifest(run)["reference"]["status"] == "done"


def test_captured_warnings_keep_slide_messages_and_pass_on_code_warnings() -> None:
    import logging
    import warnings

    from wsi_mil.io.library_warnings import capture_library_warnings, summarize_warnings

    with pytest.warns(DeprecationWarning, match="old api"):  # noqa: PT031 -- the warning is raised inside the capture
        with capture_library_warnings() as captured:
            logging.getLogger("tifffile").warning("odd page %d", 3)
            logging.getLogger("tifffile").warning("odd page %d", 3)
            warnings.warn("Image size exceeds limit", UserWarning, stacklevel=1)
            warnings.warn("old api", DeprecationWarning, stacklevel=1)
    assert summarize_warnings(captured) == "tifffile: odd page 3 (x2); UserWarning: Image size exceeds limit"
