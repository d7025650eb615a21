"""Patch sources and the torch Dataset that feeds the extraction loop.

Three sources, chosen per slide by :func:`make_source` in this order:

1. ``stored``: pixels saved in the bag by ``wsi-mil tile --save-pixels``;
2. ``tiles``: stored TIFF tiles decoded directly when the grid lines up (see tiles.py);
3. ``read_region``: the slide reader, for everything else.

Sources are pickled to DataLoader worker processes (or shared by reading threads) and
open their file handles lazily, one per process and thread. A patch that cannot be read (a corrupt tile) comes back
as zeros with ``valid=False``; it never stops the slide.
"""

from __future__ import annotations

import abc
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from wsi_mil.errors import BagFormatError
from wsi_mil.store.bags import Bag

logger = logging.getLogger(__name__)


@dataclass
class PatchSource(abc.ABC):
    """Reads patch ``i`` of a bag as (size, size, 3) uint8; subclasses say from where."""

    coords: np.ndarray
    size: int
    kind: str = "base"
    _handles: dict[tuple[int, int], Any] = field(default_factory=dict, repr=False)

    def __len__(self) -> int:
        return len(self.coords)

    def handle(self) -> Any:
        """This process's and thread's handle: file handles seek, so threads never share one."""
        key = (os.getpid(), threading.get_ident())
        handle = self._handles.get(key)
        if handle is None:
            handle = self._handles[key] = self._open()
        return handle

    def drop_handle(self) -> None:
        """Forget this thread's handle (it is reopened on the next read)."""
        handle = self._handles.pop((os.getpid(), threading.get_ident()), None)
        if handle is not None:
            self._close(handle)

    def close(self) -> None:
        """Close every handle this process opened."""
        pid = os.getpid()
        for key in [k for k in self._handles if k[0] == pid]:
            self._close(self._handles.pop(key))

    @staticmethod
    def _close(handle: Any) -> None:
        handle.close()

    @abc.abstractmethod
    def _open(self) -> Any:
        """Open this process's handle (a slide reader, a tile grid, a pixel array)."""

    @abc.abstractmethod
    def read(self, index: int) -> np.ndarray:
        """Patch ``index`` as (size, size, 3) uint8."""

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_handles"] = {}  # handles never cross processes
        return state


@dataclass
class RegionSource(PatchSource):
    slide_path: Path = Path()
    reader: str = "auto"
    mpp: float | None = None
    level: int = 0
    kind: str = "read_region"

    def _open(self) -> Any:
        from wsi_mil.io.open import open_slide

        return open_slide(self.slide_path, reader=self.reader, mpp=self.mpp)

    def read(self, index: int) -> np.ndarray:
        x, y = self.coords[index]
        try:
            return self.handle().read_region((int(x), int(y)), self.level, (self.size, self.size), as_array=True)
        except Exception:
            # After one decoding error an OpenSlide handle refuses every later read: reopen.
            self.drop_handle()
            raise


@dataclass
class TileSource(PatchSource):
    slide_path: Path = Path()
    level: int = 0
    level_dimensions: tuple[tuple[int, int], ...] = ()  #: of every level, as the reader lists them
    downsample: float = 1.0
    background: tuple[int, int, int] = (255, 255, 255)
    kind: str = "tiles"

    def _open(self) -> Any:
        from wsi_mil.features.tiles import TileGrid

        return TileGrid(self.slide_path, self.level, self.level_dimensions, self.background)

    def read(self, index: int) -> np.ndarray:
        from wsi_mil.features.tiles import level_coordinates

        x, y = level_coordinates(self.coords[index : index + 1], self.downsample)[0]
        return self.handle().read(int(x), int(y), self.size)


@dataclass
class StoredSource(PatchSource):
    bag_path: Path = Path()
    kind: str = "stored"

    def _open(self) -> Any:
        from wsi_mil.store.bags import PIXELS

        if self.bag_path.suffix == ".h5":
            import h5py

            return h5py.File(self.bag_path, "r")[PIXELS]
        import zarr

        return zarr.open_group(str(self.bag_path), mode="r")[PIXELS]

    def read(self, index: int) -> np.ndarray:
        return np.asarray(self.handle()[index])

    @staticmethod
    def _close(handle: Any) -> None:
        file = getattr(handle, "file", None)  # an h5py dataset; zarr arrays hold no file open
        if file is not None:
            file.close()


def make_source(
    bag: Bag, slide: Any | None, *, reader: str = "auto", mpp: float | None = None, direct_tiles: bool = True
) -> PatchSource:
    """The fastest correct source for a bag; ``slide`` is an open reader (None with stored pixels)."""
    if bag.has_pixels:
        return StoredSource(bag.coords, 0, bag_path=bag.path)
    if slide is None:
        raise BagFormatError(f"{bag.path}: no stored pixels and no slide to read them from")
    level = int(bag.attrs["patch_level"])
    size = int(bag.attrs["patch_size"])
    if direct_tiles:
        from wsi_mil.features.tiles import try_tile_grid

        downsample = slide.level_downsamples[level]
        grid = try_tile_grid(slide.path, level, slide.level_dimensions, bag.coords, downsample, size, slide.background)
        if grid is not None:
            grid.close()
            return TileSource(
                bag.coords,
                size,
                slide_path=slide.path,
                level=level,
                level_dimensions=tuple(slide.level_dimensions),
                downsample=downsample,
                background=slide.background,
            )
    return RegionSource(bag.coords, size, slide_path=slide.path, reader=reader, mpp=mpp, level=level)


class PatchDataset:
    """torch Dataset over a patch source, fetched a batch at a time.

    ``__getitems__`` decodes a whole batch into one uint8 (B, H, W, 3) tensor. Inside
    a DataLoader worker the tensors come from a ring of ``ring_size`` shared-memory
    buffers reused batch after batch: fresh shared memory costs a page fault per 4 KiB
    page, which capped one worker at ~2,600 patches/s on this project's machines before
    any decoding (BENCHMARKS.md). Reuse is safe because a worker runs at most
    ``prefetch_factor`` batches ahead, so ``ring_size`` must exceed ``prefetch_factor + 1``
    and the consumer must not keep a batch tensor past the next one (the extraction
    loop copies it into the model's input at once). Use :func:`collate_batch` as the
    DataLoader's ``collate_fn``.
    Items: (uint8 (H, W, 3) tensor, valid flag, index); batches: (images, valid, indices).
    """

    def __init__(
        self, source: PatchSource, *, blank_size: int, ring_size: int = 8, deadline: float | None = None
    ) -> None:
        self.source = source
        self.blank_size = blank_size
        self.ring_size = ring_size
        #: ``time.monotonic()`` past which no patch is read (blank, invalid): the slide's time limit.
        self.deadline = deadline
        self._ring: dict[tuple[int, ...], list[Any]] = {}
        self._turn = 0

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_ring": {}, "_turn": 0}

    def _buffer(self, shape: tuple[int, ...]) -> Any:
        import torch

        if torch.utils.data.get_worker_info() is None:
            return _batch_tensor(shape, shared=False)
        ring = self._ring.setdefault(shape, [])
        if len(ring) < self.ring_size:
            ring.append(_batch_tensor(shape, shared=True))
            return ring[-1]
        self._turn += 1
        return ring[self._turn % self.ring_size]

    def __len__(self) -> int:
        return len(self.source)

    def _read(self, index: int) -> tuple[np.ndarray | None, bool]:
        if self.deadline is not None and time.monotonic() > self.deadline:
            return None, False  # the extraction loop fails the slide after this batch
        try:
            return self.source.read(index), True
        except Exception as error:  # noqa: BLE001 -- a corrupt tile must not stop the slide
            x, y = self.source.coords[index]
            name = getattr(self.source, "slide_path", None) or getattr(self.source, "bag_path", "")
            logger.warning(
                "%s: patch %d at (%d, %d) unreadable: %s: %s", name, index, x, y, type(error).__name__, error
            )
            return None, False

    def __getitem__(self, index: int) -> tuple[Any, bool, int]:
        images, valid, _ = self.__getitems__([index])
        return images[0], bool(valid[0]), index

    def __getitems__(self, indices: list[int]) -> tuple[Any, Any, Any]:
        import torch

        arrays = [self._read(int(i)) for i in indices]
        shape = (
            len(indices),
            *next((a.shape for a, _ in arrays if a is not None), (self.blank_size, self.blank_size, 3)),
        )
        images = self._buffer(shape)
        target = images.numpy()
        for row, (array, ok) in enumerate(arrays):
            target[row] = array if ok else 0
        valid = torch.tensor([ok for _, ok in arrays], dtype=torch.bool)
        return images, valid, torch.as_tensor(indices, dtype=torch.int64)


def _batch_tensor(shape: tuple[int, ...], *, shared: bool) -> Any:
    """An uninitialised uint8 tensor; in a loader worker, allocated in shared memory directly
    (as torch's default_collate does), so the batch is written once and never copied."""
    import torch

    if not shared:
        return torch.empty(shape, dtype=torch.uint8)
    storage = torch.UntypedStorage._new_shared(int(np.prod(shape)))
    return torch.empty(0, dtype=torch.uint8).set_(storage).view(shape)


def collate_batch(batch: Any) -> Any:
    """The dataset already returns whole batches."""
    return batch
