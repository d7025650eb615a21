"""Completeness markers: what a stage checks before it skips an output as done.

Every bag and feature file gets a root attribute ``complete_rows`` (N, the rows of its
main arrays), written last, after every array. Resuming stages do not trust a file
because it exists: :func:`output_problem` opens it, checks the marker against the
arrays' lengths and reads their last rows (on Zarr, also that every chunk is on
disk). A truncated, half-copied or unreadable output is redone. Files written before
the marker existed (format 1.0) have none; they are checked for readability only.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from zarr.core.array_spec import ArrayConfigParams

#: Root attribute (HDF5 file attrs, Zarr group attributes) holding the row count, written last.
COMPLETE_ATTR = "complete_rows"
#: Zarr array config of marked files: chunks equal to the fill value are written too, so the
#: chunks on disk can be counted (zarr leaves them out by default, and reads them as zeros).
EVERY_CHUNK: ArrayConfigParams = {"write_empty_chunks": True}


def mark_complete(root: Any, rows: int) -> None:
    """Write the marker on an open ``h5py.File`` or ``zarr.Group``; call it after every array is written."""
    root.attrs[COMPLETE_ATTR] = int(rows)


def output_problem(path: str | Path, arrays: tuple[str, ...]) -> str | None:
    """Why the output at ``path`` is not complete (missing, unreadable, truncated), or None when it is.

    ``arrays``: the datasets that must hold ``complete_rows`` rows (the first one is required;
    the others are checked when present).
    """
    path = Path(path)
    if not path.exists():
        return "missing"
    try:
        if path.suffix == ".zarr":
            return _zarr_problem(path, arrays)
        return _h5_problem(path, arrays)
    except Exception as error:  # noqa: BLE001 -- any library error here means the file cannot be used
        return f"unreadable ({type(error).__name__}: {error})"


def _rows_problem(marker: Any, lengths: dict[str, int]) -> str | None:
    if marker is None:
        return None  # written before the marker existed: readability is all we can check
    wrong = {name: n for name, n in lengths.items() if n != int(marker)}
    if wrong:
        found = ", ".join(f"{name} has {n}" for name, n in wrong.items())
        return f"incomplete ({found} rows, {COMPLETE_ATTR} = {int(marker)})"
    return None


def _h5_problem(path: Path, arrays: tuple[str, ...]) -> str | None:
    import h5py

    with h5py.File(path, "r") as f:
        if arrays[0] not in f:
            return f"incomplete (no '{arrays[0]}' dataset)"
        lengths = {}
        for name in arrays:
            if name in f:
                dataset = f[name]
                lengths[name] = int(dataset.shape[0])
                if dataset.shape[0]:
                    dataset[-1]  # reads the last chunk: a truncated file fails here
        return _rows_problem(f.attrs.get(COMPLETE_ATTR), lengths)


def _zarr_problem(path: Path, arrays: tuple[str, ...]) -> str | None:
    import zarr

    group = zarr.open_group(str(path), mode="r")
    found = dict(group.arrays())  # name -> zarr.Array (array_keys() opens the same arrays)
    if arrays[0] not in found:
        return f"incomplete (no '{arrays[0]}' array)"
    marker = group.attrs.get(COMPLETE_ATTR)
    lengths = {}
    for name in arrays:
        if name in found:
            array = found[name]
            lengths[name] = int(array.shape[0])
            # a missing chunk file reads back as zeros, so count the chunks on disk (of marked
            # files: their arrays store every chunk, and bag pixels are one chunk per patch)
            if (
                marker is not None
                and name in (arrays[0], "coords")
                and array.size
                and array.nchunks_initialized != array.nchunks
            ):
                return f"incomplete ({name}: {array.nchunks_initialized} of {array.nchunks} chunks on disk)"
    return _rows_problem(marker, lengths)


def image_file_problem(path: str | Path) -> str | None:
    """Why a written map image (TIFF, PNG, OME-Zarr folder) cannot be reused, or None when it can.

    Every map file appears atomically, so this is about files damaged afterwards (a copy cut
    short, a full disk on another tool's side): a TIFF whose pages point past its end, a PNG
    whose chunks fail their checksums, a Zarr group that does not open.
    """
    path = Path(path)
    if not path.exists():
        return "missing"
    try:
        if path.suffix in (".tif", ".tiff"):
            return _tiff_problem(path)
        if path.suffix == ".png":
            from PIL import Image

            with Image.open(path) as image:
                image.verify()
            return None
        if path.suffix == ".zarr":
            import zarr

            group = zarr.open_group(str(path), mode="r")
            if not any(True for _ in group.arrays()):
                return "incomplete (no arrays)"
        return None
    except Exception as error:  # noqa: BLE001 -- any library error here means the file cannot be used
        return f"unreadable ({type(error).__name__}: {error})"


def _tiff_problem(path: Path) -> str | None:
    import tifffile

    size = path.stat().st_size
    with tifffile.TiffFile(path) as tif:
        for page in tif.pages:
            ends = [int(o) + int(n) for o, n in zip(page.dataoffsets, page.databytecounts, strict=True)]
            if not ends or max(ends) > size:
                return f"truncated (page data ends past the file's {size} bytes)"
    return None
