"""Find the slides to process: files, folders (recursive), or a CSV with a ``path`` column.

Multi-file formats count as one slide:

- a folder of DICOM files (``*.dcm``) is one slide, opened through its first
  file, with the folder name as slide id (DICOM file names are instance UIDs);
- a MIRAX ``.mrxs`` file is the slide; its companion folder of ``.dat`` files is skipped;
- a Hamamatsu ``.vms``/``.vmu`` index is the slide; the JPEG files it lists are skipped.

A CSV may also give ``slide_id`` and ``mpp`` per slide.
"""

from __future__ import annotations

import configparser
import csv
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from wsi_mil.errors import ConfigError, DuplicateSlideIdError


@dataclass(frozen=True)
class SlideSource:
    """One slide to process: where it is, its id, and an optional MPP override."""

    path: Path
    slide_id: str
    mpp: float | None = None


def slide_id_for(path: Path) -> str:
    if path.is_dir():
        return path.name
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


def scan_folder(folder: Path, extensions: Sequence[str]) -> list[Path]:
    """Slides under ``folder``, recursively, in sorted order."""
    wanted = {e.lower() if e.startswith(".") else f".{e.lower()}" for e in extensions}
    found: list[Path] = []
    skip: set[Path] = set()
    for directory, subdirs, files in _walk(folder):
        names = sorted(files)
        dicoms = [n for n in names if n.lower().endswith(".dcm")]
        if dicoms and ".dcm" in wanted:
            found.append(directory)  # the folder is the slide
        for name in names:
            path = directory / name
            suffix = path.suffix.lower()
            if suffix == ".dcm" or suffix not in wanted:
                continue
            if suffix == ".mrxs":
                skip.add((directory / path.stem).resolve())
            if suffix in (".vms", ".vmu"):
                skip.update(_vms_members(path))
            found.append(path)
        subdirs[:] = sorted(d for d in subdirs if not d.startswith("."))
    return [p for p in found if p.resolve() not in skip and not any(s in p.resolve().parents for s in skip)]


def _walk(folder: Path) -> Iterable[tuple[Path, list[str], list[str]]]:
    import os

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
        elif path.is_dir() and not any(path.glob("*.dcm")):
            sources.extend(SlideSource(p, slide_id_for(p)) for p in scan_folder(path, extensions))
        else:
            sources.append(SlideSource(path, slide_id_for(path)))
    check_unique_ids(sources)
    return sources


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
