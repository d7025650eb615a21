"""Resume checks outputs: a truncated or unreadable bag or feature file is redone, never skipped."""

from __future__ import annotations

import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from wsi_mil.config import Config, ExtractConfig, ParallelConfig, TilingConfig  # noqa: E402
from wsi_mil.features.extract import extract_run  # noqa: E402
from wsi_mil.io.discover import SlideSource  # noqa: E402
from wsi_mil.manifest import Manifest  # noqa: E402
from wsi_mil.store.bags import bag_problem  # noqa: E402
from wsi_mil.store.complete import COMPLETE_ATTR  # noqa: E402
from wsi_mil.store.features import features_problem, read_features, write_features  # noqa: E402
from wsi_mil.tiling import tile_slides  # noqa: E402

#: 512-px patches: the reference slide's tissue is 6 of them (extraction time is per patch).
CONFIG = Config(
    tiling=TilingConfig(patch_size=512),
    parallel=ParallelConfig(workers=0),
    extract=ExtractConfig(encoder="resnet18", weights="random", num_workers=0, batch_size=8, freeze="eager"),
)


def _truncate_to_half(path: Path) -> None:
    with path.open("r+b") as handle:
        handle.truncate(path.stat().st_size // 2)


def _row(run: Path, stage: str) -> dict:
    return Manifest(run).rows[(stage, "reference", "-" if stage == "extract" else "0.5mpp")]


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory, reference_slide: Path) -> Path:
    run = tmp_path_factory.mktemp("pristine") / "run"
    tile_slides([SlideSource(reference_slide, "reference")], run, config=CONFIG, progress=False)
    records = extract_run(run, config=CONFIG, progress=False)
    assert [r["status"] for r in records] == ["done"]
    return run


@pytest.fixture
def extracted(tmp_path: Path, pristine: Path) -> Path:
    """A copy of a tiled and extracted run, for one test to damage."""
    shutil.copytree(pristine, tmp_path / "run")
    return tmp_path / "run"


def test_truncated_feature_file_is_redone_not_skipped(extracted: Path) -> None:
    path = extracted / "features" / "resnet18" / "reference.h5"
    expected = read_features(path).features
    _truncate_to_half(path)
    assert features_problem(path) is not None
    records = extract_run(extracted, config=CONFIG, progress=False)
    assert records[0]["status"] == "done" and "redone" in records[0]["note"], records
    np.testing.assert_array_equal(read_features(path).features, expected)
    assert extract_run(extracted, config=CONFIG, progress=False)[0]["status"] == "skipped"


def test_feature_file_with_fewer_rows_than_its_marker_is_redone(extracted: Path) -> None:
    path = extracted / "features" / "resnet18" / "reference.h5"
    with h5py.File(path, "a") as f:
        f.attrs[COMPLETE_ATTR] = int(f.attrs[COMPLETE_ATTR]) + 1
    assert "incomplete" in str(features_problem(path))
    assert extract_run(extracted, config=CONFIG, progress=False)[0]["status"] == "done"


def test_files_of_the_previous_format_stay_complete(extracted: Path) -> None:
    """Format 1.0 files have no marker: readable ones are still skipped, not redone."""
    path = extracted / "features" / "resnet18" / "reference.h5"
    with h5py.File(path, "a") as f:
        del f.attrs[COMPLETE_ATTR]
    assert features_problem(path) is None
    assert extract_run(extracted, config=CONFIG, progress=False)[0]["status"] == "skipped"


def test_truncated_bag_is_tiled_again(extracted: Path, reference_slide: Path) -> None:
    bag = extracted / "bags" / "reference.h5"
    _truncate_to_half(bag)
    assert bag_problem(bag) is not None
    records = tile_slides([SlideSource(reference_slide, "reference")], extracted, config=CONFIG, progress=False)
    assert records[0]["status"] == "done" and bag_problem(bag) is None


def test_zarr_feature_file_with_a_lost_chunk_is_incomplete(tmp_path: Path) -> None:
    path = write_features(tmp_path / "a.zarr", np.ones((3000, 4), np.float32), np.zeros((3000, 2)), {"encoder": "x"})
    assert features_problem(path) is None
    chunk = sorted((path / "features" / "c").rglob("*"))[-1]
    assert chunk.is_file()
    chunk.unlink()
    assert "chunks on disk" in str(features_problem(path))
    shutil.rmtree(path / "coords")
    assert features_problem(path) is not None


def test_resumed_rows_keep_the_counts_of_the_row_they_resume(extracted: Path, reference_slide: Path) -> None:
    done = {stage: dict(_row(extracted, stage)) for stage in ("tile", "extract")}
    assert done["tile"]["status"] == "done" and int(done["tile"]["n_patches"]) == 6
    tile_slides([SlideSource(reference_slide, "reference")], extracted, config=CONFIG, progress=False)
    records = extract_run(extracted, config=CONFIG, progress=False)
    assert records[0]["status"] == "skipped" and records[0]["n_patches"] == done["extract"]["n_patches"]
    for stage in ("tile", "extract"):
        row = _row(extracted, stage)
        assert row["status"] == "skipped" and row["note"].startswith("complete")
        assert (row["n_patches"], row["seconds"]) == (done[stage]["n_patches"], done[stage]["seconds"]), stage
