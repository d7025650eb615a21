"""Maps that report their own weakness: warnings ``evaluate-maps`` writes beside its tables.

A localization table invites reading every row as evidence. These checks say when a row
is not:

- a learned map whose patch ROC-AUC does not beat the best non-learned stain baseline
  (stain_baseline.py) on the same slides has learned nothing a colour threshold would
  not give;
- a manifold-ranking map that is little more than its seeds (the most attended patches):
  it lifts few patches beyond them (``spread``: non-seed patches in the map's upper half
  per seed; below :data:`MIN_SPREAD` on most slides), or it localizes no better than the
  seeds alone (the ``manifold_seeds`` row, a 0/1 map of the seeds);
- a map that is constant on a slide says nothing there.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from wsi_mil.explain.localization import scaled
from wsi_mil.explain.stain_baseline import STAIN_MAPS
from wsi_mil.mil.manifold import SEED_FRACTION

MANIFOLD = "manifold"
SEEDS = "manifold_seeds"
#: Non-seed patches per seed that a useful manifold map raises to its upper half (scaled >= 0.5).
MIN_SPREAD = 1.0
#: How much better than its seeds (patch ROC-AUC) a manifold map must localize.
MIN_SEED_GAIN = 0.02
BASELINE_MAPS = (*STAIN_MAPS, SEEDS)


def manifold_seeds(attention_raw: np.ndarray, *, seed_fraction: float = SEED_FRACTION) -> np.ndarray:
    """(N,) 0/1 float64: the seeds of the manifold ranking (its top ``seed_fraction`` of raw attention)."""
    scores = np.asarray(attention_raw, np.float64).reshape(-1)
    seeds = np.zeros(len(scores))
    if len(scores):
        seeds[np.argsort(-scores, kind="stable")[: max(1, round(seed_fraction * len(scores)))]] = 1.0
    return seeds


def seed_spread(manifold: np.ndarray, seeds: np.ndarray) -> float:
    """Patches outside the seeds that the manifold map puts in its upper half (scaled >= 0.5), per seed."""
    seeds = np.asarray(seeds) > 0
    if not seeds.any():
        return math.nan
    upper = scaled(manifold) >= 0.5
    return float((upper & ~seeds).sum() / seeds.sum())


def is_constant(values: np.ndarray) -> bool:
    values = np.asarray(values, np.float64)
    finite = values[np.isfinite(values)]
    return len(finite) < 2 or float(finite.max()) <= float(finite.min())


def map_warnings(rows: Sequence[dict[str, Any]], summary: Sequence[dict[str, Any]]) -> list[str]:
    """Warnings from the per-slide rows (with ``constant`` and, for the manifold, ``spread``) and the
    per-map summary (with mean ``auc``)."""
    warnings: list[str] = []
    auc = {entry["map"]: entry["auc"] for entry in summary if not math.isnan(entry.get("auc", math.nan))}
    stain = {name: value for name, value in auc.items() if name in STAIN_MAPS}
    if stain:
        best_name = max(stain, key=stain.__getitem__)
        best = stain[best_name]
        for name, value in auc.items():
            if name not in BASELINE_MAPS and value <= best:
                warnings.append(
                    f"{name}: patch ROC-AUC {value:.3f} does not beat the stain baseline "
                    f"({best_name} {best:.3f}): on these slides this map finds nothing a colour "
                    "statistic does not"
                )
    if MANIFOLD in auc and SEEDS in auc and auc[MANIFOLD] < auc[SEEDS] + MIN_SEED_GAIN:
        warnings.append(
            f"{MANIFOLD}: patch ROC-AUC {auc[MANIFOLD]:.3f} vs {auc[SEEDS]:.3f} for its seeds alone: "
            "the ranking adds little to the most attended patches"
        )
    spreads = np.array([r["spread"] for r in rows if r["map"] == MANIFOLD and "spread" in r], float)
    spreads = spreads[np.isfinite(spreads)]
    if len(spreads) and float(np.median(spreads)) < MIN_SPREAD:
        narrow = int((spreads < MIN_SPREAD).sum())
        warnings.append(
            f"{MANIFOLD}: little more than its seeds on {narrow} of {len(spreads)} slides (median "
            f"{np.median(spreads):.2f} other patches in its upper half per seed; a useful spread is "
            f">= {MIN_SPREAD:g})"
        )
    for name in dict.fromkeys(r["map"] for r in rows):
        constant = [r["slide_id"] for r in rows if r["map"] == name and r.get("constant")]
        if constant:
            total = sum(r["map"] == name for r in rows)
            warnings.append(
                f"{name}: constant on {len(constant)} of {total} slides (e.g. {', '.join(constant[:3])}): "
                "no ranking there"
            )
    return warnings


def warnings_markdown(warnings: Sequence[str]) -> str:
    if not warnings:
        return (
            "## Checks\n\nNo warnings (checked: learned maps against the stain baseline, the manifold map "
            "against its seeds, maps constant on a slide).\n"
        )
    return "## Warnings\n\n" + "\n".join(f"- {w}" for w in warnings) + "\n"
