"""``wsi-mil demo`` (``make demo``): the whole pipeline on the embedded demo cohort.

Builds (or reuses) the demo cohort (wsi_mil.demo_cohort: 24 slides of real H&E, half
with planted lesions and ground-truth masks), runs tile -> extract (EfficientNet-Lite0,
ImageNet weights shipped offline) -> train (ABMIL and ILAM, 5-fold CV) -> predict ->
heatmap -> evaluate-maps on the CPU through :func:`wsi_mil.pipeline.run_pipeline`, and
reports the cross-validated slide metrics and how well each map localizes the planted
lesions, each beside a baseline that learns nothing (per-slide stain statistics and the
per-patch stain maps of wsi_mil.explain.stain_baseline), the targets, and where the
heatmaps are. ``configs/demo.yaml`` holds
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
from wsi_mil.demo_cohort import Cohort, CohortSpec, build_cohort
from wsi_mil.pipeline import PipelineResult, run_pipeline
from wsi_mil.run_layout import RunLayout
from wsi_mil.stats import format_mean_std

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
    "heatmap": {
        "mpp": 8.0,
        "formats": ["zarr", "tiff", "rgba_tiff", "png", "geojson"],
        "thumbnail_size": 1024,
        "cam_top_k": 2,
        "cam_methods": ["gradcam"],
        "cam_device": "cpu",
    },
    "run": {"models": ["abmil", "ilam"]},
}
#: The demo's targets: both heads separate the slides, the best learned map localizes the
#: lesions, while stain statistics that learn nothing do not separate the slides and localize clearly worse.
TARGETS = {"slide_auc": 0.95, "baseline_slide_auc": 0.75, "patch_auc": 0.90, "baseline_margin": 0.15}
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


def run_demo(
    *,
    out: Path | None = None,
    workers: int | None = None,
    spec: CohortSpec | None = None,
    stages: tuple[str, ...] | None = None,
    progress: bool = True,
    debug: bool = False,
) -> DemoResult:
    """Build or reuse the cohort in OUT/cohort, run every stage (or ``stages``) into OUT/run."""
    root = Path(out) if out else Path.cwd() / "wsi-mil-demo"
    started = time.perf_counter()
    cohort = build_cohort(root / "cohort", spec=spec)
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
    from wsi_mil.stats import roc_auc

    with (model_dir / "metrics.csv").open(newline="") as handle:
        rows = {row["fold"]: row for row in csv.DictReader(handle)}
    out = {
        f"{m}{suffix}": float(rows[fold][m])
        for m in ("roc_auc", "balanced_accuracy", "f1")
        for fold, suffix in (("mean", ""), ("std", "_std"))
    }
    labels, scores = [], []
    for path in sorted(model_dir.glob("fold_*/predictions.csv")):
        with path.open(newline="") as handle:
            for row in csv.DictReader(handle):
                labels.append(row["label"] == "tumor")
                scores.append(float(row["prob_tumor"]))
    out["pooled_auc"] = roc_auc(np.asarray(scores), np.asarray(labels))
    return out


def localization(run_dir: Path, model: str) -> list[dict[str, Any]]:
    from wsi_mil.explain.evaluate_tables import EXPLANATIONS_CSV

    with (RunLayout(run_dir).explanations_dir(model) / EXPLANATIONS_CSV).open(newline="") as handle:
        return [
            {k: (v if k == "map" else float(v) if v else math.nan) for k, v in row.items()}
            for row in csv.DictReader(handle)
        ]


def stain_baseline(run_dir: Path, labels: dict[str, str]) -> dict[str, float]:
    """Slide ROC-AUC (higher = tumor) of each per-slide stain statistic
    (wsi_mil.explain.stain_baseline.SLIDE_STATISTICS) over every tiled slide."""
    from wsi_mil.explain.stain_baseline import SLIDE_STATISTICS, slide_stain_statistics, stain_baseline_scores
    from wsi_mil.io.open import open_slide
    from wsi_mil.stats import roc_auc
    from wsi_mil.store.bags import read_bag

    rows = []
    for _, path in RunLayout(run_dir).find_bags():
        bag = read_bag(path)
        slide_id = str(bag.attrs.get("slide_id") or path.stem)
        with open_slide(str(bag.attrs["slide_path"]), mpp=bag.attrs.get("slide_mpp")) as slide:
            maps = stain_baseline_scores(slide, bag.coords, float(bag.attrs["patch_size_level0"]))
        rows.append((labels[slide_id] == "tumor", slide_stain_statistics(maps)))
    positive = np.asarray([p for p, _ in rows])
    return {name: roc_auc(np.asarray([stats[name] for _, stats in rows]), positive) for name in SLIDE_STATISTICS}


def _labels(cohort: Cohort) -> dict[str, str]:
    with cohort.labels.open(newline="") as handle:
        return {row["slide_id"]: row["label"] for row in csv.DictReader(handle)}


def _is_baseline(name: str) -> bool:
    from wsi_mil.explain.map_checks import BASELINE_MAPS

    return name in BASELINE_MAPS


def targets(result: DemoResult, baseline: dict[str, float] | None = None) -> list[tuple[str, str, float, bool]]:
    """(target, head or "baseline"/"best map", value, met): each head's pooled slide ROC-AUC; the best
    stain statistic's slide ROC-AUC; the best learned map's patch ROC-AUC, alone and against the
    best stain map's."""
    run_dir = result.pipeline.run_dir
    baseline = stain_baseline(run_dir, _labels(result.cohort)) if baseline is None else baseline
    checks = []
    learned: list[tuple[float, str]] = []
    stain_map = math.nan
    for model in result.pipeline.models:
        value = slide_metrics(RunLayout(run_dir).model_dir(model))["pooled_auc"]
        checks.append((f"slide ROC-AUC >= {TARGETS['slide_auc']:g}", model, value, bool(value >= TARGETS["slide_auc"])))
        for row in localization(run_dir, model):
            if row["map"].startswith("stain_"):
                stain_map = np.nanmax([stain_map, row["auc"]])
            elif not _is_baseline(row["map"]) and not math.isnan(row["auc"]):
                learned.append((row["auc"], f"{model}:{row['map']}"))
    best_stat = max(baseline.values())
    checks.append(
        (
            f"stain baseline slide ROC-AUC <= {TARGETS['baseline_slide_auc']:g}",
            "baseline",
            best_stat,
            bool(best_stat <= TARGETS["baseline_slide_auc"]),
        )
    )
    best, where = max(learned) if learned else (math.nan, "none")
    checks.append(
        (f"best learned map patch ROC-AUC >= {TARGETS['patch_auc']:g}", where, best, bool(best >= TARGETS["patch_auc"]))
    )
    margin = best - stain_map
    checks.append(
        (
            f"best map - stain map patch ROC-AUC >= {TARGETS['baseline_margin']:g}",
            where,
            margin,
            bool(margin >= TARGETS["baseline_margin"]),
        )
    )
    return checks


def format_report(result: DemoResult) -> str:
    run_dir, cohort = result.pipeline.run_dir, result.cohort
    layout = RunLayout(run_dir)
    models = result.pipeline.models
    labels = _labels(cohort)
    baseline = stain_baseline(run_dir, labels)
    n_tumor = sum(label == "tumor" for label in labels.values())
    stages = ", ".join(f"{name} {seconds:.0f} s" for name, seconds in result.pipeline.seconds.items())
    lines = [
        f"Demo cohort: {len(labels)} slides ({n_tumor} tumor, {len(labels) - n_tumor} normal), {cohort.source}",
        f"  {cohort.root} (ready in {result.cohort_seconds:.0f} s)",
        f"Pipeline: {stages}; total {result.seconds:.0f} s",
        "",
        "Slide classification, 5-fold cross-validation (test folds: mean ± sample std over folds; pooled = ROC-AUC of "
        "all out-of-fold predictions)",
        "",
        "| head | ROC-AUC | pooled ROC-AUC | balanced accuracy | F1 |",
        "|---|---:|---:|---:|---:|",
    ]
    for model in models:
        m = slide_metrics(layout.model_dir(model))
        roc, balanced, f1 = (format_mean_std(m[k], m[f"{k}_std"]) for k in ("roc_auc", "balanced_accuracy", "f1"))
        lines.append(f"| {model} | {roc} | {m['pooled_auc']:.3f} | {balanced} | {f1} |")
    stats = ", ".join(f"{name} {value:.3f}" for name, value in baseline.items())
    lines += [
        f"| stain baseline (not learned; best statistic) | | {max(baseline.values()):.3f} | | |",
        "",
        f"Stain baseline, slide ROC-AUC of each per-slide statistic (higher = tumor; no training): {stats}",
    ]
    lines += [
        "",
        f"Localization of the planted lesions ({n_tumor} tumor slides; a patch is lesion when >= half of it "
        "is; mean ± sample std over slides)",
        "",
        "| head | map | patch ROC-AUC | peak hit rate | Dice@0.5 |",
        "|---|---|---:|---:|---:|",
    ]
    for index, model in enumerate(models):
        for row in localization(run_dir, model):
            if _is_baseline(row["map"]) and (index or not row["map"].startswith("stain_")):
                continue  # the stain rows are the same for every head: once; a head's seeds are in its table
            head = "baseline" if _is_baseline(row["map"]) else model
            auc, dice = (format_mean_std(row[k], row[f"{k}_std"]) for k in ("auc", "dice@0.5"))
            lines.append(f"| {head} | {row['map']} | {auc} | {row['hit']:.3f} | {dice} |")
    lines += ["", "Expected results (learned results beside a baseline that learns nothing)"]
    for name, model, value, met in targets(result, baseline):
        lines.append(f"  {name:50s} {model:24s} {value:.3f}  {'met' if met else 'NOT met'}")
    example = next((s for s in sorted(labels) if labels[s] == "tumor"), sorted(labels)[0])
    lines += ["", f"Heatmaps: {layout.heatmaps_root}/<head>/<slide_id>/, e.g. {example}:"]
    for model in models:
        folder = layout.heatmap_dir(model, example)
        lines += [
            f"  {model}: OME-Zarr {folder / (ATTENTION_MAP + '.ome.zarr')}",
            f"  {' ' * len(model)}  TIFF     {folder / (ATTENTION_MAP + '.tiff')}",
            f"  {' ' * len(model)}  PNG      {folder / (ATTENTION_MAP + '_overlay.png')}",
            f"  {' ' * len(model)}  GeoJSON  {folder / 'patches.geojson'}",
        ]
    lines += [
        f"Ground truth: {cohort.masks} (PNG), {cohort.annotations} (GeoJSON)",
        f"Tables: {layout.models_root}/<head>/summary.md, {layout.explanations_root}/<head>/explanations.md",
        f"Manifest: {layout.manifest}; config: {layout.run_config}",
    ]
    return "\n".join(lines)
