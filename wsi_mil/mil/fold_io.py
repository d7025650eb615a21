"""A trained fold's folder: writing it atomically and loading its head back.

``fold_<k>/`` holds ``model.safetensors`` (the head's weights), ``config.json`` (what
:func:`load_fold_model` needs to rebuild the head), ``metrics.json`` and
``predictions.csv`` (one row per test slide with its class probabilities).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from wsi_mil.mil.registry import create_mil_model
from wsi_mil.store.atomic import atomic_output

if TYPE_CHECKING:
    from wsi_mil.mil.train import FoldTrainer

MODEL_FORMAT_VERSION = "1.1"
WEIGHTS_NAME = "model.safetensors"


def repeat_dir(model_dir: Path, repeat: int) -> Path:
    """The folder of one round of cross-validation: the head's folder itself for round 0,
    ``repeat_<r>/`` inside it for the others (``train.repeats``)."""
    return model_dir / f"repeat_{repeat}" if repeat else model_dir


def repeat_dirs(model_dir: Path) -> list[Path]:
    """Every round's folder of a trained head, round 0 first."""
    rounds = sorted(model_dir.glob("repeat_*"), key=lambda p: int(p.name.split("_")[1]))
    return [model_dir, *rounds]


def write_fold(
    fold_dir: Path,
    trainer: FoldTrainer,
    *,
    model_config: dict[str, Any],
    metrics: dict[str, Any],
    predictions: list[dict[str, Any]],
) -> Path:
    """model.safetensors, config.json, metrics.json, predictions.csv, in one atomic folder."""
    from safetensors.torch import save_file

    with atomic_output(fold_dir) as tmp:
        tmp.mkdir(parents=True)
        state = {k: v.detach().cpu().contiguous() for k, v in trainer.model.state_dict().items()}
        save_file(state, str(tmp / WEIGHTS_NAME), metadata={"format_version": MODEL_FORMAT_VERSION})
        (tmp / "config.json").write_text(json.dumps(model_config, indent=2, sort_keys=True))
        (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True, default=_json_default))
        with (tmp / "predictions.csv").open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(predictions[0]) if predictions else ["slide_id"])
            writer.writeheader()
            writer.writerows(predictions)
    return fold_dir


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


def load_fold_model(fold_dir: Path, device: Any) -> tuple[Any, dict[str, Any]]:
    """A trained head from ``fold_<k>/`` (config.json + model.safetensors), in eval mode."""
    from safetensors.torch import load_file

    config = json.loads((fold_dir / "config.json").read_text())
    options = {"standardize": False, **config["head_options"]}  # heads saved before standardization existed
    model = create_mil_model(config["model"], in_dim=config["in_dim"], n_classes=len(config["classes"]), **options)
    model.load_state_dict(load_file(str(fold_dir / WEIGHTS_NAME)))
    return model.to(device).eval(), config


def prediction_row(slide_id: str, table: Any, classes: list[str], label: int, probs: np.ndarray) -> dict[str, Any]:
    """One ``predictions.csv`` row: the slide, its label, the predicted class and every class's probability."""
    row = {
        "slide_id": slide_id,
        "patient_id": table.patients[slide_id],
        "label": classes[label],
        "label_index": label,
        "pred": int(probs.argmax()),
        "pred_label": classes[int(probs.argmax())],
    }
    row.update({f"prob_{c}": f"{p:.6f}" for c, p in zip(classes, probs, strict=True)})
    return row


def read_predictions(path: Path, classes: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """The labels (n,) and class probabilities (n, C) of a fold's ``predictions.csv``."""
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    true = np.array([int(r["label_index"]) for r in rows], dtype=np.int64)
    probs = np.array([[float(r[f"prob_{c}"]) for c in classes] for r in rows]).reshape(-1, len(classes))
    return true, probs
