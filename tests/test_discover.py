"""Inputs: files, folders, CSVs; multi-file formats count once; duplicate ids are refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from wsi_mil.config import DEFAULT_EXTENSIONS
from wsi_mil.errors import ConfigError, DuplicateSlideIdError
from wsi_mil.io.discover import find_slides


def _touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    return path


def test_folder_scan_handles_multi_file_formats(tmp_path: Path) -> None:
    _touch(tmp_path / "a.svs")
    _touch(tmp_path / "sub" / "b.ndpi")
    _touch(tmp_path / "notes.txt")
    _touch(tmp_path / "c.mrxs")
    _touch(tmp_path / "c" / "Data0000.dat")
    _touch(tmp_path / "c" / "Slidedat.ini")
    (tmp_path / "d.vms").write_text("[Virtual Microscope Specimen]\nImageFile=d_0.jpg\nImageFile(1)=d_1.jpg\n")
    _touch(tmp_path / "d_0.jpg")
    _touch(tmp_path / "d_1.jpg")
    _touch(tmp_path / "field.png")
    sources = find_slides([tmp_path], extensions=DEFAULT_EXTENSIONS)
    assert sorted(s.slide_id for s in sources) == ["a", "b", "c", "d", "field"]


def test_extension_filter(tmp_path: Path) -> None:
    _touch(tmp_path / "a.svs")
    _touch(tmp_path / "b.png")
    assert [s.slide_id for s in find_slides([tmp_path], extensions=[".svs"])] == ["a"]


def test_csv_with_relative_paths_ids_and_mpp(tmp_path: Path) -> None:
    _touch(tmp_path / "slides" / "x.tif")
    (tmp_path / "list.csv").write_text("path,slide_id,mpp\nslides/x.tif,case-7,0.25\nslides/x.tif,case-8,\n")
    sources = find_slides([tmp_path / "list.csv"], extensions=DEFAULT_EXTENSIONS)
    assert [(s.slide_id, s.mpp) for s in sources] == [("case-7", 0.25), ("case-8", None)]
    assert sources[0].path == tmp_path / "slides" / "x.tif"


def test_csv_errors(tmp_path: Path) -> None:
    (tmp_path / "nopath.csv").write_text("file\na.svs\n")
    with pytest.raises(ConfigError, match="'path' column"):
        find_slides([tmp_path / "nopath.csv"], extensions=DEFAULT_EXTENSIONS)
    (tmp_path / "badmpp.csv").write_text("path,mpp\na.svs,fast\n")
    with pytest.raises(ConfigError, match="badmpp.csv:2"):
        find_slides([tmp_path / "badmpp.csv"], extensions=DEFAULT_EXTENSIONS)


def test_duplicate_ids_are_reported_with_their_paths(tmp_path: Path) -> None:
    a = _touch(tmp_path / "one" / "case.svs")
    b = _touch(tmp_path / "two" / "case.ndpi")
    with pytest.raises(DuplicateSlideIdError) as info:
        find_slides([tmp_path], extensions=DEFAULT_EXTENSIONS)
    assert str(a) in str(info.value) and str(b) in str(info.value)


def test_missing_input(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        find_slides([tmp_path / "nope"], extensions=DEFAULT_EXTENSIONS)
