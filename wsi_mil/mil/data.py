"""Feature bags for MIL: finding feature sets and loading bags once (labels: :mod:`wsi_mil.mil.labels`).

Accepted layouts (each folder of per-slide files is one *feature set*):

- a run directory: ``RUN_DIR/features/<encoder>/<slide_id>.h5|.zarr``, or with several
  bag sets ``RUN_DIR/features/<encoder>/<set>/<slide_id>.h5``;
- any folder of per-bag ``.h5`` (``features`` (N, D) [+ ``coords`` (N, 2)]), ``.zarr`` or
  ``.pt`` (a tensor (N, D)) files;
- CLAM's layout: a folder with ``h5_files/`` and/or ``pt_files/`` (h5 preferred; ``.pt``
  bags take their coords from ``h5_files/`` when it has the same slide).

Bad input is handled, never passed on to torch: empty bags (N = 0) are left out of
training with a warning (they carry no evidence); NaN/inf features and a feature
dimension that differs from the other files raise :class:`FeatureFormatError` naming
the files.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from wsi_mil.errors import FeatureFormatError
from wsi_mil.run_layout import RunLayout

logger = logging.getLogger(__name__)

FEATURE_SUFFIXES = (".h5", ".zarr", ".pt")
#: How many ids a report lists before "...".
SHOW = 5


@dataclass(frozen=True)
class FeatureSet:
    """One folder of per-slide feature files."""

    key: str  #: "" when it is the only set, else a short unique name (one path component)
    root: Path
    files: dict[str, Path]  #: slide_id -> feature file
    coords_files: dict[str, Path] = field(default_factory=dict)  #: for .pt bags: CLAM h5 with coords
    relative: str = ""  #: path below RUN_DIR/features, when it is there (predict finds new slides with it)


def _feature_files(folder: Path) -> dict[str, Path]:
    files: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if (
            not path.name.startswith(".")
            and path.suffix in FEATURE_SUFFIXES
            and (path.is_file() or path.suffix == ".zarr")
        ):
            files.setdefault(path.stem, path)
    return files


def _collect(folder: Path, parts: tuple[str, ...], depth: int = 0) -> list[tuple[tuple[str, ...], Path, dict, dict]]:
    h5_dir, pt_dir = folder / "h5_files", folder / "pt_files"
    if h5_dir.is_dir() or pt_dir.is_dir():
        h5 = _feature_files(h5_dir) if h5_dir.is_dir() else {}
        pt = _feature_files(pt_dir) if pt_dir.is_dir() else {}
        if h5:
            return [(parts, folder, h5, {})]
        return [(parts, folder, pt, h5)] if pt else []
    files = _feature_files(folder)
    if files:
        return [(parts, folder, files, {})]
    found = []
    if depth < 3:
        for sub in sorted(folder.iterdir()):
            if sub.is_dir() and not sub.name.startswith(".") and sub.suffix != ".zarr":
                found += _collect(sub, (*parts, sub.name), depth + 1)
    return found


def _root_names(roots: list[Path]) -> list[tuple[str, ...]]:
    """The shortest tails of the folders' paths that tell them apart: several runs'
    ``.../features/efficientnet_lite0`` folders become ``run40x/features/efficientnet_lite0``..."""
    if len(roots) == 1:
        return [()]
    paths = [root.resolve().parts for root in roots]
    if len(set(paths)) < len(paths):
        raise FeatureFormatError(f"the same feature folder is given twice: {' '.join(map(str, roots))}")
    for k in range(1, max(map(len, paths)) + 1):
        if len({p[-k:] for p in paths}) == len(paths):
            return [p[-k:] for p in paths]
    raise AssertionError("distinct paths have distinct tails")


def find_feature_sets(paths: Sequence[str | Path], *, run_dir: str | Path | None = None) -> list[FeatureSet]:
    """Every feature set under ``paths`` (default: ``RUN_DIR/features``), with unique short keys."""
    run_features = RunLayout(run_dir).features_root if run_dir is not None else None
    roots = [Path(p) for p in paths] or ([run_features] if run_features else [])
    found = []
    for root, prefix in zip(roots, _root_names(roots), strict=True):
        if not root.is_dir():
            raise FeatureFormatError(
                f"{root}: no such folder of feature files; run `wsi-mil extract` first or pass --features"
            )
        found += _collect(root, prefix)
    if not found:
        raise FeatureFormatError(f"no feature files (.h5, .zarr, .pt) under {', '.join(map(str, roots))}")
    common = 0
    while len(found) > 1 and all(len(p) > common + 1 for p, *_ in found) and len({p[common] for p, *_ in found}) == 1:
        common += 1
    sets = []
    for parts, folder, files, coords_files in found:
        key = "-".join(parts[common:]) if len(found) > 1 else ""
        relative = ""
        if run_features is not None and folder.resolve().is_relative_to(run_features.resolve()):
            relative = folder.resolve().relative_to(run_features.resolve()).as_posix()
        sets.append(FeatureSet(key, folder, files, coords_files, relative))
    return sets


def feature_shape(path: Path) -> tuple[int, int]:
    """(N, D) of a feature file, from its metadata where the format allows."""
    try:
        if path.suffix == ".h5":
            import h5py

            with h5py.File(path, "r") as f:
                if "features" not in f:
                    raise FeatureFormatError(f"{path}: no 'features' dataset; not a feature file")
                shape = f["features"].shape
        elif path.suffix == ".zarr":
            import zarr

            shape = zarr.open_array(str(path), path="features", mode="r").shape
        else:
            shape = tuple(_load_pt(path, mmap=True).shape)
    except FeatureFormatError:
        raise
    except (OSError, KeyError, RuntimeError, ValueError) as error:
        raise FeatureFormatError(f"{path}: cannot be read as a feature file ({error}); re-extract it") from error
    if len(shape) != 2:
        raise FeatureFormatError(f"{path}: features have shape {shape}, expected (N, D)")
    return int(shape[0]), int(shape[1])


def _load_pt(path: Path, *, mmap: bool = False) -> Any:
    """A CLAM ``pt_files`` tensor (N, D); ``mmap`` reads only the header of zip-format files."""
    import torch

    try:
        data = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except RuntimeError:
        if not mmap:
            raise
        data = torch.load(path, map_location="cpu", weights_only=True)  # legacy (non-zip) format
    if isinstance(data, dict) and "features" in data:
        data = data["features"]
    if not isinstance(data, torch.Tensor):
        raise FeatureFormatError(f"{path}: expected a tensor (N, D) (CLAM pt_files), got {type(data).__name__}")
    return data


def read_bag_features(path: Path, coords_path: Path | None = None) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """features (N, D) as stored (float16/32), coords (N, 2) int64, attrs of the feature file."""
    if path.suffix == ".pt":
        features = _load_pt(path).numpy()
        coords, attrs = None, {}
        if coords_path is not None:
            from wsi_mil.store.features import read_features

            other = read_features(coords_path)
            coords, attrs = other.coords, other.attrs
        if coords is None or len(coords) != len(features):
            coords = np.zeros((len(features), 2), np.int64)  # no positions: heatmaps and the transformer's PE are blind
        return features, coords, attrs
    from wsi_mil.store.features import read_features

    try:
        loaded = read_features(path)
    except OSError as error:
        raise FeatureFormatError(f"{path}: cannot be read ({error}); re-extract it") from error
    return loaded.features, np.asarray(loaded.coords, np.int64).reshape(-1, 2), loaded.attrs


def check_finite(features: np.ndarray, path: Path) -> None:
    if features.size and not np.isfinite(features).all():
        rows = np.flatnonzero(~np.isfinite(features).all(axis=1))
        raise FeatureFormatError(
            f"{path}: {len(rows)} of {len(features)} feature rows hold NaN/inf (first rows {rows[:SHOW].tolist()}); "
            "re-extract it (wsi-mil extract --overwrite) or remove the slide from the labels CSV"
        )


def first_ids(ids: Sequence[str]) -> str:
    """The first few of ``ids`` in sorted order, comma-separated, for messages."""
    ids = sorted(ids)
    return ", ".join(ids[:SHOW]) + (", ..." if len(ids) > SHOW else "")


class BagStore:
    """The bags of one feature set, in memory when they fit (read once, in parallel), else read per access.

    ``get(i)`` returns features (N, D) float32 and coords (N, 2) int64 as tensors.
    """

    def __init__(
        self, feature_set: FeatureSet, slide_ids: Sequence[str], *, memory_gb: float = 8.0, threads: int | None = None
    ) -> None:
        self.feature_set = feature_set
        threads = threads or min(8, (os.cpu_count() or 1) * 2)
        paths = [feature_set.files[s] for s in slide_ids]
        with ThreadPoolExecutor(threads) as pool:
            shapes = list(pool.map(feature_shape, paths))
        dims = Counter(d for _, d in shapes)
        self.dim = dims.most_common(1)[0][0]
        odd = [f"{p} ({d}-d)" for p, (_, d) in zip(paths, shapes, strict=True) if d != self.dim]
        if odd:
            raise FeatureFormatError(
                f"feature files disagree on the feature dimension: {len(shapes) - len(odd)} are {self.dim}-d, but "
                f"{first_ids(odd)}. Train on one encoder's features per feature set (re-extract the odd ones)"
            )
        self.empty = [s for s, (n, _) in zip(slide_ids, shapes, strict=True) if n == 0]
        if self.empty:
            logger.warning("%d empty bag(s) (N = 0) left out: %s", len(self.empty), first_ids(self.empty))
        self.slide_ids = [s for s, (n, _) in zip(slide_ids, shapes, strict=True) if n > 0]
        self.sizes = {s: n for s, (n, _) in zip(slide_ids, shapes, strict=True) if n > 0}
        total_gb = sum(self.sizes.values()) * self.dim * 4 / 2**30
        self.in_memory = total_gb <= memory_gb
        self._bags: dict[str, tuple[Any, Any]] = {}
        if self.in_memory:
            logger.info("loading %d bags (%.2f GiB) into memory", len(self.slide_ids), total_gb)
            with ThreadPoolExecutor(threads) as pool:
                for slide_id, bag in zip(self.slide_ids, pool.map(self._read, self.slide_ids), strict=True):
                    self._bags[slide_id] = bag
        else:
            logger.info(
                "%d bags (%.2f GiB) exceed memory_gb = %g: reading them from disk each epoch",
                len(self.slide_ids),
                total_gb,
                memory_gb,
            )

    def _read(self, slide_id: str) -> tuple[Any, Any]:
        import torch

        path = self.feature_set.files[slide_id]
        features, coords, _ = read_bag_features(path, self.feature_set.coords_files.get(slide_id))
        check_finite(features, path)
        return torch.from_numpy(np.ascontiguousarray(features)), torch.from_numpy(coords)

    def get(self, slide_id: str) -> tuple[Any, Any]:
        features, coords = self._bags[slide_id] if self.in_memory else self._read(slide_id)
        return features.float(), coords
