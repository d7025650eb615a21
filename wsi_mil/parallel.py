"""Dask ``distributed`` clients and per-slide task mapping.

One task per slide. By default a ``LocalCluster`` of single-threaded worker
*processes*: slide decoding and scikit-image hold the GIL for long stretches,
and a reader that crashes on a corrupt file takes down one worker, not the run.
``scheduler`` connects to an existing cluster instead (``tcp://host:8786`` or a
dask-jobqueue cluster's address).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Any

logger = logging.getLogger(__name__)


def default_workers() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


@contextlib.contextmanager
def dask_client(*, workers: int | None = None, scheduler: str | None = None, daemon: bool = True) -> Iterator[Any]:
    """A ``distributed.Client``: connected to ``scheduler``, or on a new local cluster.

    ``daemon=False`` lets tasks start processes of their own (torch DataLoader workers).
    """
    import dask
    from distributed import Client, LocalCluster

    if scheduler:
        with Client(scheduler) as client:
            yield client
        return
    n_workers = workers or default_workers()
    with dask.config.set({"distributed.worker.daemon": daemon}):
        cluster = LocalCluster(
            n_workers=n_workers,
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,
            silence_logs=logging.ERROR,
        )
    try:
        with Client(cluster) as client:
            yield client
    finally:
        cluster.close()


def _progress(total: int, desc: str, enabled: bool) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="slide", disable=not (enabled and sys.stderr.isatty()))


def map_slides(
    function: Callable[..., Any],
    items: Sequence[Any],
    *,
    on_result: Callable[[Any, Any], None],
    on_crash: Callable[[Any, BaseException], None],
    workers: int | None = None,
    scheduler: str | None = None,
    desc: str = "slides",
    progress: bool = True,
    daemon: bool = True,
    resources: dict[str, float] | None = None,
    **kwargs: Any,
) -> None:
    """Run ``function(item, **kwargs)`` for every item, one Dask task each.

    ``function`` is expected to catch its own errors and return a result; a task
    that still raises (a worker killed by a crashing library) goes to ``on_crash``.
    ``workers=0`` runs everything in this process, without Dask (for debugging).
    """
    bar = _progress(len(items), desc, progress)
    try:
        if workers == 0 and not scheduler:
            for item in items:
                try:
                    on_result(item, function(item, **kwargs))
                except Exception as error:
                    on_crash(item, error)
                bar.update()
            return
        from distributed import as_completed

        with dask_client(workers=workers, scheduler=scheduler, daemon=daemon) as client:
            futures = {
                client.submit(function, item, pure=False, retries=0, resources=resources, **kwargs): item
                for item in items
            }
            for future in as_completed(futures):
                item = futures[future]
                try:
                    on_result(item, future.result())
                except Exception as error:
                    on_crash(item, error)
                bar.update()
    finally:
        bar.close()
