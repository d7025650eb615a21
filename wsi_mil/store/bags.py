"""Patch bags in HDF5 or Zarr v3, behind one interface (ARCHITECTURE.md section 3).

A bag holds ``coords`` (N, 2) int64, the level-0 (x, y) of each patch's top-left
corner, with the tiling attributes on that dataset (CLAM's ``patch_size`` and
``patch_level`` plus ours). Optional datasets: ``tissue_fraction`` (N,) float32,
``tissue_mask`` (h, w) uint8 at ``downsample`` level-0 px per pixel, and ``imgs``
(N, H, W, 3) uint8 patch pixels (CLAM's name), chunked one patch per chunk and
compressed. CLAM and TRIDENT coords files are read as bags.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from wsi_mil.errors import BagFormatError
from wsi_mil.store.atomic import atomic_output
from wsi_mil.store.attrs import clean_attrs, h5_attr
from wsi_mil.store.complete import EVERY_CHUNK, mark_complete, output_problem

BAG_FORMAT_VERSION = "1.1"  #: 1.1: root attribute complete_rows (store/complete.py)
BAG_FORMATS = ("h5", "zarr")

COORDS = "coords"
PIXELS = "imgs"
TISSUE_FRACTION = "tissue_fraction"
TISSUE_MASK = "tissue_mask"


def bag_path(bag_dir: str | Path, slide_id: str, fmt: str) -> Path:
    if fmt not in BAG_FORMATS:
        raise ValueError(f"unknown bag format {fmt!r}; choose one of {BAG_FORMATS}")
    return Path(bag_dir) / f"{slide_id}.{fmt}"


def bag_problem(path: str | Path) -> str | None:
    """Why the bag at ``path`` cannot be skipped as complete (missing, unreadable, truncated), or None."""
    return output_problem(path, (COORDS, TISSUE_FRACTION, PIXELS))


@dataclass
class Bag:
    """A bag read back from disk. coords: (N, 2) int64 level-0 (x, y)."""

    path: Path
    coords: np.ndarray
    attrs: dict[str, Any]
    tissue_fraction: np.ndarray | None = None
    tissue_mask: np.ndarray | None = None
    mask_attrs: dict[str, Any] = field(default_factory=dict)
    has_pixels: bool = False

    def __len__(self) -> int:
        return int(self.coords.shape[0])

    def read_pixels(self, index: slice | np.ndarray | None = None) -> np.ndarray:
        """Stored patch pixels (n, H, W, 3) uint8; raises if the bag has none."""
        if not self.has_pixels:
            raise BagFormatError(f"{self.path}: no stored pixels; tile with --save-pixels")
        selection = slice(None) if index is None else index
        if self.path.suffix == ".h5":
            import h5py

            with h5py.File(self.path, "r") as f:
                return f[PIXELS][selection]
        import zarr

        return np.asarray(zarr.open_array(str(self.path), path=PIXELS, mode="r")[selection])


class BagWriter(abc.ABC):
    """Write one bag atomically: use as a context manager, then it appears complete."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._atomic = atomic_output(self.path)
        self._tmp: Path | None = None

    def __enter__(self) -> BagWriter:
        self._tmp = self._atomic.__enter__()
        self._open(self._tmp)
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        try:
            if exc_type is None:
                mark_complete(self._root(), self._rows)  # last: a bag without it is incomplete
        finally:
            self._close()
        self._atomic.__exit__(exc_type, exc, tb)

    _rows = 0  #: rows of coords, set by write_coords

    @abc.abstractmethod
    def _root(self) -> Any: ...

    @abc.abstractmethod
    def _open(self, tmp: Path) -> None: ...
    @abc.abstractmethod
    def _close(self) -> None: ...
    @abc.abstractmethod
    def write_coords(self, coords: np.ndarray, attrs: dict[str, Any]) -> None: ...
    @abc.abstractmethod
    def write_array(self, name: str, data: np.ndarray, attrs: dict[str, Any] | None = None) -> None: ...
    @abc.abstractmethod
    def create_pixels(self, count: int, size: int) -> None: ...
    @abc.abstractmethod
    def write_pixels(self, start: int, batch: np.ndarray) -> None: ...


class H5BagWriter(BagWriter):
    def _open(self, tmp: Path) -> None:
        import h5py

        self._file = h5py.File(tmp, "w")

    def _close(self) -> None:
        self._file.close()

    def _root(self) -> Any:
        return self._file

    def write_coords(self, coords: np.ndarray, attrs: dict[str, Any]) -> None:
        dataset = self._file.create_dataset(COORDS, data=np.asarray(coords, dtype=np.int64).reshape(-1, 2))
        self._rows = len(dataset)
        for key, value in attrs.items():
            dataset.attrs[key] = h5_attr(value)

    def write_array(self, name: str, data: np.ndarray, attrs: dict[str, Any] | None = None) -> None:
        # deflate level 1: a tissue mask compresses almost as well as at 4, in half the time
        options = {"compression": "gzip", "compression_opts": 1} if data.size > 1024 else {}
        dataset = self._file.create_dataset(name, data=data, **options)
        for key, value in (attrs or {}).items():
            dataset.attrs[key] = h5_attr(value)

    def create_pixels(self, count: int, size: int) -> None:
        self._file.create_dataset(
            PIXELS,
            shape=(count, size, size, 3),
            dtype=np.uint8,
            chunks=(1, size, size, 3) if count else None,
            compression="lzf" if count else None,
        )

    def write_pixels(self, start: int, batch: np.ndarray) -> None:
        self._file[PIXELS][start : start + len(batch)] = batch


class ZarrBagWriter(BagWriter):
    def _open(self, tmp: Path) -> None:
        import zarr

        self._group = zarr.open_group(str(tmp), mode="w", zarr_format=3)

    def _close(self) -> None:
        pass

    def _root(self) -> Any:
        return self._group

    def write_coords(self, coords: np.ndarray, attrs: dict[str, Any]) -> None:
        data = np.asarray(coords, dtype=np.int64).reshape(-1, 2)
        self._rows = len(data)
        array = self._group.create_array(
            COORDS, shape=data.shape, dtype=np.int64, chunks=(max(1, min(len(data), 65536)), 2), config=EVERY_CHUNK
        )
        if len(data):
            array[:] = data
        array.attrs.update(attrs)

    def write_array(self, name: str, data: np.ndarray, attrs: dict[str, Any] | None = None) -> None:
        chunks = tuple(max(1, s) for s in data.shape) if data.ndim else ()
        array = self._group.create_array(name, shape=data.shape, dtype=data.dtype, chunks=chunks)
        if data.size:
            array[...] = data
        array.attrs.update(attrs or {})

    def create_pixels(self, count: int, size: int) -> None:
        shape = (count, size, size, 3)
        self._pixels = self._group.create_array(PIXELS, shape=shape, dtype=np.uint8, chunks=(1, size, size, 3))

    def write_pixels(self, start: int, batch: np.ndarray) -> None:
        self._pixels[start : start + len(batch)] = batch


def open_bag_writer(path: str | Path) -> BagWriter:
    path = Path(path)
    if path.suffix == ".h5":
        return H5BagWriter(path)
    if path.suffix == ".zarr":
        return ZarrBagWriter(path)
    raise ValueError(f"{path}: bag files end in .h5 or .zarr")


def read_bag(path: str | Path) -> Bag:
    """Read a bag written by wsi-mil, CLAM (``create_patches_fp.py``) or TRIDENT."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such bag")
    try:
        if path.suffix == ".zarr":
            import zarr

            group = zarr.open_group(str(path), mode="r")
            found = dict(group.arrays())  # name -> zarr.Array (array_keys() opens the same arrays)
            names = set(found)
            if COORDS not in names:
                raise BagFormatError(f"{path}: no '{COORDS}' array; not a patch bag")
            coords_array = found[COORDS]
            coords = np.asarray(coords_array[...])
            attrs = clean_attrs(dict(coords_array.attrs))
            fraction = np.asarray(found[TISSUE_FRACTION][...]) if TISSUE_FRACTION in names else None
            mask, mask_attrs = None, {}
            if TISSUE_MASK in names:
                mask = np.asarray(found[TISSUE_MASK][...]).astype(bool)
                mask_attrs = clean_attrs(dict(found[TISSUE_MASK].attrs))
            has_pixels = PIXELS in names
        else:
            import h5py

            with h5py.File(path, "r") as f:
                if COORDS not in f:
                    raise BagFormatError(f"{path}: no '{COORDS}' dataset; not a patch bag")
                coords = f[COORDS][...]
                attrs = clean_attrs(dict(f[COORDS].attrs))
                fraction = f[TISSUE_FRACTION][...] if TISSUE_FRACTION in f else None
                mask, mask_attrs = None, {}
                if TISSUE_MASK in f:
                    mask = f[TISSUE_MASK][...].astype(bool)
                    mask_attrs = clean_attrs(dict(f[TISSUE_MASK].attrs))
                has_pixels = PIXELS in f
    except BagFormatError:
        raise
    except OSError as error:
        raise BagFormatError(f"{path}: cannot be read as a bag ({error}); delete it and re-run tiling") from error
    coords = np.asarray(coords, dtype=np.int64).reshape(-1, 2)
    return Bag(path, coords, attrs, fraction, mask, mask_attrs, has_pixels)
