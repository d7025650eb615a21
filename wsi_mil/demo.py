"""``wsi-mil demo`` (``make demo``): the whole pipeline on the embedded demo cohort.

Builds (or reuses) the demo cohort (wsi_mil.demo_cohort: 24 slides of real H&E, half
with planted lesions and ground-truth masks), runs tile -> extract (EfficientNet-Lite0,
ImageNet weights shipped offline) -> train (ABMIL and ILAM, 5-fold CV) -> predict ->
heatmap -> evaluate-maps on the CPU through :func:`wsi_mil.pipeline.run_pipeline`, and
reports the cross-validated slide metrics, how well each map localizes the planted
lesions, the issue-6 targets, and where the heatmaps are. ``configs/demo.yaml`` holds
the same settings for ``wsi-mil run``.
"""

from __future__ import annotations

import csv
import dataclasses
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from wsi_mil.config import Config, config_from_dict
from wsi_mil.datasets import shared_data_dir
from wsi_mil.demo_cohort import Cohort, CohortSpec, build_cohort
from wsi_mil.pipeline import PipelineResult, run_pipeline

logger = logging.getLogger(__name__)

#: The demo's settings (configs/demo.yaml holds the same; a test checks they agree).
#: 0.5 um/px, 256-px patches (128 um); 30 epochs on all training slides of each fold (with ~19
#: slides, a validation split for early stopping is noise) with CLAM's instance loss; heatmaps
#: from 8 um/px; Grad-CAM of the two most attended patches.
DEMO_SETTINGS: dict[str, dict[str, Any]] = {
    "tiling": {"target_mpp": [0.5], "patch_size": 256},
    "extract": {"encoder": "efficientnet_lite0", "weights": "imagenet", "device": "cpu"},
    # CLAM's instance loss sharpens ABMIL's attention (patch AUC 0.89 -> 0.94 on this cohort)
    "train": {"folds": 5, "epochs": 30, "val_fraction": 0.0, "instance_loss": True, "device": "cpu"},
    "heatmap": {"mpp": 8.0, "formats": ["zarr", "tiff", "rgba_tiff", "png", "geojson"], "thumbnail_size": 1024,
                "cam_top_k": 2, "cam_methods": ["gradcam"], "cam_device": "cpu"},  # fmt: skip
    "run": {"models": ["abmil", "ilam"]},
}
#: Issue 6's targets on the demo cohort.
TARGETS = {"slide_auc": 0.95, "patch_auc": 0.90, "hit_rate": 0.9}
ATTENTION_MAP = "attention_pct"


@dataclass
class DemoResult:
    cohort: Cohort
    pipeline: PipelineResult
    cohort_seconds: float
    seconds: float


def demo_config(cohort: Cohort, run_dir: Path, *, workers: int | None = None) -> Config:
    data = {section: dict(values) for section, values in DEMO_SETTINGS.items()}
    data["run"].update(slides=str(cohort.slides), out=str(run_dir), labels=str(cohort.labels), masks=str(cohort.masks))
    data["parallel"] = {"workers": workers}
    return config_from_dict(data, where="wsi_mil.demo.DEMO_SETTINGS")


def run_demo(*, out: Path | None = None, workers: int | None = None, spec: CohortSpec | None = None,
             stages: tuple[str, ...] | None = None, progress: bool = True, debug: bool = False) -> DemoResult:  # fmt: skip
    """Build or reuse the cohort in OUT/cohort, run every stage (or ``stages``) into OUT/run."""
    root = Path(out) if out else Path.cwd() / "wsi-mil-demo"
    started = time.perf_counter()
    cohort = build_cohort(root / "cohort", spec=spec, data=shared_data_dir())
    cohort_seconds = time.perf_counter() - started
    config = demo_config(cohort, root / "run", workers=workers)
    if stages is not None:
        config = dataclasses.replace(config, run=dataclasses.replace(config.run, stages=stages))
    import torch

    # The heads train on bags of ~100 patches: latency-bound, fastest on one thread, and
    # several threads spin-wait badly on a busy 2-core machine (15x slower measured here).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        pipeline = run_pipeline(config, where="demo", debug=debug, progress=progress)
    finally:
        torch.set_num_threads(threads)
    return DemoResult(cohort, pipeline, round(cohort_seconds, 1), round(time.perf_counter() - started, 1))


def slide_metrics(model_dir: Path) -> dict[str, float]:
    """Mean and std over folds of the test metrics, and the ROC-AUC of the pooled out-of-fold predictions."""
    from wsi_mil.explain.localization import roc_auc

    with (model_dir / "metrics.csv").open(newline="") as handle:
        rows = {row["fold"]: row for row in csv.DictReader(handle)}
    out = {f"{m}{suffix}": float(rows[fold][m]) for m in ("roc_auc", "balanced_accuracy", "f1")
           for fold, suffix in (("mean", ""), ("std", "_std"))}  # fmt: skip
    labels, scores = [], []
    for path in sorted(model_dir.glob("fold_*/predictions.csv")):
        with path.open(newline="") as handle:
            for row in csv.DictReader(handle):
                labels.append(row["label"] == "tumor")
                scores.append(float(row["prob_tumor"]))
    out["pooled_auc"] = roc_auc(np.asarray(scores), np.asarray(labels))
    return out


def localization(run_dir: Path, model: str) -> list[dict[str, Any]]:
    with (run_dir / "explanations" / model / "explanations.csv").open(newline="") as handle:
        return [{k: (v if k == "map" else float(v) if v else math.nan) for k, v in row.items()}
                for row in csv.DictReader(handle)]  # fmt: skip


def targets(result: DemoResult) -> list[tuple[str, str, float, bool]]:
    """(target, head, value, met) for each head: slide AUC, attention patch AUC, peak hit rate."""
    run_dir = result.pipeline.run_dir
    checks = []
    for model in result.pipeline.models:
        slide = slide_metrics(run_dir / "models" / model)
        maps = {row["map"]: row for row in localization(run_dir, model)}
        attention = maps[ATTENTION_MAP]
        for name, value, goal in (("slide ROC-AUC", slide["pooled_auc"], TARGETS["slide_auc"]),
                                  ("attention patch ROC-AUC", attention["auc"], TARGETS["patch_auc"]),
                                  ("attention peak hit rate", attention["hit"], TARGETS["hit_rate"])):  # fmt: skip
            checks.append((f"{name} >= {goal:g}", model, value, bool(value >= goal)))
    return checks


def _pm(mean: float, std: float) -> str:
    return "n/a" if math.isnan(mean) else f"{mean:.3f}" if math.isnan(std) else f"{mean:.3f} ± {std:.3f}"


def format_report(result: DemoResult) -> str:
    run_dir, cohort = result.pipeline.run_dir, result.cohort
    models = result.pipeline.models
    with cohort.labels.open(newline="") as handle:
        labels = {row["slide_id"]: row["label"] for row in csv.DictReader(handle)}
    n_tumor = sum(label == "tumor" for label in labels.values())
    stages = ", ".join(f"{name} {seconds:.0f} s" for name, seconds in result.pipeline.seconds.items())
    lines = [f"Demo cohort: {len(labels)} slides ({n_tumor} tumor, {len(labels) - n_tumor} normal), {cohort.source}",
             f"  {cohort.root} (ready in {result.cohort_seconds:.0f} s)",
             f"Pipeline: {stages}; total {result.seconds:.0f} s", "",
             "Slide classification, 5-fold cross-validation (test folds: mean ± std over folds; pooled = ROC-AUC of "
             "all out-of-fold predictions)", "",
             "| head | ROC-AUC | pooled ROC-AUC | balanced accuracy | F1 |", "|---|---:|---:|---:|---:|"]  # fmt: skip
    for model in models:
        m = slide_metrics(run_dir / "models" / model)
        lines.append(f"| {model} | {_pm(m['roc_auc'], m['roc_auc_std'])} | {m['pooled_auc']:.3f} | "
                     f"{_pm(m['balanced_accuracy'], m['balanced_accuracy_std'])} | {_pm(m['f1'], m['f1_std'])} |")  # fmt: skip
    lines += ["", f"Localization of the planted lesions ({n_tumor} tumor slides; a patch is lesion when >= half of it "
              "is; mean ± std over slides)", "",
              "| head | map | patch ROC-AUC | peak hit rate | Dice@0.5 |", "|---|---|---:|---:|---:|"]  # fmt: skip
    for model in models:
        for row in localization(run_dir, model):
            lines.append(f"| {model} | {row['map']} | {_pm(row['auc'], row['auc_std'])} | {row['hit']:.3f} | "
                         f"{_pm(row['dice@0.5'], row['dice@0.5_std'])} |")  # fmt: skip
    lines += ["", "Targets (issue 6)"]
    for name, model, value, met in targets(result):
        lines.append(f"  {name:34s} {model:6s} {value:.3f}  {'met' if met else 'NOT met'}")
    example = next((s for s in sorted(labels) if labels[s] == "tumor"), sorted(labels)[0])
    lines += ["", f"Heatmaps: {run_dir / 'heatmaps'}/<head>/<slide_id>/, e.g. {example}:"]
    for model in models:
        folder = run_dir / "heatmaps" / model / example
        lines += [f"  {model}: OME-Zarr {folder / (ATTENTION_MAP + '.ome.zarr')}",
                  f"  {' ' * len(model)}  TIFF     {folder / (ATTENTION_MAP + '.tiff')}",
                  f"  {' ' * len(model)}  PNG      {folder / (ATTENTION_MAP + '_overlay.png')}",
                  f"  {' ' * len(model)}  GeoJSON  {folder / 'patches.geojson'}"]  # fmt: skip
    lines += [f"Ground truth: {cohort.masks} (PNG), {cohort.annotations} (GeoJSON)",
              f"Tables: {run_dir / 'models'}/<head>/summary.md, {run_dir / 'explanations'}/<head>/explanations.md",
              f"Manifest: {run_dir / 'manifest.csv'}; config: {run_dir / 'run_config.json'}"]  # fmt: skip
    return "\n".join(lines)
