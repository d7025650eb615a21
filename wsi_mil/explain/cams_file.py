"""The CAM file of a slide: ``cams.h5`` in its heatmap folder.

``cams.h5`` holds ``coords`` (k, 2) level-0 (x, y) of
the explained patches (with ``patch_size_level0``), ``rows`` (k,) their rows in the
scores file, ``images`` (k, S, S, 3) uint8 as the encoder saw them, and one (k, S, S)
float32 dataset per method, unscaled (one global range per slide and method), with
attributes ``average_drop_pct`` and ``increase_pct`` (Grad-CAM++'s faithfulness).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from wsi_mil.store.atomic import atomic_output

CAMS_NAME = "cams.h5"
#: attribute of ``coords`` in cams.h5: JSON {method: why it was not made}
SKIPPED_ATTR = "skipped_methods"


@dataclass
class PatchCams:
    """coords: (k, 2) level-0; rows: (k,) scores-file rows; images: (k, S, S, 3) uint8;
    maps: method -> (k, S, S) float32; faithfulness: method -> metric -> value."""

    coords: np.ndarray
    rows: np.ndarray
    images: np.ndarray
    maps: dict[str, np.ndarray]
    faithfulness: dict[str, dict[str, float]] = field(default_factory=dict)
    attrs: dict[str, Any] = field(default_factory=dict)


def write_cams(path: str | Path, cams: PatchCams) -> Path:
    """Write ``cams`` to ``path`` atomically (the format is in the module doc)."""
    import h5py

    from wsi_mil.store.attrs import h5_attr

    with atomic_output(path) as tmp:
        with h5py.File(tmp, "w") as f:
            coords = f.create_dataset("coords", data=np.asarray(cams.coords, np.int64))
            for key, value in cams.attrs.items():
                if value is not None:
                    coords.attrs[key] = h5_attr(value)
            f.create_dataset("rows", data=np.asarray(cams.rows, np.int64))
            f.create_dataset("images", data=cams.images, compression="gzip")
            for method, values in cams.maps.items():
                dataset = f.create_dataset(f"maps/{method}", data=np.asarray(values, np.float32))
                for key, value in cams.faithfulness.get(method, {}).items():
                    dataset.attrs[key] = value
    return Path(path)


def read_cams(path: str | Path) -> PatchCams:
    """Read a file written by :func:`write_cams`."""
    import h5py

    from wsi_mil.store.attrs import clean_attrs

    with h5py.File(path, "r") as f:
        maps = {name: f["maps"][name][...] for name in f["maps"]}
        faithfulness = {name: {k: float(v) for k, v in f["maps"][name].attrs.items()} for name in f["maps"]}
        return PatchCams(
            f["coords"][...], f["rows"][...], f["images"][...], maps, faithfulness, clean_attrs(dict(f["coords"].attrs))
        )
