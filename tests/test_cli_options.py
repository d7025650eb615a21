"""Numeric options are checked as they are parsed (exit 2, the option named); no cluster waits forever."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from wsi_mil.cli import main
from wsi_mil.errors import ConfigError, WsiMilError


@pytest.mark.parametrize(
    ("argv", "option"),
    [
        (["tile", "S", "--out", "R", "--workers", "-2"], "--workers"),
        (["tile", "S", "--out", "R", "--patch-size", "0"], "--patch-size"),
        (["tile", "S", "--out", "R", "--overlap", "nan"], "--overlap"),
        (["tile", "S", "--out", "R", "--tissue-threshold", "1.5"], "--tissue-threshold"),
        (["tile", "S", "--out", "R", "--target-mpp", "0.5", "-1"], "--target-mpp"),
        (["tile", "S", "--out", "R", "--level", "-1"], "--level"),
        (["tile", "S", "--out", "R", "--mpp", "inf"], "--mpp"),
        (["tile", "S", "--out", "R", "--slide-timeout", "0"], "--slide-timeout"),
        (["extract", "R", "--batch-size", "0"], "--batch-size"),
        (["extract", "R", "--num-workers", "-1"], "--num-workers"),
        (["heatmap", "R", "--alpha", "2"], "--alpha"),
        (["heatmap", "R", "--smooth-sigma", "-1"], "--smooth-sigma"),
        (["heatmap", "R", "--scale", "fixed", "--range", "0", "inf"], "--range"),
        (["heatmap", "R", "--mpp", "0"], "--mpp"),
        (["heatmap", "R", "--level", "-1"], "--level"),
        (["tile", "S", "--out", "R", "--magnification", "0"], "--magnification"),
        (["demo", "--workers", "-1"], "--workers"),
        (["train", "R", "--labels", "L", "--seed", "x"], "--seed"),
        (["train", "R", "--labels", "L", "--folds", "1"], "--folds"),
        (["train", "R", "--labels", "L", "--epochs", "0"], "--epochs"),
        (["train", "R", "--labels", "L", "--repeats", "0"], "--repeats"),
        (["run", "C", "--workers", "-1"], "--workers"),
        (["evaluate-maps", "R", "--positive-fraction", "x"], "--positive-fraction"),
    ],
)
def test_bad_numeric_options_exit_2_naming_the_option(argv: list[str], option: str, capsys) -> None:
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    assert option in capsys.readouterr().err


def test_negative_workers_do_not_hang_the_real_command(tmp_path: Path, reference_slide: Path) -> None:
    started = time.perf_counter()
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "wsi_mil",
            "tile",
            str(reference_slide),
            "--out",
            str(tmp_path / "run"),
            "--workers",
            "-2",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert "--workers" in done.stderr and "Traceback" not in done.stderr
    assert time.perf_counter() - started < 60
    assert not (tmp_path / "run").exists()


def test_workers_config_key_is_checked(tmp_path: Path, reference_slide: Path, capsys) -> None:
    run = tmp_path / "run"
    code = main(["tile", str(reference_slide), "--out", str(run), "--set", "parallel.workers=-2", "--quiet"])
    assert code == 2
    assert "workers must be >= 0" in capsys.readouterr().err
    assert not run.exists()


def _identity(item: int) -> int:
    return item


def test_map_slides_refuses_negative_workers() -> None:
    from wsi_mil.parallel import map_slides

    with pytest.raises(ConfigError, match="workers"):
        map_slides(_identity, [1], on_result=lambda *_: None, on_crash=lambda *_: None, workers=-2, progress=False)


def test_a_cluster_without_workers_fails_instead_of_hanging(monkeypatch: pytest.MonkeyPatch) -> None:
    from distributed import LocalCluster

    import wsi_mil.parallel as parallel

    monkeypatch.setattr(parallel, "WORKER_WAIT_S", 2.0)
    with LocalCluster(n_workers=0, processes=False, dashboard_address=":0") as cluster:
        started = time.perf_counter()
        with pytest.raises(WsiMilError, match="no Dask worker"):
            parallel.map_slides(
                _identity,
                [1],
                on_result=lambda *_: None,
                on_crash=lambda *_: None,
                scheduler=cluster.scheduler_address,
                progress=False,
            )
        assert time.perf_counter() - started < 30
