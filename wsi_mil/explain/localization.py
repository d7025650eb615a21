"""Localization metrics of one per-patch map against a slide's ground truth.

Definitions (patch level; a patch is positive when at least ``positive_fraction`` of its
area lies inside the annotated lesion):

- ``hit``: pointing game, 1 when the map's peak patch is positive (ties: any of them);
- ``graded``: the saliency seed's score of the peak: 3 lesion core, 2 lesion,
  1 margin, 0 tissue outside the lesion (binary masks score 2 or 0). The seed's -1
  (peak off the tissue) cannot occur: maps only hold tissue patches;
- ``auc``: ROC-AUC of the map's scores against positive patches (:func:`wsi_mil.stats.roc_auc`;
  NaN when a slide has only one kind);
- ``dice@t`` / ``iou@t``: the map, min-max scaled over the slide, thresholded at t;
- ``coverage_in`` / ``coverage_out``: mean scaled map value inside / outside the lesion,
  and ``coverage_ratio`` their quotient.
"""

from __future__ import annotations

import math

import numpy as np

from wsi_mil.stats import roc_auc

__all__ = ["THRESHOLDS", "localization_metrics", "roc_auc", "scaled"]

THRESHOLDS = (0.25, 0.5, 0.75)


def scaled(values: np.ndarray) -> np.ndarray:
    """Min-max over the slide (a constant map scales to zeros)."""
    values = np.asarray(values, np.float64)
    low, high = float(np.nanmin(values)), float(np.nanmax(values))
    return np.zeros_like(values) if high <= low else (values - low) / (high - low)


def localization_metrics(
    scores: np.ndarray,
    fraction: np.ndarray,
    grade: np.ndarray,
    *,
    graded: bool,
    positive_fraction: float = 0.5,
    thresholds: tuple[float, ...] = THRESHOLDS,
) -> dict[str, float]:
    """scores, fraction (inside the lesion), grade: (N,) per patch -> metric name -> value."""
    scores = np.asarray(scores, np.float64)
    positive = np.asarray(fraction) >= positive_fraction
    finite = np.isfinite(scores)
    scores, positive, grade = scores[finite], positive[finite], np.asarray(grade)[finite]
    if len(scores) == 0:
        return {}
    peaks = np.flatnonzero(scores == scores.max())
    peak = peaks[np.argmax(positive[peaks])]  # a tie counts as a hit if any tied patch hits
    result: dict[str, float] = {"hit": float(positive[peak])}
    result["graded"] = float(grade[peak]) if graded else (2.0 if positive[peak] else 0.0)
    result["auc"] = roc_auc(scores, positive)
    unit = scaled(scores)
    for t in thresholds:
        predicted = unit >= t
        overlap = float((predicted & positive).sum())
        total, union = float(predicted.sum() + positive.sum()), float((predicted | positive).sum())
        result[f"dice@{t:g}"] = 2 * overlap / total if total else math.nan
        result[f"iou@{t:g}"] = overlap / union if union else math.nan
    inside = float(unit[positive].mean()) if positive.any() else math.nan
    outside = float(unit[~positive].mean()) if (~positive).any() else math.nan
    result["coverage_in"], result["coverage_out"] = inside, outside
    result["coverage_ratio"] = inside / outside if outside and not math.isnan(outside) else math.nan
    return result
