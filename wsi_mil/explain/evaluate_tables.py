"""The tables of ``wsi-mil evaluate-maps``: the localization summary per map, CSV text and
the markdown table of ``explanations.md``."""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from typing import Any

from wsi_mil.stats import format_mean_std, mean_std

#: The summary tables in ``RUN_DIR/explanations/<model>/``
EXPLANATIONS_CSV = "explanations.csv"
EXPLANATIONS_MD = "explanations.md"

#: Columns of the summary table, in order (``_std`` columns follow the means they qualify).
SUMMARY_METRICS = ("hit", "graded", "auc", "dice@0.5", "iou@0.5", "coverage_in", "coverage_out", "coverage_ratio")


def summarize(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per map: the number of positive slides and mean/sample std of each metric over them."""
    summary = []
    for name in dict.fromkeys(r["map"] for r in rows):
        positive = [r for r in rows if r["map"] == name and r["n_lesion_patches"]]
        entry: dict[str, Any] = {
            "map": name,
            "slides": sum(r["map"] == name for r in rows),
            "positive_slides": len(positive),
        }
        for metric in SUMMARY_METRICS:
            entry[metric], entry[f"{metric}_std"], _ = mean_std(r.get(metric, math.nan) for r in positive)
        summary.append(entry)
    return summary


def csv_text(rows: Sequence[dict[str, Any]]) -> str:
    """``rows`` as CSV text, every key a column, floats to 6 significant digits."""
    columns = list(dict.fromkeys(key for row in rows for key in row))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns)
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    return buffer.getvalue()


def markdown_table(summary: Sequence[dict[str, Any]]) -> str:
    def cell(entry: dict[str, Any], metric: str) -> str:
        return format_mean_std(entry[metric], entry[f"{metric}_std"])

    header = ["map", "positive slides", *SUMMARY_METRICS]
    lines = [
        "## Localization",
        "",
        "Mean ± sample std over annotated positive slides; patch-level ground truth: >= half the patch inside the "
        "lesion. hit = pointing game; graded = the peak's layer (3 core .. 0 outside); dice/iou of the "
        "min-max scaled map at 0.5; coverage = mean scaled map inside / outside the lesion. Not learned, to read "
        "every map against: stain_hematoxylin (mean hematoxylin optical density per patch), stain_darkness "
        "(fraction of very dark pixels per patch), manifold_seeds (the manifold ranking's seeds alone).",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    for entry in summary:
        cells = [
            entry["map"],
            f"{entry['positive_slides']}/{entry['slides']}",
            *(cell(entry, m) for m in SUMMARY_METRICS),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
