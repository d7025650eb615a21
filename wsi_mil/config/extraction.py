"""Config sections of the extract stage and of the Dask workers every slide stage uses."""

from __future__ import annotations

import typing
from dataclasses import dataclass
from typing import Any

from wsi_mil.config.fields import check_device, neutral_field


@dataclass(frozen=True)
class ExtractConfig:
    """Feature extraction with a frozen encoder."""

    #: A registered encoder (see ``wsi-mil encoders``) or ``timm:<model name>``.
    encoder: str = "efficientnet_lite0"
    #: ``imagenet`` or ``random`` (plumbing tests only; recorded in every file).
    weights: str = "imagenet"
    #: A local state dict (.pth/.bin/.safetensors) to load instead, e.g. UNI's weights.
    checkpoint_path: str | None = None
    #: ``auto`` (cuda when available), ``cpu``, ``cuda`` or ``cuda:N``.
    device: str = neutral_field("auto")
    #: Patches per batch; null: 32 on CPU, 256 on CUDA.
    batch_size: int | None = neutral_field(None)
    #: How patches are read: ``auto`` (threads on CPU, processes on CUDA), ``threads``
    #: (a thread pool in the extracting process) or ``processes`` (torch DataLoader workers).
    loader: str = neutral_field("auto")
    #: Reading threads or DataLoader worker processes; null: 1 on CPU, min(8, cores) on CUDA.
    num_workers: int | None = neutral_field(None)
    #: Torch compute threads on CPU; null: all cores.
    threads: int | None = neutral_field(None)
    #: ``auto`` (TorchScript freeze on CPU, eager+autocast on CUDA), ``eager``, ``jit``, ``compile``.
    freeze: str = neutral_field("auto")
    #: Decode stored TIFF tiles directly when the patch grid lines up with them.
    direct_tiles: bool = neutral_field(True)
    #: Stored feature dtype.
    dtype: str = "float32"
    #: Feature file format.
    feature_format: str = "h5"
    #: Also write CLAM's layout, RUN_DIR/clam/<encoder>/{h5_files,pt_files}/, which CLAM's main.py trains on.
    clam_files: bool = neutral_field(False)
    #: Seconds one slide may take; past them no further patch is read and the slide fails (null: no limit).
    slide_timeout: float | None = neutral_field(None)

    CHOICES: typing.ClassVar[dict[str, tuple[Any, ...]]] = {
        "weights": ("imagenet", "random"),
        "freeze": ("auto", "eager", "jit", "compile"),
        "loader": ("auto", "threads", "processes"),
        "dtype": ("float32", "float16"),
        "feature_format": ("h5", "zarr"),
    }

    def check(self) -> None:
        if self.batch_size is not None and self.batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        if self.num_workers is not None and self.num_workers < 0:
            raise ValueError("num_workers must be >= 0")
        if self.threads is not None and self.threads < 1:
            raise ValueError("threads must be at least 1 (or null: all cores)")
        if self.slide_timeout is not None and self.slide_timeout <= 0:
            raise ValueError("slide_timeout must be a positive number of seconds (or null: no limit)")
        check_device("device", self.device)


@dataclass(frozen=True)
class ParallelConfig:
    """Where per-slide tasks run."""

    #: Dask worker processes on this machine; null = one per core; 0 = no Dask (debugging).
    workers: int | None = neutral_field(None)
    #: Address of an existing Dask scheduler (tcp://host:8786); replaces the local cluster.
    scheduler: str | None = neutral_field(None)

    def check(self) -> None:
        if self.workers is not None and self.workers < 0:
            raise ValueError(f"workers must be >= 0 (0: no Dask), got {self.workers}")
