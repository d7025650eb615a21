"""What a training run reports: per feature set, the fold, repeat and pooled out-of-fold metrics.

:class:`SetResult` collects one feature set's results as the folds finish;
:func:`write_summary` writes ``metrics.csv`` (one row per set, repeat and fold; then mean
and std over folds, mean and std over repeats, and the pooled out-of-fold metrics) and
``summary.md`` (the same as tables, with the data each set was trained on).
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wsi_mil.config import Config
from wsi_mil.mil.data import FeatureSet
from wsi_mil.mil.labels import MatchReport
from wsi_mil.mil.metrics import METRICS, summarize
from wsi_mil.stats import format_mean_std
from wsi_mil.store.atomic import atomic_output


@dataclass
class SetResult:
    feature_set: FeatureSet
    classes: list[str]
    report: MatchReport
    folds: list[dict[str, Any]] = field(default_factory=list)  #: per fold of every repeat: test metrics
    repeat_of_fold: list[int] = field(default_factory=list)  #: the repeat of each entry of ``folds``
    pooled: list[dict[str, Any]] = field(
        default_factory=list
    )  #: per repeat: metrics of the pooled out-of-fold predictions
    out_dir: Path | None = None

    def repeat_means(self) -> list[dict[str, float]]:
        """Per repeat: the mean over its folds of each metric."""
        means = []
        for repeat in sorted(set(self.repeat_of_fold)):
            rows = [row for row, r in zip(self.folds, self.repeat_of_fold, strict=True) if r == repeat]
            means.append({m: mean for m, (mean, _, _) in summarize(rows).items()})
        return means


def write_summary(model_dir: Path, results: list[SetResult], *, config: Config) -> None:
    """``metrics.csv`` and ``summary.md``: per fold; mean and std over folds; over repeats; pooled out of fold."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["feature_set", "repeat", "fold", *METRICS])
    cell = lambda v: f"{v:.6f}"  # noqa: E731
    for result in results:
        key = result.feature_set.key or "-"
        folds_seen: dict[int, int] = {}
        for row, repeat in zip(result.folds, result.repeat_of_fold, strict=True):
            fold = folds_seen[repeat] = folds_seen.get(repeat, -1) + 1
            writer.writerow([key, repeat, fold, *(cell(row[m]) for m in METRICS)])
        summary = summarize(result.folds)
        writer.writerow([key, "", "mean", *(cell(summary[m][0]) for m in METRICS)])
        writer.writerow([key, "", "std", *(cell(summary[m][1]) for m in METRICS)])
        if len(result.pooled) > 1:
            over_repeats = summarize(result.repeat_means())
            writer.writerow([key, "", "repeat_mean", *(cell(over_repeats[m][0]) for m in METRICS)])
            writer.writerow([key, "", "repeat_std", *(cell(over_repeats[m][1]) for m in METRICS)])
        for repeat, pooled in enumerate(result.pooled):
            writer.writerow([key, repeat, "pooled", *(cell(pooled[m]) for m in METRICS)])
    with atomic_output(model_dir / "metrics.csv") as tmp:
        tmp.write_text(buffer.getvalue())
    with atomic_output(model_dir / "summary.md") as tmp:
        tmp.write_text(_summary_markdown(results, config=config))


def _mean_std_cell(mean: float, std: float, count: int, total: int) -> str:
    return format_mean_std(mean, std) + (f" ({count}/{total})" if 0 < count < total else "")


def _summary_markdown(results: list[SetResult], *, config: Config) -> str:
    options = config.train
    first = results[0]
    repeats = len(first.pooled)
    n_folds = len(first.folds) // max(1, repeats)
    lines = [f"# {options.name or options.model}: {options.model}, cross-validated", ""]
    rounds = f"{repeats} repeats of {n_folds} folds" if repeats > 1 else f"{n_folds} fold(s)"
    lines += [
        f"Head `{options.model}`, {rounds}, seed {options.seed}, classes "
        + ", ".join(f"{i} = `{c}`" for i, c in enumerate(first.classes))
        + ".",
        "Metrics on each fold's held-out test slides, mean ± sample std over "
        + ("all folds of all repeats" if repeats > 1 else "folds")
        + (
            " (two classes: precision, recall, F1 of class 1)."
            if len(first.classes) == 2
            else " (macro averages; ROC-AUC one-vs-rest)."
        )
        + " Pooled OOF ROC-AUC: the ROC-AUC of every slide's out-of-fold probability pooled over the folds "
        "(the curve in `roc.png`)" + (", mean ± std over repeats." if repeats > 1 else "."),
        "",
    ]
    header = "| feature set | " + " | ".join(m.replace("_", " ") for m in METRICS) + " | pooled OOF ROC-AUC |"
    lines += [header, "|---|" + "---:|" * (len(METRICS) + 1)]
    for result in results:
        summary = summarize(result.folds)
        pooled = summarize(result.pooled)["roc_auc"]
        cells = [_mean_std_cell(*summary[m], len(result.folds)) for m in METRICS]
        cells.append(_mean_std_cell(*pooled, len(result.pooled)))
        lines.append(f"| {result.feature_set.key or result.feature_set.root.name} | " + " | ".join(cells) + " |")
    if repeats > 1:
        lines += [
            "",
            f"Over repeats: each repeat's mean over its folds, then mean ± std over the {repeats} repeats "
            "(how much the estimate moves with the fold assignment).",
            "",
            "| feature set | " + " | ".join(m.replace("_", " ") for m in METRICS) + " |",
            "|---|" + "---:|" * len(METRICS),
        ]
        for result in results:
            over = summarize(result.repeat_means())
            cells = [_mean_std_cell(*over[m], repeats) for m in METRICS]
            lines.append(f"| {result.feature_set.key or result.feature_set.root.name} | " + " | ".join(cells) + " |")
    lines += ["", "## Data", ""]
    for result in results:
        name = result.feature_set.key or result.feature_set.root.name
        lines += [f"- {name} ({result.feature_set.root}): " + "; ".join(result.report.lines())]
    lines += [
        "",
        "Out-of-fold ROC curves and confusion matrices: `roc.png`, `confusion.png` "
        "(per feature set folder when there are several). Per fold: `fold_<k>/` (its `metrics.json` records "
        "the model-selection rule applied and why, and the kept epoch)"
        + ("; later repeats in `repeat_<r>/`." if repeats > 1 else "."),
        "",
    ]
    return "\n".join(lines)
