"""One fold of MIL training: AdamW, cosine or plateau schedule, class balancing, early stopping.

One bag per step (bags differ in length; CLAM's convention). Seeded from the config's
seed and the fold index, so a CPU run gives the same weights and metrics every time.
Training-time augmentation: random instance dropout and a cap on the instances per
bag (``max_instances``); evaluation always sees every instance.
"""

from __future__ import annotations

import copy
import csv
import dataclasses
import json
import logging
import math
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from wsi_mil.config import TrainConfig
from wsi_mil.mil.data import BagStore
from wsi_mil.mil.metrics import compute_metrics
from wsi_mil.mil.registry import HeadOptions, create_mil_model
from wsi_mil.store.atomic import atomic_output

logger = logging.getLogger(__name__)

MODEL_FORMAT_VERSION = "1.0"
WEIGHTS_NAME = "model.safetensors"


def head_options_from(config: TrainConfig) -> dict[str, Any]:
    """The head options among the train config keys."""
    names = {f.name for f in dataclasses.fields(HeadOptions)}
    return {k: v for k, v in dataclasses.asdict(config).items() if k in names}


def iterate_bags(store: BagStore, slide_ids: Sequence[str]) -> Iterator[tuple[str, Any, Any]]:
    """(slide_id, features, coords); when streaming from disk the next bag is read while this one trains."""
    if store.in_memory or not slide_ids:
        for slide_id in slide_ids:
            yield (slide_id, *store.get(slide_id))
        return
    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(store.get, slide_ids[0])
        for index, slide_id in enumerate(slide_ids):
            bag = pending.result()
            if index + 1 < len(slide_ids):
                pending = pool.submit(store.get, slide_ids[index + 1])
            yield (slide_id, *bag)


def _subsample(n: int, config: TrainConfig, generator: Any) -> Any:
    """Instance indices kept this step (None: all)."""
    import torch

    keep = None
    if config.instance_dropout > 0 and n > 1:
        mask = torch.rand(n, generator=generator) >= config.instance_dropout
        keep = torch.nonzero(mask).squeeze(1) if mask.any() else torch.randint(n, (1,), generator=generator)
    if config.max_instances is not None and (len(keep) if keep is not None else n) > config.max_instances:
        pool = keep if keep is not None else torch.arange(n)
        keep = pool[torch.randperm(len(pool), generator=generator)[: config.max_instances]].sort().values
    return keep


class FoldTrainer:
    """Trains and evaluates one head on one fold's train / val / test slides."""

    def __init__(self, store: BagStore, labels: dict[str, int], n_classes: int, *, config: TrainConfig,
                 device: Any, fold: int) -> None:  # fmt: skip
        import torch

        self.store, self.labels, self.n_classes = store, labels, n_classes
        self.config, self.device, self.fold = config, device, fold
        torch.manual_seed(config.seed * 1009 + fold)
        self.generator = torch.Generator().manual_seed(config.seed * 1009 + fold)
        self.model = create_mil_model(config.model, in_dim=store.dim, n_classes=n_classes, **head_options_from(config))
        self.model.to(device)

    def _class_weights(self, train: Sequence[str]) -> np.ndarray:
        counts = np.bincount([self.labels[s] for s in train], minlength=self.n_classes).astype(np.float64)
        return len(train) / (self.n_classes * np.maximum(counts, 1))

    def _epoch_order(self, train: Sequence[str], weights: np.ndarray) -> list[str]:
        import torch

        if self.config.balance == "sampler":
            p = torch.tensor([weights[self.labels[s]] for s in train], dtype=torch.float64)
            index = torch.multinomial(p, len(train), replacement=True, generator=self.generator)
        else:
            index = torch.randperm(len(train), generator=self.generator)
        return [train[i] for i in index.tolist()]

    def _loss(self, out: Any, label: int, class_weight: Any) -> Any:
        import torch.nn.functional as F

        target = out.logits.new_tensor([label]).long()
        loss = F.cross_entropy(out.logits.unsqueeze(0), target, weight=class_weight)
        clusterer = getattr(self.model, "clusterer", None)
        if clusterer is not None:
            w = self.config.instance_loss_weight
            loss = (1 - w) * loss + w * clusterer.loss(out.embeddings, out.attention_raw, label)
        return loss

    def evaluate(self, slide_ids: Sequence[str]) -> tuple[np.ndarray, float]:
        """Softmax probabilities (n, C) and the mean unweighted cross-entropy."""
        import torch
        import torch.nn.functional as F

        self.model.eval()
        probs, losses = [], []
        with torch.inference_mode():
            for slide_id, features, coords in iterate_bags(self.store, slide_ids):
                out = self.model(features.to(self.device), coords.to(self.device))
                target = torch.tensor([self.labels[slide_id]], device=self.device)
                losses.append(float(F.cross_entropy(out.logits.unsqueeze(0).float(), target)))
                probs.append(torch.softmax(out.logits.float(), dim=0).cpu().numpy())
        return np.array(probs).reshape(-1, self.n_classes), float(np.mean(losses)) if losses else math.nan

    def fit(self, train: Sequence[str], val: Sequence[str]) -> dict[str, Any]:
        """Train; the returned history names the best epoch, whose weights the model ends with."""
        import torch

        config = self.config
        weights = self._class_weights(train)
        class_weight = torch.tensor(weights, dtype=torch.float32, device=self.device) if config.balance == "weighted" else None
        optimizer = torch.optim.AdamW(self.model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        if config.scheduler == "cosine":
            scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs, eta_min=config.lr * 0.01)
        elif config.scheduler == "plateau":
            scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=0.5, patience=max(1, config.patience // 2))
        else:
            scheduler = None
        monitor = config.monitor
        val_classes = {self.labels[s] for s in val}
        if monitor == "val_auc" and len(val_classes) < self.n_classes:
            logger.warning("fold %d: the validation set lacks a class, so early stopping uses val_loss, not val_auc", self.fold)
            monitor = "val_loss"
        best_score, best_state, best_epoch, since_best = math.inf, None, -1, 0
        history = []
        for epoch in range(config.epochs):
            started = time.perf_counter()
            self.model.train()
            total = 0.0
            for slide_id, features, coords in iterate_bags(self.store, self._epoch_order(train, weights)):
                keep = _subsample(len(features), config, self.generator)
                if keep is not None:
                    features, coords = features[keep], coords[keep]
                out = self.model(features.to(self.device, non_blocking=True), coords.to(self.device))
                loss = self._loss(out, self.labels[slide_id], class_weight)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if config.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(self.model.parameters(), config.grad_clip)
                optimizer.step()
                total += loss.item()
            record: dict[str, Any] = {"epoch": epoch, "train_loss": total / max(1, len(train)),
                                      "lr": optimizer.param_groups[0]["lr"]}  # fmt: skip
            if val:
                probs, val_loss = self.evaluate(val)
                record["val_loss"] = val_loss
                record["val_auc"] = compute_metrics(np.array([self.labels[s] for s in val]), probs)["roc_auc"]
            record["seconds"] = time.perf_counter() - started
            history.append(record)
            if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                scheduler.step(record.get("val_loss", record["train_loss"]))
            elif scheduler is not None:
                scheduler.step()
            logger.debug("fold %d epoch %d: %s", self.fold, epoch, record)
            if not val:
                continue
            score = record["val_loss"] if monitor == "val_loss" else -record["val_auc"]
            if score < best_score:
                best_score, best_epoch, since_best = score, epoch, 0
                best_state = copy.deepcopy(self.model.state_dict())
            else:
                since_best += 1
                if epoch + 1 >= config.min_epochs and since_best >= config.patience:
                    break
        if best_state is not None:
            self.model.load_state_dict(best_state)
        else:
            best_epoch = len(history) - 1  # no validation set: the last epoch
        return {"best_epoch": best_epoch, "epochs_run": len(history), "monitor": monitor, "history": history}


def write_fold(fold_dir: Path, trainer: FoldTrainer, *, model_config: dict[str, Any], metrics: dict[str, Any],
               predictions: list[dict[str, Any]]) -> Path:  # fmt: skip
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
    model = create_mil_model(config["model"], in_dim=config["in_dim"], n_classes=len(config["classes"]),
                             **config["head_options"])  # fmt: skip
    model.load_state_dict(load_file(str(fold_dir / WEIGHTS_NAME)))
    return model.to(device).eval(), config
