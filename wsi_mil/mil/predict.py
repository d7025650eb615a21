"""Score slides with trained heads: ``RUN_DIR/scores/<model>/[<set>/]<slide_id>.h5`` (wsi_mil.store.scores).

Which fold's model scores a slide (``fold_policy`` attribute of each score file):

- ``out_of_fold``: the slide was in the cross-validation (its id is in ``splits.csv``
  with a test fold): only the model of the fold that held it out scores it, so maps and
  probabilities on the training cohort are honest (never from a model that saw it);
- ``mean``: any other slide (or ``all_folds=True``): every fold's model scores it, and
  probabilities and per-patch maps are averaged over folds; ``attention_pct`` is the
  percentile rank of the averaged ``attention_raw``;
- ``single_model``: the model was trained on the labels CSV's own split (one model);
  ``in_training`` says whether the slide was among its train/val slides.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from wsi_mil.errors import FeatureFormatError, WsiMilError
from wsi_mil.mil.data import FeatureSet, check_finite, find_feature_sets, read_bag_features
from wsi_mil.mil.manifold import grid_step, manifold_ranking
from wsi_mil.mil.run import read_train_record
from wsi_mil.mil.splits import Splits, read_splits
from wsi_mil.run_layout import RunLayout
from wsi_mil.store import scores as S

logger = logging.getLogger(__name__)

STAGE = "predict"


def percentile_rank(values: np.ndarray) -> np.ndarray:
    """Rank of each value within the slide scaled to [0, 1] (ties share their mean rank); (N,) float32."""
    from scipy.stats import rankdata

    if len(values) < 2:
        return np.ones(len(values), np.float32)
    return ((rankdata(values) - 1) / (len(values) - 1)).astype(np.float32)


def score_bag(
    models: Sequence[Any], features: np.ndarray, coords: np.ndarray, device: Any
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Mean over ``models`` of the softmax probabilities (C,) and of the per-patch maps."""
    import torch

    x = torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32)).to(device)
    c = torch.from_numpy(coords).to(device)
    probs, maps = [], []
    with torch.inference_mode():
        for model in models:
            out = model(x, c, explain=True)
            probs.append(torch.softmax(out.logits.float(), dim=0).cpu().numpy())
            fields = {
                S.ATTENTION_RAW: out.attention_raw,
                S.ATTENTION: out.attention,
                S.INSTANCE_LOGITS: out.instance_logits,
                S.CONTRIBUTION: out.contribution,
                S.RELEVANCE: out.relevance,
            }
            maps.append({k: v.float().cpu().numpy() for k, v in fields.items() if v is not None})
    mean = {k: np.mean([m[k] for m in maps], axis=0).astype(np.float32) for k in maps[0]}
    mean[S.ATTENTION_PCT] = percentile_rank(mean[S.ATTENTION_RAW])
    return np.mean(probs, axis=0).astype(np.float32), mean


def _geometry(
    layout: RunLayout, feature_set: FeatureSet, slide_id: str, feature_attrs: dict[str, Any]
) -> dict[str, Any]:
    """Geometry attributes for ``coords``: the feature file's, completed from the bag when it is found
    (the one the features were made from, else the run's bag of the same set)."""
    from wsi_mil.store.bags import read_bag

    geometry = {k: feature_attrs.get(k) for k in S.GEOMETRY_ATTRS if feature_attrs.get(k) is not None}
    if all(k in geometry for k in S.GEOMETRY_ATTRS):
        return geometry
    parts = Path(feature_set.relative).parts  # <encoder>[/<bag set>]
    candidates: list[Path | None] = [Path(str(feature_attrs["bag_path"]))] if feature_attrs.get("bag_path") else []
    candidates.append(layout.find_bag(slide_id, parts[-1] if len(parts) > 1 else ""))
    for candidate in candidates:
        if candidate is not None and candidate.exists():
            try:
                bag_attrs = read_bag(candidate).attrs
            except (WsiMilError, OSError):
                continue
            for key in S.GEOMETRY_ATTRS:
                if geometry.get(key) is None and bag_attrs.get(key) is not None:
                    geometry[key] = bag_attrs[key]
            break
    geometry["slide_id"] = slide_id
    return geometry


class SetScorer:
    """The fold models of one feature set and the rule choosing among them."""

    def __init__(self, set_dir: Path, device: Any, *, all_folds: bool) -> None:
        from wsi_mil.mil.fold_io import load_fold_model

        fold_dirs = sorted(
            (d for d in set_dir.glob("fold_*") if (d / "metrics.json").exists()),
            key=lambda d: int(d.name.split("_")[1]),
        )
        if not fold_dirs:
            raise WsiMilError(f"{set_dir}: no trained folds (fold_<k>/ with metrics.json); run wsi-mil train first")
        self.models, self.configs = {}, {}
        for fold_dir in fold_dirs:
            fold = int(fold_dir.name.split("_")[1])
            self.models[fold], self.configs[fold] = load_fold_model(fold_dir, device)
        first = next(iter(self.configs.values()))
        self.classes, self.in_dim, self.model_name = first["classes"], first["in_dim"], first["model"]
        self.splits: Splits | None = read_splits(set_dir / "splits.csv") if (set_dir / "splits.csv").exists() else None
        self.all_folds = all_folds

    def choose(self, slide_id: str) -> tuple[list[int], str, dict[str, Any]]:
        splits = self.splits
        if splits is not None and splits.source == "csv" and not self.all_folds:
            in_training = slide_id in splits.slide_ids and splits.roles[0][slide_id] in ("train", "val")
            return [0], "single_model", {"in_training": int(in_training)}
        if splits is not None and not self.all_folds and slide_id in splits.slide_ids:
            fold = splits.test_fold(slide_id)
            if fold in self.models:
                return [fold], "out_of_fold", {}
        return sorted(self.models), "mean", {}


def _locate(layout: RunLayout, entry: dict[str, Any], features: Sequence[Path]) -> FeatureSet:
    run_dir = layout.root
    if features:
        found = find_feature_sets(features, run_dir=run_dir)
        matching = [s for s in found if s.key == entry["key"]] or (found if len(found) == 1 else [])
        if not matching:
            raise FeatureFormatError(
                f"--features: no feature set named {entry['key']!r} among {[s.key for s in found]}"
            )
        return matching[0]
    folder = layout.feature_set_dir(entry["relative"]) if entry["relative"] else None
    if folder is None or not folder.is_dir():
        raise FeatureFormatError(
            f"{run_dir}: no features/{entry['relative'] or '<set>'}/ for feature set {entry['key'] or '-'}; "
            "pass --features FOLDER (the folder of per-slide feature files to score)"
        )
    found = find_feature_sets([folder])
    return FeatureSet(entry["key"], found[0].root, found[0].files, found[0].coords_files, entry["relative"])


def predict_run(
    run_dir: str | Path,
    model_dir: str | Path,
    *,
    features: Sequence[str | Path] = (),
    device: str = "auto",
    all_folds: bool = False,
    slide_ids: Sequence[str] | None = None,
    overwrite: bool = False,
) -> list[dict[str, Any]]:
    """Score every slide with features in ``run_dir`` (or ``features``); one manifest record per slide."""
    from wsi_mil.device import resolve_device
    from wsi_mil.manifest import Manifest

    layout, model_dir = RunLayout(run_dir), Path(model_dir)
    record = read_train_record(model_dir)
    torch_device = resolve_device(device)
    manifest = Manifest(layout.root)
    records = []
    for entry in record["sets"]:
        feature_set = _locate(layout, entry, [Path(p) for p in features])
        scorer = SetScorer(model_dir / entry["key"] if entry["key"] else model_dir, torch_device, all_folds=all_folds)
        out_dir = layout.scores_dir(model_dir.name, entry["key"])
        wanted = sorted(feature_set.files) if slide_ids is None else [s for s in slide_ids if s in feature_set.files]
        for slide_id in wanted:
            out = _score_slide(layout, feature_set, slide_id, scorer, out_dir, torch_device, overwrite)
            # keyed like the heatmap rows: the model, and the feature set when it has several
            label = f"{model_dir.name}/{entry['key']}" if entry["key"] else model_dir.name
            out.update({"stage": STAGE, "slide_id": slide_id, "bag_set": label})
            if out["status"] == "failed":
                logger.error("%s: %s", slide_id, out["error"])
            records.append(out)
            manifest.update([out])
        manifest.save()
    return records


def _score_slide(
    layout: RunLayout,
    feature_set: FeatureSet,
    slide_id: str,
    scorer: SetScorer,
    out_dir: Path,
    device: Any,
    overwrite: bool,
) -> dict[str, Any]:
    path = feature_set.files[slide_id]
    out_path = out_dir / f"{slide_id}.h5"
    redo = ""
    if out_path.exists() and not overwrite:
        problem = S.scores_problem(out_path)
        if problem is None:
            return {"path": str(out_path), "status": "skipped", "note": "complete score file exists"}
        redo = f"redone: the previous score file was {problem}"
        logger.warning("%s: %s", out_path, redo)
    started = time.perf_counter()
    try:
        features, coords, attrs = read_bag_features(path, feature_set.coords_files.get(slide_id))
        if len(features) == 0:
            return {
                "path": str(path),
                "status": "skipped",
                "n_patches": 0,
                "note": "empty bag (N = 0): nothing to score",
            }
        if features.shape[1] != scorer.in_dim:
            raise FeatureFormatError(
                f"{path}: {features.shape[1]}-d features, but the model was trained on {scorer.in_dim}-d"
            )
        check_finite(features, path)
        folds, policy, extra = scorer.choose(slide_id)
        probs, maps = score_bag([scorer.models[k] for k in folds], features, coords, device)
        geometry = _geometry(layout, feature_set, slide_id, attrs)
        step = grid_step(coords, fallback=float(geometry.get("patch_size_level0") or 1.0))
        maps[S.MANIFOLD] = manifold_ranking(coords, maps[S.ATTENTION_RAW], step=step, features=features)
        root = {
            "probs": probs,
            "pred": int(probs.argmax()),
            "classes": scorer.classes,
            "model": scorer.model_name,
            "folds": folds,
            "fold_policy": policy,
            "slide_id": slide_id,
            **extra,
        }
        S.write_scores(out_path, coords, maps, attrs=root, coords_attrs=geometry)
    except WsiMilError as error:
        return {"path": str(path), "status": "failed", "error": str(error)}
    return {
        "path": str(out_path),
        "status": "done",
        "error": "",
        "note": redo,
        "n_patches": len(features),
        "pred": scorer.classes[int(probs.argmax())],
        "prob": float(probs.max()),
        "fold_policy": policy,
        "seconds": round(time.perf_counter() - started, 3),
    }
