"""Find the slides to process: files, folders (recursive), or a CSV with a ``path`` column.

Multi-file formats count as one slide:

- a folder whose image files are all DICOM (``*.dcm``) of one series is one slide,
  opened through its first file, with the folder name as slide id (DICOM file names
  are instance UIDs); any other folder is scanned file by file, one entry per DICOM
  series (see :mod:`wsi_mil.io.dicom_series`);
- a MIRAX ``.mrxs`` file is the slide; its companion folder of ``.dat`` files is skipped;
- a Hamamatsu ``.vms``/``.vmu`` index is the slide; the JPEG files it lists are skipped.

A CSV may also give ``slide_id`` and ``mpp`` per slide. Hidden files and folders
(names starting with a dot, e.g. macOS ``._slide.svs``) are skipped in folder scans.
Slide ids must be plain file names (:mod:`wsi_mil.io.slide_ids`): an unsafe one is
refused before any work, naming the CSV row or the file.
"""

from __future__ import annotations

import configparser
import csv
import os
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from wsi_mil.errors import ConfigError, DuplicateSlideIdError
from wsi_mil.io.dicom_series import DICOM_SUFFIX, is_dicom_slide_folder, one_file_per_series
from wsi_mil.io.slide_ids import check_slide_id


@dataclass(frozen=True)
class SlideSource:
    """One slide to process: where it is, its id, and an optional MPP override."""

    path: Path
    slide_id: str
    mpp: float | None = None

    def __post_init__(self) -> None:  # every output path is built from the id: check it once, here
        check_slide_id(self.slide_id, where=self.path)


def slide_id_for(path: Path) -> str:
    if path.is_dir():
        return Path(os.path.abspath(path)).name  # "." and "x/.." -> a real name; a symlink keeps its own
    return path.name[: -len(path.suffix)] if path.suffix else path.name


def _vms_members(index: Path) -> set[Path]:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    try:
        parser.read(index)
    except configparser.Error:
        return set()
    members = set()
    for section in parser.sections():
        for key, value in parser.items(section):
            if key.startswith(("imagefile", "mapfile", "optimisationfile", "macroimage")):
                members.add((index.parent / value.strip()).resolve())
    return members


def _normalize(extensions: Sequence[str]) -> set[str]:
    return {e.lower() if e.startswith(".") else f".{e.lower()}" for e in extensions}


def scan_folder(folder: Path, extensions: Sequence[str]) -> list[Path]:
    """Slides under ``folder``, recursively, in sorted order."""
    wanted = _normalize(extensions)
    found: list[Path] = []
    skip: set[Path] = set()
    for directory, subdirs, files in _walk(folder):
        subdirs[:] = sorted(d for d in subdirs if not d.startswith("."))
        images = sorted(n for n in files if not n.startswith(".") and Path(n).suffix.lower() in wanted)
        if DICOM_SUFFIX in wanted and is_dicom_slide_folder(directory, images):
            found.append(directory)  # the folder is the slide
            continue
        dicoms = set(one_file_per_series(directory, [n for n in images if n.lower().endswith(DICOM_SUFFIX)]))
        for name in images:
            path = directory / name
            suffix = path.suffix.lower()
            if suffix == DICOM_SUFFIX and name not in dicoms:
                continue  # another file of a series already listed
            if suffix == ".mrxs":
                skip.add((directory / path.stem).resolve())
            if suffix in (".vms", ".vmu"):
                skip.update(_vms_members(path))
            found.append(path)
    return [p for p in found if p.resolve() not in skip and not any(s in p.resolve().parents for s in skip)]


def _walk(folder: Path) -> Iterable[tuple[Path, list[str], list[str]]]:
    for directory, subdirs, files in os.walk(folder):
        yield Path(directory), subdirs, files


def read_slide_csv(csv_path: Path) -> list[SlideSource]:
    """Rows of ``path[,slide_id][,mpp]``; relative paths are relative to the CSV."""
    with csv_path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        if reader.fieldnames is None or "path" not in reader.fieldnames:
            raise ConfigError(f"{csv_path}: a slide list CSV needs a 'path' column (and optionally slide_id, mpp)")
        sources = []
        for line, row in enumerate(reader, start=2):
            raw = (row.get("path") or "").strip()
            if not raw:
                raise ConfigError(f"{csv_path}:{line}: empty path")
            path = Path(raw)
            if not path.is_absolute():
                path = csv_path.parent / path
            mpp_text = (row.get("mpp") or "").strip()
            try:
                mpp = float(mpp_text) if mpp_text else None
            except ValueError as error:
                raise ConfigError(f"{csv_path}:{line}: mpp {mpp_text!r} is not a number") from error
            slide_id = (row.get("slide_id") or "").strip() or slide_id_for(path)
            check_slide_id(slide_id, where=f"{csv_path}:{line}")
            sources.append(SlideSource(path, slide_id, mpp))
    return sources


def find_slides(paths: Sequence[str | Path], *, extensions: Sequence[str]) -> list[SlideSource]:
    """Resolve command-line inputs to slides. Missing inputs are an error, reported at once."""
    sources: list[SlideSource] = []
    for item in paths:
        path = Path(item)
        if not path.exists():
            raise ConfigError(f"{path}: no such file or folder")
        if path.is_file() and path.suffix.lower() == ".csv":
            sources.extend(read_slide_csv(path))
        elif path.is_dir():
            sources.extend(_folder_sources(path, extensions))
        else:
            sources.append(SlideSource(path, slide_id_for(path)))
    check_unique_ids(sources)
    return sources


def _folder_sources(folder: Path, extensions: Sequence[str]) -> list[SlideSource]:
    """The slides of a folder given on the command line; a folder that yields none is an error."""
    found = scan_folder(folder, extensions)
    if not found and folder.suffix.lower() in _normalize(extensions) - {DICOM_SUFFIX}:
        raise ConfigError(
            f"{folder}: a folder named like a slide file, but not a slide (a folder is a slide only when it holds "
            "DICOM files of one series). Give the slide file itself."
        )
    if not found:
        raise ConfigError(
            f"{folder}: a folder with no slides (looked for {' '.join(sorted(_normalize(extensions)))}, "
            "recursively; hidden files skipped). Check the path or --extensions."
        )
    return [SlideSource(p, slide_id_for(p)) for p in found]


def check_unique_ids(sources: Sequence[SlideSource]) -> None:
    counts = Counter(source.slide_id for source in sources)
    duplicates = sorted(slide_id for slide_id, n in counts.items() if n > 1)
    if duplicates:
        detail = "; ".join(
            f"{slide_id}: " + ", ".join(str(s.path) for s in sources if s.slide_id == slide_id)
            for slide_id in duplicates[:5]
        )
        raise DuplicateSlideIdError(
            f"{len(duplicates)} slide id(s) occur more than once ({detail}). Slide ids are file "
            "names without extension; rename the files or give a slide_id column in a CSV."
        )
