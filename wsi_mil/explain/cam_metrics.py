"""Metrics of the within-patch (CAM) maps stored in each slide's ``cams.h5``.

Per slide and method: Grad-CAM++'s Average Drop % and % Increase in Confidence (computed
when the maps were made), and, with an annotation, pixel-level localization inside the
explained patches: ROC-AUC of map pixels against lesion pixels, and whether the map's
peak pixel lies in the lesion (``hit``). Pixels are compared at the annotation raster's
resolution, each patch's map resized onto its square.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from wsi_mil.explain.annotations import GroundTruth
from wsi_mil.explain.localization import roc_auc

METRICS = ("average_drop_pct", "increase_pct", "pixel_auc", "hit")


def cam_localization(
    coords: np.ndarray, maps: np.ndarray, patch_size_level0: float, truth: GroundTruth
) -> dict[str, float]:
    """maps: (k, S, S) of the patches at coords (k, 2) -> pixel ``auc`` and peak ``hit``."""
    import cv2

    values, labels = [], []
    height, width = truth.lesion.shape
    for (x, y), cam in zip(np.asarray(coords, np.float64), maps, strict=True):
        x0, y0 = int(x // truth.downsample), int(y // truth.downsample)
        x1 = min(width, int(math.ceil((x + patch_size_level0) / truth.downsample)))
        y1 = min(height, int(math.ceil((y + patch_size_level0) / truth.downsample)))
        if x1 <= x0 or y1 <= y0:
            continue
        resized = cv2.resize(np.asarray(cam, np.float32), (x1 - x0, y1 - y0), interpolation=cv2.INTER_AREA)
        values.append(resized.reshape(-1))
        labels.append(truth.lesion[y0:y1, x0:x1].reshape(-1))
    if not values:
        return {"pixel_auc": math.nan, "hit": math.nan}
    pixels, lesion = np.concatenate(values), np.concatenate(labels)
    return {"pixel_auc": roc_auc(pixels, lesion), "hit": float(lesion[int(np.argmax(pixels))])}


def cam_rows(cams_path: Path, truth: GroundTruth | None) -> list[dict[str, Any]]:
    """One row per method of one slide's cams.h5."""
    from wsi_mil.explain.cams_file import read_cams

    cams = read_cams(cams_path)
    size = float(cams.attrs["patch_size_level0"])
    rows = []
    for method, maps in cams.maps.items():
        row: dict[str, Any] = {
            "slide_id": cams.attrs.get("slide_id", cams_path.parent.name),
            "method": method,
            "patches": len(maps),
            **cams.faithfulness.get(method, {}),
        }
        if truth is not None and not truth.empty:
            row.update(cam_localization(cams.coords, maps, size, truth))
        rows.append(row)
    return rows


def summarize_cams(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    summary = []
    for method in dict.fromkeys(r["method"] for r in rows):
        group = [r for r in rows if r["method"] == method]
        entry: dict[str, Any] = {"method": method, "slides": len(group)}
        for metric in METRICS:
            values = np.array([r.get(metric, math.nan) for r in group], float)
            values = values[np.isfinite(values)]
            entry[metric] = float(values.mean()) if len(values) else math.nan
        summary.append(entry)
    return summary


def cam_markdown(summary: Sequence[dict[str, Any]]) -> str:
    lines = [
        "## Within-patch maps (CAM methods)",
        "",
        "On each slide's top-attended patches. Average drop % (lower is better) and increase in confidence % "
        "(higher is better): the head's own patch confidence when the patch is multiplied by its map. "
        "pixel_auc and hit (peak pixel in the lesion): annotated positive slides only.",
        "",
        "| method | slides | " + " | ".join(METRICS) + " |",
        "|" + "---|" * (len(METRICS) + 2),
    ]
    for entry in summary:
        cells = ["n/a" if math.isnan(entry[m]) else f"{entry[m]:.3f}" for m in METRICS]
        lines.append(f"| {entry['method']} | {entry['slides']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
