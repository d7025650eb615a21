"""Config section of the train stage, and the options every MIL head shares."""

from __future__ import annotations

import typing
from dataclasses import dataclass
from typing import Any

from wsi_mil.config.fields import check_device, neutral_field


@dataclass(frozen=True)
class HeadOptions:
    """Options every MIL head takes (wsi_mil.mil.create_mil_model): defined here once, they are
    also the ``train`` config keys of the same names, as :class:`TrainConfig` inherits them."""

    #: Per-channel feature standardization fitted on each fold's training instances.
    standardize: bool = True
    #: Instance embedding size; CLAM uses 512 / 256 (same accuracy on the recipe benchmark, half the speed).
    hidden_dim: int = 256
    attention_dim: int = 128
    dropout: float = 0.25
    #: Residual squeeze-excitation over feature channels of the instance embeddings.
    channel_attention: bool = False
    #: CLAM's instance clustering loss on the top-k / bottom-k attended patches.
    instance_loss: bool = False
    instance_k: int = 8
    #: ILAM only: a transformer over instances (2D positional encoding, attention rollout).
    transformer: bool = False
    transformer_layers: int = 1
    transformer_heads: int = 4
    #: Longer bags attend within raster-ordered bands of this many patches (memory O(N x this)).
    transformer_max_instances: int = 4096


@dataclass(frozen=True)
class TrainConfig(HeadOptions):
    """MIL training and cross-validation (wsi_mil.mil); the head's own options come from :class:`HeadOptions`."""

    #: A registered MIL head: abmil, abmil_plain or ilam (see wsi_mil.mil.list_mil_models).
    model: str = "abmil"
    #: Output folder under RUN_DIR/models/; null: the model name.
    name: str | None = None
    #: Stratified k-fold CV (grouped by patient_id); ignored when the labels CSV has a split column.
    folds: int = 5
    #: Repeated cross-validation: R rounds of k folds, each with its own fold seed.
    repeats: int = 1
    #: Fraction of each class's training patients held out for validation (0: none, no early stopping).
    val_fraction: float = 0.2
    seed: int = 0
    #: Model selection: auto (early stopping when the validation carve-out is large enough, else
    #: fixed), fixed (no carve-out, keep the last epoch) or early_stopping (see wsi_mil.mil.selection).
    selection: str = "auto"
    #: auto uses early stopping only when the validation carve-out holds at least this many bags.
    min_val_bags: int = 40
    #: Training epochs (the maximum under early stopping).
    epochs: int = 50
    #: Early stopping never keeps an epoch before this one.
    min_epochs: int = 10
    #: Stop after this many epochs without improvement of the smoothed ``monitor``.
    patience: int = 10
    monitor: str = "val_loss"
    #: The monitored value is averaged over this many trailing epochs.
    smooth_epochs: int = 3
    #: Bags per optimizer step (padded, with masked attention): at most this many, see min_steps_per_epoch.
    batch_bags: int = 8
    #: A small cohort trains in smaller batches (down to one bag) so that an epoch holds at
    #: least this many optimizer steps: 32 bags in batches of 8 were 4 steps an epoch, too few
    #: for attention to find rare witnesses in long bags (BENCHMARKS.md); 0: always batch_bags.
    min_steps_per_epoch: int = 10
    #: Torch threads while training; null: 1 for small steps, else the usable cores (at most 8).
    threads: int | None = None
    #: Training matmuls: auto (bfloat16 where the CPU or GPU computes it natively, else float32),
    #: float32 or bfloat16. Weights, softmax, losses and evaluation stay float32.
    precision: str = "auto"
    #: adamw (decoupled weight decay) or adam (weight decay as an L2 term in the gradient).
    optimizer: str = "adamw"
    lr: float = 5e-4
    weight_decay: float = 1e-4
    #: Learning-rate schedule. none (constant): a small cohort of long bags takes most of its
    #: 50 epochs to find rare witnesses, and a decaying rate stalled it (BENCHMARKS.md).
    scheduler: str = "none"
    #: Class imbalance: weighted (loss weights 1/frequency), sampler (balanced bag sampling) or none.
    balance: str = "weighted"
    #: Gradient norm clipping; 0: off (the recipe benchmark measured no gain from it).
    grad_clip: float = 0.0
    #: Weight of the instance loss; the bag loss gets 1 - this.
    instance_loss_weight: float = 0.3
    #: Training only: bags longer than this are randomly subsampled each epoch; null: never.
    max_instances: int | None = 8192
    #: Training only: fraction of instances dropped at random each epoch.
    instance_dropout: float = 0.0
    #: auto (cuda when available), cpu, cuda or cuda:N.
    device: str = neutral_field("auto")
    #: Bags are loaded into memory once when their float32 size is at most this; else read per epoch.
    memory_gb: float = neutral_field(8.0)
    #: Threads reading feature files; null: 2 x cores, at most 8.
    read_threads: int | None = neutral_field(None)

    CHOICES: typing.ClassVar[dict[str, tuple[Any, ...]]] = {
        "monitor": ("val_loss", "val_auc"),
        "selection": ("auto", "fixed", "early_stopping"),
        "precision": ("auto", "float32", "bfloat16"),
        "optimizer": ("adamw", "adam"),
        "scheduler": ("cosine", "plateau", "none"),
        "balance": ("weighted", "sampler", "none"),
    }

    def check(self) -> None:
        if self.epochs < 1 or self.min_epochs < 0 or self.patience < 1:
            raise ValueError("epochs and patience must be at least 1, min_epochs at least 0")
        if self.name is not None and (
            not self.name
            or self.name.startswith(".")
            or any(c in self.name for c in "/\\")
            or any(ord(c) < 32 for c in self.name)
        ):
            raise ValueError(
                f"name {self.name!r} must be one folder name under RUN_DIR/models (no '/', '\\', "
                "leading dot or control characters)"
            )
        if self.repeats < 1 or self.batch_bags < 1 or self.smooth_epochs < 1 or self.min_val_bags < 1:
            raise ValueError("repeats, batch_bags, smooth_epochs and min_val_bags must be at least 1")
        if self.min_steps_per_epoch < 0:
            raise ValueError("min_steps_per_epoch must be at least 0 (0: always batch_bags)")
        if self.threads is not None and self.threads < 1:
            raise ValueError("threads must be at least 1 (or null: chosen from the bag sizes)")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError("val_fraction must be in [0, 1)")
        if not 0.0 <= self.instance_dropout < 1.0 or not 0.0 <= self.dropout < 1.0:
            raise ValueError("dropout and instance_dropout must be in [0, 1)")
        if not 0.0 <= self.instance_loss_weight <= 1.0:
            raise ValueError("instance_loss_weight must be in [0, 1]")
        if self.max_instances is not None and self.max_instances < 1:
            raise ValueError("max_instances must be at least 1 (or null)")
        if self.lr <= 0 or self.weight_decay < 0 or self.grad_clip < 0:
            raise ValueError("lr must be positive, weight_decay and grad_clip non-negative")
        check_device("device", self.device)
