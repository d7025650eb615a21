"""DICOM whole-slide images on disk: which files belong to one slide.

A DICOM WSI is a series of files (one per pyramid level, label, overview...), all
sharing a ``SeriesInstanceUID``; OpenSlide opens the whole series from any of its
files. A folder is one slide only when every image file in it is DICOM of one
series: a stray ``.dcm`` beside other slides, or several series in one folder, do
not turn the folder into one slide (discovery then lists the files one by one,
one entry per series).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

logger = logging.getLogger(__name__)

DICOM_SUFFIX = ".dcm"


def dicom_series_uid(path: Path) -> str | None:
    """The ``SeriesInstanceUID`` of a DICOM file, or None when it is not a readable DICOM file."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        dataset = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SeriesInstanceUID"])
    except (InvalidDicomError, OSError, ValueError, EOFError) as error:
        logger.debug("%s: not a readable DICOM file (%s)", path, error)
        return None
    uid = str(dataset.get("SeriesInstanceUID", "") or "").strip()
    return uid or None


def is_dicom_slide_folder(folder: Path, image_names: Sequence[str]) -> bool:
    """True when ``image_names`` (the folder's image files) are all DICOM files of one series."""
    if not image_names or any(not name.lower().endswith(DICOM_SUFFIX) for name in image_names):
        return False
    uids = {dicom_series_uid(folder / name) for name in image_names}
    return len(uids) == 1 and None not in uids


def one_file_per_series(folder: Path, dicom_names: Sequence[str]) -> list[str]:
    """The first file (sorted) of each DICOM series in ``dicom_names``; unreadable files are kept one by one."""
    chosen: dict[str, str] = {}
    for name in sorted(dicom_names):
        uid = dicom_series_uid(folder / name)
        chosen.setdefault(uid if uid is not None else f"file:{name}", name)
    return sorted(chosen.values())
