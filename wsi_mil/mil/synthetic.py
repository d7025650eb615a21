"""Synthetic MIL data: bags whose class is set by a planted instance type (tests, benchmarks, demos).

Background instances are N(0, I) in D dimensions; instances of type c >= 1 are shifted
by a fixed random direction ``mu_c`` of norm ``signal``. A bag of class 0 holds only
background; a bag of class c >= 1 holds ``planted_fraction`` type-c instances as one
compact blob on its patch grid (like a lesion). So a head that classifies bags well
and attends to the planted instances is doing what heatmaps need.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

PATCH = 256


@dataclass
class SyntheticBag:
    slide_id: str
    label: int
    features: np.ndarray  #: (N, D) float32
    coords: np.ndarray  #: (N, 2) int64
    planted: np.ndarray  #: (N,) bool


def make_planted_bags(
    n_bags: int,
    *,
    n_instances: int | tuple[int, int] = 64,
    dim: int = 32,
    n_classes: int = 2,
    planted_fraction: float = 0.1,
    signal: float = 3.0,
    seed: int = 0,
) -> list[SyntheticBag]:
    rng = np.random.default_rng(seed)
    directions = rng.normal(size=(n_classes, dim))
    directions *= signal / np.linalg.norm(directions, axis=1, keepdims=True)
    bags = []
    for index in range(n_bags):
        label = index % n_classes
        n = n_instances if isinstance(n_instances, int) else int(rng.integers(n_instances[0], n_instances[1] + 1))
        side = int(np.ceil(np.sqrt(n)))
        grid = np.stack(np.meshgrid(np.arange(side), np.arange(side), indexing="xy"), axis=-1).reshape(-1, 2)[:n]
        features = rng.normal(size=(n, dim)).astype(np.float32)
        planted = np.zeros(n, dtype=bool)
        if label > 0:
            k = max(1, int(round(planted_fraction * n)))
            centre = grid[rng.integers(n)]
            planted[np.argsort(np.abs(grid - centre).sum(axis=1), kind="stable")[:k]] = True
            features[planted] += directions[label].astype(np.float32)
        bags.append(SyntheticBag(f"bag_{index:04d}", label, features, grid.astype(np.int64) * PATCH, planted))
    return bags


def write_planted_bags(
    bags: list[SyntheticBag],
    folder: str | Path,
    *,
    labels_csv: str | Path | None = None,
    class_names: tuple[str, ...] | None = None,
) -> Path:
    """Feature files ``folder/<slide_id>.h5`` (the extraction layout) and optionally a labels CSV."""
    from wsi_mil.store.features import write_features

    folder = Path(folder)
    for bag in bags:
        attrs = {
            "encoder": "synthetic",
            "embed_dim": bag.features.shape[1],
            "weights": "random",
            "slide_id": bag.slide_id,
            "patch_size_level0": PATCH,
        }
        write_features(folder / f"{bag.slide_id}.h5", bag.features, bag.coords, attrs)
    if labels_csv is not None:
        names = class_names or tuple(str(c) for c in range(max(b.label for b in bags) + 1))
        lines = ["slide_id,label"] + [f"{b.slide_id},{names[b.label]}" for b in bags]
        Path(labels_csv).write_text("\n".join(lines) + "\n")
    return folder
