"""GeoJSON in the form QuPath imports (``File > Import objects``, drag and drop), shared by
tiling (tissue contours) and the heatmap stage (patch tiles, thresholded regions).

Each Feature has QuPath's fields: a string ``id`` (a UUID, derived from what the object
is, so a rerun writes the same file), ``properties.objectType`` (``annotation``,
``detection`` or ``tile``), ``properties.classification`` ``{"name", "color": [r, g, b]}``
and ``properties.measurements`` (name -> number). Coordinates are level-0 pixels with the
origin at the slide's top-left corner, as QuPath places them.
"""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from wsi_mil.store.atomic import atomic_output

#: Namespace of the feature ids (uuid5 of "<slide>/<kind>/<index>").
ID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://github.com/wsi-mil/wsi-mil/geojson")
TISSUE_CLASS = ("Tissue", (40, 170, 40))


def feature_id(*parts: object) -> str:
    """A stable UUID string for the object named by ``parts`` (slide id, kind, index...)."""
    return str(uuid.uuid5(ID_NAMESPACE, "/".join(str(p) for p in parts)))


def _number(value: float) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


def qupath_feature(
    geometry: Mapping[str, Any],
    *,
    object_id: str,
    object_type: str,
    classification: tuple[str, Sequence[int]],
    name: str | None = None,
    measurements: Mapping[str, float] | None = None,
) -> dict[str, Any]:
    """One Feature; ``classification`` is (name, (r, g, b)); non-finite measurements become null."""
    class_name, colour = classification
    properties: dict[str, Any] = {
        "objectType": object_type,
        "classification": {"name": class_name, "color": [int(c) for c in colour]},
        "isLocked": False,
    }
    if name is not None:
        properties["name"] = name
    if measurements is not None:
        properties["measurements"] = {k: _number(v) for k, v in measurements.items()}
    return {"type": "Feature", "id": object_id, "geometry": dict(geometry), "properties": properties}


def write_feature_collection(path: str | Path, features: Iterable[Mapping[str, Any]]) -> Path:
    """The features as one FeatureCollection, atomically."""
    path = Path(path)
    with atomic_output(path) as tmp:
        tmp.write_text(json.dumps({"type": "FeatureCollection", "features": list(features)}, allow_nan=False))
    return path


def polygons(geometry: Any) -> list[Any]:
    """The polygons of a shapely geometry (a Polygon, MultiPolygon or collection; empty: none)."""
    if geometry.is_empty:
        return []
    if geometry.geom_type == "Polygon":
        return [geometry]
    return [part for g in getattr(geometry, "geoms", []) for part in polygons(g)]


def union_of_squares(corners: np.ndarray, side: float) -> Any:
    """The merged shapely geometry of squares ``[x, x+side) x [y, y+side)``; corners: (N, 2) (x, y)."""
    import shapely

    corners = np.asarray(corners, dtype=np.float64).reshape(-1, 2)
    if len(corners) == 0:
        return shapely.Polygon()
    boxes = shapely.box(corners[:, 0], corners[:, 1], corners[:, 0] + side, corners[:, 1] + side)
    return shapely.unary_union(boxes)


def mask_geometry(mask: np.ndarray, downsample: float, *, simplify: bool = True) -> Any:
    """The level-0 shapely geometry of a boolean mask (h, w) whose pixel is ``downsample`` level-0 px.

    Exact pixel outlines (holes kept), from the union of each row's runs; with
    ``simplify`` the staircase is smoothed within half a mask pixel.
    """
    import shapely

    mask = np.asarray(mask, dtype=bool)
    padded = np.zeros((mask.shape[0], mask.shape[1] + 2), dtype=np.int8)
    padded[:, 1:-1] = mask
    steps = np.diff(padded, axis=1)
    rows, starts = np.nonzero(steps == 1)
    _, stops = np.nonzero(steps == -1)
    if len(rows) == 0:
        return shapely.Polygon()
    d = float(downsample)
    boxes = shapely.box(starts * d, rows * d, stops * d, (rows + 1) * d)
    merged = shapely.unary_union(boxes)
    return merged.simplify(d / 2, preserve_topology=True) if simplify else merged


def tissue_features(mask: np.ndarray, downsample: float, *, slide_id: str, mpp: float | None = None) -> list[dict]:
    """One ``Tissue`` annotation per connected tissue piece of a tissue mask, area in um^2 when the MPP is known."""
    import shapely

    features = []
    for index, polygon in enumerate(polygons(mask_geometry(mask, downsample))):
        measurements = {"area_um2": polygon.area * mpp * mpp} if mpp else {"area_px": polygon.area}
        features.append(
            qupath_feature(
                shapely.geometry.mapping(polygon),
                object_id=feature_id(slide_id, "tissue", index),
                object_type="annotation",
                classification=TISSUE_CLASS,
                name=f"tissue {index}",
                measurements=measurements,
            )
        )
    return features


def write_tissue_geojson(
    path: str | Path, mask: np.ndarray, downsample: float, *, slide_id: str, mpp: float | None = None
) -> Path:
    """The tissue contours of a tiling mask as QuPath annotations (level-0 px)."""
    return write_feature_collection(path, tissue_features(mask, downsample, slide_id=slide_id, mpp=mpp))
