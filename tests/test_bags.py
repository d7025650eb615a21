"""HDF5 and Zarr bags behind one interface; atomic writes; CLAM files as input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from wsi_mil.errors import BagFormatError
from wsi_mil.store import bag_path, open_bag_writer, read_bag

ATTRS = {
    "patch_size": 512,
    "patch_level": 0,
    "patch_size_level0": 512,
    "target_mpp": 0.5,
    "slide_mpp": None,
    "slide_path": "/data/a.svs",
    "slide_id": "a",
    "tissue_threshold": 0.5,
    "format_version": "1.0",
    "tiling_config": '{"tiling": {}}',
}


@pytest.mark.parametrize("fmt", ["h5", "zarr"])
def test_roundtrip(tmp_path: Path, fmt: str) -> None:
    coords = np.array([[0, 0], [512, 0], [0, 1024]], dtype=np.int64)
    pixels = np.random.default_rng(0).integers(0, 255, (3, 32, 32, 3), dtype=np.uint8)
    path = bag_path(tmp_path, "a", fmt)
    with open_bag_writer(path) as writer:
        writer.write_coords(coords, ATTRS)
        writer.write_array("tissue_fraction", np.array([1.0, 0.5, 0.75], dtype=np.float32))
        writer.write_array("tissue_mask", np.eye(4, dtype=np.uint8), {"downsample": 16.0})
        writer.create_pixels(3, 32)
        writer.write_pixels(0, pixels[:2])
        writer.write_pixels(2, pixels[2:])
    bag = read_bag(path)
    np.testing.assert_array_equal(bag.coords, coords)
    assert bag.coords.dtype == np.int64 and len(bag) == 3
    assert {k: bag.attrs[k] for k in ATTRS} == ATTRS
    np.testing.assert_allclose(bag.tissue_fraction, [1.0, 0.5, 0.75])
    assert bag.tissue_mask.dtype == bool and bag.mask_attrs["downsample"] == 16.0
    np.testing.assert_array_equal(bag.read_pixels(), pixels)
    np.testing.assert_array_equal(bag.read_pixels(slice(1, 2)), pixels[1:2])


@pytest.mark.parametrize("fmt", ["h5", "zarr"])
def test_empty_bag(tmp_path: Path, fmt: str) -> None:
    path = bag_path(tmp_path, "empty", fmt)
    with open_bag_writer(path) as writer:
        writer.write_coords(np.zeros((0, 2), dtype=np.int64), ATTRS)
        writer.write_array("tissue_fraction", np.zeros(0, dtype=np.float32))
    bag = read_bag(path)
    assert bag.coords.shape == (0, 2) and len(bag) == 0


@pytest.mark.parametrize("fmt", ["h5", "zarr"])
def test_failed_write_leaves_nothing(tmp_path: Path, fmt: str) -> None:
    path = bag_path(tmp_path, "broken", fmt)
    with pytest.raises(RuntimeError), open_bag_writer(path) as writer:  # noqa: PT012 -- the raise must happen inside the writer
        writer.write_coords(np.zeros((1, 2), dtype=np.int64), ATTRS)
        raise RuntimeError("killed halfway")
    assert list(tmp_path.iterdir()) == []


def test_stale_partials_are_cleaned_and_old_bag_replaced(tmp_path: Path) -> None:
    path = bag_path(tmp_path, "a", "zarr")
    stale = tmp_path / ".a.zarr.partial-99999"
    stale.mkdir()
    for value in (1, 2):
        with open_bag_writer(path) as writer:
            writer.write_coords(np.full((1, 2), value, dtype=np.int64), ATTRS)
    assert read_bag(path).coords.tolist() == [[2, 2]]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.zarr"]


def test_clam_coords_file_is_a_bag(tmp_path: Path) -> None:
    """The layout CLAM's create_patches_fp.py writes."""
    import h5py

    path = tmp_path / "TCGA-XX.h5"
    with h5py.File(path, "w") as f:
        dset = f.create_dataset("coords", data=np.array([[256, 512], [512, 512]], dtype=np.int64))
        dset.attrs["patch_level"] = 0
        dset.attrs["patch_size"] = 256
        dset.attrs["downsample"] = np.array([1.0, 1.0])
        dset.attrs["downsampled_level_dim"] = np.array([4096, 3072])
        dset.attrs["level_dim"] = np.array([4096, 3072])
        dset.attrs["name"] = "TCGA-XX"
        dset.attrs["save_path"] = "/out/patches"
    bag = read_bag(path)
    assert bag.coords.tolist() == [[256, 512], [512, 512]]
    assert bag.attrs["patch_size"] == 256 and bag.attrs["patch_level"] == 0
    assert bag.attrs["patch_size_level0"] == 256
    assert bag.tissue_fraction is None and not bag.has_pixels
    with pytest.raises(BagFormatError, match="save-pixels"):
        bag.read_pixels()


def test_not_a_bag(tmp_path: Path) -> None:
    import h5py

    path = tmp_path / "features.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("features", data=np.zeros((2, 4)))
    with pytest.raises(BagFormatError, match="not a patch bag"):
        read_bag(path)
    garbage = tmp_path / "garbage.h5"
    garbage.write_bytes(b"not hdf5 at all")
    with pytest.raises(BagFormatError, match="re-run tiling"):
        read_bag(garbage)
