"""Dask ``distributed`` clients and per-slide task mapping.

One task per slide. By default a ``LocalCluster`` of single-threaded worker
*processes*: slide decoding and scikit-image hold the GIL for long stretches,
and a reader that crashes on a corrupt file takes down one worker, not the run.
``scheduler`` connects to an existing cluster instead (``tcp://host:8786`` or a
dask-jobqueue cluster's address).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from wsi_mil.errors import ConfigError, WsiMilError
from wsi_mil.progress import SlideProgress

logger = logging.getLogger(__name__)

#: Seconds to wait for a first worker: a cluster that has none would otherwise wait forever.
WORKER_WAIT_S = 60.0


def default_workers() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


@contextlib.contextmanager
def dask_client(
    *, workers: int | None = None, scheduler: str | None = None, daemon: bool = True, keep_freed_memory: bool = True
) -> Iterator[Any]:
    """A ``distributed.Client``: connected to ``scheduler``, or on a new local cluster.

    ``daemon=False`` lets tasks start processes of their own (torch DataLoader workers).
    ``keep_freed_memory=False`` keeps Dask's default ``MALLOC_TRIM_THRESHOLD_`` (see
    :func:`_without_malloc_trim`; the benchmark's diagnostic compares both).
    """
    import dask
    from distributed import Client, LocalCluster

    if workers is not None and workers < 0:
        raise ConfigError(f"workers = {workers}: must be >= 0 (0 runs every task in this process, without Dask)")
    if scheduler:
        with _quiet_dask_logs(), Client(scheduler) as client:
            _wait_for_a_worker(client, scheduler)
            yield client
        return
    n_workers = workers or default_workers()
    environment = _without_malloc_trim() if keep_freed_memory else contextlib.nullcontext()
    with _quiet_dask_logs():
        with environment, dask.config.set({"distributed.worker.daemon": daemon}):
            cluster = LocalCluster(
                n_workers=n_workers,
                threads_per_worker=1,
                processes=True,
                # No dashboard. The scheduler still serves its health routes over HTTP, on
                # port 8787 unless told otherwise, so every second cluster (two stages, two
                # users) warned that the port was taken: any free port of this machine instead.
                dashboard_address="127.0.0.1:0",
                scheduler_kwargs={"dashboard": False},
                silence_logs=logging.ERROR,
            )
        try:
            with Client(cluster) as client:
                _wait_for_a_worker(client, "the local cluster")
                yield client
        finally:
            cluster.close()


#: Loggers of Dask and the libraries under it; at INFO they log every worker and client event.
DASK_LOGGERS = ("distributed", "bokeh", "tornado")


@contextlib.contextmanager
def _quiet_dask_logs(level: int = logging.WARNING) -> Iterator[None]:
    """Dask's own loggers at ``level`` or above in this block; ours (wsi_mil.*) keep theirs.

    A script that configures the root logger at INFO (the pipelines/ scripts) would
    otherwise print the scheduler's and nannies' start, register and close events.
    """
    saved = {name: logging.getLogger(name).level for name in DASK_LOGGERS}
    for name in DASK_LOGGERS:
        if logging.getLogger(name).getEffectiveLevel() < level:
            logging.getLogger(name).setLevel(level)
    try:
        yield
    finally:
        for name, previous in saved.items():
            logging.getLogger(name).setLevel(previous)


def _wait_for_a_worker(client: Any, where: str) -> None:
    try:
        client.wait_for_workers(1, timeout=WORKER_WAIT_S)
    except TimeoutError as error:  # dask raises the builtin (asyncio) TimeoutError
        raise WsiMilError(
            f"{where}: no Dask worker joined within {WORKER_WAIT_S:g} s, so no task could run. Start workers "
            "(dask worker <address>), or drop --scheduler to use a local cluster."
        ) from error


@contextlib.contextmanager
def _without_malloc_trim() -> Iterator[None]:
    """Local Dask workers started in this block run without Dask's ``MALLOC_TRIM_THRESHOLD_``.

    Performance only. Dask's nanny sets it to 64 KiB in every worker, so glibc hands each
    large freed array back to the OS at once and every new thumbnail-sized numpy array
    of tissue detection is page-faulted in again: in a worker a slide took 20-40% longer
    than in a plain process (bench/bench_tiling.py --malloc-diagnostic); feature extraction
    allocates the same way. A task frees all it allocated, so keeping freed memory for
    the next slide costs little. The
    nanny also copies the variable into this process's environment, whence later
    workers inherit it; it is taken out for the duration of the block.
    """
    import dask
    import distributed  # noqa: F401  (registers the distributed.* settings)

    environ = dict(dask.config.get("distributed.nanny.pre-spawn-environ"))
    planted = environ.pop("MALLOC_TRIM_THRESHOLD_", None)
    inherited = os.environ.get("MALLOC_TRIM_THRESHOLD_")
    if planted is not None and inherited == str(planted):  # left by an earlier nanny, not by the user
        del os.environ["MALLOC_TRIM_THRESHOLD_"]
    try:
        with dask.config.set({"distributed.nanny.pre-spawn-environ": environ}):
            yield
    finally:
        if inherited is not None:
            os.environ["MALLOC_TRIM_THRESHOLD_"] = inherited


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
    shown = SlideProgress(len(items), desc=desc, enabled=progress)
    try:
        if workers == 0 and not scheduler:
            for item in items:
                _finish(item, functools.partial(function, item, **kwargs), on_result, on_crash, shown)
            return
        from distributed import as_completed

        with dask_client(workers=workers, scheduler=scheduler, daemon=daemon) as client:
            futures = {
                client.submit(function, item, pure=False, retries=0, resources=resources, **kwargs): item
                for item in items
            }
            for future in as_completed(futures):  # progress from each future as it completes
                _finish(futures[future], future.result, on_result, on_crash, shown)
    finally:
        shown.close()


def _finish(
    item: Any,
    result: Callable[[], Any],
    on_result: Callable[[Any, Any], None],
    on_crash: Callable[[Any, BaseException], None],
    shown: SlideProgress,
) -> None:
    """Hands one item's result (or its crash) on and counts it."""
    try:
        value = result()
        on_result(item, value)
    except Exception as error:  # noqa: BLE001 -- a crashed item is recorded, the batch goes on
        on_crash(item, error)
        shown.update(None, failed=True)
    else:
        shown.update(value)
