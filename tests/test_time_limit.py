"""The per-slide time limit is hard: a slide stuck inside a C call (here: opening a FIFO, which blocks
in the kernel until a writer comes, as a file on a hung network mount does) is stopped at the
limit, failed with a clear message, and the batch goes on. (The limit leaves the good slide room
on a loaded machine.)"""

from __future__ import annotations

import csv
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from wsi_mil.errors import SlideTimeoutError
from wsi_mil.time_limit import ChildDiedError, run_with_time_limit


def _manifest(run: Path) -> dict[str, dict[str, str]]:
    with (run / "manifest.csv").open(newline="") as handle:
        return {row["slide_id"]: row for row in csv.DictReader(handle)}


@pytest.mark.parametrize("workers", ["0", pytest.param("1", marks=pytest.mark.slow)])
def test_a_slide_stuck_in_a_c_call_is_stopped_and_the_batch_goes_on(
    tmp_path: Path, reference_slide: Path, workers: str
) -> None:
    slides, run = tmp_path / "slides", tmp_path / "run"
    slides.mkdir()
    shutil.copy(reference_slide, slides / "good.svs")
    os.mkfifo(slides / "stuck.svs")  # open() blocks inside the kernel: no Python check can run
    command = [
        sys.executable,
        "-m",
        "wsi_mil",
        "tile",
        str(slides),
        "--out",
        str(run),
        "--slide-timeout",
        "8",
        "--workers",
        workers,
        "--quiet",
    ]
    started = time.perf_counter()
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=240, check=False, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    rows = _manifest(run)
    assert rows["good"]["status"] == "done" and rows["good"]["n_patches"] == "24"
    assert rows["stuck"]["status"] == "failed"
    assert "stuck.svs: stopped after the per-slide time limit of 8 s" in rows["stuck"]["error"]
    assert time.perf_counter() - started < 200


def _add(item: int, *, offset: int) -> int:
    return item + offset


def _fail(item: int) -> int:
    raise ValueError(f"bad item {item}")


def _die(item: int) -> int:
    os.kill(os.getpid(), signal.SIGKILL)  # a reader crashing inside C
    return item


def _sleep_in_c(item: float) -> None:
    import ctypes

    ctypes.CDLL(None).sleep(int(item))  # libc sleep(3): signals aside, nothing interrupts it


def test_run_with_time_limit_returns_raises_and_stops() -> None:
    assert run_with_time_limit(_add, 2, seconds=30, offset=3) == 5
    with pytest.raises(ValueError, match="bad item 7"):
        run_with_time_limit(_fail, 7, seconds=30)
    with pytest.raises(ChildDiedError, match="exit code -9"):
        run_with_time_limit(_die, 1, seconds=30)
    started = time.perf_counter()
    with pytest.raises(SlideTimeoutError, match="time limit of 0.5 s"):
        run_with_time_limit(_sleep_in_c, 60, seconds=0.5)
    assert time.perf_counter() - started < 20
