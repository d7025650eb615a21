"""Inputs that must not escape the run folder or be silently dropped: unsafe slide ids, DICOM folders."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from wsi_mil.cli import main
from wsi_mil.config import DEFAULT_EXTENSIONS
from wsi_mil.errors import ConfigError, UnsafeSlideIdError
from wsi_mil.io.discover import SlideSource, find_slides
from wsi_mil.io.slide_ids import slide_id_problem


def _touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    return path


@pytest.mark.parametrize("bad", ["../../x", "/abs/x", "..", ".", ".hidden", "a/b", "a\\b", "tab\there", "nl\nx", ""])
def test_unsafe_ids_are_named(bad: str) -> None:
    assert slide_id_problem(bad) is not None
    with pytest.raises(UnsafeSlideIdError, match="slide id"):
        SlideSource(Path("x.svs"), bad)


@pytest.mark.parametrize("good", ["case-7", "TCGA-CR-7395-01A-01-TS1", "test3-DAPI-2-(387)", "a.b", "slide 1"])
def test_plain_ids_pass(good: str) -> None:
    assert slide_id_problem(good) is None


@pytest.mark.parametrize("bad", ["../../x", "/abs/x", ".."])
def test_csv_with_unsafe_id_is_refused_before_any_work(tmp_path: Path, reference_slide: Path, bad: str) -> None:
    table = tmp_path / "list.csv"
    table.write_text(f"path,slide_id\n{reference_slide},ok\n{reference_slide},{bad}\n")
    run = tmp_path / "deep" / "er" / "run"
    with pytest.raises(UnsafeSlideIdError, match=r"list\.csv:3"):
        find_slides([table], extensions=DEFAULT_EXTENSIONS)
    assert main(["tile", str(table), "--out", str(run), "--workers", "0", "--quiet"]) == 2
    assert not run.exists()  # nothing written, not even the run folder
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["list.csv"]


def test_hidden_files_are_skipped_in_folder_scans(tmp_path: Path) -> None:
    _touch(tmp_path / "a.svs")
    _touch(tmp_path / "._a.svs")  # macOS AppleDouble companion
    assert [s.slide_id for s in find_slides([tmp_path], extensions=DEFAULT_EXTENSIONS)] == ["a"]


def test_explicit_folder_named_like_a_slide_is_an_error(tmp_path: Path) -> None:
    folder = tmp_path / "x.svs"
    folder.mkdir()
    with pytest.raises(ConfigError, match="named like a slide file"):
        find_slides([folder], extensions=DEFAULT_EXTENSIONS)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ConfigError, match="no slides"):
        find_slides([empty], extensions=DEFAULT_EXTENSIONS)


def test_dicom_series_folder_is_one_slide(tmp_path: Path, shared_data: Path) -> None:
    folder = tmp_path / "case-1"
    shutil.copytree(shared_data / "dicom-boxes", folder)
    assert [(s.slide_id, s.path) for s in find_slides([folder], extensions=DEFAULT_EXTENSIONS)] == [("case-1", folder)]
    # Scanned from a parent, beside other slides.
    _touch(tmp_path / "other.svs")
    assert sorted(s.slide_id for s in find_slides([tmp_path], extensions=DEFAULT_EXTENSIONS)) == ["case-1", "other"]


def test_stray_dcm_does_not_swallow_a_folder_of_slides(tmp_path: Path, shared_data: Path) -> None:
    _touch(tmp_path / "a.svs")
    _touch(tmp_path / "b.ndpi")
    shutil.copy(shared_data / "dicom-boxes" / "boxes_0.dcm", tmp_path / "stray.dcm")
    sources = find_slides([tmp_path], extensions=DEFAULT_EXTENSIONS)
    assert sorted(s.slide_id for s in sources) == ["a", "b", "stray"]


def test_dicom_files_of_one_series_beside_other_slides_count_once(tmp_path: Path, shared_data: Path) -> None:
    for name in ("boxes_0.dcm", "boxes_1.dcm"):
        shutil.copy(shared_data / "dicom-boxes" / name, tmp_path / name)
    _touch(tmp_path / "a.svs")
    _touch(tmp_path / "junk.dcm")  # not DICOM at all: listed, and fails cleanly when opened
    sources = find_slides([tmp_path], extensions=DEFAULT_EXTENSIONS)
    assert sorted(s.slide_id for s in sources) == ["a", "boxes_0", "junk"]


def test_run_command_refuses_unsafe_ids_before_writing_anything(tmp_path: Path, reference_slide: Path) -> None:
    (tmp_path / "list.csv").write_text(f"path,slide_id\n{reference_slide},../../x\n")
    (tmp_path / "run.yaml").write_text("run:\n  slides: list.csv\n  out: out/run\n  stages: [tile, extract]\n")
    assert main(["run", str(tmp_path / "run.yaml"), "--workers", "0", "--quiet"]) == 2
    assert not (tmp_path / "out").exists()


def test_folder_ids_come_from_the_name_given(
    tmp_path: Path, shared_data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = tmp_path / "1.2.840.113619"
    shutil.copytree(shared_data / "dicom-boxes", real)
    (tmp_path / "case-2").symlink_to(real)
    assert [s.slide_id for s in find_slides([tmp_path / "case-2"], extensions=DEFAULT_EXTENSIONS)] == ["case-2"]
    monkeypatch.chdir(real)
    assert [s.slide_id for s in find_slides(["."], extensions=DEFAULT_EXTENSIONS)] == ["1.2.840.113619"]
