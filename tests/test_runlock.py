"""One writer per run folder: a second real process stops and never deletes the first one's partial files."""

from __future__ import annotations

import csv
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from wsi_mil.run_layout import LOCK_NAME
from wsi_mil.store.atomic import atomic_output, clean_partials
from wsi_mil.store.runlock import RunLockedError, run_lock

WSI_MIL = [sys.executable, "-m", "wsi_mil.cli"]

#: A real second process that holds the run lock and has a partial bag open, as a tiling run would.
HOLDER = """
import os, sys, time
from pathlib import Path
from wsi_mil.store.runlock import run_lock
run = Path(sys.argv[1])
with run_lock(run, "holder"):
    partial = run / "bags" / f".reference.h5.partial-{os.getpid()}"
    partial.parent.mkdir(parents=True, exist_ok=True)
    partial.write_bytes(b"half a bag")
    print(partial, flush=True)
    time.sleep(120)
"""


def _start_holder(run: Path) -> tuple[subprocess.Popen, Path]:
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(run)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout is not None
    return holder, Path(holder.stdout.readline().strip())


def test_second_process_stops_and_keeps_the_first_ones_partials(
    tmp_path: Path, make_slide: Callable[..., Path]
) -> None:
    slide = make_slide()
    run = tmp_path / "run"
    holder, partial = _start_holder(run)
    try:
        args = [*WSI_MIL, "tile", str(slide), "--out", str(run), "--overwrite", "--workers", "0", "--quiet"]
        second = subprocess.run(args, capture_output=True, text=True, timeout=120)
        assert second.returncode == 2, second.stderr
        assert f"in use by process {holder.pid}" in second.stderr and "Traceback" not in second.stderr
        assert partial.read_bytes() == b"half a bag"  # the first process's work is untouched
        assert not (run / "bags" / "reference.h5").exists() and not (run / "manifest.csv").exists()
    finally:
        holder.kill()
        holder.wait()
    # the holder died (as after kill -9): its lock is gone with it, and its partial is cleaned up
    again = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr
    assert not partial.exists() and (run / "bags" / "reference.h5").exists()
    with (run / "manifest.csv").open(newline="") as handle:
        assert [row["status"] for row in csv.DictReader(handle)] == ["done"]


def test_clean_partials_keeps_a_live_process_partial(tmp_path: Path) -> None:
    final = tmp_path / "a.h5"
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    try:
        live_partial = tmp_path / f".a.h5.partial-{alive.pid}"
        dead_partial = tmp_path / f".a.h5.partial-{dead.pid}"
        live_partial.write_bytes(b"x")
        dead_partial.write_bytes(b"x")
        clean_partials(final)
        assert live_partial.exists() and not dead_partial.exists()
        with atomic_output(final) as tmp:  # a write of the same output beside it still completes
            tmp.write_bytes(b"complete")
        assert final.read_bytes() == b"complete" and live_partial.exists()
    finally:
        alive.kill()
        alive.wait()


def test_lock_is_reentrant_in_one_process_and_released_after(tmp_path: Path) -> None:
    with run_lock(tmp_path, "outer"), run_lock(tmp_path, "inner"):
        assert (tmp_path / LOCK_NAME).exists()
    with run_lock(tmp_path, "again"):  # released: it can be taken again
        pass


def test_locked_folder_error_names_the_holder(tmp_path: Path) -> None:
    holder, _ = _start_holder(tmp_path)
    try:
        started = time.monotonic()
        with pytest.raises(RunLockedError, match=rf"process {holder.pid} on .*`holder`"), run_lock(tmp_path):
            pass
        assert time.monotonic() - started < 5  # no waiting
    finally:
        holder.kill()
        holder.wait()


@pytest.mark.parametrize("command", ["train", "predict", "heatmap", "evaluate-maps"])
def test_every_writing_command_stops_on_a_held_folder(tmp_path: Path, command: str, capsys) -> None:
    from wsi_mil.cli import main

    holder, _ = _start_holder(tmp_path)
    extra = {
        "train": ["--labels", str(tmp_path / "labels.csv")],
        "predict": ["--model-dir", str(tmp_path)],
        "heatmap": [],
        "evaluate-maps": ["--masks", str(tmp_path)],
    }[command]
    try:
        assert main([command, str(tmp_path), *extra, "--quiet"]) == 2
        assert f"is in use by process {holder.pid}" in capsys.readouterr().err
    finally:
        holder.kill()
        holder.wait()
