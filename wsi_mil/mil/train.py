"""One fold of MIL training: standardization, mini-batches of bags, the model-selection rule.

Per fold: a per-channel feature standardization fitted on the training bags' instances
(stored in the head, see :mod:`wsi_mil.mil.standardize`); AdamW (or Adam) at a constant rate (or a
cosine or plateau schedule); mini-batches of ``batch_bags`` padded bags with masked attention
(:mod:`wsi_mil.mil.batching`; smaller for a small cohort, so that an epoch holds at least
``min_steps_per_epoch`` steps); class-weighted loss; and the epoch chosen by
:mod:`wsi_mil.mil.selection`. Seeded from the config's seed, the repeat and the fold,
and run on ``threads`` torch threads set on purpose, so a CPU run gives the same weights
and metrics every time, whatever the environment's default thread count.
Training-time augmentation: random instance dropout and a cap on the instances per bag
(``max_instances``); evaluation always sees every instance.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import logging
import math
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from wsi_mil.config import TrainConfig
from wsi_mil.mil.batching import BagBatch, PreparedBags, iterate_batches, plan_batches, training_batch_bags
from wsi_mil.mil.compute import make_optimizer, make_scheduler, training_precision
from wsi_mil.mil.data import BagStore
from wsi_mil.mil.metrics import compute_metrics
from wsi_mil.mil.registry import HeadOptions, create_mil_model
from wsi_mil.mil.selection import plan_selection, smoothed
from wsi_mil.mil.standardize import inputs_standardized

logger = logging.getLogger(__name__)


def head_options_from(config: TrainConfig) -> dict[str, Any]:
    """The head options among the train config keys."""
    names = {f.name for f in dataclasses.fields(HeadOptions)}
    return {k: v for k, v in dataclasses.asdict(config).items() if k in names}


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

    def __init__(
        self,
        store: BagStore,
        labels: dict[str, int],
        n_classes: int,
        *,
        config: TrainConfig,
        device: Any,
        fold: int,
        repeat: int = 0,
    ) -> None:
        import torch

        self.store, self.labels, self.n_classes = store, labels, n_classes
        self.config, self.device, self.fold = config, device, fold
        seed = (config.seed + 7919 * repeat) * 1009 + fold
        torch.manual_seed(seed)
        self.generator = torch.Generator().manual_seed(seed)
        self.model = create_mil_model(config.model, in_dim=store.dim, n_classes=n_classes, **head_options_from(config))
        self.model.to(device)
        self.precision = training_precision(config, device)

    def _class_weights(self, train: Sequence[str]) -> np.ndarray:
        """n / (C * count): 1 on average over the training bags."""
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

    def fit_standardization(self, train: Sequence[str]) -> dict[str, Any]:
        """Fit the head's input standardization on the training bags' instances (all of them)."""
        from wsi_mil.mil.standardize import fit_statistics

        standardizer = getattr(self.model, "standardize", None)
        if standardizer is None:
            return {"standardize": False}
        mean, std, count = fit_statistics(self.store.get(s)[0] for s in train)
        standardizer.set_statistics(mean, std)
        constant = int((std < 1e-6).sum())
        if constant:
            logger.info(
                "fold %d: %d of %d feature channels are constant on the training bags (centred, not scaled)",
                self.fold,
                constant,
                len(std),
            )
        return {"standardize": True, "instances": count, "constant_channels": constant}

    def _training_source(self, train: Sequence[str]) -> tuple[Any, bool]:
        """Where training batches come from: prepared bags (standardized and cast once) when
        the bags are in memory and training runs in bfloat16 on CPU, else the store itself."""
        import torch

        standardizer = getattr(self.model, "standardize", None)
        if (
            standardizer is None
            or not self.store.in_memory
            or self.precision != "bfloat16"
            or self.device.type != "cpu"
        ):
            return self.store, False
        return PreparedBags(self.store, train, standardizer, torch.bfloat16), True

    def _loss(self, batch: BagBatch, out: Any, class_weight: Any) -> Any:
        """Mean over the batch's bags of the class-weighted bag loss (mixed with the instance loss)."""
        import torch
        import torch.nn.functional as F

        target = torch.tensor([self.labels[s] for s in batch.slide_ids], device=out.logits.device)
        losses = F.cross_entropy(out.logits.float(), target, reduction="none")
        clusterer = getattr(self.model, "clusterer", None)
        if clusterer is not None:
            w = self.config.instance_loss_weight
            losses = (1 - w) * losses + w * clusterer.loss(out.embeddings, out.attention_raw, target, batch.mask)
        if class_weight is not None:
            losses = losses * class_weight[target]
        return losses.mean()

    def _batches(
        self, slide_ids: Sequence[str], sizes: Sequence[int], batch_bags: int | None = None
    ) -> list[list[str]]:
        return plan_batches(slide_ids, sizes, batch_bags or self.config.batch_bags)

    def evaluate(self, slide_ids: Sequence[str]) -> tuple[np.ndarray, float]:
        """Softmax probabilities (n, C) in ``slide_ids`` order and the mean unweighted cross-entropy."""
        import torch
        import torch.nn.functional as F

        self.model.eval()
        by_size = sorted(slide_ids, key=lambda s: self.store.sizes[s])  # similar lengths pad least
        results: dict[str, tuple[np.ndarray, float]] = {}
        with torch.inference_mode():
            for batch in iterate_batches(self.store, self._batches(by_size, [self.store.sizes[s] for s in by_size])):
                batch = batch.to(self.device)
                out = self.model(batch.features, batch.coords, mask=batch.mask)
                target = torch.tensor([self.labels[s] for s in batch.slide_ids], device=self.device)
                losses = F.cross_entropy(out.logits.float(), target, reduction="none").cpu().numpy()
                probs = torch.softmax(out.logits.float(), dim=1).cpu().numpy()
                for slide_id, p, loss in zip(batch.slide_ids, probs, losses, strict=True):
                    results[slide_id] = (p, float(loss))
        probs = np.array([results[s][0] for s in slide_ids]).reshape(-1, self.n_classes)
        return probs, float(np.mean([results[s][1] for s in slide_ids])) if slide_ids else math.nan

    def fit(self, train: Sequence[str], val: Sequence[str]) -> dict[str, Any]:
        """Train; the returned history names the kept epoch, whose weights the model ends with,
        and the selection rule applied (validation slides train when the rule is ``fixed``)."""
        import torch

        config = self.config
        plan = plan_selection(
            config.selection, [self.labels[s] for s in val], self.n_classes, min_val_bags=config.min_val_bags
        )
        if plan.rule == "fixed":
            train, val = [*train, *val], []
        logger.info("fold %d: %s (%s)", self.fold, plan.rule.replace("_", " "), plan.reason)
        standardization = self.fit_standardization(train)
        weights = self._class_weights(train)
        class_weight = (
            torch.tensor(weights, dtype=torch.float32, device=self.device) if config.balance == "weighted" else None
        )
        batch_bags, batch_reason = training_batch_bags(config.batch_bags, len(train), config.min_steps_per_epoch)
        if batch_bags != config.batch_bags:
            logger.info("fold %d: %s", self.fold, batch_reason)
        optimizer = make_optimizer(self.model.parameters(), config)
        scheduler = make_scheduler(optimizer, config)
        monitor = config.monitor
        if val and monitor == "val_auc" and len({self.labels[s] for s in val}) < self.n_classes:
            logger.warning(
                "fold %d: the validation set lacks a class, so early stopping uses val_loss, not val_auc", self.fold
            )
            monitor = "val_loss"

        def subsample(features: Any, coords: Any) -> tuple[Any, Any]:
            keep = _subsample(len(features), config, self.generator)
            return (features, coords) if keep is None else (features[keep], coords[keep])

        source, prepared = self._training_source(train)

        best_score, best_state, best_epoch, since_best = math.inf, None, -1, 0
        history: list[dict[str, Any]] = []
        scores: list[float] = []
        for epoch in range(config.epochs):
            started = time.perf_counter()
            self.model.train()
            total, steps = 0.0, 0
            order = self._epoch_order(train, weights)
            sizes = [self.store.sizes[s] for s in order]
            if config.max_instances is not None:
                sizes = [min(size, config.max_instances) for size in sizes]
            batches = self._batches(order, sizes, batch_bags)
            for batch in iterate_batches(source, batches, subsample):
                batch = batch.to(self.device)
                autocast = torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.precision == "bfloat16")
                with autocast, inputs_standardized(self.model) if prepared else contextlib.nullcontext():
                    out = self.model(batch.features, batch.coords, mask=batch.mask)
                    loss = self._loss(batch, out, class_weight)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if config.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(self.model.parameters(), config.grad_clip)
                optimizer.step()
                total += loss.item() * len(batch.slide_ids)
                steps += 1
            record: dict[str, Any] = {
                "epoch": epoch,
                "train_loss": total / max(1, len(train)),
                "steps": steps,
                "lr": optimizer.param_groups[0]["lr"],
            }
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
            scores.append(record["val_loss"] if monitor == "val_loss" else -record["val_auc"])
            score = smoothed(scores, config.smooth_epochs)
            if epoch + 1 < config.min_epochs:
                continue  # no candidate yet: the first one is epoch min_epochs, whatever came before
            if score < best_score:
                best_score, best_epoch, since_best = score, epoch, 0
                best_state = copy.deepcopy(self.model.state_dict())
            else:
                since_best += 1
                if since_best >= config.patience:
                    break
        if best_state is not None:
            self.model.load_state_dict(best_state)
        else:
            best_epoch = len(history) - 1  # fixed: the last epoch
        return {
            "best_epoch": best_epoch,
            "epochs_run": len(history),
            "monitor": monitor if val else None,
            "selection": {**plan.as_dict(), "batch_bags": batch_bags, "batch_reason": batch_reason},
            "standardization": standardization,
            "history": history,
            "n_train_used": len(train),
            "precision": self.precision,
        }
