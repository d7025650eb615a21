"""Batch loaders for extraction: reading threads on CPU, DataLoader processes on CUDA.

Both yield the same ``(images, valid, indices)`` batches from a :class:`PatchDataset`.

* ``threads``: batches are decoded by a pool of threads in this process. Tile
  decoding (imagecodecs, OpenSlide) releases the GIL, so threads decode in parallel,
  and a batch never crosses a process boundary. On a CPU the model's compute threads
  and the readers share the same cores anyway; handing each batch over from a worker
  process cost 20-40% of the reading rate on this project's machines (BENCHMARKS.md).
* ``processes``: a torch DataLoader with worker processes, shared-memory batch
  buffers and pinned memory: the GPU path, where many cores feed one device and the
  Python side of reading (tifffile, h5py) must not hold the main process's GIL.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
from collections import deque
from collections.abc import Iterator
from typing import Any

from wsi_mil.errors import WsiMilError
from wsi_mil.features.reading import PatchDataset, collate_batch

logger = logging.getLogger(__name__)

#: Batches each reader prepares ahead of the model.
PREFETCH = 4
LOADERS = ("auto", "threads", "processes")
#: glibc ``mallopt`` parameters (malloc.h).
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3


def resolve_loader(loader: str, device: Any) -> str:
    """``auto``: threads on CPU, processes on CUDA, threads inside a daemonic process.

    Dask workers are daemonic by default, and a daemonic process may not start the
    DataLoader's worker processes."""
    if loader not in LOADERS:
        raise ValueError(f"loader must be one of {', '.join(LOADERS)}, got {loader!r}")
    daemon = multiprocessing.current_process().daemon
    if loader == "auto":
        if device.type == "cuda" and daemon:
            logger.info("extract.loader auto: reading threads (this process is a daemonic Dask worker)")
        return "processes" if device.type == "cuda" and not daemon else "threads"
    if loader == "processes" and daemon:
        raise WsiMilError(
            "extract.loader = processes: this process is a daemonic Dask worker, which may not start "
            "reading processes; use extract.loader: threads (or auto), or start the workers with "
            "DASK_DISTRIBUTED__WORKER__DAEMON=False"
        )
    return loader


class ThreadedLoader:
    """Iterate a dataset's batches in order, ``workers`` threads decoding ahead of the consumer."""

    def __init__(self, dataset: PatchDataset, *, batch_size: int, workers: int, prefetch: int = PREFETCH) -> None:
        self.dataset = dataset
        self.batch_size = batch_size
        self.workers = max(1, workers)
        self.prefetch = prefetch

    def __len__(self) -> int:
        return -(-len(self.dataset) // self.batch_size)

    def __iter__(self) -> Iterator[tuple[Any, Any, Any]]:
        from concurrent.futures import ThreadPoolExecutor

        n = len(self.dataset)
        batches = iter([list(range(start, min(start + self.batch_size, n))) for start in range(0, n, self.batch_size)])
        pool = ThreadPoolExecutor(self.workers, thread_name_prefix="wsi-mil-reader")
        pending: deque = deque()
        try:
            for indices in batches:
                pending.append(pool.submit(self.dataset.__getitems__, indices))
                if len(pending) >= self.workers * self.prefetch:
                    break
            while pending:
                batch = pending.popleft().result()
                following = next(batches, None)
                if following is not None:
                    pending.append(pool.submit(self.dataset.__getitems__, following))
                yield batch
        finally:
            for future in pending:
                future.cancel()
            pool.shutdown(wait=True)
            self.dataset.source.close()  # the readers' handles


def make_loader(dataset: PatchDataset, *, kind: str, batch_size: int, workers: int, pin_memory: bool = False) -> Any:
    """A :class:`ThreadedLoader` (``kind="threads"``) or a torch DataLoader (``"processes"``)."""
    if kind == "threads":
        return ThreadedLoader(dataset, batch_size=batch_size, workers=workers)
    from torch.utils.data import DataLoader

    return DataLoader(
        dataset,  # type: ignore[arg-type]  # torch types it as a Dataset subclass; any map-style dataset works
        batch_size=batch_size,
        num_workers=workers,
        pin_memory=pin_memory,
        prefetch_factor=PREFETCH if workers else None,
        worker_init_fn=_worker_init if workers else None,
        collate_fn=collate_batch,
    )


def ring_size() -> int:
    """Shared-memory buffers per DataLoader worker: more than the batches it may hold ahead."""
    return 2 * PREFETCH + 2


def _worker_init(_: int) -> None:
    import torch

    from wsi_mil.io.library_warnings import report_to_parent

    torch.set_num_threads(1)  # loader workers decode; compute threads belong to the main process
    report_to_parent()  # the worker's library warnings reach the slide's row, through descriptor 2
    _keep_freed_memory()


def _keep_freed_memory() -> None:
    """Let glibc reuse freed decode buffers instead of returning them to the OS.

    Each decoded tile is a ~200 KB array; above glibc's mmap threshold every one is a
    fresh mapping, page-faulted in and unmapped again, which cost a loader worker
    ~15% of its reading rate here (BENCHMARKS.md). Linux/glibc only; a no-op elsewhere.
    """
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if not name or not hasattr(os, "sched_getaffinity"):
        return
    try:
        libc = ctypes.CDLL(name)
        libc.mallopt(M_MMAP_THRESHOLD, 64 << 20)
        libc.mallopt(M_TRIM_THRESHOLD, 256 << 20)
    except (OSError, AttributeError):
        pass
