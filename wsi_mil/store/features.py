"""Feature files (ARCHITECTURE.md section 3): ``features`` (N, D) and ``coords`` (N, 2), HDF5 or Zarr.

Rows of ``features`` and ``coords`` match. Patches that could not be read (corrupt
tiles) are removed from both and listed in ``failed_coords`` (the ``failed_policy``
attribute says so), so CLAM-style loaders that read ``features`` + ``coords`` never
see a placeholder row.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from wsi_mil.errors import BagFormatError
from wsi_mil.store.atomic import atomic_output
from wsi_mil.store.attrs import clean_attrs, h5_attr
from wsi_mil.store.complete import EVERY_CHUNK, mark_complete, output_problem

FEATURE_FORMAT_VERSION = "1.1"  #: 1.1: root attribute complete_rows (store/complete.py)
FEATURES = "features"
FAILED_COORDS = "failed_coords"


@dataclass
class FeatureFile:
    path: Path
    features: np.ndarray  #: (N, D)
    coords: np.ndarray  #: (N, 2) int64 level-0
    attrs: dict[str, Any] = field(default_factory=dict)
    failed_coords: np.ndarray | None = None


def write_features(
    path: str | Path,
    features: np.ndarray,
    coords: np.ndarray,
    attrs: dict[str, Any],
    failed_coords: np.ndarray | None = None,
) -> Path:
    """Write atomically; ``attrs`` go on the ``features`` dataset (and the coords' on ``coords``)."""
    path = Path(path)
    coords = np.asarray(coords, dtype=np.int64).reshape(-1, 2)
    failed = np.zeros((0, 2), np.int64) if failed_coords is None else np.asarray(failed_coords, np.int64).reshape(-1, 2)
    attrs = {**attrs, "format_version": FEATURE_FORMAT_VERSION, "failed_policy": "removed", "n_failed": len(failed)}
    with atomic_output(path) as tmp:
        if path.suffix == ".h5":
            import h5py

            with h5py.File(tmp, "w") as f:
                dataset = f.create_dataset(
                    FEATURES,
                    data=features,
                    chunks=(max(1, min(len(features), 1024)), features.shape[1]) if len(features) else None,
                )
                for key, value in attrs.items():
                    dataset.attrs[key] = h5_attr(value)
                f.create_dataset("coords", data=coords)
                f.create_dataset(FAILED_COORDS, data=failed)
                mark_complete(f, len(features))
        elif path.suffix == ".zarr":
            import zarr

            group = zarr.open_group(str(tmp), mode="w", zarr_format=3)
            for name, data in ((FEATURES, features), ("coords", coords), (FAILED_COORDS, failed)):
                chunks = (max(1, min(len(data), 1024)), max(1, data.shape[1]))
                array = group.create_array(name, shape=data.shape, dtype=data.dtype, chunks=chunks, config=EVERY_CHUNK)
                if data.size:
                    array[...] = data
            group[FEATURES].attrs.update(attrs)
            mark_complete(group, len(features))
        else:
            raise ValueError(f"{path}: feature files end in .h5 or .zarr")
    return path


def features_problem(path: str | Path) -> str | None:
    """Why the feature file at ``path`` cannot be skipped as complete (missing, unreadable, truncated), or None."""
    return output_problem(path, (FEATURES, "coords"))


def read_feature_attrs(path: str | Path) -> dict[str, Any]:
    """The attributes of a feature file (encoder, weights, ...) without reading its arrays."""
    path = Path(path)
    if path.suffix == ".zarr":
        import zarr

        return clean_attrs(dict(zarr.open_group(str(path), mode="r")[FEATURES].attrs))
    import h5py

    with h5py.File(path, "r") as f:
        return clean_attrs(dict(f[FEATURES].attrs)) if FEATURES in f else {}


def read_features(path: str | Path) -> FeatureFile:
    path = Path(path)
    if path.suffix == ".zarr":
        import zarr

        group = zarr.open_group(str(path), mode="r")
        found = dict(group.arrays())  # name -> zarr.Array
        if FEATURES not in found:
            raise BagFormatError(f"{path}: no '{FEATURES}' array")
        failed = np.asarray(found[FAILED_COORDS][...]) if FAILED_COORDS in found else None
        return FeatureFile(
            path,
            np.asarray(found[FEATURES][...]),
            np.asarray(found["coords"][...]),
            clean_attrs(dict(found[FEATURES].attrs)),
            failed,
        )
    import h5py

    with h5py.File(path, "r") as f:
        if FEATURES not in f:
            raise BagFormatError(f"{path}: no '{FEATURES}' dataset")
        failed = f[FAILED_COORDS][...] if FAILED_COORDS in f else None
        coords = f["coords"][...] if "coords" in f else np.zeros((len(f[FEATURES]), 2), np.int64)
        return FeatureFile(path, f[FEATURES][...], coords, clean_attrs(dict(f[FEATURES].attrs)), failed)
