"""QuPath GeoJSON of a slide's maps: every patch as a tile, and each map's hot regions as annotations.

``patches.geojson``: one ``tile`` per patch (level-0 square), every map as a
measurement, classified by the class its instance logits favour (``Patch`` when the
head has none). ``regions.geojson``: for each map, the patches whose colour position is
at least ``heatmap.regions_above`` (0 = low end, 1 = high end of the map's colour range,
so with ``scale: cohort`` the same value makes a region on every slide) merged into
polygons, one ``annotation`` per connected region, classified by the map's name.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from wsi_mil.config import HeatmapConfig
from wsi_mil.explain.maps import SlideScores
from wsi_mil.explain.stitch import ScoreRange, colormap_lut
from wsi_mil.geojson import feature_id, polygons, qupath_feature, union_of_squares, write_feature_collection

PATCHES_NAME = "patches.geojson"
REGIONS_NAME = "regions.geojson"
PATCH_CLASS = ("Patch", (160, 160, 160))


def class_colour(index: int) -> tuple[int, int, int]:
    """A fixed colour per class index (matplotlib's tab10), so QuPath shows each class alike on every slide."""
    red, green, blue = colormap_lut("tab10")[int(round((index % 10 + 0.5) * 25.6))]
    return int(red), int(green), int(blue)


def patch_classes(instance_logits: np.ndarray | None, classes: Sequence[str], n: int) -> list[tuple[str, tuple]]:
    """Each patch's classification: the class of its largest instance logit, or ``Patch``."""
    if instance_logits is None or len(classes) == 0:
        return [PATCH_CLASS] * n
    winners = np.asarray(instance_logits).reshape(n, -1).argmax(axis=1)
    named = [(str(c), class_colour(i)) for i, c in enumerate(classes)]
    return [named[w] if w < len(named) else PATCH_CLASS for w in winners.tolist()]


def write_patch_geojson(
    path: str | Path,
    coords: np.ndarray,
    measurements: Mapping[str, np.ndarray],
    *,
    patch_size_level0: float,
    slide_id: str,
    classifications: Sequence[tuple[str, Sequence[int]]] | None = None,
    object_type: str = "tile",
) -> Path:
    """coords: (N, 2) level-0 (x, y); measurements: name -> (N,) values (NaN written as null)."""
    coords = np.asarray(coords, dtype=np.int64).reshape(-1, 2)
    size = float(patch_size_level0)
    names = list(measurements)
    columns = [np.asarray(measurements[name], dtype=np.float64).reshape(-1) for name in names]
    classifications = classifications or [PATCH_CLASS] * len(coords)
    features = []
    for i, (x, y) in enumerate(coords.tolist()):
        x1, y1 = x + size, y + size
        geometry = {"type": "Polygon", "coordinates": [[[x, y], [x1, y], [x1, y1], [x, y1], [x, y]]]}
        features.append(
            qupath_feature(
                geometry,
                object_id=feature_id(slide_id, "patch", i),
                object_type=object_type,
                classification=classifications[i],
                name=f"patch {i}",
                measurements={n: column[i] for n, column in zip(names, columns, strict=True)},
            )
        )
    return write_feature_collection(path, features)


def region_features(
    name: str,
    coords: np.ndarray,
    values: np.ndarray,
    *,
    patch_size_level0: float,
    score_range: ScoreRange,
    above: float,
    cmap: str,
    slide_id: str,
    mpp: float | None = None,
) -> list[dict]:
    """The merged regions of patches whose colour position (``score_range.normalize``) is >= ``above``."""
    import shapely

    coords = np.asarray(coords, dtype=np.float64).reshape(-1, 2)
    values = np.asarray(values, dtype=np.float64).reshape(-1)
    finite = np.isfinite(values)
    hot = np.zeros(len(values), dtype=bool)
    hot[finite] = score_range.normalize(values[finite]) >= above
    colour = tuple(int(c) for c in colormap_lut(cmap)[-1])
    threshold = score_range.vmin + above * (score_range.vmax - score_range.vmin)
    merged = union_of_squares(coords[hot], patch_size_level0)
    # shapely-stubs type points() of an array as Point | array; of an (N, 2) array it is an array of N points
    tree = shapely.STRtree(shapely.points(coords[hot] + patch_size_level0 / 2))  # type: ignore[arg-type]
    features = []
    for index, polygon in enumerate(polygons(merged)):
        inside = tree.query(polygon, predicate="contains")
        members = values[hot][inside]
        measurements = {
            "threshold": threshold,
            "patches": float(len(members)),
            "mean": float(members.mean()) if len(members) else float("nan"),
            "max": float(members.max()) if len(members) else float("nan"),
        }
        measurements.update({"area_um2": polygon.area * mpp * mpp} if mpp else {"area_px": polygon.area})
        features.append(
            qupath_feature(
                shapely.geometry.mapping(polygon),
                object_id=feature_id(slide_id, name, index),
                object_type="annotation",
                classification=(name, colour),
                name=f"{name} region {index}",
                measurements=measurements,
            )
        )
    return features


def write_region_geojson(path: str | Path, features_by_map: Mapping[str, list[dict]]) -> Path:
    """Every map's regions in one FeatureCollection (QuPath: one class per map)."""
    return write_feature_collection(path, [f for features in features_by_map.values() for f in features])


def write_slide_geojson(
    scores: SlideScores,
    maps: Mapping[str, np.ndarray],
    ranges: Mapping[str, ScoreRange],
    *,
    out_dir: Path,
    options: HeatmapConfig,
    mpp: float | None,
    overwrite: bool = False,
) -> int:
    """``patches.geojson`` and ``regions.geojson`` of one slide (those missing, or all with ``overwrite``); returns how many."""
    from wsi_mil.explain.scaling import map_cmap

    patches, regions = out_dir / PATCHES_NAME, out_dir / REGIONS_NAME
    size, written = scores.patch_size_level0, 0
    if overwrite or not patches.exists():
        classes = patch_classes(scores.arrays.get("instance_logits"), scores.classes, len(scores.coords))
        write_patch_geojson(
            patches, scores.coords, maps, patch_size_level0=size, slide_id=scores.slide_id, classifications=classes
        )
        written += 1
    if overwrite or not regions.exists():
        features = {
            name: region_features(
                name,
                scores.coords,
                values,
                patch_size_level0=size,
                score_range=ranges[name],
                above=options.regions_above,
                cmap=map_cmap(name, options),
                slide_id=scores.slide_id,
                mpp=mpp,
            )
            for name, values in maps.items()
        }
        write_region_geojson(regions, features)
        written += 1
    return written
