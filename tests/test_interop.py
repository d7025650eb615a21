"""CLAM and TRIDENT coords files in (``extract --coords --slides``), CLAM's pt_files out (``--clam-files``)."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from tests.conftest import REFERENCE_COORDS  # noqa: E402
from wsi_mil.cli import main  # noqa: E402
from wsi_mil.mil.data import find_feature_sets, read_bag_features  # noqa: E402
from wsi_mil.store.features import read_features  # noqa: E402

EXTRACT = [
    "--encoder",
    "resnet18",
    "--weights",
    "random",
    "--batch-size",
    "8",
    "--set",
    "extract.freeze=eager",
    "--quiet",
    "--workers",
    "0",
]


def write_clam_coords(
    path: Path, coords: np.ndarray, *, patch_level: int, patch_size: int, downsample: float, level_dim: tuple[int, int]
) -> None:
    """As CLAM's create_patches_fp.py writes them: one contour's coords in a chunked, resizable ``coords``
    dataset (chunks of one row, ``maxshape=(None, 2)``) with its attributes, then each further contour
    appended by resizing."""
    coords = np.asarray(coords, dtype=np.int64)
    first, rest = coords[: len(coords) // 2], coords[len(coords) // 2 :]
    with h5py.File(path, "w") as f:
        dset = f.create_dataset("coords", shape=first.shape, maxshape=(None, 2), chunks=(1, 2), dtype=first.dtype)
        dset[:] = first
        attrs = {
            "patch_size": patch_size,
            "patch_level": patch_level,
            "downsample": np.array([downsample, downsample]),
            "downsampled_level_dim": np.array(level_dim),
            "level_dim": np.array(level_dim),
            "name": path.stem,
            "save_path": str(path.parent),
        }
        for key, value in attrs.items():
            dset.attrs[key] = value
    with h5py.File(path, "a") as f:
        dset = f["coords"]
        dset.resize(len(dset) + len(rest), axis=0)
        dset[-len(rest) :] = rest


def write_trident_coords(path: Path, coords: np.ndarray, *, patch_size: int, patch_size_level0: int) -> None:
    """As TRIDENT writes ``<name>_patches.h5``: ``coords`` with the patch size at the target and at level 0."""
    with h5py.File(path, "w") as f:
        dset = f.create_dataset("coords", data=np.asarray(coords, dtype=np.int64))
        for key, value in {
            "patch_size": patch_size,
            "patch_size_level0": patch_size_level0,
            "level0_magnification": 20,
            "target_magnification": 20 * patch_size // patch_size_level0,
            "overlap": 0,
            "name": path.stem.removesuffix("_patches"),
            "savetodir": str(path.parent),
        }.items():
            dset.attrs[key] = value


def _rows(run: Path) -> dict[str, dict[str, str]]:
    with (run / "manifest.csv").open(newline="") as handle:
        return {row["slide_id"]: row for row in csv.DictReader(handle) if row["stage"] == "extract"}


def _by_coords(path: Path) -> dict[tuple[int, int], np.ndarray]:
    loaded = read_features(path)
    return {tuple(map(int, c)): f for c, f in zip(loaded.coords, loaded.features, strict=True)}


@pytest.fixture(scope="module")
def own_run(tmp_path_factory: pytest.TempPathFactory, reference_slide: Path) -> Path:
    """wsi-mil's own bag of the reference slide (0.5 um/px = level 0, 512 px: 6 patches), extracted."""
    run = tmp_path_factory.mktemp("own") / "run"
    assert (
        main(["tile", str(reference_slide), "--out", str(run), "--patch-size", "512", "--quiet", "--workers", "0"]) == 0
    )
    assert main(["extract", str(run), *EXTRACT]) == 0
    return run


@pytest.fixture(scope="module")
def reference_features(own_run: Path) -> dict:
    return _by_coords(own_run / "features" / "resnet18" / "reference.h5")


def test_clam_and_trident_coords_give_the_features_of_our_own_bag(
    tmp_path: Path, reference_slide: Path, make_slide, reference_features: dict
) -> None:
    coords_dir, slides = tmp_path / "job" / "patches", tmp_path / "slides"
    coords_dir.mkdir(parents=True)
    slides.mkdir()
    other = make_slide("other", regions=())
    for source in (reference_slide, other):
        (slides / source.name).symlink_to(source)
    coords = np.array(sorted(reference_features))
    write_clam_coords(
        coords_dir / "reference.h5", coords, patch_level=0, patch_size=512, downsample=1.0, level_dim=(4096, 3072)
    )
    write_trident_coords(coords_dir / "other_patches.h5", coords[:2], patch_size=224, patch_size_level0=512)
    write_clam_coords(
        coords_dir / "absent.h5",
        np.array(REFERENCE_COORDS[:2]),
        patch_level=0,
        patch_size=256,
        downsample=1.0,
        level_dim=(4096, 3072),
    )
    run = tmp_path / "run"
    assert main(["extract", str(run), "--coords", str(coords_dir.parent), "--slides", str(slides), *EXTRACT]) == 1
    rows = _rows(run)
    assert rows["reference"]["status"] == "done" and rows["reference"]["n_patches"] == "6"
    assert rows["other"]["status"] == "done" and rows["other"]["n_patches"] == "2"  # TRIDENT's _patches suffix
    assert (
        rows["absent"]["status"] == "failed" and "no slide with the id 'absent' in --slides" in rows["absent"]["error"]
    )
    clam = _by_coords(run / "features" / "resnet18" / "reference.h5")
    assert clam.keys() == reference_features.keys()
    for key, value in clam.items():
        np.testing.assert_allclose(value, reference_features[key], rtol=1e-4, atol=1e-4)
    attrs = read_features(run / "features" / "resnet18" / "reference.h5").attrs
    assert attrs["patch_size_level0"] == 512 and attrs["bag_path"].endswith("patches/reference.h5")


def test_clam_coords_of_another_slide_are_refused(tmp_path: Path, reference_slide: Path) -> None:
    """A CLAM file made at level 1 (patch_size 64 at downsample 4) records that level's size: it must match."""
    coords_dir = tmp_path / "patches"
    coords_dir.mkdir()
    write_clam_coords(
        coords_dir / "reference.h5",
        np.array(REFERENCE_COORDS[:2]),
        patch_level=1,
        patch_size=64,
        downsample=4.0,
        level_dim=(2048, 1536),
    )
    run = tmp_path / "run"
    assert main(["extract", str(run), "--coords", str(coords_dir), "--slides", str(reference_slide), *EXTRACT]) == 1
    error = _rows(run)["reference"]["error"]
    assert "level 1 is 2048x1536" in error and "(1024, 768)" in error
    write_clam_coords(
        coords_dir / "reference.h5",
        np.array(REFERENCE_COORDS[:2]),
        patch_level=1,
        patch_size=64,
        downsample=4.0,
        level_dim=(1024, 768),
    )
    assert main(["extract", str(run), "--coords", str(coords_dir), "--slides", str(reference_slide), *EXTRACT]) == 0
    assert read_features(run / "features" / "resnet18" / "reference.h5").attrs["patch_size_level0"] == 256


def test_coords_without_slides_is_a_usage_error(tmp_path: Path) -> None:
    assert main(["extract", str(tmp_path), "--coords", str(tmp_path), *EXTRACT]) == 2


def test_clam_files_are_the_layout_clam_main_trains_on(tmp_path: Path, own_run: Path) -> None:
    """CLAM's dataset_generic.py reads ``<data_dir>/pt_files/<slide_id>.pt`` with torch.load (a tensor (N, D)),
    or with use_h5 ``<data_dir>/h5_files/<slide_id>.h5`` (``features`` and ``coords``)."""
    run = tmp_path / "run"
    shutil.copytree(own_run, run)
    clam = run / "clam" / "resnet18"
    assert not clam.exists()
    assert (
        main(["extract", str(run), *EXTRACT, "--clam-files"]) == 0
    )  # complete features: only the CLAM files are added
    ours = read_features(run / "features" / "resnet18" / "reference.h5")
    tensor = torch.load(clam / "pt_files" / "reference.pt")  # as CLAM loads it
    assert isinstance(tensor, torch.Tensor) and tensor.dtype == torch.float32 and tensor.shape == ours.features.shape
    np.testing.assert_array_equal(tensor.numpy(), ours.features.astype(np.float32))
    with h5py.File(clam / "h5_files" / "reference.h5", "r") as f:
        np.testing.assert_array_equal(f["features"][:], ours.features)
        np.testing.assert_array_equal(f["coords"][:], ours.coords)
    (sets,) = find_feature_sets([clam])  # and wsi-mil reads the CLAM folder back as one feature set
    assert read_bag_features(sets.files["reference"])[0].shape == ours.features.shape
