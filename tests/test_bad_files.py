"""Bad input fails cleanly on every clone: synthetic equivalents of ../shared/data/bad/ (which
may not be redistributed), written here. Each must give one clear error naming the file and
saying what to do, as test_readers checks on the originals."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from wsi_mil.datasets import repository_test_data_dir
from wsi_mil.errors import SlideOpenError, SlideReadError
from wsi_mil.io.open import open_slide


def _not_a_tiff(path: Path) -> None:
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 1000, dtype=np.uint8).tobytes())


def _unknown_compression(path: Path) -> None:
    """A 1x1 tiled TIFF whose Compression tag names a codec nobody has (52479, as in bad/unopenable.tiff)."""
    import tifffile

    tifffile.imwrite(path, np.zeros((1, 1, 3), np.uint8), tile=(16, 16), photometric="rgb")
    with tifffile.TiffFile(path, mode="r+b") as tiff:
        tiff.pages[0].tags["Compression"].overwrite(52479)


def _corrupt_tiles(path: Path) -> None:
    """small.svs (a real Aperio file) with the JPEG data of its level-0 tile overwritten (as bad/unreadable.svs)."""
    import tifffile

    data = repository_test_data_dir()
    if data is None:
        pytest.skip("tests/data is not here (an installed package): small.svs is needed")
    shutil.copyfile(data / "slides" / "small.svs", path)
    with tifffile.TiffFile(path) as tiff:
        offset, count = tiff.pages[0].dataoffsets[0], tiff.pages[0].databytecounts[0]
    with path.open("r+b") as handle:
        handle.seek(offset + 2)  # keep the JPEG start marker: a decoder starts, then fails
        handle.write(b"\xff\x00" * ((count - 4) // 2))


@pytest.mark.parametrize(
    ("name", "write", "error"),
    [
        ("not-a-tiff.svs", _not_a_tiff, SlideOpenError),
        ("unopenable.tiff", _unknown_compression, SlideReadError),
        ("unreadable.svs", _corrupt_tiles, SlideReadError),
    ],
)
def test_synthetic_bad_files_fail_with_a_clear_error(tmp_path: Path, name: str, write, error: type) -> None:
    path = tmp_path / name
    write(path)
    with pytest.raises(error) as info:
        open_slide(path)
    message = str(info.value)
    assert str(path) in message
    assert "re-copy" in message or "--reader" in message  # says what to do
