"""Slide-level metrics, the table the seeds publish: accuracy, balanced accuracy, precision,
recall, F1 and ROC-AUC.

Two classes: precision, recall and F1 of class index 1 (the second class in the saved
mapping), ROC-AUC of its probability. More classes: macro averages (unweighted mean over
classes), ROC-AUC one-vs-rest macro. A metric that is undefined on a fold (ROC-AUC when
the fold's test slides lack a class) is NaN and logged, never a silent 0 or 0.5; the
summary averages the folds where it is defined and says on how many.
"""

from __future__ import annotations

import logging
import math
import warnings

import numpy as np

logger = logging.getLogger(__name__)

METRICS = ("accuracy", "balanced_accuracy", "precision", "recall", "f1", "roc_auc")


def compute_metrics(y_true: np.ndarray, probs: np.ndarray) -> dict[str, float]:
    """y_true (n,) class indices, probs (n, C) -> the :data:`METRICS` (NaN where undefined)."""
    from sklearn import metrics as skm

    y_true = np.asarray(y_true, dtype=np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    n_classes = probs.shape[1]
    if len(y_true) == 0:
        return dict.fromkeys(METRICS, math.nan)
    y_pred = probs.argmax(axis=1)
    labels = list(range(n_classes))
    average = "binary" if n_classes == 2 else "macro"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # undefined precision -> 0 by zero_division, as in the seeds' tables
        result = {
            "accuracy": skm.accuracy_score(y_true, y_pred),
            "balanced_accuracy": skm.balanced_accuracy_score(y_true, y_pred),
            "precision": skm.precision_score(y_true, y_pred, labels=labels, average=average, zero_division=0),
            "recall": skm.recall_score(y_true, y_pred, labels=labels, average=average, zero_division=0),
            "f1": skm.f1_score(y_true, y_pred, labels=labels, average=average, zero_division=0),
        }
    present = set(y_true.tolist())
    if len(present) < n_classes:
        result["roc_auc"] = math.nan
    elif n_classes == 2:
        result["roc_auc"] = skm.roc_auc_score(y_true, probs[:, 1])
    else:
        result["roc_auc"] = skm.roc_auc_score(y_true, probs, multi_class="ovr", average="macro", labels=labels)
    return {k: float(v) for k, v in result.items()}


def summarize(rows: list[dict[str, float]]) -> dict[str, tuple[float, float, int]]:
    """Per metric: (mean, sample std (NaN for one fold), number of folds where it is defined)."""
    summary = {}
    for name in METRICS:
        values = np.array([row[name] for row in rows], dtype=np.float64)
        values = values[np.isfinite(values)]
        mean = float(values.mean()) if len(values) else math.nan
        std = float(values.std(ddof=1)) if len(values) > 1 else math.nan
        summary[name] = (mean, std, len(values))
    return summary
