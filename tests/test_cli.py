"""End-to-end runs of the real ``wsi-mil`` command in a subprocess."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from wsi_mil.store import read_bag
from wsi_mil.synthetic import Region, write_synthetic_slide

WSI_MIL = [sys.executable, "-m", "wsi_mil.cli"]


def run_cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([*WSI_MIL, *args], capture_output=True, text=True, timeout=timeout)


def read_manifest(run_dir: Path) -> dict[str, dict[str, str]]:
    with (run_dir / "manifest.csv").open(newline="") as handle:
        return {row["slide_id"]: row for row in csv.DictReader(handle)}


@pytest.mark.restricted_data
def test_real_slides_and_bad_files_in_one_batch(tmp_path: Path, shared_data: Path) -> None:
    """Every bad input ends in one clear line; the rest of the batch completes (real Dask cluster)."""
    out = tmp_path / "run"
    result = run_cli(
        "tile",
        str(shared_data / "slides"),
        str(shared_data / "bad"),
        str(shared_data / "dicom-boxes"),
        "--out",
        str(out),
        "--workers",
        "2",
        "--quiet",
    )
    assert result.returncode == 1, result.stderr  # some slides failed
    assert "Traceback" not in result.stderr
    rows = read_manifest(out)
    assert set(rows) == {
        "CMU-1-Small-Region",
        "TCGA-CR-7395-01A-01-TS1",
        "boxes",
        "kidney-ihc-strip",
        "small",
        "test3-DAPI-2-(387)",
        "dicom-boxes",
        "not-a-tiff",
        "unopenable",
        "unreadable",
    }
    for bad in ("not-a-tiff", "unopenable", "unreadable"):
        row = rows[bad]
        assert row["status"] == "failed" and row["path"] in row["error"] and "\n" not in row["error"]
        assert sum(row["path"] in line for line in result.stderr.splitlines()) == 1  # one line in the log
    for no_mpp in ("TCGA-CR-7395-01A-01-TS1", "boxes", "kidney-ihc-strip"):
        assert rows[no_mpp]["status"] == "failed" and "--mpp" in rows[no_mpp]["error"]
    assert rows["CMU-1-Small-Region"]["status"] == "done" and int(rows["CMU-1-Small-Region"]["n_patches"]) > 20
    for tiny in ("small", "dicom-boxes"):
        assert rows[tiny]["status"] == "done" and rows[tiny]["n_patches"] == "0"
        assert "smaller than one patch" in rows[tiny]["note"]
    assert (out / "bags" / "CMU-1-Small-Region.h5").exists() and (out / "qc" / "CMU-1-Small-Region.png").exists()

    # The rerun skips finished slides and retries the failed ones.
    again = run_cli("tile", str(shared_data / "slides"), "--out", str(out), "--workers", "0", "--quiet")
    assert again.returncode == 1
    assert read_manifest(out)["CMU-1-Small-Region"]["status"] == "skipped"


@pytest.mark.restricted_data
def test_debug_shows_tracebacks(tmp_path: Path, shared_data: Path) -> None:
    result = run_cli(
        "tile", str(shared_data / "bad" / "unreadable.svs"), "--out", str(tmp_path), "--workers", "0", "--debug"
    )
    assert result.returncode == 1 and "Traceback" in result.stderr


@pytest.mark.restricted_data
def test_csv_input_with_per_slide_mpp(tmp_path: Path, shared_data: Path) -> None:
    slide = shared_data / "slides" / "TCGA-CR-7395-01A-01-TS1.svs"
    listing = tmp_path / "slides.csv"
    listing.write_text(f"path,mpp\n{slide},0.5\n")
    result = run_cli("tile", str(listing), "--out", str(tmp_path / "run"), "--workers", "0", "--format", "zarr")
    assert result.returncode == 0, result.stderr
    bag = read_bag(tmp_path / "run" / "bags" / "TCGA-CR-7395-01A-01-TS1.zarr")
    assert len(bag) > 100 and bag.attrs["slide_mpp"] == 0.5 and bag.attrs["mpp_source"] == "override"


def test_duplicate_ids_are_refused_before_work(tmp_path: Path) -> None:
    for folder in ("a", "b"):
        write_synthetic_slide(tmp_path / folder / "case.svs", width=512, height=512, downsamples=(1,))
    result = run_cli("tile", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path / "run"))
    assert result.returncode == 2 and "case" in result.stderr and "more than once" in result.stderr
    assert not (tmp_path / "run").exists()


def test_config_errors_stop_before_work(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("tiling:\n  patch_sise: 256\n")
    result = run_cli("tile", str(tmp_path), "--out", str(tmp_path / "run"), "--config", str(config))
    assert result.returncode == 2 and "tiling.patch_sise" in result.stderr and str(config) in result.stderr
    assert "Traceback" not in result.stderr


def _bag_contents(run_dir: Path) -> dict[str, tuple]:
    contents = {}
    for path in sorted((run_dir / "bags").glob("*.h5")):
        bag = read_bag(path)
        contents[path.name] = (bag.coords.tolist(), sorted(bag.attrs.items()), bag.read_pixels().tobytes())
    return contents


def test_killed_run_resumes_to_identical_outputs(tmp_path: Path) -> None:
    slides = tmp_path / "slides"
    for index in range(6):
        regions = [Region(512 + 256 * index, 512, 2048, 1536, "ellipse")]
        write_synthetic_slide(slides / f"s{index}.svs", width=4096, height=3072, mpp=0.25, regions=regions)
    args = [
        "tile",
        str(slides),
        "--target-mpp",
        "0.5",
        "--patch-size",
        "128",
        "--save-pixels",
        "--workers",
        "0",
        "--quiet",
    ]

    reference = run_cli(*args, "--out", str(tmp_path / "reference"))
    assert reference.returncode == 0, reference.stderr

    killed_dir = tmp_path / "killed"
    process = subprocess.Popen([*WSI_MIL, *args, "--out", str(killed_dir)], start_new_session=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(list((killed_dir / "bags").glob("*.h5"))) < 2:
        time.sleep(0.02)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    finished = list((killed_dir / "bags").glob("*.h5"))
    assert 2 <= len(finished) < 6, "the run should have been killed part-way"

    resumed = run_cli(*args, "--out", str(killed_dir))
    assert resumed.returncode == 0, resumed.stderr
    statuses = {row["status"] for row in read_manifest(killed_dir).values()}
    assert statuses == {"done", "skipped"}
    assert _bag_contents(killed_dir) == _bag_contents(tmp_path / "reference")
    leftovers = [p.name for p in killed_dir.rglob("*") if ".partial-" in p.name]
    assert leftovers == []
    for name in (f"s{i}.png" for i in range(6)):
        reference_qc = np.asarray(__import__("PIL.Image").Image.open(tmp_path / "reference" / "qc" / name))
        resumed_qc = np.asarray(__import__("PIL.Image").Image.open(killed_dir / "qc" / name))
        np.testing.assert_array_equal(reference_qc, resumed_qc)


def test_help_and_version() -> None:
    assert run_cli("--version").stdout.startswith("wsi-mil ")
    assert "--target-mpp" in run_cli("tile", "--help").stdout


@pytest.mark.parametrize("entry", ["wsi-mil"])
def test_console_script_is_installed(entry: str) -> None:
    script = Path(sys.executable).parent / entry
    result = subprocess.run([str(script), "--version"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "wsi-mil" in result.stdout
