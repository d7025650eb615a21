"""Progress of a batch in every mode, and a quiet Dask set-up."""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from wsi_mil import progress
from wsi_mil.parallel import map_slides
from wsi_mil.progress import SlideProgress

ROOT = Path(__file__).resolve().parents[1]


def _record(item: int, *, pause: float = 0.0) -> dict[str, Any]:
    time.sleep(pause)
    if item == 3:
        return {"status": "failed", "error": "bad slide"}
    return {"status": "done", "n_patches": 5}


def _explode(item: int) -> dict[str, Any]:
    if item == 7:
        raise RuntimeError("worker died")
    return _record(item)


def _progress_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "wsi_mil.progress"]


def test_serial_mode_logs_a_line_per_tenth_with_patches_and_failures(caplog, monkeypatch) -> None:
    monkeypatch.setattr(progress, "on_a_terminal", lambda: False)
    crashed: list[int] = []
    with caplog.at_level(logging.INFO, logger="wsi_mil"):
        map_slides(
            _explode,
            list(range(20)),
            on_result=lambda *_: None,
            on_crash=lambda i, e: crashed.append(i),
            workers=0,
            desc="extracting",
        )
    lines = _progress_lines(caplog)
    assert crashed == [7]
    assert lines[0] == "extracting: 20 slide(s) to do"
    done = [int(m.group(1)) for line in lines if (m := re.match(r"extracting: (\d+)/20 slides", line))]
    assert done == [2, 4, 6, 8, 10, 12, 14, 16, 18, 20]
    assert lines[-1].startswith("extracting: 20/20 slides (100%), 90 patches, 2 failed, ")  # item 3 failed, 7 crashed
    assert "left" in lines[1] and "left" not in lines[-1]


def test_a_long_slide_is_not_silent(caplog, monkeypatch) -> None:
    """Between finished slides, a line at least every LOG_INTERVAL_S seconds."""
    monkeypatch.setattr(progress, "on_a_terminal", lambda: False)
    monkeypatch.setattr(progress, "LOG_INTERVAL_S", 0.2)
    with caplog.at_level(logging.INFO, logger="wsi_mil"):
        map_slides(
            _record, [0], on_result=lambda *_: None, on_crash=lambda *_: None, workers=0, desc="tiling", pause=1.5
        )
    waiting = [line for line in _progress_lines(caplog) if line.startswith("tiling: 0/1 slides (0%), 0 patches")]
    assert len(waiting) >= 3, _progress_lines(caplog)


def test_quiet_shows_nothing(caplog, capsys) -> None:
    with caplog.at_level(logging.INFO, logger="wsi_mil"):
        map_slides(_record, [0, 1], on_result=lambda *_: None, on_crash=lambda *_: None, workers=0, progress=False)
    assert _progress_lines(caplog) == [] and capsys.readouterr().err == ""


def test_terminal_shows_a_bar_with_patches(caplog, capsys) -> None:
    with caplog.at_level(logging.INFO, logger="wsi_mil"):
        shown = SlideProgress(3, desc="heatmaps", terminal=True)
        for item in (0, 1, 3):
            shown.update(_record(item))
        shown.close()
    err = capsys.readouterr().err
    assert "heatmaps" in err and "3/3" in err and "10 patches, 1 failed" in err
    assert _progress_lines(caplog) == []  # the bar, not log lines


def test_tile_records_count_every_bag_set() -> None:
    records = [{"status": "done", "n_patches": 24}, {"status": "skipped", "n_patches": "6"}, {"status": "failed"}]
    assert progress.count_patches(records) == 30 and progress.is_failure(records)


@pytest.fixture
def three_slides(tmp_path: Path, reference_slide: Path) -> Path:
    folder = tmp_path / "slides"
    folder.mkdir()
    for name in ("a", "b", "c"):
        shutil.copy(reference_slide, folder / f"{name}.svs")
    return folder


def _start(command: list[str]) -> subprocess.Popen:
    return subprocess.Popen(
        command,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )


def test_two_dask_stages_at_once_log_progress_and_no_dask_chatter(three_slides: Path, tmp_path: Path) -> None:
    """Real local clusters of 2 worker processes, started at the same time by the CLI and by a
    pipelines/ script (which logs at INFO on the root logger): progress lines from the Dask
    futures, no port-8787 warning, no scheduler or nanny INFO lines."""
    cli_run, script_run = tmp_path / "cli-run", tmp_path / "script-run"
    cli = _start([sys.executable, "-m", "wsi_mil", "tile", str(three_slides), "--out", str(cli_run), "--workers", "2"])
    script = _start([sys.executable, "pipelines/01_tile.py", str(three_slides), str(script_run), "--workers", "2"])
    for name, process in (("cli", cli), ("script", script)):
        out, err = process.communicate(timeout=300)
        text = out + err
        assert process.returncode == 0, text
        assert "8787" not in text and "already in use" not in text, text
        for chatter in (
            "distributed.scheduler - INFO",
            "Scheduler at",
            "Register worker",
            "Start Nanny",
            "Receive client connection",
            "jupyter-server-proxy",
        ):
            assert chatter not in text, f"{name}: {chatter!r} in\n{text}"
        assert "tiling: 3/3 slides (100%), 72 patches, 0 failed" in err, text  # 3 slides x 24 patches
    assert len(list((cli_run / "bags").glob("*.h5"))) == 3 and len(list((script_run / "bags").glob("*.h5"))) == 3
