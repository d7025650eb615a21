"""Open a slide with a chosen backend, or the first one that can decode it.

``reader="auto"`` tries, in order:

1. ``image`` first for PNG/JPEG/BMP files (OpenSlide and tiffslide cannot read them);
2. ``openslide``: every vendor format it knows (SVS, NDPI, MIRAX, DICOM, SCN, BIF...);
3. ``tiffslide``: TIFFs OpenSlide rejects (flat strip TIFFs, some JPEG 2000 SVS);
4. ``image``: any other TIFF, decoded whole with tifffile.

A backend counts only if it opens the file *and* decodes a spot of its coarsest
level, so a file that one library opens but cannot read falls through to the next.
A header that claims more pixels than the file could hold is refused at once
(:func:`wsi_mil.io.bounded.check_claimed_size`).
"""

from __future__ import annotations

import logging
from pathlib import Path

from wsi_mil.errors import SlideOpenError, SlideReadError, SlideTooLargeError
from wsi_mil.io.base import BaseReader
from wsi_mil.io.bounded import check_claimed_size
from wsi_mil.io.dicom_series import is_dicom_slide_folder
from wsi_mil.io.image_reader import ImageReader
from wsi_mil.io.openslide_reader import OpenSlideReader
from wsi_mil.io.tiffslide_reader import TiffSlideReader

logger = logging.getLogger(__name__)

READERS: dict[str, type[BaseReader]] = {
    "openslide": OpenSlideReader,
    "tiffslide": TiffSlideReader,
    "image": ImageReader,
}
READER_NAMES = ("auto", *READERS)
PLAIN_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp"}
#: The probe tries up to this many spots per side of the coarsest level.
PROBE_GRID = 3


def list_readers() -> list[str]:
    return list(READERS)


def auto_order(path: Path) -> list[str]:
    if path.suffix.lower() in PLAIN_IMAGE_SUFFIXES:
        return ["image"]
    return ["openslide", "tiffslide", "image"]


def resolve_entry_file(path: Path) -> Path:
    """A DICOM folder is opened through one of its files (OpenSlide finds the rest)."""
    if path.is_dir():
        dicoms = sorted(p.name for p in path.glob("*.dcm") if not p.name.startswith("."))
        if not is_dicom_slide_folder(path, dicoms):
            raise SlideOpenError(
                f"{path}: a folder is only a slide when it holds DICOM (.dcm) files of one series; "
                "give the slide file itself, or the folder's files one by one"
            )
        return path / dicoms[0]
    return path


def _probe(reader: BaseReader) -> None:
    """Decode small regions of the coarsest level, so broken pixel data fails now.

    Up to ``PROBE_GRID`` x ``PROBE_GRID`` spots spread over the level are tried: the
    slide passes when one decodes (a few corrupt tiles are the thumbnail's business,
    which fills and reports them), and fails with the first error when none does.
    """
    level = reader.level_count - 1
    width, height = reader.level_dimensions[level]
    if width < 1 or height < 1:
        raise SlideReadError(f"{reader.path}: level {level} has no pixels ({width}x{height})")
    size = (min(width, 16), min(height, 16))
    downsample = reader.level_downsamples[level]
    steps = max(1, PROBE_GRID - 1)
    xs = sorted({i * (width - size[0]) // steps for i in range(PROBE_GRID)})
    ys = sorted({j * (height - size[1]) // steps for j in range(PROBE_GRID)})
    spots = [(x, y) for y in ys for x in xs]  # (0, 0) first
    first: SlideReadError | None = None
    for x, y in spots:
        try:
            reader.read_region((int(round(x * downsample)), int(round(y * downsample))), level, size, as_array=True)
            return
        except SlideReadError as error:
            first = first or error
    if first is not None:
        raise first


def open_slide(path: str | Path, *, reader: str = "auto", mpp: float | None = None) -> BaseReader:
    """Open ``path`` as a slide.

    Raises :class:`SlideOpenError` when no backend opens the file and
    :class:`SlideReadError` when one opens it but cannot decode its pixels.
    """
    path = Path(path)
    if not path.exists():
        raise SlideOpenError(f"{path}: no such file")
    if reader not in READER_NAMES:
        raise ValueError(f"unknown reader {reader!r}; choose one of {', '.join(READER_NAMES)}")
    entry = resolve_entry_file(path)
    order = auto_order(entry) if reader == "auto" else [reader]

    open_failures: list[str] = []
    read_failures: list[str] = []
    for name in order:
        try:
            slide = READERS[name](entry, mpp_override=mpp)
        except SlideTooLargeError:
            raise  # the header itself is implausible: no other reader will do better
        except Exception as error:  # noqa: BLE001 -- each library has its own exception types
            open_failures.append(f"{name}: {_short(error)}")
            continue
        try:
            check_claimed_size(entry, *slide.dimensions)
        except SlideTooLargeError:
            slide.close()
            raise
        try:
            _probe(slide)
        except Exception as error:  # noqa: BLE001 -- each library has its own exception types; the next backend is tried
            slide.close()
            cause = error.__cause__ or error
            read_failures.append(f"{name}: {_short(cause)}")
            continue
        logger.debug("%s opened with %s", path, name)
        return slide

    if read_failures:
        raise SlideReadError(
            f"{path}: opens but its pixels cannot be decoded "
            f"({'; '.join(read_failures + open_failures)}). "
            "The file is damaged or uses a compression no reader supports; re-copy or re-export it."
        )
    raise SlideOpenError(
        f"{path}: not a readable slide ({'; '.join(open_failures)}). Check that it is a complete "
        "whole-slide image or plain image file, or force a reader with --reader."
    )


def _short(error: BaseException) -> str:
    text = str(error).strip().splitlines()[0] if str(error).strip() else ""
    return f"{type(error).__name__}: {text}"[:200]
