"""Ground-truth annotations for explanation metrics, as one raster per slide.

Accepted, per slide, in a masks folder (``<slide_id>.<ext>``):

- ``.png`` / ``.tif``: a mask aligned to the slide (any size; scaled to the slide's
  level-0 extent, e.g. a thumbnail-sized mask). Binary (0 / nonzero) or *graded*:
  small integer layers ``0..3`` (0 tissue outside the lesion, 1 margin, 2 lesion,
  3 lesion core), the saliency seed's grading;
- ``.geojson`` / ``.json``: a GeoJSON Feature, FeatureCollection or list of features
  (QuPath's export) of Polygon / MultiPolygon in level-0 pixels; a feature's
  ``properties.grade`` (1..3) sets its layer, otherwise it is 2 (lesion);
  ``classification.name`` in ``exclude_classes`` cuts a hole;
- ``.xml``: ASAP / Camelyon16 annotations (``Annotation`` elements with
  ``Coordinate X= Y=``); groups ``_0``/``_1``/``Tumor`` are lesion, ``_2``/``Exclusion`` holes.

Rasterized at a downsample that keeps the longer side under ``max_side`` pixels.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from wsi_mil.errors import WsiMilError

MASK_SUFFIXES = (".png", ".tif", ".tiff", ".geojson", ".json", ".xml")
LESION = 2
MAX_GRADE = 3
EXCLUDE_CLASSES = ("exclusion", "exclude", "ignore", "_2", "background")


class AnnotationError(WsiMilError, ValueError):
    """An annotation file cannot be read or does not fit its slide."""


@dataclass(frozen=True)
class GroundTruth:
    """``grades``: (H, W) uint8 layers (0 outside, 1 margin, 2 lesion, 3 core) covering the
    slide's level 0 at ``downsample``; ``graded`` says whether the source had layers."""

    grades: np.ndarray
    downsample: float
    graded: bool
    path: Path

    @property
    def lesion(self) -> np.ndarray:
        """(H, W) bool: inside the annotated lesion (grade >= 2, or any annotation when binary)."""
        return self.grades >= (LESION if self.graded else 1)

    @property
    def empty(self) -> bool:
        return not bool(self.lesion.any())


def find_annotation(folder: str | Path, slide_id: str) -> Path | None:
    for suffix in MASK_SUFFIXES:
        path = Path(folder) / f"{slide_id}{suffix}"
        if path.exists():
            return path
    return None


def load_ground_truth(path: str | Path, slide_dimensions: tuple[int, int], *, max_side: int = 4096) -> GroundTruth:
    """Read ``path`` as a raster over the slide's level 0 (``slide_dimensions`` = (width, height))."""
    path = Path(path)
    width, height = (int(v) for v in slide_dimensions)
    try:
        if path.suffix.lower() in (".png", ".tif", ".tiff"):
            return _from_image(path, width, height)
        downsample = max(1.0, max(width, height) / max_side)
        shape = (max(1, round(height / downsample)), max(1, round(width / downsample)))
        if path.suffix.lower() == ".xml":
            polygons = _asap_polygons(path)
        elif path.suffix.lower() in (".geojson", ".json"):
            polygons = _geojson_polygons(path)
        else:
            raise AnnotationError(f"{path}: unknown annotation type; use one of {', '.join(MASK_SUFFIXES)}")
        grades = _rasterize(polygons, shape, downsample)
        graded = any(grade != LESION for grade, _, _ in polygons if grade > 0)
        return GroundTruth(grades, downsample, graded, path)
    except AnnotationError:
        raise
    except (OSError, ValueError, KeyError, TypeError, ElementTree.ParseError) as error:
        raise AnnotationError(
            f"{path}: cannot read this annotation ({type(error).__name__}: {error}); "
            "expected a mask image, GeoJSON in level-0 pixels or ASAP XML"
        ) from error


def _from_image(path: Path, width: int, height: int) -> GroundTruth:
    from PIL import Image

    with Image.open(path) as image:
        array = np.asarray(image.convert("L") if image.mode not in ("L", "1", "P", "I;16", "I") else image)
    if array.ndim != 2:
        array = array[..., 0]
    rows, cols = array.shape
    ratio_x, ratio_y = width / cols, height / rows
    if abs(ratio_x - ratio_y) > 0.02 * max(ratio_x, ratio_y) + 1:
        raise AnnotationError(
            f"{path}: mask is {cols}x{rows}, its shape does not match the {width}x{height} slide; "
            "save it at the slide's aspect ratio (e.g. the size of its thumbnail)"
        )
    values = np.unique(array)
    graded = bool(values.max() <= MAX_GRADE and len(values) > 2)
    grades = array.astype(np.uint8) if graded else (array > 0).astype(np.uint8)
    return GroundTruth(grades, (ratio_x + ratio_y) / 2, graded, path)


#: (grade, exterior ring (K, 2) level-0 xy, holes)
Polygon = tuple[int, np.ndarray, list[np.ndarray]]


def _geojson_polygons(path: Path) -> list[Polygon]:
    data = json.loads(path.read_text())
    features = data.get("features", [data]) if isinstance(data, dict) else data
    polygons: list[Polygon] = []
    for feature in features:
        geometry = feature.get("geometry") or {}
        properties = feature.get("properties") or {}
        name = str((properties.get("classification") or {}).get("name", "")).lower()
        grade = 0 if name in EXCLUDE_CLASSES else int(properties.get("grade", LESION))
        kind, coordinates = geometry.get("type"), geometry.get("coordinates") or []
        parts = [coordinates] if kind == "Polygon" else coordinates if kind == "MultiPolygon" else []
        for rings in parts:
            if rings:
                polygons.append((grade, np.asarray(rings[0], float), [np.asarray(r, float) for r in rings[1:]]))
    return polygons


def _asap_polygons(path: Path) -> list[Polygon]:
    # ElementTree resolves no external entities, and expat >= 2.4.1 (what Python 3.11+ ships)
    # caps entity expansion, so a user's annotation file cannot blow up memory.
    root = ElementTree.parse(path).getroot()  # noqa: S314
    polygons: list[Polygon] = []
    for annotation in root.iter("Annotation"):
        group = str(annotation.get("PartOfGroup", "")).lower()
        points = sorted(annotation.iter("Coordinate"), key=lambda c: float(c.get("Order", 0)))
        ring = np.asarray([(float(c.attrib["X"]), float(c.attrib["Y"])) for c in points], np.float64)
        if len(ring) >= 3:
            polygons.append((0 if group in EXCLUDE_CLASSES else LESION, ring, []))
    return polygons


def _rasterize(polygons: list[Polygon], shape: tuple[int, int], downsample: float) -> np.ndarray:
    """Paint lesion polygons by grade (higher grades win), then cut exclusions and holes."""
    from skimage.draw import polygon as fill

    grades = np.zeros(shape, np.uint8)

    def paint(ring: np.ndarray, value: int, *, keep_max: bool) -> None:
        # pixel (r, c) covers [r, r + 1): test its centre, so edges on pixel borders do not spill over
        rows, cols = fill(ring[:, 1] / downsample - 0.5, ring[:, 0] / downsample - 0.5, shape)
        grades[rows, cols] = np.maximum(grades[rows, cols], value) if keep_max else value

    for grade, exterior, _ in sorted((p for p in polygons if p[0] > 0), key=lambda p: p[0]):
        paint(exterior, grade, keep_max=True)
    for grade, exterior, holes in polygons:
        for ring in holes + ([exterior] if grade == 0 else []):
            paint(ring, 0, keep_max=False)
    return grades


def patch_truth(coords: np.ndarray, patch_size_level0: float, truth: GroundTruth) -> tuple[np.ndarray, np.ndarray]:
    """Per patch: the fraction of its area inside the lesion (N,) and its highest grade (N,) int.

    coords: (N, 2) level-0 (x, y) top-left corners. Uses an integral image of the lesion
    raster, so it costs O(N) after one pass over the mask.
    """
    lesion = truth.lesion.astype(np.float64)
    integral = np.zeros((lesion.shape[0] + 1, lesion.shape[1] + 1))
    integral[1:, 1:] = lesion.cumsum(0).cumsum(1)
    height, width = lesion.shape
    x0 = np.clip(np.floor(coords[:, 0] / truth.downsample).astype(int), 0, width)
    y0 = np.clip(np.floor(coords[:, 1] / truth.downsample).astype(int), 0, height)
    x1 = np.clip(np.ceil((coords[:, 0] + patch_size_level0) / truth.downsample).astype(int), 0, width)
    y1 = np.clip(np.ceil((coords[:, 1] + patch_size_level0) / truth.downsample).astype(int), 0, height)
    x1, y1 = np.maximum(x1, np.minimum(x0 + 1, width)), np.maximum(y1, np.minimum(y0 + 1, height))
    inside = integral[y1, x1] - integral[y0, x1] - integral[y1, x0] + integral[y0, x0]
    area = np.maximum((x1 - x0) * (y1 - y0), 1)
    grade = np.array(
        [
            int(truth.grades[a:b, c:d].max()) if b > a and d > c else 0
            for a, b, c, d in zip(y0, y1, x0, x1, strict=True)
        ],
        dtype=np.int64,
    )
    return inside / area, grade
