"""The training stage: labels CSV + feature sets -> cross-validated heads, metrics and plots.

``RUN_DIR/models/<name>/`` (a ``<set>/`` level per feature set when there are several):

- ``train_config.json``: the resolved config, classes and feature sets (predict reads it);
- ``[<set>/]splits.csv``, ``[<set>/]fold_<k>/`` (model.safetensors, config.json,
  metrics.json, predictions.csv), ``[<set>/]roc.png``, ``[<set>/]confusion.png``
  (pooled out-of-fold test predictions of the first repeat);
- with ``repeats`` R > 1, rounds 1..R-1 of cross-validation (new fold seeds) in
  ``[<set>/]repeat_<r>/`` (splits.csv, fold_<k>/); ``predict`` and heatmaps use the
  first round's folds;
- ``metrics.csv`` (one row per set, repeat and fold; then mean and std over folds,
  mean and std over repeats, and the pooled out-of-fold metrics) and ``summary.md``.

A fold folder is written atomically, so one that exists is complete: a rerun skips it
(resume) unless ``overwrite``. A rerun with a different config or slide set refuses to
mix results and says so.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from wsi_mil import __version__
from wsi_mil.config import Config, neutral_keys
from wsi_mil.errors import LabelError, WsiMilError
from wsi_mil.mil.data import BagStore, FeatureSet, find_feature_sets
from wsi_mil.mil.fold_io import repeat_dir
from wsi_mil.mil.labels import match_labels, read_labels
from wsi_mil.mil.metrics import compute_metrics
from wsi_mil.mil.report import SetResult, write_summary
from wsi_mil.mil.splits import Splits, fold_count_text, make_splits, read_splits, write_splits
from wsi_mil.run_layout import TRAIN_CONFIG, RunLayout
from wsi_mil.store.atomic import atomic_output, remove_path

logger = logging.getLogger(__name__)

#: Train keys a resume accepts a change of: those declared neutral on their config field, the
#: output folder's name, and the number of repeats (finished folds of earlier repeats stay valid).
RESUME_NEUTRAL = (*sorted(k.split(".", 1)[1] for k in neutral_keys() if k.startswith("train.")), "name", "repeats")


def model_dir_for(run_dir: str | Path, config: Config) -> Path:
    return RunLayout(run_dir).model_dir(config.train.name or config.train.model)


def read_train_record(model_dir: str | Path) -> dict[str, Any]:
    """The ``train_config.json`` of a head trained by :func:`train_run`: its config, classes and
    feature sets (``sets``: ``key``, ``root``, ``relative`` to ``RUN_DIR/features``).

    Raises :class:`WsiMilError` when ``model_dir`` holds none or it cannot be read.
    """
    path = Path(model_dir) / TRAIN_CONFIG
    if not path.exists():
        raise WsiMilError(
            f"{model_dir}: no {TRAIN_CONFIG}; point --model-dir at RUN_DIR/models/<name> of a wsi-mil train run"
        )
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise WsiMilError(f"{path}: unreadable ({error}); train the head again (wsi-mil train --overwrite)") from error
    if not isinstance(record, dict) or not isinstance(record.get("sets"), list):
        raise WsiMilError(f"{path}: not a wsi-mil training record (no feature sets); train the head again")
    return record


def _finite(value: Any) -> Any:
    return None if isinstance(value, float) and not math.isfinite(value) else value


def _check_resume(model_dir: Path, record: dict[str, Any], overwrite: bool) -> bool:
    """Whether finished folds in ``model_dir`` can be kept; raises if they came from another config."""
    path = model_dir / TRAIN_CONFIG
    if overwrite or not path.exists() or not any(model_dir.glob("**/fold_*/metrics.json")):
        return False
    old = json.loads(path.read_text())
    strip = lambda r: {**r, "train": {k: v for k, v in r["train"].items() if k not in RESUME_NEUTRAL}}  # noqa: E731
    keys = ("train", "sets", "labels_sha")
    if {k: strip(old).get(k) for k in keys} != {k: strip(record).get(k) for k in keys}:
        raise LabelError(
            f"{model_dir} holds a run with a different config, labels or feature sets; "
            "choose another --name, or --overwrite to replace it"
        )
    return True


def train_run(
    run_dir: str | Path,
    labels_csv: str | Path,
    *,
    config: Config,
    features: Sequence[str | Path] = (),
    overwrite: bool = False,
) -> list[SetResult]:
    """Cross-validate ``config.train.model`` on every feature set; returns per-set fold metrics."""
    import hashlib

    from wsi_mil.device import resolve_device
    from wsi_mil.mil.registry import head_options, mil_model_config
    from wsi_mil.mil.train import head_options_from

    options = config.train
    mil_model_config(options.model)  # unknown heads and options fail before any work
    head_options(**head_options_from(options))
    device = resolve_device(options.device)
    table = read_labels(labels_csv)
    sets = find_feature_sets(features, run_dir=run_dir)
    model_dir = model_dir_for(run_dir, config)
    record = {
        "model": options.model,
        "train": dataclasses.asdict(options),
        "labels": str(Path(labels_csv).resolve()),
        "labels_sha": hashlib.sha256(Path(labels_csv).read_bytes()).hexdigest(),
        "sets": [{"key": s.key, "root": str(s.root.resolve()), "relative": s.relative} for s in sets],
        "wsi_mil_version": __version__,
    }
    if not _check_resume(model_dir, record, overwrite):
        remove_path(model_dir)  # nothing finished to keep (or --overwrite): no stale splits either
    with atomic_output(model_dir / TRAIN_CONFIG) as tmp:
        tmp.write_text(json.dumps(record, indent=2, sort_keys=True))
    results = []
    for feature_set in sets:
        logger.info("feature set %s: %d files in %s", feature_set.key or "-", len(feature_set.files), feature_set.root)
        results.append(
            _train_set(
                feature_set,
                table,
                config=config,
                device=device,
                out_dir=model_dir / feature_set.key if feature_set.key else model_dir,
            )
        )
    write_summary(model_dir, results, config=config)
    return results


def _train_set(feature_set: FeatureSet, table: Any, *, config: Config, device: Any, out_dir: Path) -> SetResult:
    from wsi_mil.mil.compute import torch_threads, training_threads
    from wsi_mil.mil.plots import plot_confusion, plot_roc

    options = config.train
    report = match_labels(table, feature_set)
    store = BagStore(feature_set, report.used, memory_gb=options.memory_gb, threads=options.read_threads)
    report.empty = store.empty
    report.used = list(store.slide_ids)
    labels_text = {s: table.labels[s] for s in store.slide_ids}
    classes = [c for c in table.classes if c in set(labels_text.values())]
    where = f"{table.path} ({feature_set.key or feature_set.root})"
    labels = {s: classes.index(labels_text[s]) for s in store.slide_ids}
    result = SetResult(feature_set, classes, report, out_dir=out_dir)
    threads = training_threads(options, store)
    logger.info(
        "training on %d torch thread(s) (train.threads %s)", threads, options.threads or "null: from the bag sizes"
    )
    with torch_threads(threads):
        for repeat in range(options.repeats):
            round_dir = repeat_dir(out_dir, repeat)
            splits = _splits(round_dir / "splits.csv", labels_text, table, options, where, repeat=repeat)
            true, probs = _train_repeat(
                store,
                labels,
                classes,
                table,
                splits,
                config=config,
                device=device,
                out_dir=round_dir,
                repeat=repeat,
                result=result,
                threads=threads,
            )
            result.pooled.append(compute_metrics(true, probs))
            if repeat == 0:
                title = f"{config.train.model} {feature_set.key}".strip()
                plot_roc(out_dir / "roc.png", true, probs, classes, title=f"{title}: out-of-fold ROC")
                plot_confusion(
                    out_dir / "confusion.png", true, probs.argmax(axis=1), classes, title=f"{title}: out-of-fold"
                )
    return result


def _train_repeat(
    store: BagStore,
    labels: dict[str, int],
    classes: list[str],
    table: Any,
    splits: Splits,
    *,
    config: Config,
    device: Any,
    out_dir: Path,
    repeat: int,
    result: SetResult,
    threads: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Every fold of one round of cross-validation (resuming finished folds); the pooled
    out-of-fold labels (n,) and probabilities (n, C)."""
    from wsi_mil.mil.fold_io import MODEL_FORMAT_VERSION, prediction_row, read_predictions, write_fold
    from wsi_mil.mil.train import FoldTrainer

    options = config.train
    pooled_true, pooled_probs = [], []
    round_text = f"repeat {repeat}, " if options.repeats > 1 else ""
    for fold in range(splits.n_folds):
        fold_dir = out_dir / f"fold_{fold}"
        if (fold_dir / "metrics.json").exists():
            logger.info("%sfold %d: complete, skipped (resume)", round_text, fold)
        else:
            started = time.perf_counter()
            trainer = FoldTrainer(store, labels, len(classes), config=options, device=device, fold=fold, repeat=repeat)
            train, val, test = (splits.members(fold, role) for role in ("train", "val", "test"))
            logger.info(
                "%sfold %d (%d of %d): %s", round_text, fold, fold + 1, splits.n_folds, fold_count_text(splits, fold)
            )
            history = trainer.fit(train, val)
            probs, test_loss = trainer.evaluate(test)
            y_true = np.array([labels[s] for s in test])
            test_metrics = compute_metrics(y_true, probs)
            if not math.isfinite(test_metrics["roc_auc"]):
                logger.warning("fold %d: ROC-AUC undefined (test slides lack a class); left out of its mean", fold)
            metrics = {
                "fold": fold,
                "repeat": repeat,
                "test": {k: _finite(v) for k, v in test_metrics.items()},
                "test_loss": test_loss,
                "n_train": len(train),
                "n_val": len(val),
                "n_test": len(test),
                "threads": threads,
                **history,
                "seconds": time.perf_counter() - started,
            }
            model_config = {
                "model": options.model,
                "head_options": _head_options(options),
                "in_dim": store.dim,
                "classes": classes,
                "fold": fold,
                "repeat": repeat,
                "feature_set": result.feature_set.key,
                "best_epoch": history["best_epoch"],
                "train": dataclasses.asdict(options),
                "format_version": MODEL_FORMAT_VERSION,
                "wsi_mil_version": __version__,
            }
            predictions = [prediction_row(s, table, classes, labels[s], p) for s, p in zip(test, probs, strict=True)]
            write_fold(fold_dir, trainer, model_config=model_config, metrics=metrics, predictions=predictions)
            logger.info(
                "%sfold %d: %s, kept epoch %d of %d, test ROC-AUC %.3f, accuracy %.3f (%.1f s)",
                round_text,
                fold,
                history["selection"]["rule"].replace("_", " "),
                history["best_epoch"] + 1,
                history["epochs_run"],
                test_metrics["roc_auc"],
                test_metrics["accuracy"],
                metrics["seconds"],
            )
        saved = json.loads((fold_dir / "metrics.json").read_text())
        result.folds.append({k: math.nan if v is None else v for k, v in saved["test"].items()})
        result.repeat_of_fold.append(repeat)
        true, probs = read_predictions(fold_dir / "predictions.csv", classes)
        pooled_true.append(true)
        pooled_probs.append(probs)
    return np.concatenate(pooled_true), np.concatenate(pooled_probs)


def _head_options(options: Any) -> dict[str, Any]:
    from wsi_mil.mil.train import head_options_from

    return head_options_from(options)


def _splits(path: Path, labels: dict[str, str], table: Any, options: Any, where: str, *, repeat: int = 0) -> Splits:
    patients = {s: table.patients[s] for s in labels}
    csv_splits = {s: table.splits[s] for s in labels} if table.splits else None
    if path.exists():
        splits = read_splits(path)
        if sorted(splits.slide_ids) != sorted(labels):
            raise LabelError(f"{path} was made for another set of slides; use a new --name or --overwrite")
        return splits
    splits = make_splits(
        labels,
        patients,
        folds=options.folds,
        seed=options.seed + 7919 * repeat,
        val_fraction=options.val_fraction,
        csv_splits=csv_splits,
        where=where,
    )
    write_splits(splits, path)
    return splits
